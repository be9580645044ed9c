"""Bounds on arguments and resources, checked before any work starts.

Every command line refuses, in one line naming the flag or the file, a value that
could not finish or fit: a seed outside the generators' range, a thread count that
is not positive or far beyond the machine, a network-evaluation budget beyond
:data:`MAX_STEPS`, and any read whose bytes would not fit in the memory that is
available now (:func:`check_fits`, before the read, for every dataset read).
"""

from __future__ import annotations

import os

from mri_score.errors import InputError

#: Seeds are non-negative and below 2**32 (NumPy's ``SeedSequence`` and torch generators take them all;
#: per-slice and per-volume offsets stay far below 2**63).
MAX_SEED = 2**32 - 1
#: At most this many network evaluations per slice (``--steps``/``--nfe``): 100 000 evaluations of the
#: smallest prior take hours per slice on a CPU, far beyond any sampler's useful budget (30–1000).
MAX_STEPS = 100_000
#: Posterior samples per slice (``--samples``); memory is checked per file as well.
MAX_SAMPLES = 1000
#: ``--threads`` may oversubscribe the machine at most this many times its CPU count.
THREADS_PER_CPU = 4


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable`` of ``/proc/meminfo``, else the free pages)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # pragma: no cover - non-POSIX
        return 2**63


def check_fits(nbytes: float, what: str, before: str = "reading") -> None:
    """:class:`InputError` (``what`` names the file and the item) when ``nbytes`` exceed the available memory."""
    free = available_memory()
    if nbytes > free:
        raise InputError(f"{what} needs about {nbytes / 2**30:.2f} GiB in memory but only {free / 2**30:.2f} GiB "
                         f"is available; refused before {before}")


def check_int(value: int | None, flag: str, low: int, high: int) -> None:
    """:class:`InputError` naming ``flag`` unless ``low <= value <= high`` (None passes: the default is used)."""
    if value is not None and not low <= value <= high:
        raise InputError(f"{flag} must be in [{low}, {high}], got {value}")


def check_seed(seed: int | None, flag: str = "--seed") -> None:
    """A seed in ``[0, MAX_SEED]``."""
    check_int(seed, flag, 0, MAX_SEED)


def check_steps(steps: int | None, flag: str = "--steps") -> None:
    """A network-evaluation budget in ``[1, MAX_STEPS]``."""
    check_int(steps, flag, 1, MAX_STEPS)


def max_threads() -> int:
    """The largest accepted ``--threads``: :data:`THREADS_PER_CPU` times the CPU count."""
    return THREADS_PER_CPU * (os.cpu_count() or 1)


def check_threads(threads: int | None, flag: str = "--threads") -> None:
    """A thread count in ``[1, max_threads()]``."""
    check_int(threads, flag, 1, max_threads())
