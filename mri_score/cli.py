"""What every command line shares: one-line usage errors, exit codes and signal handling at start-up and while running.

A command-line module calls :func:`guard_startup` with its ``__name__`` first, before it imports torch,
and decorates its ``main`` with :func:`exit_on_input_error`.  Nothing here runs on ``import mri_score``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from functools import wraps
from typing import NoReturn, TypeVar

from mri_score.errors import EXIT_BAD_INPUT, InputError, one_line

T = TypeVar("T")
P = TypeVar("P")


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler the command lines install, so clean-up code runs as for Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def one_line_usage_errors(parser: P) -> P:
    """Make an ``argparse`` parser's usage errors (an unknown flag, a value outside ``choices``, a
    missing required flag) raise :class:`InputError`, so that :func:`exit_on_input_error` reports them
    like every other bad input: one line, exit 2 (argparse itself prints the whole usage text).
    Returns ``parser``; its ``error`` method is replaced (duck-typed: argparse stays in the command lines)."""

    def error(message: str) -> NoReturn:
        raise InputError(message)

    parser.error = error  # type: ignore[attr-defined]
    return parser


def _exit_while_starting(signum: int, frame: object) -> None:
    terminated = signum == signal.SIGTERM
    os.write(2, f"{'terminated (SIGTERM)' if terminated else 'interrupted'} while starting; nothing was "
                "written\n".encode())
    os._exit(143 if terminated else 130)


def guard_startup(module_name: str) -> None:
    """At a command line's start, make SIGINT/SIGTERM while importing exit at once: one line, 130/143.

    A command-line module calls it first with its ``__name__``, before it imports torch (an interrupted
    import can leave half-initialised modules that fail in other ways than ``KeyboardInterrupt``, so the
    process leaves immediately; nothing has been written yet).  It acts only when the module runs as
    the program (``__main__``: ``python -m …`` or a script path); an import of the module (the tests,
    console-script wrappers) is left alone, and so are signals that are ignored (background jobs) or
    already handled.  :func:`exit_on_input_error` takes over once ``main`` runs.
    """
    if module_name != "__main__" or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_while_starting)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_while_starting)


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
        from operators.errors import OperatorInputError  # here, not at import: this module loads before torch

        previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_terminated)
            if signal.getsignal(signal.SIGINT) is _exit_while_starting:  # start-up is over: Ctrl-C unwinds
                previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
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


def sampler_options(pairs: list[str], gamma: float | None, sampler: str) -> dict[str, str | float]:
    """``--sampler-opt KEY=VALUE`` pairs (and ``--gamma``) as a mapping for :func:`mri_score.samplers.sampler_config`."""
    options: dict[str, str | float] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--sampler-opt {item!r} must look like key=value")
        if key.strip() in options:
            raise InputError(f"--sampler-opt {key.strip()} is given twice")
        options[key.strip()] = value.strip()
    if gamma is not None:
        if sampler != "dds":
            raise InputError(f"--gamma is the dds sampler's data weight; the {sampler} sampler has no gamma")
        if "gamma" in options:
            raise InputError("--gamma and --sampler-opt gamma=… both given")
        options["gamma"] = gamma
    return options
