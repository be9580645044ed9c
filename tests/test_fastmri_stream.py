"""Streaming training data: slice index cache, lazy per-worker files, (seed, epoch, index) determinism, shards."""

from __future__ import annotations

import json
import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from mri_score.data.fastmri_stream import (
    INDEX_NAME,
    FastMRISlices,
    InMemorySlices,
    StreamSampler,
    build_index,
    make_loader,
    training_image,
)
from mri_score.data.shards import ShardSlices, write_shards
from mri_score.errors import InputError
from mri_score.fastmri_io import write_fastmri_file
from mri_score.preprocess import main as preprocess_main
from mri_score.scaling import image_scale
from mri_score.simulation import simulate_volume
from tests.conftest import phantom


def write_train_file(path, slices: int = 2, seed: int = 0, coils: int = 4):
    """A tiny fully sampled training file: ``slices`` x ``coils`` x 64 x 48."""
    imgs = np.ascontiguousarray(phantom(64, slices, seed=seed)[..., 8:56])
    ksp, target, _ = simulate_volume(imgs, coils=coils, snr=80.0, seed=seed)
    return write_fastmri_file(path, ksp, target, "SYN", f"p{seed}")


@pytest.fixture
def train_dir(tmp_path):
    d = tmp_path / "train"
    for i in range(3):
        write_train_file(d / f"vol_{i}.h5", seed=i)
    return d


def test_training_image_is_at_unit_reference_scale(train_dir):
    with h5py.File(train_dir / "vol_0.h5") as hf:
        ks, rss = hf["kspace"][0], hf["reconstruction_rss"][0]
    for img in (training_image(ks), training_image(None, rss)):
        assert img.dtype == np.complex64 and img.shape == (64, 48)
        assert float(image_scale(torch.from_numpy(img))) == pytest.approx(1.0, rel=1e-4)


