"""One exception type for bad input, so the CLI can print one clear line instead of a traceback."""


class QiftError(ValueError):
    """Bad input or an unsupported configuration; the message says what is wrong and how to fix it."""
