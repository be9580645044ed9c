"""Errors raised for bad user input, and the one-line command-line reporting of them."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from operators.errors import OperatorInputError

T = TypeVar("T")

#: Exit code for bad input on every command line.
EXIT_BAD_INPUT = 2


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler the command lines install, so clean-up code runs as for Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


class InputError(ValueError):
    """A file, argument or checkpoint is unusable; the message says why (and names the file)."""


class CheckpointError(InputError):
    """A checkpoint is missing, corrupted, tampered with or of another architecture."""


def exit_on_input_error(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a CLI ``main``: input errors print one line on stderr and exit with code 2.

    SIGINT (``KeyboardInterrupt``) exits with 130 and SIGTERM with 143, both as
    exceptions, so ``finally`` clean-ups run and atomic writers remove their
    temporary files: nothing partial is left behind.
    """

    @wraps(main)
    def wrapper(*args: object, **kwargs: object) -> int:
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return int(main(*args, **kwargs) or 0)
        except (InputError, OperatorInputError) as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except Terminated:
            print("terminated (SIGTERM); no partial output was left", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print("interrupted; no partial output was left", file=sys.stderr)
            return 130
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper
