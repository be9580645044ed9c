"""Reading and writing fastMRI HDF5 files.

Layout (fastMRI, https://fastmri.org/dataset): ``kspace`` complex64
``(slices, coils, H, W)`` (single-coil: ``(slices, H, W)``), optional ``mask``
float ``(W,)``, ``ismrmrd_header`` XML, optional targets ``reconstruction_rss`` /
``reconstruction_esc`` ``(slices, h, w)`` and attrs ``acquisition``, ``max``,
``norm``, ``patient_id``, ``acceleration``, ``num_low_frequency``.
Inputs are opened read-only; outputs are written atomically.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mri_score.atomic import atomic_output
from mri_score.errors import InputError

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
#: Refuse volumes whose k-space would need more than this many bytes in memory.
MAX_KSPACE_BYTES = 8 * 1024**3


@dataclass
class FastMRIVolume:
    """One fastMRI file in memory.

    Attributes
    ----------
    path : Path
    kspace : np.ndarray
        complex64 ``(slices, coils, H, W)``; single-coil files get ``coils = 1``.
    mask : np.ndarray or None
        float32 ``(W,)`` or ``(H, W)`` from the ``mask`` dataset (None if absent).
    target : np.ndarray or None
        float32 ``(slices, h, w)``: ``reconstruction_rss`` (multi-coil) or ``reconstruction_esc``
        (single-coil), the key ``fastmri.evaluate`` scores against; the other key when that one is absent.
    encoded_size, recon_size : tuple of int
        ``(x, y, z)`` matrix sizes from the header (x = readout = H).
    padding_left, padding_right : int
        Acquired phase-encode columns are ``[padding_left, padding_right)``.
    attrs : dict
        The file's HDF5 attributes.
    single_coil : bool
    encoded_fov_mm : tuple of float or None
        ``(x, y, z)`` field of view of the encoded space in mm (header ``fieldOfView_mm``; None if absent).
    """

    path: Path
    kspace: np.ndarray
    mask: np.ndarray | None
    target: np.ndarray | None
    encoded_size: tuple[int, int, int]
    recon_size: tuple[int, int, int]
    padding_left: int
    padding_right: int
    attrs: dict[str, Any] = field(default_factory=dict)
    single_coil: bool = False
    encoded_fov_mm: tuple[float, float, float] | None = None

    @property
    def pixel_mm(self) -> tuple[float, float] | None:
        """In-plane pixel size ``(x, y)`` in mm of the k-space grid: encoded field of view / encoded matrix."""
        fov, size = self.encoded_fov_mm, self.encoded_size
        if fov is None or min(fov[:2]) <= 0 or min(size[:2]) < 1:
            return None
        return fov[0] / size[0], fov[1] / size[1]

    @property
    def sampling_mask(self) -> np.ndarray:
        """The mask to use: the file's ``mask``, else inferred from zero columns; float32 ``(W,)`` or ``(H, W)``."""
        if self.mask is not None:
            return self.mask
        return infer_mask(self.kspace)

    @property
    def is_undersampled(self) -> bool:
        """True for test-split style files (mask present, or zero-filled columns inside the encoded range)."""
        m = self.sampling_mask
        if m.ndim == 1:
            m = m[self.padding_left : self.padding_right]
        return bool((m == 0).any())


def build_ismrmrd_header(
    encoded_size: tuple[int, int, int],
    recon_size: tuple[int, int, int],
    fov_mm: tuple[float, float, float] = (256.0, 256.0, 5.0),
    center: int | None = None,
    maximum: int | None = None,
) -> bytes:
    """A minimal valid ISMRMRD header XML with the fields fastMRI reads.

    ``encodingLimits/kspace_encoding_step_1`` defaults to the full encoded width
    (no padding): centre ``y // 2``, maximum ``y - 1``.
    """
    ey = encoded_size[1]
    center = ey // 2 if center is None else center
    maximum = ey - 1 if maximum is None else maximum

    def space(tag: str, size: tuple[int, int, int]) -> str:
        return (
            f"<{tag}><matrixSize><x>{size[0]}</x><y>{size[1]}</y><z>{size[2]}</z></matrixSize>"
            f"<fieldOfView_mm><x>{fov_mm[0]}</x><y>{fov_mm[1]}</y><z>{fov_mm[2]}</z></fieldOfView_mm></{tag}>"
        )

    xml = (
        f'<?xml version="1.0" encoding="utf-8"?><ismrmrdHeader xmlns="{ISMRMRD_NS}">'
        "<encoding>"
        + space("encodedSpace", encoded_size)
        + space("reconSpace", recon_size)
        + "<encodingLimits><kspace_encoding_step_1>"
        f"<minimum>0</minimum><maximum>{maximum}</maximum><center>{center}</center>"
        "</kspace_encoding_step_1></encodingLimits>"
        "<trajectory>cartesian</trajectory></encoding></ismrmrdHeader>"
    )
    return xml.encode()


