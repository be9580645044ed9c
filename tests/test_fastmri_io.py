import h5py
import numpy as np
import pytest
import torch

from mri_score.errors import InputError
from mri_score.fastmri_io import (
    build_ismrmrd_header,
    center_crop,
    infer_mask,
    parse_ismrmrd_header,
    read_fastmri,
    recon_crop_size,
    save_reconstruction,
)
from mri_score.metrics import aggregate, nmse, psnr, ssim, volume_metrics


def write(path, kspace, header=True, mask=None, target=None, enc=None, recon=None, center=None, maximum=None):
    h, w = kspace.shape[-2:]
    with h5py.File(path, "w") as hf:
        hf["kspace"] = kspace
        if header:
            hf["ismrmrd_header"] = np.bytes_(build_ismrmrd_header(enc or (h, w, 1), recon or (h, w, 1),
                                                                center=center, maximum=maximum))
        if mask is not None:
            hf["mask"] = mask
        if target is not None:
            hf["reconstruction_rss"] = target
        hf.attrs["acquisition"] = "CORPD_FBK"
        hf.attrs["max"] = 1.0
    return path


def ksp(s=2, c=3, h=32, w=24, seed=0):
    rng = np.random.default_rng(seed)
    shape = (s, c, h, w) if c else (s, h, w)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def test_multicoil_with_header_padding(tmp_path):
    k = ksp(w=40)
    # encoded y = 40, centre 18, maximum 33 -> padding_left = 2, padding_right = 36
    p = write(tmp_path / "a.h5", k, enc=(32, 40, 1), recon=(16, 16, 1), center=18, maximum=33)
    vol = read_fastmri(p)
    assert vol.kspace.shape == (2, 3, 32, 40) and vol.kspace.dtype == np.complex64
    assert vol.encoded_size == (32, 40, 1) and vol.recon_size == (16, 16, 1)
    assert (vol.padding_left, vol.padding_right) == (2, 36)
    assert vol.attrs["acquisition"] == "CORPD_FBK"
    assert not vol.single_coil and vol.mask is None and not vol.is_undersampled


def test_singlecoil_and_mask_dataset(tmp_path):
    k = ksp(c=0)
    mask = np.zeros(24, dtype=np.float32)
    mask[::2] = 1
    p = write(tmp_path / "b.h5", k * mask, mask=mask)
    vol = read_fastmri(p)
    assert vol.single_coil and vol.kspace.shape == (2, 1, 32, 24)
    assert np.array_equal(vol.sampling_mask, mask) and vol.is_undersampled


def test_mask_inferred_from_zero_columns(tmp_path):
    k = ksp()
    k[..., 1::3] = 0
    path = write(tmp_path / "c.h5", k, header=False)
    with pytest.raises(InputError, match="no 'ismrmrd_header'"):
        read_fastmri(path)
    vol = read_fastmri(path, require_header=False)
    assert vol.recon_size == (32, 24, 1)
    expected = np.ones(24, dtype=np.float32)
    expected[1::3] = 0
    assert np.array_equal(vol.sampling_mask, expected)
    assert np.array_equal(infer_mask(k), expected)


def test_recon_crop_matches_fastmri_fallback():
    assert recon_crop_size((640, 368), (320, 320, 1)) == (320, 320)
    # brain files narrower than the recon size fall back to a square of the image height
    assert recon_crop_size((260, 260), (320, 320, 1)) == (260, 260)
    x = np.arange(6 * 8).reshape(6, 8)
    assert np.array_equal(center_crop(x, (2, 4)), x[2:4, 2:6])
    assert torch.equal(center_crop(torch.as_tensor(x), (2, 4)), torch.as_tensor(x[2:4, 2:6]))


def test_header_parse_errors():
    with pytest.raises(InputError, match="not valid XML"):
        parse_ismrmrd_header(b"<ismrmrdHeader", "f.h5")
    with pytest.raises(InputError, match="lacks"):
        parse_ismrmrd_header(b"<a/>", "f.h5")


@pytest.mark.parametrize(
    "case,message",
    [
        ("real", "must be complex"),
        ("rank", "must have shape"),
        ("nan", "NaN or Inf"),
        ("zeros", "all zeros"),
        ("mask_len", "mask length"),
        ("no_kspace", "no 'kspace'"),
        ("garbage", "not a readable HDF5"),
        ("empty", "not a readable HDF5"),
    ],
)
def test_bad_files_raise_input_error_naming_the_file(tmp_path, case, message):
    p = tmp_path / f"{case}.h5"
    k = ksp()
    if case == "real":
        write(p, k.real)
    elif case == "rank":
        write(p, k[0, 0], header=False)
    elif case == "nan":
        k[0, 0, 0, 0] = np.nan
        write(p, k)
    elif case == "zeros":
        write(p, np.zeros_like(k))
    elif case == "mask_len":
        write(p, k, mask=np.ones(23, dtype=np.float32))
    elif case == "no_kspace":
        with h5py.File(p, "w") as hf:
            hf["x"] = 1
    elif case == "garbage":
        p.write_bytes(b"this is not hdf5" * 10)
    elif case == "empty":
        p.write_bytes(b"")
    with pytest.raises(InputError, match=message) as info:
        read_fastmri(p)
    assert str(p) in str(info.value)


def test_save_reconstruction_layout_and_atomicity(tmp_path):
    rec = np.random.default_rng(0).random((3, 16, 16))
    out = save_reconstruction(tmp_path, "file1.h5", rec, {"reconstruction_std": rec * 0}, {"sampler": "dds"})
    with h5py.File(out) as hf:
        assert hf["reconstruction"].dtype == np.float32 and hf["reconstruction"].shape == (3, 16, 16)
        assert hf.attrs["sampler"] == "dds"
    assert [p.name for p in tmp_path.iterdir()] == ["file1.h5"]  # no temporary left behind


def test_metrics_equal_direct_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(1)
    gt = rng.random((3, 32, 32))
    pred = gt + 0.05 * rng.standard_normal(gt.shape)
    assert np.isclose(psnr(gt, pred), peak_signal_noise_ratio(gt, pred, data_range=gt.max()))
    direct = np.mean([structural_similarity(gt[i], pred[i], data_range=gt.max()) for i in range(3)])
    assert np.isclose(ssim(gt, pred), direct)
    assert np.isclose(nmse(gt, pred), np.sum((gt - pred) ** 2) / np.sum(gt**2))
    m = volume_metrics(gt, pred)
    agg = aggregate([m, volume_metrics(gt, gt + 0.1 * rng.standard_normal(gt.shape))])
    assert agg["PSNR"][0] < m["PSNR"] and agg["PSNR"][1] > 0
