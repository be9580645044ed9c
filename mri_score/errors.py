"""Errors raised for bad user input (the library's exception types) and their one-line text.

Imports nothing heavy (no torch).  How the command lines report these (one line, exit 2) and
handle signals is :mod:`mri_score.cli`.
"""

from __future__ import annotations

import sys

#: Exit code for bad input on every command line.
EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """A file, argument or checkpoint is unusable; the message says why (and names the file)."""


class CheckpointError(InputError):
    """A checkpoint is missing, corrupted, tampered with or of another architecture."""


def one_line(message: object, stream: object = None) -> str:
    """``message`` as one printable line for ``stream`` (default stderr): newlines folded, characters its
    encoding cannot write (file names that are not valid in the locale) escaped."""
    text = " ".join(str(message).split("\n"))
    encoding = getattr(stream if stream is not None else sys.stderr, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding, "replace")