def parse_ismrmrd_header(xml: bytes | str, path: Path | str = "") -> dict[str, Any]:
    """Encoded/recon sizes and padding from an ISMRMRD header, as fastMRI's ``_retrieve_metadata``.

    ``padding_left = enc_y // 2 - center``; ``padding_right = padding_left + maximum + 1``;
    ``encoded_fov_mm``: the encoded space's ``fieldOfView_mm`` ``(x, y, z)``, None when absent or garbled.
    """
    try:
        root = ET.fromstring(xml)
        ns = {"ism": ISMRMRD_NS}

        def q(*names: str) -> int:
            node = root.find("/".join(f"ism:{n}" for n in names), ns)
            if node is None or node.text is None:
                raise InputError(f"{path}: ismrmrd_header lacks {'/'.join(names)}")
            return int(float(node.text))

        enc = ("encoding", "encodedSpace", "matrixSize")
        rec = ("encoding", "reconSpace", "matrixSize")
        enc_size = (q(*enc, "x"), q(*enc, "y"), q(*enc, "z"))
        recon_size = (q(*rec, "x"), q(*rec, "y"), q(*rec, "z"))
        lims = ("encoding", "encodingLimits", "kspace_encoding_step_1")
        center = q(*lims, "center")
        maximum = q(*lims, "maximum") + 1
        fov_nodes = [root.find(f"ism:encoding/ism:encodedSpace/ism:fieldOfView_mm/ism:{a}", ns) for a in "xyz"]
        try:
            fov = tuple(float(n.text) for n in fov_nodes)  # type: ignore[union-attr, arg-type]
        except (AttributeError, TypeError, ValueError):
            fov = None
    except ET.ParseError as err:
        raise InputError(f"{path}: ismrmrd_header is not valid XML ({err})") from err
    padding_left = enc_size[1] // 2 - center
    padding_right = padding_left + maximum
    return {
        "encoded_size": enc_size,
        "recon_size": recon_size,
        "padding_left": padding_left,
        "padding_right": padding_right,
        "encoded_fov_mm": fov if fov is not None and all(np.isfinite(fov)) else None,
    }


def infer_mask(kspace: np.ndarray) -> np.ndarray:
    """Column mask float32 ``(W,)`` from k-space ``(..., H, W)``: 1 where any sample is non-zero."""
    axes = tuple(range(kspace.ndim - 1))
    return (np.abs(kspace).max(axis=axes) > 0).astype(np.float32)


def validate_kspace(ks: np.ndarray, path: Path) -> None:
    """:class:`InputError` unless ``ks`` is complex, ``(slices, coils, H, W)``, non-empty, finite and not all zero."""
    if not np.iscomplexobj(ks):
        raise InputError(f"{path}: kspace must be complex, got dtype {ks.dtype}")
    if ks.ndim != 4:
        raise InputError(f"{path}: kspace must have shape (slices, coils, H, W) or (slices, H, W), got {ks.shape}")
    if min(ks.shape) < 1:
        raise InputError(f"{path}: kspace has an empty dimension, shape {ks.shape}")
    if not np.isfinite(ks).all():
        raise InputError(f"{path}: kspace contains NaN or Inf")
    if not np.abs(ks).max() > 0:
        raise InputError(f"{path}: kspace is all zeros")


