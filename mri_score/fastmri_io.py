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

from mri_score import limits
from mri_score.atomic import atomic_output
from mri_score.errors import InputError

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
#: Refuse volumes whose k-space would need more than this many bytes in memory.
MAX_KSPACE_BYTES = 8 * 1024**3
#: Other datasets: a mask or target is refused beyond this many bytes, a header beyond 16 MiB.
MAX_ARRAY_BYTES = 2 * 1024**3
MAX_HEADER_BYTES = 16 * 1024**2
#: Working copies of a dataset while it is read and checked (the read, a converted copy, |x| and isfinite).
READ_COPIES = 3
#: The accepted k-space layouts (multi-coil, single-coil).
KSPACE_SHAPES = "(slices, coils, H, W) or (slices, H, W)"
#: Soft links followed at most this many times (a loop is refused).
MAX_LINK_HOPS = 16
#: Header numbers beyond this magnitude are refused (matrix sizes, limits, fields of view).
MAX_HEADER_VALUE = 1e6
#: Attributes read from an input file and the types they must have (others are not read).
NUMERIC_ATTRS = ("acceleration", "num_low_frequency", "max", "norm")
TEXT_ATTRS = ("acquisition", "patient_id")


#: The project's dataset of the noise-free anatomy ``|x|`` in simulated files (fastMRI's tools ignore it).
TRUTH_KEY = "truth"

def resolve(hf: Any, key: str, path: Path) -> Any:
    """The object ``key`` names in an open HDF5 file, following soft links one component at a time.

    Returns None when ``key`` is absent.  External links (anywhere on the way) are refused: an
    input file must not make the tool open other files.  Dangling and looping soft links are
    one :class:`InputError` naming the file and the key.
    """
    import h5py

    parts = [p for p in key.split("/") if p and p != "."]
    node, hops, followed = hf, 0, False
    while parts:
        comp = parts.pop(0)
        if not isinstance(node, h5py.Group):
            raise InputError(f"{path}: '{key}' passes through {node.name}, which is not a group")
        try:
            link = node.get(comp, getlink=True)
        except (KeyError, ValueError, RuntimeError, OSError) as err:
            raise InputError(f"{path}: '{key}' cannot be resolved ({str(err).splitlines()[0]})") from None
        if link is None:
            if followed:
                raise InputError(f"{path}: '{key}' is a dangling soft link (its target does not exist)")
            return None
        if isinstance(link, h5py.ExternalLink):
            raise InputError(f"{path}: '{key}' is an external link to {link.filename}:{link.path}; external links "
                             "are refused (an input file must not make the tool open other files)")
        if isinstance(link, h5py.SoftLink):
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise InputError(f"{path}: '{key}' is a soft link that loops (more than {MAX_LINK_HOPS} hops)")
            target = link.path
            if target.startswith("/"):
                node = hf
            parts = [p for p in target.split("/") if p and p != "."] + parts
            followed = True
            continue
        try:
            node = node[comp]
        except (KeyError, ValueError, RuntimeError, OSError) as err:
            raise InputError(f"{path}: '{key}' cannot be opened ({str(err).splitlines()[0]})") from None
    return node


def dataset(hf: Any, key: str, path: Path, kinds: str, ndims: tuple[int, ...], max_bytes: int,
            what: str | None = None, shape_rule: str | None = None, read_fraction: float = 1.0) -> Any:
    """The dataset ``key`` of an open file, checked before any element is read; None when absent.

    Refused in one :class:`InputError` naming the file and the key: a group, a link that is
    external, dangling or looping (:func:`resolve`), a virtual dataset or one stored in
    external files, a dtype whose kind is not in ``kinds`` (NumPy kind letters; compound and
    other structured types always refused), a rank not in ``ndims``, and a size beyond
    ``max_bytes`` or beyond the memory available for reading it (:func:`mri_score.limits.check_fits`).
    ``what`` names the dataset in messages and ``shape_rule`` describes the accepted shapes;
    ``read_fraction`` is the part of it held in memory at once (a reader that streams slices).
    """
    import h5py

    what = what or key
    obj = resolve(hf, key, path)
    if obj is None:
        return None
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"{path}: '{key}' is a {type(obj).__name__.lower()}, not a dataset")
    if obj.is_virtual:
        raise InputError(f"{path}: '{key}' is a virtual dataset; refused (it would make the tool read other files)")
    if obj.external:
        raise InputError(f"{path}: '{key}' is stored in external files; refused")
    dt = obj.dtype
    if dt.names is not None or dt.subdtype is not None or dt.kind not in kinds:
        raise InputError(f"{path}: {what} must be {_KIND_NAMES[kinds]}, got dtype {dt}")
    shape = obj.shape
    if shape is None or len(shape) not in ndims:
        rule = shape_rule or f"{' or '.join(str(n) for n in ndims)} dimensions"
        raise InputError(f"{path}: {what} must have shape {rule}, got {shape}")
    nbytes = float(np.prod(shape, dtype=np.float64)) * max(dt.itemsize, 1)
    if nbytes > max_bytes:
        raise InputError(f"{path}: {what} of shape {shape} ({dt}) is too large to load ({max_bytes} bytes max)")
    limits.check_fits(nbytes * read_fraction * READ_COPIES, f"{path}: {what} of shape {shape}")
    return obj


