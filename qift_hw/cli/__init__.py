"""The `qift-hw` command line.

Every module in this package registers its commands on `app` (see `app.py`); they are imported here, so a
new command group is a new file. Heavy imports stay inside the command functions so `--help` is fast.
"""

import importlib
import pkgutil
import sys

from qift_hw.cli import exits
from qift_hw.cli.app import app
from qift_hw.core.errors import QiftError

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod not in ("app", "exits") and not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")


def main() -> None:
    """Entry point: run the app and exit with the contract of `exits`: 0 success, 1 failure, 2 bad input (a
    QiftError, printed as one line) or usage error, 130 interrupted (one line saying how to resume)."""
    import typer

    try:
        code = app(standalone_mode=False)
    except QiftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exits.USAGE)
    except exits.Interrupted as exc:
        print(exc, file=sys.stderr)
        sys.exit(exits.INTERRUPTED)
    except KeyboardInterrupt:
        code = exits.INTERRUPTED
    except typer.Abort:
        sys.exit(exits.FAILURE)
    except Exception as exc:
        if not (hasattr(exc, "show") and hasattr(exc, "exit_code")):  # not a usage error of typer's (vendored) click
            raise
        exc.show()
        sys.exit(exc.exit_code)
    if code == exits.INTERRUPTED:
        print(exits.interrupted_message(), file=sys.stderr)
    sys.exit(code if isinstance(code, int) else exits.OK)


__all__ = ["app", "main"]