def read_header(hf: Any, path: Path, matrix: tuple[int, int], require_header: bool = True) -> dict[str, Any]:
    """Sizes and padding from an open file's ``ismrmrd_header``, checked against the k-space ``matrix`` ``(H, W)``.

    Without a header (and ``require_header=False``) the recon size is the matrix.
    Padding outside ``[0, W]`` falls back to no padding.
    """
    h, w = matrix
    if "ismrmrd_header" in hf:
        meta = parse_ismrmrd_header(bytes(np.asarray(hf["ismrmrd_header"][()]).tobytes()), path)
    elif require_header:
        raise InputError(f"{path}: no 'ismrmrd_header' (fastMRI files carry one; it gives the recon size)")
    else:
        meta = {"encoded_size": (h, w, 1), "recon_size": (h, w, 1), "padding_left": 0, "padding_right": w}
    rx, ry = meta["recon_size"][:2]
    if rx < 1 or ry < 1:
        raise InputError(f"{path}: recon size {meta['recon_size']} is not positive")
    if rx > h and ry > w:
        raise InputError(f"{path}: header recon size {(rx, ry)} is larger than the k-space matrix {(h, w)}")
    pl, pr = meta["padding_left"], meta["padding_right"]
    if not (0 <= pl < pr <= w):
        meta["padding_left"], meta["padding_right"] = 0, w
    return meta


