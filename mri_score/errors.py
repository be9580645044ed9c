"""Errors raised for bad user input, and the one-line command-line reporting of them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from operators.errors import OperatorInputError

T = TypeVar("T")

#: Exit code for bad input on every command line.
EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """A file, argument or checkpoint is unusable; the message says why (and names the file)."""


class CheckpointError(InputError):
    """A checkpoint is missing, corrupted, tampered with or of another architecture."""


def exit_on_input_error(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a CLI ``main``: input errors print one line on stderr and exit with code 2.

    ``KeyboardInterrupt`` exits with 130 after cleanup has run (outputs are
    atomic, so nothing partial is left behind).
    """

    @wraps(main)
    def wrapper(*args: object, **kwargs: object) -> int:
        try:
            return int(main(*args, **kwargs) or 0)
        except (InputError, OperatorInputError) as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
