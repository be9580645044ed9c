"""BART .cfl/.hdr reading and writing, and the BART <-> fastMRI k-space axes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from mri_score import atomic
from mri_score import cfl as cflmod
from mri_score.cfl import BART_DIMS, kspace_from_cfl, kspace_to_cfl, read_cfl, read_cfl_header, write_cfl
from mri_score.errors import InputError


def _rand(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _bart_pair(d: Path, name: str, header: str, data: bytes) -> Path:
    """A .hdr/.cfl pair written by hand (as BART itself would), independent of the module."""
    (d / f"{name}.hdr").write_text(header)
    (d / f"{name}.cfl").write_bytes(data)
    return d / name


@pytest.mark.parametrize("shape", [(7,), (5, 3), (6, 4, 3, 2), (2, 1, 3), (1,) * 5 + (3,), (2,) * 4 + (1,) * 11 + (2,)])
def test_roundtrip_and_on_disk_format(tmp_path, shape):
    arr = _rand(shape, seed=len(shape))
    cfl, hdr = write_cfl(tmp_path / "x", arr)
    assert (cfl, hdr) == (tmp_path / "x.cfl", tmp_path / "x.hdr")
    lines = hdr.read_text().splitlines()
    assert lines[0] == "# Dimensions"
    dims = [int(t) for t in lines[1].split()]
    assert dims == list(shape) + [1] * (BART_DIMS - len(shape))
    # the data: complex64 little-endian, Fortran order (dim 0 fastest), read independently of the module
    raw = np.frombuffer(cfl.read_bytes(), dtype="<c8")
    np.testing.assert_array_equal(raw, arr.ravel(order="F"))
    back = read_cfl(tmp_path / "x")
    trimmed = list(shape)
    while len(trimmed) > 1 and trimmed[-1] == 1:
        trimmed.pop()
    assert back.dtype == np.complex64 and back.shape == tuple(trimmed)
    np.testing.assert_array_equal(back.reshape(shape), arr)
    # the stem may be given with either suffix
    np.testing.assert_array_equal(read_cfl(cfl), back)
    np.testing.assert_array_equal(read_cfl(str(hdr)), back)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.cfl", "x.hdr"]


def test_real_and_scalar_arrays_are_stored_as_complex64(tmp_path):
    write_cfl(tmp_path / "r", np.arange(6, dtype=np.float64).reshape(2, 3))
    np.testing.assert_array_equal(read_cfl(tmp_path / "r"), np.arange(6).reshape(2, 3).astype(np.complex64))
    write_cfl(tmp_path / "s", np.complex64(2 - 1j))
    assert read_cfl(tmp_path / "s").tolist() == [2 - 1j]


def test_reads_a_bart_header_with_other_sections_and_few_dims(tmp_path):
    arr = _rand((4, 3, 2), seed=3)
    header = ("# Command\nbart pics -R W:7:0:0.01 ksp sens out\n# Files\n >ksp >sens <out\n"
              "# Dimensions\n4 3 2 1 1\n# Creator\nBART 0.9.00\n")
    stem = _bart_pair(tmp_path, "b", header, arr.astype("<c8").tobytes(order="F"))
    np.testing.assert_array_equal(read_cfl(stem), arr)
    assert read_cfl_header(stem) == (4, 3, 2, 1, 1)


def test_big_endian_host_independence(tmp_path):
    # the bytes are little-endian whatever the array's byte order
    arr = _rand((3, 2), seed=5).astype(">c8")
    cfl, _ = write_cfl(tmp_path / "be", arr)
    np.testing.assert_array_equal(np.frombuffer(cfl.read_bytes(), "<c8"), arr.astype("<c8").ravel(order="F"))


GOOD = _rand((4, 3), seed=9).astype("<c8").tobytes(order="F")  # 12 values, 96 bytes


@pytest.mark.parametrize("header,data,phrase", [
    ("# Dimensions\n4 3 1\n", GOOD[:-8], "does not match"),
    ("# Dimensions\n4 3 1\n", GOOD + b"\0" * 8, "does not match"),
    ("# Dimensions\n4 -3 1\n", GOOD, "positive integers"),
    ("# Dimensions\n4 3.0 1\n", GOOD, "positive integers"),
    ("# Dimensions\n4 0 1\n", b"", "positive"),
    ("# Dimensions\n4 3e0\n", GOOD, "positive integers"),
    ("# Dimensions\n__import__('os').system('touch PWNED') 3\n", GOOD, "positive integers"),
    ("# Dimensions\n" + "1 " * 17 + "\n", GOOD[:8], "at most 16"),
    ("# Dimensions\n4000000 4000000 1\n", GOOD, "too large"),
    ("# Dimensions\n" + "9" * 30 + "\n", GOOD, "positive integers"),
    ("4 3 1\n", GOOD, "no '# Dimensions'"),
    ("# Dimensions\n", GOOD, "not followed"),
    ("# Dimensions\n# Creator\nx\n", GOOD, "not followed"),
    ("", GOOD, "no '# Dimensions'"),
    ("# Dimensions\n4 3\n# Data\n/etc/passwd\n", GOOD, "separate data file"),
])
def test_bad_headers_are_one_line_input_errors_naming_the_file(tmp_path, monkeypatch, header, data, phrase):
    monkeypatch.chdir(tmp_path)
    stem = _bart_pair(tmp_path, "bad", header, data)
    with pytest.raises(InputError) as info:
        read_cfl(stem)
    msg = str(info.value)
    assert phrase in msg and "\n" not in msg
    assert str(stem) in msg
    assert not (tmp_path / "PWNED").exists()


def test_binary_header_missing_files_and_a_huge_header_are_refused(tmp_path):
    stem = _bart_pair(tmp_path, "bin", "", GOOD)
    (tmp_path / "bin.hdr").write_bytes(b"\xff\xfe\x00# Dimensions\n4 3\n")
    with pytest.raises(InputError, match="not text"):
        read_cfl(stem)
    with pytest.raises(InputError, match="no such file"):
        read_cfl(tmp_path / "absent")
    (tmp_path / "lonely.hdr").write_text("# Dimensions\n4 3\n")
    with pytest.raises(InputError, match=r"lonely\.cfl: no such file"):
        read_cfl(tmp_path / "lonely")
    big = _bart_pair(tmp_path, "big", "# Dimensions\n4 3\n# Command\n" + "x" * (cflmod.MAX_HDR_BYTES + 1), GOOD)
    with pytest.raises(InputError, match="too large"):
        read_cfl(big)
    (tmp_path / "dir.hdr").mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        read_cfl(tmp_path / "dir")
    with pytest.raises(InputError, match="not a BART file name"):
        read_cfl(".cfl")


def test_failed_data_write_leaves_nothing(tmp_path, monkeypatch):
    def full(fh, array):
        fh.write(b"\0" * 16)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cflmod, "_write_data", full)
    with pytest.raises(InputError, match="no space left") as info:
        write_cfl(tmp_path / "out" / "k", _rand((4, 4)))
    assert "\n" not in str(info.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_failed_header_rename_removes_the_new_data_file(tmp_path, monkeypatch):
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".hdr"):
            raise OSError(errno.EACCES, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(InputError, match="cannot write output"):
        write_cfl(tmp_path / "k", _rand((4, 4)))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_nothing_and_keeps_an_older_pair(tmp_path, monkeypatch):
    old = _rand((2, 2), seed=1)
    write_cfl(tmp_path / "k", old)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def interrupted(fh, array):
        raise KeyboardInterrupt

    monkeypatch.setattr(cflmod, "_write_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_cfl(tmp_path / "k", _rand((5, 5)))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_write_refuses_unsupported_arrays_and_overwriting_an_input(tmp_path):
    with pytest.raises(InputError, match="at most 16"):
        write_cfl(tmp_path / "k", np.zeros((1,) * 17, np.complex64))
    with pytest.raises(InputError, match="positive dims"):
        write_cfl(tmp_path / "k", np.zeros((0, 3), np.complex64))
    with pytest.raises(InputError, match="numeric"):
        write_cfl(tmp_path / "k", np.array(["a"]))
    src = tmp_path / "in.cfl"
    src.write_bytes(b"keep")
    with atomic.protected_inputs([src]):
        with pytest.raises(InputError, match="overwrite an input"):
            write_cfl(tmp_path / "in", _rand((2,)))
    assert src.read_bytes() == b"keep" and not (tmp_path / "in.hdr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.cfl"]


def test_kspace_axes_bart_to_fastmri():
    h, w, s, c = 6, 5, 3, 2
    bart = np.empty((h, w, s, c), np.complex64)
    for x, y, z, k in np.ndindex(bart.shape):
        bart[x, y, z, k] = x + 10 * y + 100 * z + 1000 * k + 1j * (x - y)
    ks = kspace_from_cfl(bart)
    assert ks.shape == (s, c, h, w) and ks.dtype == np.complex64 and ks.flags.c_contiguous
    for z, k, x, y in np.ndindex(ks.shape):  # rows = readout (BART dim 0), columns = phase (dim 1)
        assert ks[z, k, x, y] == x + 10 * y + 100 * z + 1000 * k + 1j * (x - y)
    np.testing.assert_array_equal(kspace_to_cfl(ks), bart)
    # trailing singleton BART dims (16 of them, or dropped by read_cfl) are fine
    np.testing.assert_array_equal(kspace_from_cfl(bart.reshape(bart.shape + (1,) * 12)), ks)
    assert kspace_from_cfl(bart[:, :, 0, 0]).shape == (1, 1, h, w)
    # single-coil fastMRI k-space (slices, H, W) exports with one coil
    assert kspace_to_cfl(ks[:, 0]).shape == (h, w, s, 1)


def test_kspace_roundtrip_through_files(tmp_path):
    ks = _rand((3, 4, 16, 12), seed=2)  # fastMRI (slices, coils, H, W)
    write_cfl(tmp_path / "ksp", kspace_to_cfl(ks))
    assert read_cfl_header(tmp_path / "ksp")[:4] == (16, 12, 3, 4)
    np.testing.assert_array_equal(kspace_from_cfl(read_cfl(tmp_path / "ksp"), tmp_path / "ksp"), ks)


def test_kspace_conversion_refuses_extra_dims_and_real_data():
    with pytest.raises(InputError, match=r"f\.cfl: BART k-space .* only dims 0-3"):
        kspace_from_cfl(np.zeros((4, 4, 1, 2, 2), np.complex64), "f.cfl")  # two sets of ESPIRiT maps
    with pytest.raises(InputError, match="must be complex"):
        kspace_from_cfl(np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match="must be"):
        kspace_to_cfl(np.zeros((4, 4), np.complex64))
