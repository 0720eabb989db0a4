"""The `qift-hw` command line.

Every module in this package registers its commands on `app` (see `app.py`); they are imported here, so a
new command group is a new file. Heavy imports stay inside the command functions so `--help` is fast.
"""

import importlib
import pkgutil
import sys

from qift_hw.cli.app import app
from qift_hw.core.errors import QiftError

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod != "app" and not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")


def main() -> None:
    """Entry point: run the app and turn a QiftError into one line on stderr."""
    try:
        app(standalone_mode=False)
    except QiftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # a usage error from click/typer
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        raise


__all__ = ["app", "main"]
