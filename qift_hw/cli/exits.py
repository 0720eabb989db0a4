"""The exit-code contract of `qift-hw`: 0 success, 1 failure, 2 bad input or usage, 130 interrupted.

An interrupted command says in one line how to go on: where a run folder keeps finished work, that rerunning the
same command resumes from it.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

OK = 0
FAILURE = 1
USAGE = 2
INTERRUPTED = 130


class Interrupted(Exception):
    """Ctrl-C (SIGINT) during a command; the message is the line shown to the user."""


def interrupted_message(kept: Optional[Path] = None) -> str:
    """The one line printed on Ctrl-C: with ``kept``, where the finished work is and that a rerun resumes."""
    if kept is None:
        return "interrupted"
    return f"interrupted; rerun the same command to resume (finished layers are kept in {kept})"


@contextmanager
def resumable(kept: Optional[Path]) -> Iterator[None]:
    """Turn Ctrl-C inside the block into `Interrupted` naming ``kept``, the folder a rerun resumes from (None when
    nothing is kept)."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(kept)) from None
