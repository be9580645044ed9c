"""Streaming training data at fastMRI scale: a map-style dataset over (file, slice).

Nothing is loaded at start-up but a **slice index** (one JSON per data
directory, written atomically next to the data: file names, sizes, mtimes,
slice counts and matrix sizes).  It is rebuilt for exactly the files whose size
or mtime changed, or that appeared; vanished files drop out.  Reading a slice
happens in the DataLoader workers: each worker opens the HDF5 files it needs
lazily and keeps them open for its own life only (handles never cross a fork),
then computes the training image with :func:`training_image` (ACS coil maps,
SENSE-1 and the project's one scaling, :mod:`mri_score.scaling`).

A sample is addressed by the key ``(epoch, index)``; its random crop, flips and
conjugation are drawn from ``numpy.random.SeedSequence([seed, epoch, index])``,
so a batch depends only on (seed, epoch, index) and a resumed run reproduces the
batches of an uninterrupted one.  :class:`StreamSampler` walks the epochs of
``torch.utils.data.DistributedSampler`` (disjoint slices per rank) and can
start at any position of that walk.

Three sources share the interface of :class:`CropDataset`:
:class:`FastMRISlices` (HDF5 files), :class:`mri_score.data.shards.ShardSlices`
(the caches written by ``python -m mri_score.preprocess``) and
:class:`InMemorySlices` (the generated synthetic corpus).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_score.atomic import atomic_output
from mri_score.errors import InputError
from mri_score.scaling import TRAIN_CENTER_FRACTION, image_scale

#: File name of the slice index written next to the data.
INDEX_NAME = ".mri_score_index.json"
INDEX_FORMAT = "mri-score-slice-index/1"
#: Training targets: SENSE-1 complex images from k-space, or the file's RSS/ESC magnitude.
TARGETS = ("complex", "magnitude")
_TARGET_KEYS = ("reconstruction_rss", "reconstruction_esc")


def training_image(kspace: torch.Tensor | np.ndarray | None, target: np.ndarray | None = None,
                   center_fraction: float = TRAIN_CENTER_FRACTION) -> np.ndarray:
    """One scaled training image from a fully sampled slice: the one recipe of every fastMRI source.

    Parameters
    ----------
    kspace : torch.Tensor or np.ndarray or None
        Complex ``(coils, H, W)`` fully sampled k-space of one slice (used when ``target`` is None):
        coil maps are estimated from the ACS block only (``center_fraction`` of the columns,
        :func:`operators.maps_lowres`) and the coil images combined by SENSE-1.
    target : np.ndarray or None
        Real ``(h, w)`` magnitude (the file's ``reconstruction_rss``/``_esc``), used as is.
    center_fraction : float
        ACS fraction for the maps and for :func:`mri_score.scaling.image_scale`.

    Returns
    -------
    np.ndarray
        complex64 ``(H, W)`` image divided by the reference scale of its ACS low-resolution version.
    """
    from operators import ifft2c, maps_lowres, sense1_combine

    if target is not None:
        img = torch.from_numpy(np.asarray(target, dtype=np.float32)).to(torch.complex64)
    else:
        ks = torch.as_tensor(kspace).to(torch.complex64)
        width = max(4, round(ks.shape[-1] * center_fraction))
        img = sense1_combine(ifft2c(ks), maps_lowres(ks, width))
    return (img / image_scale(img, center_fraction)).numpy().astype(np.complex64)


def augment_crop(image: np.ndarray, crop: int, rng: np.random.Generator) -> torch.Tensor:
    """Random ``crop``² window, vertical/horizontal flip and conjugation of a complex ``(H, W)`` image.

    Returns ``(2, crop, crop)`` float32 (real, imaginary).
    """
    h, w = image.shape
    r = int(rng.integers(h - crop + 1))
    c = int(rng.integers(w - crop + 1))
    fv, fh, cj = (bool(b) for b in rng.integers(2, size=3))
    x = image[r : r + crop, c : c + crop]
    if fv:
        x = x[::-1]
    if fh:
        x = x[:, ::-1]
    if cj:
        x = np.conj(x)
    return torch.from_numpy(np.stack([x.real, x.imag]).astype(np.float32))


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` in ``epoch``: a function of (seed, epoch, index) only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


class CropDataset(torch.utils.data.Dataset):
    """Map-style dataset of augmented crops; key ``(epoch, index)`` (or a bare ``index`` for epoch 0).

    Subclasses implement :meth:`full_slice` and ``__len__``.
    """

    #: Files a process keeps open at once (least recently opened closed first).  Open HDF5 files retain
    #: memory per file read (measured ~100 MB each for 15-coil 640x368 slices), so a worker holding every
    #: file it touched grew with the data set; one open file keeps memory flat and costs one open per read.
    max_open = 1

    def __init__(self, crop: int, seed: int = 0) -> None:
        self.crop = int(crop)
        self.seed = int(seed)
        self._handles: dict[Any, Any] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # never pickle (spawn) an open file
        return state

    def _handle(self, key: Any, opener: Callable[[], Any]) -> Any:
        """This process's open handle ``key``, opened by ``opener()`` on first use.

        After a fork (a DataLoader worker) the parent's handles are dropped, not
        used: every process reads through handles it opened itself.
        """
        if self._pid != os.getpid():
            self._handles = {}
            self._pid = os.getpid()
        h = self._handles.get(key)
        if h is None:
            while len(self._handles) >= self.max_open:
                old = self._handles.pop(next(iter(self._handles)))
                if hasattr(old, "close"):  # h5py files; safetensors readers close when released
                    old.close()
            h = self._handles[key] = opener()
        return h

    def close(self) -> None:
        """Close the files this process opened."""
        if self._pid == os.getpid():
            for h in self._handles.values():
                if hasattr(h, "close"):  # h5py files; safetensors readers close when released
                    h.close()
        self._handles = {}

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def full_slice(self, index: int) -> np.ndarray:  # pragma: no cover - abstract
        """The scaled complex64 ``(H, W)`` image of slice ``index``."""
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return augment_crop(self.full_slice(int(index)), self.crop, sample_rng(self.seed, epoch, index))


class InMemorySlices(CropDataset):
    """Scaled complex slices held in memory (the generated synthetic corpus) behind the streaming interface."""

    def __init__(self, slices: Sequence[np.ndarray], crop: int, seed: int = 0) -> None:
        super().__init__(crop, seed)
        self.slices = [s for s in slices if min(s.shape) >= crop]
        if not self.slices:
            raise InputError(f"no training slice is at least {crop}x{crop}")

    def __len__(self) -> int:
        return len(self.slices)

    def full_slice(self, index: int) -> np.ndarray:
        """The stored complex64 ``(H, W)`` slice ``index``."""
        return self.slices[index]


# ----------------------------------------------------------------------------------------------- slice index


@dataclass(frozen=True)
class FileEntry:
    """One indexed HDF5 file: identity (size, mtime) and what the dataset needs to address its slices."""

    name: str
    size: int
    mtime_ns: int
    slices: int
    coils: int
    height: int
    width: int
    target_shape: tuple[int, int] | None


def _scan_file(path: Path) -> FileEntry:
    """Validate ``path`` as a fully sampled training file, one slice in memory at a time.

    The same checks as :func:`mri_score.fastmri_io.read_fastmri` (structure,
    header, recon size, every slice finite and not all zero), so an unusable
    file is named when the index is built, not hours into a run.  Runs once per
    file: the index remembers the result until the file's size or mtime changes.
    """
    from mri_score.fastmri_io import (
        KSPACE_SHAPES,
        MAX_ARRAY_BYTES,
        MAX_KSPACE_BYTES,
        dataset,
        open_input,
        read_header,
        resolve,
        validate_kspace,
    )

    st = path.stat()
    with open_input(path) as hf:
        node = resolve(hf, "kspace", path)  # streamed one slice at a time: only a slice must fit in memory
        shape0 = getattr(node, "shape", None) or (1,)
        slices = shape0[0] if len(shape0) in (3, 4) and shape0[0] else 1
        dset = dataset(hf, "kspace", path, "c", (3, 4), MAX_KSPACE_BYTES, "kspace", KSPACE_SHAPES, 1 / slices)
        if dset is None:
            raise InputError(f"{path}: no 'kspace' dataset")
        shape = dset.shape if dset.ndim == 4 else (dset.shape[0], 1, *dset.shape[1:])
        if min(shape) < 1:
            raise InputError(f"{path}: kspace has an empty dimension, shape {dset.shape}")
        read_header(hf, path, (int(shape[2]), int(shape[3])))
        for s in range(shape[0]):
            try:
                ks = np.asarray(dset[s])
            except (OSError, TypeError, ValueError, RuntimeError) as err:
                raise InputError(f"{path}: kspace cannot be read ({str(err).splitlines()[0]})") from err
            validate_kspace(ks.reshape(1, *shape[1:]), path)
        target_shape = None
        for key in _TARGET_KEYS:
            t = dataset(hf, key, path, "fiu", (3,), MAX_ARRAY_BYTES, key, "(slices, h, w)")
            if t is not None and t.shape[0] == shape[0]:
                target_shape = (int(t.shape[1]), int(t.shape[2]))
                break
    return FileEntry(path.name, st.st_size, st.st_mtime_ns, int(shape[0]), int(shape[1]), int(shape[2]),
                     int(shape[3]), target_shape)


def default_index_path(root: Path) -> Path:
    """``root/.mri_score_index.json`` when ``root`` is writable, else a per-directory file in the user cache."""
    if os.access(root, os.W_OK):
        return root / INDEX_NAME
    import hashlib

    cache = Path(os.environ.get("MRI_SCORE_CACHE", Path.home() / ".cache" / "mri_score"))
    return cache / "index" / (hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16] + ".json")


@dataclass
class SliceIndex:
    """The slices of a directory of fastMRI files, in (sorted file name, slice) order.

    Attributes
    ----------
    root : Path
    files : list of FileEntry
    scanned : list of str
        Names whose metadata was read on this build (empty when the cached index was current).
    path : Path
        Where the index JSON lives.
    """

    root: Path
    files: list[FileEntry]
    scanned: list[str]
    path: Path

    def __post_init__(self) -> None:
        self._starts = np.cumsum([0] + [f.slices for f in self.files])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def start(self, number: int) -> int:
        """Global index of the first slice of file ``number``."""
        return int(self._starts[number])

    def locate(self, index: int) -> tuple[int, int]:
        """``(file number, slice number)`` of global slice ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"slice {index} out of range [0, {len(self)})")
        f = int(np.searchsorted(self._starts, index, side="right")) - 1
        return f, int(index - self._starts[f])