def read_fastmri(path: str | os.PathLike[str], load_target: bool = True, require_header: bool = True) -> FastMRIVolume:
    """Read a fastMRI file (read-only) and validate it.

    Raises :class:`InputError` with a one-line message naming the file for
    anything unusable (unreadable HDF5, no/real/non-finite/all-zero k-space,
    wrong rank, bad mask, missing or garbled header, recon size larger than the
    image).  ``require_header=False`` accepts header-less files (the recon size
    is then the k-space matrix), as fastMRI's own reader does not.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        hf = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 file ({str(err).splitlines()[0]})") from err
    with hf:
        if "kspace" not in hf:
            raise InputError(f"{path}: no 'kspace' dataset")
        dset = hf["kspace"]
        if not isinstance(dset, h5py.Dataset):
            raise InputError(f"{path}: 'kspace' is not a dataset")
        shape = dset.shape
        if len(shape) not in (3, 4):
            raise InputError(f"{path}: kspace must have shape (slices, coils, H, W) or (slices, H, W), got {shape}")
        if int(np.prod(shape, dtype=np.float64)) * 8 > MAX_KSPACE_BYTES:
            raise InputError(f"{path}: kspace of shape {shape} is too large to load ({MAX_KSPACE_BYTES} bytes max)")
        try:
            ks = dset[()]
        except (OSError, TypeError, ValueError) as err:
            raise InputError(f"{path}: kspace cannot be read ({str(err).splitlines()[0]})") from err
        single_coil = ks.ndim == 3
        if single_coil:
            ks = ks[:, None]
        validate_kspace(ks, path)
        ks = ks.astype(np.complex64, copy=False)
        h, w = ks.shape[-2:]
        mask = None
        if "mask" in hf:
            mask = np.asarray(hf["mask"][()], dtype=np.float32)
            if mask.ndim == 1 and mask.shape[0] != w:
                raise InputError(f"{path}: mask length {mask.shape[0]} does not match k-space width {w}")
            if mask.ndim == 2 and mask.shape != (h, w):
                raise InputError(f"{path}: mask shape {mask.shape} does not match k-space {(h, w)}")
            if mask.ndim not in (1, 2):
                raise InputError(f"{path}: mask must be (W,) or (H, W), got shape {mask.shape}")
            if not mask.any():
                raise InputError(f"{path}: mask is all zeros")
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in hf.attrs.items()}
        meta = read_header(hf, path, (h, w), require_header)
        target = None
        if load_target:
            # fastmri.evaluate scores multi-coil files against reconstruction_rss, single-coil ones against
            # reconstruction_esc; the other key is the fallback when the preferred one is absent
            keys = ("reconstruction_esc", "reconstruction_rss") if single_coil else ("reconstruction_rss", "reconstruction_esc")
            for key in keys:
                if key in hf:
                    target = np.asarray(hf[key][()], dtype=np.float32)
                    break
    return FastMRIVolume(
        path=path,
        kspace=ks,
        mask=mask,
        target=target,
        attrs=attrs,
        single_coil=single_coil,
        **meta,
    )


def recon_crop_size(image_shape: tuple[int, int], recon_size: tuple[int, ...]) -> tuple[int, int]:
    """fastMRI's crop ``(h, w)`` of an image ``(H, W)``: the header's ``(x, y)`` recon size, or a
    ``W × W`` square when the image is narrower than the recon width (``W < y``), as fastMRI's
    ``UnetDataTransform``/``VarNetDataTransform`` do (their ``image.shape[-2]`` is the width of a
    ``(H, W, 2)`` complex image).  An image lower than the crop (``H < h``, where fastMRI's
    ``center_crop`` raises) keeps its full height: the crop never exceeds the image."""
    h, w = int(image_shape[-2]), int(image_shape[-1])
    crop = (int(recon_size[0]), int(recon_size[1]))
    if w < crop[1]:
        crop = (w, w)
    return min(crop[0], h), min(crop[1], w)


def center_crop(x: Any, shape: tuple[int, int]) -> Any:
    """Centre crop of the last two dims (fastMRI's ``center_crop``); works for numpy and torch."""
    h, w = x.shape[-2:]
    ch, cw = shape
    if not (0 < ch <= h and 0 < cw <= w):
        raise InputError(f"invalid crop {shape} for image of size {(h, w)}")
    h0 = (h - ch) // 2
    w0 = (w - cw) // 2
    return x[..., h0 : h0 + ch, w0 : w0 + cw]


def atomic_h5_write(out_path: str | os.PathLike[str], datasets: dict[str, Any], attrs: dict[str, Any]) -> Path:
    """Write an HDF5 file atomically (:func:`mri_score.atomic.atomic_output`)."""
    import h5py

    out_path = Path(out_path)
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as hf:
        for key, value in datasets.items():
            hf.create_dataset(key, data=value)
        for key, value in attrs.items():
            hf.attrs[key] = value
    return out_path


def save_reconstruction(
    out_dir: str | os.PathLike[str],
    fname: str,
    reconstruction: np.ndarray,
    extra: dict[str, Any] | None = None,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """fastMRI's ``save_reconstructions`` for one file: ``out_dir/fname`` with ``reconstruction``
    float32 ``(slices, H, W)`` plus optional extra datasets and attrs, written atomically."""
    recon = np.asarray(reconstruction, dtype=np.float32)
    if recon.ndim != 3:
        raise InputError(f"{fname}: reconstruction must be (slices, H, W), got {recon.shape}")
    data = {"reconstruction": recon}
    data.update(extra or {})
    return atomic_h5_write(Path(out_dir) / fname, data, attrs or {})


def write_fastmri_file(
    path: Path,
    kspace: np.ndarray,
    target: np.ndarray | None,
    acquisition: str,
    patient_id: str,
    mask: np.ndarray | None = None,
    acceleration: float | None = None,
    num_low: int | None = None,
) -> Path:
    """Write one fastMRI-layout file atomically: multi-coil, or single-coil for 3-D ``kspace``.

    Parameters
    ----------
    path : Path
        Output file (its directory is created).
    kspace : np.ndarray
        Fully sampled k-space, complex64 ``(slices, coils, H, W)``, or ``(slices, H, W)`` for
        fastMRI's single-coil layout.
    target : np.ndarray or None
        float32 ``(slices, H, W)`` (with ``max`` and ``norm`` attrs), or None; stored as
        ``reconstruction_rss`` (multi-coil) or ``reconstruction_esc`` (single-coil).
    acquisition, patient_id : str
        The file's ``acquisition`` and ``patient_id`` attrs.
    mask : np.ndarray, optional
        float32 ``(W,)`` or ``(H, W)``: when given the file looks like fastMRI's test split
        (masked ``kspace``, ``mask``, ``acceleration`` and ``num_low_frequency`` attrs).
    acceleration : float, optional
        The ``acceleration`` attr (with ``mask``).
    num_low : int, optional
        The ``num_low_frequency`` attr (with ``mask``).

    Returns
    -------
    Path
        ``path``.
    """
    h, w = kspace.shape[-2:]
    datasets: dict[str, np.ndarray | bytes] = {
        "ismrmrd_header": np.bytes_(build_ismrmrd_header((h, w, 1), (h, w, 1))),
    }
    attrs: dict[str, object] = {"acquisition": acquisition, "patient_id": patient_id}
    if mask is not None:
        datasets["kspace"] = (kspace * mask).astype(np.complex64)
        datasets["mask"] = mask.astype(np.float32)
        attrs["acceleration"] = acceleration
        attrs["num_low_frequency"] = num_low
    else:
        datasets["kspace"] = kspace
    if target is not None:
        datasets["reconstruction_esc" if kspace.ndim == 3 else "reconstruction_rss"] = target
        attrs["max"] = float(target.max())
        attrs["norm"] = float(np.linalg.norm(target))
    return atomic_h5_write(path, datasets, attrs)