_KIND_NAMES = {"c": "complex", "fiu": "real", "fiub": "real or boolean", "SOU": "text"}


def read_array(dset: Any, path: Path, what: str) -> np.ndarray:
    """``dset[()]`` with read failures (corrupt chunks, missing filters) as one :class:`InputError`."""
    try:
        return np.asarray(dset[()])
    except (OSError, TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{path}: {what} cannot be read ({str(err).splitlines()[0]})") from None


def read_attrs(hf: Any, path: Path) -> dict[str, Any]:
    """The file attributes this project uses, type-checked: numbers finite real scalars, text scalars.

    Only :data:`NUMERIC_ATTRS` and :data:`TEXT_ATTRS` are read (after their size is checked);
    a wrong type (``acceleration`` as text or as an array, NaN) is one :class:`InputError`.
    """
    out: dict[str, Any] = {}
    for name in (*NUMERIC_ATTRS, *TEXT_ATTRS):
        if name not in hf.attrs:
            continue
        try:
            aid = hf.attrs.get_id(name)
            if aid.get_storage_size() > 65536:
                raise InputError(f"{path}: attribute {name!r} is too large ({aid.get_storage_size()} bytes)")
            value = hf.attrs[name]
        except (OSError, TypeError, ValueError, RuntimeError, KeyError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"{path}: attribute {name!r} cannot be read ({str(err).splitlines()[0]})") from None
        arr = np.asarray(value)
        if name in TEXT_ATTRS:
            if arr.shape != () or not isinstance(value, str | bytes):
                raise InputError(f"{path}: attribute {name!r} must be text, got {type(value).__name__} {arr.shape}")
            try:
                out[name] = value.decode() if isinstance(value, bytes) else value
            except UnicodeDecodeError:
                raise InputError(f"{path}: attribute {name!r} is not UTF-8 text") from None
            continue
        if arr.size != 1 or arr.dtype.kind not in "fiu":
            raise InputError(f"{path}: attribute {name!r} must be a number, got {_short(value)}")
        number = float(arr.reshape(()))
        if not np.isfinite(number):
            raise InputError(f"{path}: attribute {name!r} must be finite, got {number}")
        if name == "acceleration" and not 1.0 <= number <= 1e3:
            raise InputError(f"{path}: attribute 'acceleration' must be in [1, 1000], got {number:g}")
        out[name] = number
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def refuse_external_links(hf: Any, path: Path) -> None:
    """:class:`InputError` when a top-level link of the file is external (never followed here)."""
    import h5py

    try:
        names = list(hf.keys())
    except (OSError, RuntimeError, ValueError) as err:
        raise InputError(f"{path}: cannot list the file's contents ({str(err).splitlines()[0]})") from None
    for name in names[:10_000]:
        link = hf.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise InputError(f"{path}: '{name}' is an external link to {link.filename}:{link.path}; external "
                             "links are refused (an input file must not make the tool open other files)")


def open_input(path: str | os.PathLike[str]) -> Any:
    """An input HDF5 file opened read-only, with top-level external links refused; one line on failure."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    try:
        hf = h5py.File(path, "r")
    except (OSError, ValueError, RuntimeError) as err:
        raise InputError(f"{path}: not a readable HDF5 file ({str(err).splitlines()[0]})") from None
    try:
        refuse_external_links(hf, path)
    except InputError:
        hf.close()
        raise
    return hf


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
    truth : np.ndarray or None
        float32 ``(slices, h, w)``: the noise-free anatomy ``|x|`` where the file carries it (simulated data, the
        project's ``truth`` dataset; a scanner-like MRD file's noise-free reference), the like-for-like target of
        the default ``sense`` output.  fastMRI's own files have none.
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
    truth: np.ndarray | None = None

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
    raw = xml.encode() if isinstance(xml, str) else bytes(xml)
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise InputError(f"{path}: ismrmrd_header declares a DTD or entities; refused (ISMRMRD headers have none)")
    try:
        root = ET.fromstring(raw)
        ns = {"ism": ISMRMRD_NS}

        def q(*names: str) -> int:
            node = root.find("/".join(f"ism:{n}" for n in names), ns)
            if node is None or node.text is None:
                raise InputError(f"{path}: ismrmrd_header lacks {'/'.join(names)}")
            try:
                value = float(node.text)
            except ValueError:
                raise InputError(f"{path}: ismrmrd_header {'/'.join(names)} is not a number: "
                                 f"{_short(node.text.strip())}") from None
            if not abs(value) <= MAX_HEADER_VALUE:  # NaN, Inf (1e400) and absurd sizes
                raise InputError(f"{path}: ismrmrd_header {'/'.join(names)} must be a finite number of magnitude "
                                 f"<= {MAX_HEADER_VALUE:g}, got {_short(node.text.strip())}")
            return int(value)

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
    peak = float(np.abs(ks).max())
    if not peak > 0:
        raise InputError(f"{path}: kspace is all zeros")
    # the energy of one slice must stay finite in float32 (FFTs, coil maps and norms are computed in it)
    limit = float(np.sqrt(np.finfo(np.float32).max / max(int(np.prod(ks.shape[1:])), 1)))
    if not peak < limit:
        raise InputError(f"{path}: kspace values up to {peak:.3g} are too large (at most {limit:.3g} for this "
                         "matrix: its energy would overflow float32)")
    if peak < 1e-30:
        raise InputError(f"{path}: kspace values are at most {peak:.3g}, too small to scale (denormal)")


def read_header(hf: Any, path: Path, matrix: tuple[int, int], require_header: bool = True) -> dict[str, Any]:
    """Sizes and padding from an open file's ``ismrmrd_header``, checked against the k-space ``matrix`` ``(H, W)``.

    Without a header (and ``require_header=False``) the recon size is the matrix.
    Padding outside ``[0, W]`` falls back to no padding.
    """
    h, w = matrix
    header = dataset(hf, "ismrmrd_header", path, "SOU", (0, 1), MAX_HEADER_BYTES, "ismrmrd_header")
    if header is not None:
        if header.shape not in ((), (1,)):
            raise InputError(f"{path}: ismrmrd_header must be one string, got shape {header.shape}")
        if header.dtype.kind == "O":  # variable-length: its bytes are only known once read
            limits.check_fits(path.stat().st_size, f"{path}: ismrmrd_header")
        value = read_array(header, path, "ismrmrd_header").reshape(())[()]
        if isinstance(value, str):
            value = value.encode("utf-8", "replace")
        if not isinstance(value, bytes | np.bytes_):
            raise InputError(f"{path}: ismrmrd_header must be text, got {type(value).__name__}")
        meta = parse_ismrmrd_header(bytes(value), path)
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
    path = Path(path)
    with open_input(path) as hf:
        dset = dataset(hf, "kspace", path, "c", (3, 4), MAX_KSPACE_BYTES, "kspace", KSPACE_SHAPES)
        if dset is None:
            raise InputError(f"{path}: no 'kspace' dataset")
        ks = read_array(dset, path, "kspace")
        single_coil = ks.ndim == 3
        if single_coil:
            ks = ks[:, None]
        validate_kspace(ks, path)
        ks = ks.astype(np.complex64, copy=False)
        s, h, w = ks.shape[0], ks.shape[-2], ks.shape[-1]
        mask = None
        mset = dataset(hf, "mask", path, "fiub", (1, 2), MAX_ARRAY_BYTES, "mask", "(W,) or (H, W)")
        if mset is not None:
            if mset.ndim == 1 and mset.shape[0] != w:
                raise InputError(f"{path}: mask length {mset.shape[0]} does not match k-space width {w}")
            if mset.ndim == 2 and mset.shape != (h, w):
                raise InputError(f"{path}: mask shape {mset.shape} does not match k-space {(h, w)}")
            mask = read_array(mset, path, "mask").astype(np.float32)
            if not np.isfinite(mask).all():
                raise InputError(f"{path}: mask contains NaN or Inf")
            if not mask.any():
                raise InputError(f"{path}: mask is all zeros")
        attrs = read_attrs(hf, path)
        meta = read_header(hf, path, (h, w), require_header)
        target = None
        if load_target:
            # fastmri.evaluate scores multi-coil files against reconstruction_rss, single-coil ones against
            # reconstruction_esc; the other key is the fallback when the preferred one is absent
            keys = ("reconstruction_esc", "reconstruction_rss") if single_coil else ("reconstruction_rss", "reconstruction_esc")
            for key in keys:
                tset = dataset(hf, key, path, "fiu", (3,), MAX_ARRAY_BYTES, key, "(slices, h, w)")
                if tset is None:
                    continue
                if tset.shape[0] != s or min(tset.shape) < 1 or max(tset.shape[1:]) > 4 * max(h, w):
                    raise InputError(f"{path}: {key} of shape {tset.shape} does not fit k-space of {s} slices "
                                     f"of {h}x{w}")
                target = read_array(tset, path, key).astype(np.float32)
                if not np.isfinite(target).all():
                    raise InputError(f"{path}: {key} contains NaN or Inf")
                break
        truth = None
        tset = dataset(hf, TRUTH_KEY, path, "fiu", (3,), MAX_ARRAY_BYTES, TRUTH_KEY, "(slices, h, w)") if load_target \
            else None
        if tset is not None:
            if tset.shape[0] != s or min(tset.shape) < 1 or max(tset.shape[1:]) > 4 * max(h, w):
                raise InputError(f"{path}: {TRUTH_KEY} of shape {tset.shape} does not fit k-space of {s} slices of {h}x{w}")
            truth = read_array(tset, path, TRUTH_KEY).astype(np.float32)
            if not np.isfinite(truth).all():
                raise InputError(f"{path}: {TRUTH_KEY} contains NaN or Inf")
    return FastMRIVolume(
        path=path,
        kspace=ks,
        mask=mask,
        target=target,
        attrs=attrs,
        single_coil=single_coil,
        truth=truth,
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
    """Write an HDF5 file atomically (:func:`mri_score.atomic.atomic_output`).

    The file is built in memory and then written with plain file I/O: a failing write (full
    disk, file-size limit) is then one ``OSError`` that the write guard reports, never an
    HDF5 library left holding a half-written file (which crashed the process at exit).
    """
    import io

    import h5py

    out_path = Path(out_path)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as hf:
        for key, value in datasets.items():
            hf.create_dataset(key, data=value)
        for key, value in attrs.items():
            hf.attrs[key] = value
    with atomic_output(out_path) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer.getbuffer())
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
    truth: np.ndarray | None = None,
    fov_mm: tuple[float, float, float] | None = None,
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
    truth : np.ndarray, optional
        float32 ``(slices, H, W)``: the noise-free anatomy ``|x|`` of simulated data, stored as the ``truth``
        dataset (:data:`TRUTH_KEY`; fastMRI's tools ignore it), so outputs are scored like for like.
    fov_mm : tuple of float, optional
        ``(x, y, z)`` field of view in mm written into the header (rows, columns, slice thickness); the header's
        default (256, 256, 5) when None.

    Returns
    -------
    Path
        ``path``.
    """
    h, w = kspace.shape[-2:]
    datasets: dict[str, np.ndarray | bytes] = {
        "ismrmrd_header": np.bytes_(build_ismrmrd_header((h, w, 1), (h, w, 1)) if fov_mm is None else
                                    build_ismrmrd_header((h, w, 1), (h, w, 1), tuple(float(v) for v in fov_mm))),
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
    if truth is not None:
        datasets[TRUTH_KEY] = np.asarray(truth, dtype=np.float32)
    return atomic_h5_write(path, datasets, attrs)