def build_index(root: str | os.PathLike[str], index_path: str | os.PathLike[str] | None = None) -> SliceIndex:
    """Load the cached slice index of ``root``, rescanning only new or changed files (by size and mtime).

    The index is rewritten (atomically) only when something changed.  Every
    unusable file is named in one :class:`InputError`.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    files = sorted(root.glob("*.h5"))
    if not files:
        raise InputError(f"{root}: no .h5 files")
    path = Path(index_path) if index_path else default_index_path(root)
    cached: dict[str, FileEntry] = {}
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") == INDEX_FORMAT:
                for d in doc["files"]:
                    ts = d.pop("target_shape")
                    cached[d["name"]] = FileEntry(**d, target_shape=tuple(ts) if ts else None)
        except (OSError, ValueError, KeyError, TypeError):
            cached = {}  # a damaged cache is rebuilt, never trusted
    entries, scanned, bad = [], [], []
    for f in files:
        st = f.stat()
        old = cached.get(f.name)
        if old is not None and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
            entries.append(old)
            continue
        try:
            entries.append(_scan_file(f))
            scanned.append(f.name)
        except InputError as err:
            bad.append(str(err))
    if bad:
        raise InputError(f"{root}: {len(bad)} unusable training file(s) (fix or remove them): " + "; ".join(bad))
    if scanned or set(cached) != {e.name for e in entries}:
        doc = {"format": INDEX_FORMAT, "files": [asdict(e) for e in entries]}
        try:
            with atomic_output(path) as tmp:
                tmp.write_text(json.dumps(doc))
        except OSError:
            pass  # an index that cannot be cached is rebuilt next time; training goes on
    return SliceIndex(root, entries, scanned, path)


# ------------------------------------------------------------------------------------------- HDF5 source


class FastMRISlices(CropDataset):
    """Slices of a directory of fastMRI **train** files, read lazily per DataLoader worker.

    ``target="complex"``: SENSE-1 with ACS coil maps; ``"magnitude"``: the file's
    ``reconstruction_rss``/``_esc``.  Both through :func:`training_image`.
    Slices smaller than ``crop`` are left out of the index.
    """

    def __init__(self, root: str | os.PathLike[str], crop: int, seed: int = 0, target: str = "complex",
                 center_fraction: float = TRAIN_CENTER_FRACTION, index_path: str | os.PathLike[str] | None = None,
                 max_slices: int | None = None) -> None:
        super().__init__(crop, seed)
        if target not in TARGETS:
            raise InputError(f"data.target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.index = build_index(root, index_path)
        self.target = target
        self.center_fraction = float(center_fraction)
        keep: list[int] = []
        for number, f in enumerate(self.index.files):
            if target == "magnitude" and f.target_shape is None:
                raise InputError(f"{self.index.root / f.name}: no reconstruction_rss/esc target for magnitude training")
            shape = f.target_shape if target == "magnitude" else (f.height, f.width)
            if min(shape) >= crop:
                start = self.index.start(number)
                keep.extend(range(start, start + f.slices))
        if not keep:
            raise InputError(f"no training slice is at least {crop}x{crop}")
        self._keep = np.asarray(keep[: max_slices or None], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._keep)

    def _file(self, number: int) -> Any:
        import h5py

        path = self.index.root / self.index.files[number].name

        def opener() -> Any:
            try:
                return h5py.File(path, "r")
            except OSError as err:
                raise InputError(f"{path}: not a readable HDF5 file ({str(err).splitlines()[0]})") from err

        return self._handle(number, opener)

    def locate(self, index: int) -> tuple[str, int]:
        """``(file name, slice number)`` of dataset item ``index``."""
        f, s = self.index.locate(int(self._keep[index]))
        return self.index.files[f].name, s

    def full_slice(self, index: int) -> np.ndarray:
        """Read slice ``index`` through this process's handle and return its scaled complex64 ``(H, W)`` image."""
        f, s = self.index.locate(int(self._keep[index]))
        hf = self._file(f)
        name = self.index.root / self.index.files[f].name
        if self.target == "magnitude":
            key = next(k for k in _TARGET_KEYS if k in hf)
            return training_image(None, np.asarray(hf[key][s], dtype=np.float32), self.center_fraction)
        ks = np.asarray(hf["kspace"][s])
        if ks.ndim == 2:
            ks = ks[None]
        if not np.isfinite(ks).all():  # validated when indexed: only a file rewritten in place gets here
            raise InputError(f"{name}: kspace slice {s} contains NaN or Inf")
        return training_image(torch.from_numpy(ks.astype(np.complex64, copy=False)), None, self.center_fraction)


