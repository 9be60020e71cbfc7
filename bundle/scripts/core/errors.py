"""User errors as one line, through every entry point (cli.py and ``python -m monai.bundle run``).

A user error is a ValueError (the project's DataError, InferenceError ... and bad values) or an
OSError (missing file, permission denied, disk full). MONAI wraps what a config expression raises in
its own RuntimeErrors, so the cause chain is searched. Anything else is a bug and keeps its
traceback; ``ISCL_DEBUG=1`` keeps the traceback for user errors too.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

USER_ERRORS = (ValueError, OSError)


class DataError(ValueError):
    """Bad training input: the message names the file or value and what was expected."""


class InferenceError(ValueError):
    """Bad inference input, output location, device or model file; the message names the file or value."""


DEBUG_ENV = "ISCL_DEBUG"
INTERRUPTED = "error: interrupted (Ctrl-C); outputs are written only when complete, so none was left half-way."


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false", "False")


def find_user_error(error: BaseException | None) -> BaseException | None:
    """The outermost ValueError/OSError in ``error``'s cause chain (our messages wrap lower ones)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, USER_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def one_line(error: BaseException) -> str:
    """``error: <message>`` on one line (OSErrors without a message get their class name)."""
    message = " ".join(str(error).split()) or type(error).__name__
    return f"error: {message}"


def user_error_line(error: BaseException) -> str | None:
    """The ``error: ...`` line to print instead of a traceback, or None (a bug, or ISCL_DEBUG set)."""
    user_error = None if debugging() else find_user_error(error)
    return None if user_error is None else one_line(user_error)


def _excepthook(kind, error, traceback) -> None:
    if isinstance(error, KeyboardInterrupt):  # one line and the shell's Ctrl-C status, 130
        print(INTERRUPTED, file=sys.stderr, flush=True)
        os._exit(130)
    line = user_error_line(error)
    if line is None:
        sys.__excepthook__(kind, error, traceback)
    else:
        print(line, file=sys.stderr)


def install_one_line_errors() -> None:
    """Make an uncaught user error end ``python -m monai.bundle run`` with one line (exit status 1)."""
    sys.excepthook = _excepthook


class _DropTerminationNotices:
    """Logging filter: Ignite's "... is terminating due to exception" lines, which repeat the error line."""

    def filter(self, record) -> bool:
        return "terminating due to exception" not in record.getMessage()


class QuietUserErrors:
    """Mixin for Ignite engines: a user error ends the run as one ``error:`` line, without the
    handlers' traceback logs (MONAI's StatsHandler logs every exception with its traceback) and
    without Ignite's termination notices. Bugs still fire EXCEPTION_RAISED and keep their tracebacks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.logger.addFilter(_DropTerminationNotices())

    def _handle_exception(self, e: BaseException) -> None:
        if isinstance(e, KeyboardInterrupt) or user_error_line(e) is not None:
            raise e
        super()._handle_exception(e)


def exit_on_user_errors(command: Callable[[], Any]) -> Any:
    """Run a command-line entry point: Ctrl-C ends with one line and status 130, a user error with its one
    line and status 2; a bug keeps its traceback."""
    try:
        return command()
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        line = user_error_line(error)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(2)
