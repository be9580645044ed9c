"""Atomic output files: complete or absent, never partial; inputs are never overwritten.

:func:`atomic_output` is the one write guard of the project: every file the
command lines write goes through it.  Readers of input files register them with
:func:`protect_input`; an output whose real location is a registered input (a
symlinked input whose target lies in the output directory, the input's own
directory entry) is refused before anything is written.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mri_score.errors import InputError

#: Errors of the file system that are the user's to fix (full disk, quota, size limit, permissions,
#: a path component that is a file or a directory, a read-only file system): reported in one line.
WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EACCES", "EPERM", "EROFS", "EEXIST", "EISDIR",
                                      "ENOTDIR", "ENOENT", "ENAMETOOLONG", "ELOOP", "EMLINK", "EXDEV", "EIO")
    if hasattr(errno, name)
)

_PROTECTED: set[str] = set()


def real_location(path: str | os.PathLike[str]) -> str:
    """Where writing ``path`` by ``os.replace`` would land: the real directory plus the final name.

    ``os.replace`` replaces a final symlink itself, not its target, so only the
    directories are resolved.
    """
    path = Path(os.path.abspath(path))
    return os.path.join(os.path.realpath(path.parent), path.name)


def protect_input(path: str | os.PathLike[str]) -> None:
    """Register an input file: :func:`atomic_output` refuses to write onto it or onto the file a symlink names."""
    _PROTECTED.add(real_location(path))
    _PROTECTED.add(os.path.realpath(path))


def check_not_input(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
    """:class:`InputError` if writing ``path`` would replace one of ``inputs`` or a registered input file.

    Compares resolved real files (symlinks followed, hard links by inode), not path strings.
    """
    where = real_location(path)
    targets = set(_PROTECTED)
    for f in inputs:
        targets.add(real_location(f))
        targets.add(os.path.realpath(f))
    if where in targets:
        raise InputError(f"{path}: output would overwrite an input file ({where}); choose another output directory")
    if os.path.lexists(path):
        for f in inputs:
            try:
                if os.path.samefile(path, f):
                    raise InputError(f"{path}: output would overwrite the input file {f}; choose another output "
                                     "directory")
            except OSError:
                continue


def write_error(path: str | os.PathLike[str], err: OSError) -> InputError:
    """The one-line :class:`InputError` for a failed write of ``path`` (no space, size limit, permissions, …)."""
    reason = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large (file-size limit)",
              errno.EISDIR: "it is a directory", errno.EEXIST: "a file is in the way of a directory",
              errno.ENOTDIR: "a parent of it is not a directory"}.get(err.errno or 0, err.strerror or str(err))
    return InputError(f"{path}: cannot write output ({reason}); nothing was written")


def _oserror_in(err: BaseException) -> OSError | None:
    """The ``OSError`` with a user-fixable errno in ``err``'s chain (libraries such as h5py wrap them,
    or only name the errno in the message: ``errno = 28``)."""
    node: BaseException | None = err
    for _ in range(10):
        if node is None:
            break
        if isinstance(node, OSError) and node.errno in WRITE_ERRNOS:
            return node
        found = re.search(r"errno = (\d+)", str(node))
        if found and int(found.group(1)) in WRITE_ERRNOS:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
        node = node.__cause__ or node.__context__
    return None


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success make it 0644 and ``os.replace`` it onto ``path``.

    On any exception (``KeyboardInterrupt`` and the CLIs' SIGTERM included) the
    temporary file is removed and ``path`` is left as it was.  File-system errors
    the user can fix (``ENOSPC``, ``EFBIG``, ``EACCES``, ``EEXIST``, ``EISDIR``, …),
    raised by the writer or by the final rename, become one :class:`InputError`
    naming ``path``; so does an output that would replace an input file
    (:func:`check_not_input`) or an existing directory.
    """
    path = Path(path)
    check_not_input(path)
    if path.is_dir():
        raise InputError(f"{path}: cannot write output (a directory of that name exists); nothing was written")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if err.errno in WRITE_ERRNOS or isinstance(err, FileExistsError):
            raise write_error(path, err) from None
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # after writing: writers may recreate the file with mkstemp's 0600
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = _oserror_in(err) if isinstance(err, Exception) and not isinstance(err, InputError) else None
        if cause is not None:
            raise write_error(path, cause) from None
        raise