def test_index_is_cached_and_rebuilt_only_for_changed_files(train_dir):
    first = build_index(train_dir)
    assert first.scanned == ["vol_0.h5", "vol_1.h5", "vol_2.h5"] and len(first) == 6
    assert first.path == train_dir / INDEX_NAME and first.path.is_file()
    again = build_index(train_dir)
    assert again.scanned == [] and len(again) == 6
    # mtime change only: rescanned
    st = (train_dir / "vol_1.h5").stat()
    os.utime(train_dir / "vol_1.h5", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert build_index(train_dir).scanned == ["vol_1.h5"]
    # size change (3 slices now) and a new file
    write_train_file(train_dir / "vol_2.h5", slices=3, seed=2)
    write_train_file(train_dir / "vol_3.h5", slices=1, seed=3)
    idx = build_index(train_dir)
    assert idx.scanned == ["vol_2.h5", "vol_3.h5"] and len(idx) == 2 + 2 + 3 + 1
    assert idx.locate(6) == (2, 2) and idx.locate(7) == (3, 0)
    # a vanished file drops out and the cache on disk follows
    (train_dir / "vol_0.h5").unlink()
    idx = build_index(train_dir)
    assert idx.scanned == [] and len(idx) == 6
    assert [f["name"] for f in json.loads(idx.path.read_text())["files"]] == ["vol_1.h5", "vol_2.h5", "vol_3.h5"]
    assert not [p for p in train_dir.iterdir() if p.name.endswith(".tmp")]
    # a damaged cache is rebuilt, not trusted
    idx.path.write_text("{not json")
    assert len(build_index(train_dir).scanned) == 3


def test_index_names_every_unusable_file(train_dir):
    with h5py.File(train_dir / "vol_1.h5", "a") as hf:
        hf["kspace"][1, 0, 3, 3] = np.nan
    (train_dir / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError) as err:
        build_index(train_dir)
    msg = str(err.value)
    assert "2 unusable" in msg and "vol_1.h5: kspace contains NaN" in msg and "junk.h5: not a readable HDF5" in msg


class _Probe(torch.utils.data.Dataset):
    """What a DataLoader worker sees of the dataset's open files, around one read."""

    def __init__(self, ds: FastMRISlices) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        inherited = self.ds._pid != os.getpid() and bool(self.ds._handles)
        x = self.ds[i]
        own = self.ds._pid == os.getpid()
        return os.getpid(), inherited, own, sorted(self.ds._handles), x


def test_files_are_opened_lazily_by_each_worker(train_dir):
    ds = FastMRISlices(train_dir, crop=32, seed=1)
    assert ds._handles == {}  # building the dataset opens nothing
    ref = [ds[i] for i in range(len(ds))]  # the parent reads: it opens its own handles, one file at a time
    assert sorted(ds._handles) == [2]
    pickle.loads(pickle.dumps(ds))  # picklable (spawn) with files open: handles are not pickled
    loader = torch.utils.data.DataLoader(_Probe(ds), batch_size=None, num_workers=2)
    seen = list(loader)
    assert {pid for pid, *_ in seen} - {os.getpid()} and os.getpid() not in {pid for pid, *_ in seen}
    for (_, _, own, handles, x), r in zip(seen, ref):
        assert own and torch.equal(x, r)
        assert len(handles) == 1  # at most max_open files open in a worker: memory flat in the data set size
    # each worker used no handle of the parent's: its first read found them dropped
    first = {}
    for pid, inherited, _, _, _ in seen:
        first.setdefault(pid, inherited)
    assert all(first.values())  # the worker saw the parent's handles (fork) ...
    assert sorted(ds._handles) == [2]  # ... and the parent's own are untouched
    ds.close()
    assert ds._handles == {}


def test_batches_depend_only_on_seed_epoch_and_index(train_dir):
    ds = FastMRISlices(train_dir, crop=32, seed=5)
    other = FastMRISlices(train_dir, crop=32, seed=5)
    assert torch.equal(ds[(3, 4)], other[(3, 4)])
    assert not torch.equal(ds[(3, 4)], ds[(4, 4)])  # another epoch, another crop / flip
    assert not torch.equal(ds[(3, 4)], FastMRISlices(train_dir, crop=32, seed=6)[(3, 4)])
    # the walk: the same batches with 0 or 2 workers; started at sample k it is the uninterrupted walk from k
    def take(loader, n):
        it = iter(loader)
        return [next(it) for _ in range(n)]

    full = take(make_loader(ds, batch=2), 7)  # 6 slices per epoch: crosses two epoch boundaries
    workers = take(make_loader(other, batch=2, num_workers=2, persistent_workers=True), 7)
    resumed = take(make_loader(FastMRISlices(train_dir, crop=32, seed=5), batch=2, start=3 * 2), 4)
    assert all(torch.equal(a, b) for a, b in zip(full, workers))
    assert all(torch.equal(a, b) for a, b in zip(full[3:], resumed))
    assert full[0].shape == (2, 2, 32, 32) and full[0].dtype == torch.float32


def test_ranks_read_disjoint_slices_every_epoch():
    n = 10
    for epoch in range(3):
        walks = []
        for rank in range(2):
            s = StreamSampler(n, rank=rank, world=2, seed=0, start=epoch * 5)
            it = iter(s)
            keys = [next(it) for _ in range(s.per_epoch)]
            assert {e for e, _ in keys} == {epoch}
            walks.append([i for _, i in keys])
        assert not set(walks[0]) & set(walks[1]) and sorted(walks[0] + walks[1]) == list(range(n))
    a = [i for _, i in zip(range(5), iter(StreamSampler(n, 0, 2, 0, 0)))]
    b = [i for _, i in zip(range(5), iter(StreamSampler(n, 0, 2, 0, 5)))]
    assert a != b  # reshuffled per epoch


def test_in_memory_slices_share_the_interface():
    rng = np.random.default_rng(0)
    slices = [(rng.standard_normal((40, 36)) + 1j * rng.standard_normal((40, 36))).astype(np.complex64) for _ in range(3)]
    ds = InMemorySlices(slices + [slices[0][:10]], crop=32, seed=2)
    assert len(ds) == 3  # the too-small slice is left out
    x = ds[(1, 2)]
    assert x.shape == (2, 32, 32) and torch.equal(x, InMemorySlices(slices, crop=32, seed=2)[(1, 2)])


def test_shards_hold_the_same_images_and_batches(train_dir, tmp_path):
    out = write_shards(train_dir, tmp_path / "shards", shard_size=4, workers=2)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.safetensors", "shard-00001.safetensors"]
    h5 = FastMRISlices(train_dir, crop=32, seed=3)
    sh = ShardSlices(out, crop=32, seed=3)
    assert len(sh) == len(h5) == 6
    for i in range(6):
        assert sh.locate(i) == h5.locate(i)
        assert np.array_equal(sh.full_slice(i), h5.full_slice(i))
        assert torch.equal(sh[(2, i)], h5[(2, i)])
    # written once: an existing output is refused; a failure leaves nothing behind
    with pytest.raises(InputError, match="already exists"):
        write_shards(train_dir, out)
    (train_dir / "junk.h5").write_bytes(b"x")
    with pytest.raises(InputError, match="junk.h5"):
        write_shards(train_dir, tmp_path / "s2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards", "train"]


def test_preprocess_cli(train_dir, tmp_path, capsys):
    assert preprocess_main(["--data", str(train_dir), "--index-only"]) == 0
    assert "indexed 6 slices of 3 files (3 scanned now)" in capsys.readouterr().out
    assert build_index(train_dir).scanned == []  # training starts from the cached index
    assert preprocess_main(["--data", str(train_dir), "--out", str(tmp_path / "s"), "--shard-size", "5"]) == 0
    assert len(ShardSlices(tmp_path / "s", crop=32)) == 6
    capsys.readouterr()
    assert preprocess_main(["--data", str(train_dir), "--out", str(tmp_path / "s")]) == 2
    assert preprocess_main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error: ") for e in err) and "already exists" in err[0]


def test_a_file_changed_behind_the_index_fails_with_one_line(train_dir):
    from mri_score.data.fastmri_stream import StreamFeed

    ds = FastMRISlices(train_dir, crop=32)
    path = train_dir / "vol_0.h5"
    st = path.stat()
    with h5py.File(path, "a") as hf:  # same size, mtime put back: the index cannot notice
        hf["kspace"][:, 0, 3, 3] = np.nan
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    feed = StreamFeed(ds, num_workers=1)
    with pytest.raises(InputError) as err:
        for _ in range(4):
            feed.batch(3)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{path}: kspace slice")
