"""Atomic output files: complete or absent, never partial; inputs are never overwritten.

:func:`atomic_output` is the one write guard of the project: every file the
command lines write goes through it.  A run registers its input files with
:func:`protected_inputs`; an output whose real location is a registered input (a
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

_PROTECTED: list[str] = []


def real_location(path: str | os.PathLike[str]) -> str:
    """Where writing ``path`` by ``os.replace`` would land: the real directory plus the final name.

    ``os.replace`` replaces a final symlink itself, not its target, so only the
    directories are resolved.
    """
    path = Path(os.path.abspath(path))
    return os.path.join(os.path.realpath(path.parent), path.name)


def _real_names(path: str | os.PathLike[str]) -> set[str]:
    """The real locations a path stands for: its directory entry and, through symlinks, the file it names."""
    return {real_location(path), os.path.realpath(path)}


@contextmanager
def protected_inputs(paths: Iterable[str | os.PathLike[str]]) -> Iterator[None]:
    """Register ``paths`` as input files for the duration of a run, then forget them: :func:`atomic_output` refuses
    to write onto them or onto the files their symlinks name."""
    added = [name for p in paths for name in sorted(_real_names(p))]
    _PROTECTED.extend(added)
    try:
        yield
    finally:
        for name in added:
            _PROTECTED.remove(name)


def check_not_input(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
    """:class:`InputError` if writing ``path`` would replace one of ``inputs`` or a registered input file.

    Compares resolved real files (symlinks followed, hard links by inode), not path strings: the
    output's directory entry and, when it is a symlink, the file it names.
    """
    inputs = list(inputs)
    targets = set(_PROTECTED)
    for f in inputs:
        targets |= _real_names(f)
    hit = sorted(_real_names(path) & targets)
    if hit:
        raise InputError(f"{path}: output would overwrite an input file ({hit[0]}); choose another output directory")
    if os.path.lexists(path):
        for f in inputs:
            try:
                if os.path.samefile(path, f):
                    raise InputError(f"{path}: output would overwrite the input file {f}; choose another output "
                                     "directory")
            except OSError:
                continue


def check_output_dir(out_dir: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]],
                     flag: str = "--out") -> None:
    """Refuse, before any work, an output directory that is a file or resolves to where an input lies.

    The directories compared are real ones: the directory of each input's entry and, for a
    symlinked input, the directory of the file it names (``in/x.h5 -> ../data/x.h5`` with
    ``--out data`` is refused).  Raises :class:`InputError` naming ``flag``.
    """
    out_dir = Path(out_dir)
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise InputError(f"{flag} {out_dir}: exists and is not a directory")
    real_out = os.path.realpath(out_dir)
    for f in inputs:
        dirs = {os.path.realpath(Path(os.path.abspath(f)).parent), os.path.dirname(os.path.realpath(f))}
        if real_out in dirs or real_out == os.path.realpath(f):
            raise InputError(f"{flag} {out_dir}: resolves to {real_out}, where the input {f} lies; the output "
                             "directory must differ from the inputs' (inputs are never overwritten)")
    check_writable(out_dir, flag)


def check_writable(directory: str | os.PathLike[str], flag: str = "--out") -> None:
    """Probe, before any work, that files can be created in ``directory`` (or its nearest existing parent).

    A temporary file is created and removed at once; ``EACCES``, ``EROFS``, a parent that is a
    file and the like become one :class:`InputError` naming ``flag``.  Nothing is left behind.
    """
    probe = Path(os.path.abspath(directory))
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{flag} {directory}: cannot be created ({probe} is not a directory)")
    try:
        fd, name = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=probe)
    except OSError as err:
        raise InputError(f"{flag} {directory}: cannot write there ({err.strerror or err}: {probe})") from None
    os.close(fd)
    os.unlink(name)


def check_output(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
    """The checks :func:`atomic_output` makes before writing ``path``, for use before any work.

    :class:`InputError` when ``path`` would replace an input (:func:`check_not_input`), is an existing
    directory, or a parent of it is a file.
    """
    path = Path(path)
    check_not_input(path, inputs)
    if path.is_dir():
        raise InputError(f"{path}: cannot write output (a directory of that name exists); nothing was written")
    for parent in path.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise InputError(f"{path}: cannot write output ({parent} is not a directory); nothing was written")
            break


def write_error(path: str | os.PathLike[str], err: OSError) -> InputError:
    """The one-line :class:`InputError` for a failed write of ``path`` (no space, size limit, permissions, …)."""
    reason = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large (file-size limit)",
              errno.EISDIR: "it is a directory", errno.EEXIST: "a file is in the way of a directory",
              errno.ENOTDIR: "a parent of it is not a directory"}.get(err.errno or 0, err.strerror or str(err))
    return InputError(f"{path}: cannot write output ({reason}); nothing was written")


def oserror_in(err: BaseException) -> OSError | None:
    """The ``OSError`` with a user-fixable errno in ``err``'s chain (libraries such as h5py wrap them,
    or only name the errno in the message: ``errno = 28``, ``(os error 28)``)."""
    node: BaseException | None = err
    for _ in range(10):
        if node is None:
            break
        if isinstance(node, OSError) and node.errno in WRITE_ERRNOS:
            return node
        found = re.search(r"errno = (\d+)|os error (\d+)", str(node))
        if found and int(found.group(1) or found.group(2)) in WRITE_ERRNOS:
            code = int(found.group(1) or found.group(2))
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
    check_output(path)
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
        cause = oserror_in(err) if isinstance(err, Exception) and not isinstance(err, InputError) else None
        if cause is not None:
            raise write_error(path, cause) from None
        raise