# ------------------------------------------------------------------------------------------------ sampler


class StreamSampler(torch.utils.data.Sampler):
    """Endless ``(epoch, index)`` keys for one rank: the epochs of :class:`DistributedSampler`, from ``start``.

    Epoch ``e`` is ``DistributedSampler(n, world, rank, shuffle=True, seed=seed)``
    after ``set_epoch(e)``: ranks get disjoint slices (up to the padding that
    evens out the last ``n mod world``).  ``start`` counts this rank's samples
    already consumed, so a resumed run continues the same walk.
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1, seed: int = 0, start: int = 0) -> None:
        if n < 1:
            raise InputError("the training source holds no slices")
        self.ds = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True,
                                                      seed=seed, drop_last=False)
        self.start = int(start)

    @property
    def per_epoch(self) -> int:
        """Samples per rank per epoch."""
        return len(self.ds)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            self.ds.set_epoch(epoch)
            for i in list(self.ds)[offset:]:
                yield epoch, int(i)
            epoch, offset = epoch + 1, 0


def _stop_workers(iterator: Iterator[Any]) -> None:
    """Shut a DataLoader iterator's workers down the orderly way (they are sent a stop message and joined)."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker init: SIGTERM/SIGINT (a scheduler signals every process of a job) are the trainer's to handle.

    The trainer finishes its step, checkpoints and then stops its workers
    (:meth:`StreamFeed.close`, at the latest at interpreter exit); a worker
    killed first would abort that (PyTorch's worker handler dies on a SIGTERM
    not sent by its parent, and torchrun signals the whole process group).
    Workers still exit by themselves when the trainer dies.
    """
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: CropDataset, batch: int, rank: int = 0, world: int = 1, start: int = 0,
                num_workers: int = 0, pin_memory: bool = False, persistent_workers: bool = False,
                prefetch_factor: int | None = None) -> torch.utils.data.DataLoader:
    """An endless DataLoader of ``(batch, 2, crop, crop)`` float32 for one rank, starting at sample ``start``.

    The sampler order is seeded by ``dataset.seed``; the batch content depends
    only on (seed, epoch, index), not on ``num_workers``.
    """
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw["persistent_workers"] = persistent_workers
        kw["prefetch_factor"] = prefetch_factor or 2
        kw["worker_init_fn"] = _ignore_stop_signals
    sampler = StreamSampler(len(dataset), rank, world, dataset.seed, start)
    return torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=num_workers,
                                       pin_memory=pin_memory, drop_last=True, **kw)


class StreamFeed:
    """A streaming dataset behind the trainer's pool interface (``batch(batch_size, gen)``).

    Batches come from one endless :func:`make_loader` per process, created on
    the first call; :meth:`seek` (before it) sets the sample this rank starts at,
    so a resumed run continues the uninterrupted walk.  ``gen`` is ignored: the
    batch content depends only on (seed, epoch, index).

    Parameters
    ----------
    dataset : CropDataset
    rank, world : int
        This process's place under ``torchrun`` (disjoint slices per rank).
    num_workers, pin_memory, persistent_workers, prefetch_factor
        As :class:`torch.utils.data.DataLoader`.
    """

    def __init__(self, dataset: CropDataset, rank: int = 0, world: int = 1, num_workers: int = 0,
                 pin_memory: bool = False, persistent_workers: bool = True, prefetch_factor: int | None = None) -> None:
        self.dataset = dataset
        self.rank, self.world = rank, world
        self.loader_kw = {"num_workers": num_workers, "pin_memory": pin_memory,
                          "persistent_workers": persistent_workers, "prefetch_factor": prefetch_factor}
        self.start = 0
        self._iter: Iterator[torch.Tensor] | None = None
        self._batch: int | None = None
        #: Samples this process has drawn so far (from :attr:`start`).
        self.drawn = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def seek(self, sample: int) -> None:
        """Start this rank's walk at its ``sample``-th sample (call before the first batch)."""
        if self._iter is not None:
            raise RuntimeError("seek() after the first batch")
        self.start = int(sample)

    def batch(self, batch_size: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """The next ``(batch_size, 2, crop, crop)`` float32 batch of this rank's walk."""
        if self._iter is None:
            import weakref

            self._batch = batch_size
            self._iter = iter(make_loader(self.dataset, batch_size, self.rank, self.world, self.start, **self.loader_kw))
            # workers ignore SIGTERM (see _ignore_stop_signals): stop them explicitly, at the latest at exit
            self._finalizer = weakref.finalize(self, _stop_workers, self._iter)
        if batch_size != self._batch:
            raise ValueError(f"batch size changed from {self._batch} to {batch_size}")
        self.drawn += batch_size
        try:
            return next(self._iter)
        except InputError as err:  # raised in a worker: torch wraps it in a traceback; keep the one line
            self.close()
            last = str(err).strip().splitlines()[-1]
            raise InputError(last.split("InputError: ", 1)[-1]) from None

    def batch_labelled(self, batch_size: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, None]:
        """:meth:`batch` and no labels (fastMRI files carry no contrast/anatomy labels here)."""
        return self.batch(batch_size, gen), None

    def close(self) -> None:
        """Stop the worker processes (the feed can start again from :meth:`seek`)."""
        if self._iter is not None:
            self._finalizer()
        self._iter = None
