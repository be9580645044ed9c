"""Which files a process of a multi-process run reconstructs: torchrun ranks and ``--shard i/n`` alike.

A directory run split over ``n`` processes deals its inputs with one function, :func:`deal`: largest
first (by the k-space file's size on disk, the best cheap proxy of its slices × coils × matrix), each file
to the process with the least work so far (ties: the lower rank; equal sizes: name order), so the
processes finish together (longest-processing-time-first; within 4/3 of the best split).  Every process
computes the same deal from the same listing, so nothing is exchanged.

Process ``i`` of ``n`` is either a torchrun rank (``RANK``/``WORLD_SIZE`` in the environment) or
``--shard i/n`` on the command line (Slurm arrays, job queues, separate machines: no torch.distributed),
**0-based** like ``RANK`` and Slurm's ``SLURM_ARRAY_TASK_ID`` of ``--array=0-(n-1)``.  ``--shard i/n`` and
rank ``i`` of a torchrun world of ``n`` reconstruct the same files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from mri_score.errors import InputError


def parse_shard(text: str, flag: str = "--shard") -> tuple[int, int]:
    """``(i, n)`` of ``"i/n"`` with ``0 <= i < n`` (0-based); an :class:`InputError` naming ``flag`` otherwise."""
    index, sep, count = str(text).strip().partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise InputError(f"{flag} must be i/n with 0 <= i < n (0-based: the first of 4 shards is 0/4), got {text!r}")
    return i, n


def process_of(shard: str | None, environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """``(rank, world)`` of this process: ``--shard`` when given, else torchrun's ``RANK``/``WORLD_SIZE``, else ``(0, 1)``.

    ``--shard`` under a torchrun world of more than one process is refused (the two would split the files twice).
    """
    world_env = environ.get("WORLD_SIZE")
    try:
        rank, world = int(environ.get("RANK", 0)), int(world_env or 1)
    except ValueError:
        raise InputError(f"RANK/WORLD_SIZE must be integers, got {environ.get('RANK')!r}/{world_env!r}") from None
    if shard is not None:
        if world > 1:
            raise InputError(f"--shard {shard} cannot be combined with torchrun (WORLD_SIZE={world}): use one or the other")
        return parse_shard(shard)
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK={rank} is not a rank of WORLD_SIZE={world}")
    return rank, world


def input_size(path: str | os.PathLike[str]) -> int:
    """Bytes of an input's k-space on disk (a BART ``.cfl``'s data file; 0 when it cannot be read)."""
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def deal(files: Sequence[Path], world: int, sizes: Sequence[int] | None = None) -> list[list[Path]]:
    """The files of each of ``world`` processes: largest first, each to the least loaded (see module docstring).

    Parameters
    ----------
    files : sequence of Path
        Every input of the run, in the listing's order.
    world : int
        Processes, ``>= 1``.
    sizes : sequence of int, optional
        Each file's weight; its size on disk (:func:`input_size`) when None.

    Returns
    -------
    list of list of Path
        ``world`` lists; each keeps the listing's order.
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    weights = [input_size(f) for f in files] if sizes is None else list(sizes)
    order = sorted(range(len(files)), key=lambda k: (-weights[k], k))
    load = [0] * world
    owner = [0] * len(files)
    for k in order:
        r = min(range(world), key=lambda q: (load[q], q))
        owner[k] = r
        load[r] += max(weights[k], 1)
    return [[f for k, f in enumerate(files) if owner[k] == r] for r in range(world)]


def files_of(files: Sequence[Path], rank: int, world: int) -> list[Path]:
    """The files process ``rank`` of ``world`` reconstructs (:func:`deal`)."""
    return deal(files, world)[rank]
