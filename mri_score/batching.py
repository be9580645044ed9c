"""How many slices of a volume are sampled together: ``--batch-slices N|auto``.

The slices of one volume and their ``K`` posterior samples go through the network and the
data-consistency step as one batch of ``B·K`` images (:func:`mri_score.posterior.reconstruct_slices`).
The batch changes only the speed and the memory used, never the output (each slice keeps its own seed,
generator, calibration and data weight), so it is a run option, not a field of
:class:`~mri_score.request.ReconRequest`: it is not in the request's identity, the skip-if-done key or the
std-calibration key, and an output made with one batch size is "done" for a run with another.

``auto`` takes as many slices as fit in :data:`AUTO_MEMORY_FRACTION` of the memory free on the device
now (``torch.cuda.mem_get_info`` plus the caching allocator's reusable blocks on CUDA,
:func:`mri_score.limits.available_memory` on the CPU), at the per-slice working set that
:func:`mri_score.pipeline.check_memory` refuses a file by (:func:`slice_working_set`), and at most
:data:`AUTO_MAX_SLICES` (one) on a CPU, where batching does not pay: on 2 cores it gained 1.14× at best where the
CPU has native bf16 and lost 1.2–1.9× in fp32 on one without (128², 4x, batches of 4 and 16;
``benchmarks/results/throughput.md``), and the memory grows with the batch.
The working set is a conservative budget (measured: ~22 MiB per extra 128² slice of 8 coils, 47 MiB budgeted).
"""

from __future__ import annotations

import torch

from mri_score import limits
from mri_score.errors import InputError

#: The per-slice working set is estimated as this many copies of one sample's multi-coil k-space.
MEM_COPIES = 24
#: ``auto`` uses at most this fraction of the free memory (the rest: the volume, the network, other processes).
AUTO_MEMORY_FRACTION = 0.5
#: ``auto`` on a CPU takes at most this many slices per batch (on CUDA only memory bounds it): one, slice by slice,
#: since batches ran slower in fp32 on a 2-core CPU (``benchmarks/results/throughput.md``).
AUTO_MAX_SLICES = 1
#: The value of ``--batch-slices`` that chooses the batch from the free memory.
AUTO = "auto"


def parse_batch_slices(value: int | str, flag: str = "--batch-slices") -> int | str:
    """``auto`` or a positive slice count from a flag's text or a number; an :class:`InputError` naming ``flag``."""
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    try:
        count = int(text)
    except ValueError:
        count = 0
    if isinstance(value, bool) or count < 1:
        raise InputError(f"{flag} must be a positive number of slices or auto, got {value!r}")
    return count


def slice_working_set(samples: int, coils: int, grid: tuple[int, int]) -> int:
    """Bytes one slice needs while it is sampled: :data:`MEM_COPIES` × ``samples`` × its complex64 k-space on ``grid``."""
    return MEM_COPIES * max(samples, 1) * max(coils, 1) * int(grid[0]) * int(grid[1]) * 8


def free_memory(device: torch.device) -> int:
    """Bytes free for a reconstruction on ``device``.

    CUDA: the driver's free memory (``torch.cuda.mem_get_info``) plus what PyTorch's caching allocator holds
    but does not use (``memory_reserved − memory_allocated``: a previous batch's blocks are reused); a CPU:
    :func:`mri_score.limits.available_memory`.
    """
    if device.type == "cuda":
        free = int(torch.cuda.mem_get_info(device)[0])
        return free + int(torch.cuda.memory_reserved(device)) - int(torch.cuda.memory_allocated(device))
    return limits.available_memory()


def auto_batch_slices(slices: int, per_slice: int, free: int, device_type: str = "cpu") -> int:
    """The ``auto`` batch: slices of ``per_slice`` bytes that fit in :data:`AUTO_MEMORY_FRACTION` of ``free`` bytes.

    At least 1 (whether one slice fits is :func:`mri_score.pipeline.check_memory`'s question), at most
    ``slices`` and, on a CPU, :data:`AUTO_MAX_SLICES`.
    """
    fit = int(free * AUTO_MEMORY_FRACTION) // max(per_slice, 1)
    cap = slices if device_type == "cuda" else min(slices, AUTO_MAX_SLICES)
    return max(1, min(cap, fit))


def resolve_batch_slices(value: int | str, slices: int, samples: int, coils: int, grid: tuple[int, int],
                         device: torch.device) -> int:
    """Slices per batch for a volume of ``slices`` slices of ``coils`` coils sampled on ``grid`` with ``samples`` samples.

    ``value`` is ``auto`` (:func:`auto_batch_slices` of the device's :func:`free_memory`) or a count
    (:func:`parse_batch_slices`), never more than the volume's slices.
    """
    value = parse_batch_slices(value)
    if value == AUTO:
        return auto_batch_slices(slices, slice_working_set(samples, coils, grid), free_memory(device), device.type)
    return max(1, min(int(value), slices))
