"""Errors raised for bad user input, and the one-line command-line reporting of them."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
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


def one_line(message: object) -> str:
    """``message`` as one printable line: newlines folded, characters the locale cannot encode escaped."""
    text = " ".join(str(message).split("\n"))
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding, "replace")


@contextlib.contextmanager
def quiet_interrupt(module_name: str) -> Iterator[None]:
    """Wrap a command-line module's (slow) imports: Ctrl-C while importing exits 130 without a traceback.

    Only when the module runs as ``__main__`` (``python -m …``); for a library import the
    ``KeyboardInterrupt`` propagates unchanged.  Signal handlers are not touched, so an
    inherited ignored SIGINT (background jobs) stays ignored.
    """
    try:
        yield
    except KeyboardInterrupt:
        if module_name != "__main__":
            raise
        print("interrupted while starting; nothing was written", file=sys.stderr)
        raise SystemExit(130) from None


def exit_on_input_error(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a CLI ``main``: input errors print one line on stderr and exit with code 2.

    SIGINT (``KeyboardInterrupt``) exits with 130 and SIGTERM with 143, both as
    exceptions, so ``finally`` clean-ups run and atomic writers remove their
    temporary files: nothing partial is left behind.  SIGXFSZ is ignored while
    ``main`` runs, so a file-size limit (``ulimit -f``) makes writes fail with
    ``EFBIG`` (one line, :func:`mri_score.atomic.atomic_output`) instead of killing
    the process.  ``MemoryError`` is reported in one line, exit 2.
    """

    @wraps(main)
    def wrapper(*args: object, **kwargs: object) -> int:
        previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_terminated)
            if hasattr(signal, "SIGXFSZ"):
                previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        try:
            return int(main(*args, **kwargs) or 0)
        except (InputError, OperatorInputError) as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except MemoryError:
            print("error: out of memory; use smaller inputs or settings (nothing was written)", file=sys.stderr)
            return EXIT_BAD_INPUT
        except Terminated:
            print("terminated (SIGTERM); no partial output was left", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print("interrupted; no partial output was left", file=sys.stderr)
            return 130
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]

    return wrapper
