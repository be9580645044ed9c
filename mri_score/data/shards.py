"""Sharded slice caches: the training images of a fastMRI directory, computed once.

For file systems where random HDF5 reads are slow (or to skip the per-slice
coil-map estimation), :func:`write_shards` stores every training image of a
directory (:func:`mri_score.data.fastmri_stream.training_image`: SENSE-1 with
ACS maps, divided by the project's ACS scale) as complex64 ``(H, W)`` tensors
in safetensors shards, plus ``manifest.json``.  :class:`ShardSlices` reads them
lazily per DataLoader worker (memory-mapped) behind the same interface as
:class:`~mri_score.data.fastmri_stream.FastMRISlices`, so a run trained from
shards sees exactly the images (and, with the same seed, the batches) of a run
trained from the HDF5 files.

Layout::

    OUT/manifest.json              format, target, center_fraction, source files (name, size, mtime)
    OUT/shard-00000.safetensors    tensors "0", "1", ... (complex64 (H, W)), one per slice

:func:`stream_source` opens a training feed from either kind of directory (shards or fastMRI files).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_score.atomic import oserror_in, write_error
from mri_score.data.fastmri_stream import CropDataset, FastMRISlices, StreamFeed
from mri_score.errors import InputError
from mri_score.scaling import TRAIN_CENTER_FRACTION

MANIFEST = "manifest.json"
SHARD_FORMAT = "mri-score-slice-shards/1"


def is_shard_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory written by :func:`write_shards`."""
    return (Path(path) / MANIFEST).is_file()


class _FullSlices(torch.utils.data.Dataset):
    """Item ``i``: the full scaled image of slice ``i`` (for parallel preprocessing through DataLoader workers)."""

    def __init__(self, ds: FastMRISlices) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.ds.full_slice(i))


def write_shards(root: str | os.PathLike[str], out: str | os.PathLike[str], shard_size: int = 256,
                 target: str = "complex", center_fraction: float = TRAIN_CENTER_FRACTION, workers: int = 0) -> Path:
    """Write the training images of the fastMRI directory ``root`` as shards in the new directory ``out``.

    Parameters
    ----------
    root : path
        Directory of fully sampled fastMRI ``.h5`` files (indexed and validated as for training).
    out : path
        Output directory; must not exist yet.  Written as a temporary sibling and renamed at the end,
        so it is complete or absent.
    shard_size : int
        Slices per shard file.
    target, center_fraction
        As :class:`~mri_score.data.fastmri_stream.FastMRISlices`.
    workers : int
        DataLoader worker processes computing the images (0: this process).

    Returns
    -------
    Path
        ``out``.
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists():
        raise InputError(f"{out}: output directory already exists (shards are written once; remove it to rebuild)")
    if shard_size < 1:
        raise InputError(f"--shard-size must be >= 1, got {shard_size}")
    ds = FastMRISlices(root, crop=1, target=target, center_fraction=center_fraction)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        loader = torch.utils.data.DataLoader(_FullSlices(ds), batch_size=None, num_workers=workers)
        shards: list[dict[str, Any]] = []
        pending: dict[str, torch.Tensor] = {}
        entries: list[dict[str, Any]] = []

        def flush() -> None:
            name = f"shard-{len(shards):05d}.safetensors"
            save_file(pending, str(tmp / name))
            shards.append({"file": name, "slices": list(entries)})
            pending.clear()
            entries.clear()

        for i, img in enumerate(loader):
            fname, s = ds.locate(i)
            pending[str(len(entries))] = img.contiguous()
            entries.append({"source": fname, "slice": s, "shape": list(img.shape)})
            if len(entries) == shard_size:
                flush()
        if entries:
            flush()
        manifest = {"format": SHARD_FORMAT, "target": target, "center_fraction": center_fraction,
                    "source": str(Path(root).resolve()), "files": [asdict(f) for f in ds.index.files],
                    "shards": shards}
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
        os.chmod(tmp, 0o755)
        os.rename(tmp, out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = oserror_in(err) if isinstance(err, Exception) and not isinstance(err, InputError) else None
        if cause is not None:  # full disk, file-size limit, permissions: one line, nothing left
            raise write_error(out, cause) from None
        raise
    finally:
        ds.close()
    return out


class ShardSlices(CropDataset):
    """Training images from a shard directory (:func:`write_shards`), opened lazily per worker."""

    def __init__(self, root: str | os.PathLike[str], crop: int, seed: int = 0, max_slices: int | None = None) -> None:
        super().__init__(crop, seed)
        self.root = Path(root)
        try:
            manifest = json.loads((self.root / MANIFEST).read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"{self.root / MANIFEST}: not a readable shard manifest ({err})") from err
        if not isinstance(manifest, dict) or manifest.get("format") != SHARD_FORMAT:
            raise InputError(f"{self.root / MANIFEST}: not an mri-score shard manifest")
        items = []
        try:
            self.target = str(manifest["target"])
            self._files = [str(s["file"]) for s in manifest["shards"]]
            for k, shard in enumerate(manifest["shards"]):
                for j, e in enumerate(shard["slices"]):
                    if min(e["shape"]) >= crop:
                        items.append((k, j, str(e["source"]), int(e["slice"])))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{self.root / MANIFEST}: damaged shard manifest ({err!r})") from err
        for name in self._files:
            if Path(name).name != name or not (self.root / name).is_file():
                raise InputError(f"{self.root / name}: shard listed in the manifest is missing")
        if not items:
            raise InputError(f"no training slice is at least {crop}x{crop}")
        self._items = items[: max_slices or None]

    def __len__(self) -> int:
        return len(self._items)

    def locate(self, index: int) -> tuple[str, int]:
        """``(source file name, slice number)`` of item ``index``."""
        _, _, name, s = self._items[index]
        return name, s

    def full_slice(self, index: int) -> np.ndarray:
        """The stored complex64 ``(H, W)`` image of item ``index`` (memory-mapped read)."""
        from safetensors import safe_open

        k, j, _, _ = self._items[index]
        path = self.root / self._files[k]
        reader = self._handle(k, lambda: safe_open(str(path), framework="pt"))
        return reader.get_tensor(str(j)).numpy()


def stream_source(path: str | os.PathLike[str], crop: int, seed: int = 0, target: str = "complex",
                  max_slices: int | None = None, index_path: str | os.PathLike[str] | None = None, rank: int = 0,
                  world: int = 1, num_workers: int = 2, pin_memory: bool = False, persistent_workers: bool = True,
                  prefetch_factor: int | None = None) -> StreamFeed:
    """The training feed of ``path``: a directory of fastMRI files or of shards (it holds ``manifest.json``).

    Under ``torch.distributed`` rank 0 builds (or refreshes) the slice index
    first and the other ranks then read it, so the files are scanned once.
    """
    import torch.distributed as dist

    if num_workers < 0:
        raise InputError(f"data.num_workers must be >= 0, got {num_workers}")
    ds: CropDataset
    if is_shard_dir(path):
        ds = ShardSlices(path, crop, seed, max_slices=max_slices)
    else:
        sync = world > 1 and dist.is_available() and dist.is_initialized()
        if sync and rank != 0:
            dist.barrier()  # rank 0 scans new or changed files first
        try:
            ds = FastMRISlices(path, crop, seed, target=target, index_path=index_path, max_slices=max_slices)
        finally:
            if sync and rank == 0:
                dist.barrier()
    return StreamFeed(ds, rank, world, num_workers, pin_memory, persistent_workers, prefetch_factor)
