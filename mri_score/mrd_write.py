"""A scanner-like ISMRMRD/MRD writer: fastMRI-layout k-space -> raw data as a scanner would store it.

:func:`write_mrd` turns noise-free k-space (fastMRI layout, complex ``(slices, coils, H, W)``)
into an MRD file the way a Cartesian 2-D multi-slice scan records it: the readout oversampled
(``oversampling`` x H samples: the image zero-padded along the readout, a field of view
``oversampling`` times larger), complex Gaussian noise correlated between the coils added to
every readout, ``noise_scans`` noise-only acquisitions (``ACQ_IS_NOISE_MEASUREMENT``) first,
then one acquisition per acquired phase-encode line per slice (and per average), the centre
lines flagged as parallel-imaging calibration (embedded, ``..._CALIBRATION_AND_IMAGING``, or a
separate reference scan, ``ACQ_IS_PARALLEL_CALIBRATION``).  The layout is the ``ismrmrd``
package's (its acquisition dtype and header schema); the noise-free k-space is kept for
scoring in ``mri_score_reference/kspace`` (:data:`mri_score.mrd.REFERENCE_GROUP`).

Reading it back with :func:`mri_score.mrd.load_mrd` gives ``L^-1 (kspace + n)``, ``n`` the
noise (covariance ``noise_covariance`` per complex sample after oversampling removal) and ``L``
the Cholesky factor of the covariance estimated from the noise acquisitions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mri_score.errors import InputError
from mri_score.fastmri_io import atomic_h5_write
from mri_score.mrd import DEFAULT_GROUP, MAX_CHANNELS, REFERENCE_GROUP, fft1c, flag_bit, ismrmrd_module

#: ``acs_mode`` values: ACS lines flagged within the imaging lines, or acquired again as a separate reference scan.
ACS_MODES = ("embedded", "separate")
#: The acquisition header's sample and line counters are uint16.
MAX_COUNTER = 65535


def scanner_noise_covariance(coils: int, seed: int = 0, correlation: float = 0.3) -> np.ndarray:
    """A receive-array-like noise covariance: complex128 ``(coils, coils)``, Hermitian positive definite.

    Channel noise levels spread over a factor of about 4 (mean variance 1); neighbouring channels
    (ring order) are correlated by about ``correlation`` with a random phase, others less
    (decaying with the ring distance).
    """
    if coils < 1:
        raise InputError(f"coils must be >= 1, got {coils}")
    if not 0.0 <= correlation < 1.0:
        raise InputError(f"correlation must be in [0, 1), got {correlation}")
    rng = np.random.default_rng(seed)
    d = np.abs(np.arange(coils)[:, None] - np.arange(coils)[None, :])
    ring = np.minimum(d, coils - d)
    phase = np.exp(1j * rng.uniform(-np.pi, np.pi, (coils, coils)))
    phase = np.triu(phase, 1)
    corr = np.where(ring > 0, correlation ** ring.astype(float), 0.0) * (phase + phase.conj().T) + np.eye(coils)
    # make it safely positive definite whatever the ring correlations add up to
    low = float(np.linalg.eigvalsh(corr).min())
    if low < 0.2:
        corr = (corr + (0.2 - low) * np.eye(coils)) / (1.0 + 0.2 - low)
    std = np.exp(rng.uniform(-np.log(2.0), np.log(2.0), coils))
    std /= np.sqrt(np.mean(std**2))
    return (std[:, None] * corr * std[None, :]).astype(np.complex128)


def _check_covariance(cov: np.ndarray, coils: int) -> np.ndarray:
    cov = np.asarray(cov, dtype=np.complex128)
    if cov.shape != (coils, coils):
        raise InputError(f"noise_covariance must be ({coils}, {coils}), got {cov.shape}")
    if not np.isfinite(cov).all() or not np.allclose(cov, cov.conj().T, atol=1e-10 * float(np.abs(cov).max())):
        raise InputError("noise_covariance must be finite and Hermitian")
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise InputError("noise_covariance must be positive definite") from None
    return cov


def _header_xml(shape: tuple[int, int, int, int], enc_x: int, recon_y: int, fov_mm: tuple[float, float, float],
                averages: int, protocol_name: str, patient_id: str) -> bytes:
    xsd = ismrmrd_module().xsd
    s, c, h, w = shape

    def space(size: tuple[int, int, int], fov: tuple[float, float, float]) -> object:
        return xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=size[0], y=size[1], z=size[2]),
                                     fieldOfView_mm=xsd.fieldOfViewMm(x=fov[0], y=fov[1], z=fov[2]))

    fx, fy, fz = (float(v) for v in fov_mm)
    encoding = xsd.encodingType(
        encodedSpace=space((enc_x, w, 1), (fx * enc_x / h, fy, fz)),
        reconSpace=space((h, recon_y, 1), (fx, fy * recon_y / w, fz)),
        encodingLimits=xsd.encodingLimitsType(
            kspace_encoding_step_0=xsd.limitType(minimum=0, maximum=enc_x - 1, center=enc_x // 2),
            kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=w - 1, center=w // 2),
            kspace_encoding_step_2=xsd.limitType(minimum=0, maximum=0, center=0),
            slice=xsd.limitType(minimum=0, maximum=s - 1, center=0),
            average=xsd.limitType(minimum=0, maximum=averages - 1, center=0),
            contrast=xsd.limitType(minimum=0, maximum=0, center=0),
            phase=xsd.limitType(minimum=0, maximum=0, center=0),
            repetition=xsd.limitType(minimum=0, maximum=0, center=0),
            set=xsd.limitType(minimum=0, maximum=0, center=0),
            segment=xsd.limitType(minimum=0, maximum=0, center=0),
        ),
        trajectory=xsd.trajectoryType.CARTESIAN,
    )
    header = xsd.ismrmrdHeader(
        version=1,
        subjectInformation=xsd.subjectInformationType(patientID=patient_id),
        measurementInformation=xsd.measurementInformationType(protocolName=protocol_name,
                                                              patientPosition=xsd.patientPositionType.HFS),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(systemVendor="mri-score",
                                                                          systemModel="simulated",
                                                                          systemFieldStrength_T=3.0,
                                                                          receiverChannels=c),
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127_700_000),
        encoding=[encoding],
    )
    return xsd.ToXML(header, encoding="utf-8").encode("utf-8")


def _oversample(kspace: np.ndarray, factor: int) -> np.ndarray:
    """``(S, C, H, W)`` -> ``(S, C, factor*H, W)``: the readout image zero-padded (offset ``(n - H) // 2``)."""
    h = kspace.shape[2]
    n = factor * h
    image = fft1c(np.moveaxis(kspace, 2, -1), inverse=True)
    padded = np.zeros(image.shape[:-1] + (n,), dtype=np.complex128)
    start = (n - h) // 2
    padded[..., start : start + h] = image
    return np.moveaxis(fft1c(padded), -1, 2)


def write_mrd(
    path: str | os.PathLike[str],
    kspace: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    acs_lines: int = 8,
    acs_mode: str = "embedded",
    oversampling: int = 2,
    snr: float = 50.0,
    noise_covariance: np.ndarray | None = None,
    noise_scans: int = 8,
    noise_samples: int | None = None,
    dwell_us: float = 5.0,
    noise_dwell_us: float | None = None,
    averages: int = 1,
    recon_y: int | None = None,
    fov_mm: tuple[float, float, float] = (220.0, 220.0, 5.0),
    keep_reference: bool = True,
    protocol_name: str = "MRI_SCORE_SIM",
    patient_id: str = "sim",
    seed: int = 0,
) -> Path:
    """Write noise-free fastMRI-layout ``kspace`` as a scanner-like MRD file (atomically).

    Parameters
    ----------
    path : path-like
        Output file (:func:`mri_score.atomic.atomic_output`: complete or absent; an input is never replaced).
    kspace : np.ndarray
        complex ``(slices, coils, H, W)``: noise-free k-space, rows = readout (H = recon readout
        matrix), columns = phase encode (W = encoded phase matrix), centred orthonormal FFT.
    mask : np.ndarray, optional
        ``(W,)``, non-zero where a phase-encode line is acquired (default: all).  With
        ``acs_mode="embedded"`` the ACS lines are acquired whatever the mask says.
    acs_lines : int
        Centre lines flagged as parallel calibration (columns ``W//2 - acs_lines//2`` onwards; 0: none).
    acs_mode : str
        ``"embedded"`` (flag ``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING`` on imaging lines) or
        ``"separate"`` (extra ``ACQ_IS_PARALLEL_CALIBRATION`` acquisitions before each slice's lines).
    oversampling : int
        Readout oversampling factor: readouts have ``oversampling * H`` samples (encoded field of view
        ``oversampling`` times the recon one).
    snr : float
        Noise level when ``noise_covariance`` is None: the covariance is
        :func:`scanner_noise_covariance` scaled to a mean variance of ``(p99 / snr)**2`` per complex
        sample, p99 the 99th percentile of the RSS coil-image magnitude.
    noise_covariance : np.ndarray, optional
        complex ``(coils, coils)`` Hermitian positive definite: the noise covariance per complex sample
        at the imaging dwell time (also after oversampling removal).
    noise_scans : int
        Noise-only acquisitions written first (0: none; the reader then cannot whiten).
    noise_samples : int, optional
        Samples per noise acquisition (default: the oversampled readout length).
    dwell_us, noise_dwell_us : float
        Dwell times in microseconds of the imaging readouts and of the noise acquisitions (default the
        same); the noise acquisitions' variance is scaled by ``dwell_us / noise_dwell_us``.
    averages : int
        Each line is acquired this many times (``idx.average``), each with its own noise.
    recon_y : int, optional
        Recon phase-encode matrix (default ``W``).
    fov_mm : tuple of float
        Recon field of view ``(x, y, z)`` in mm (``y`` of the encoded phase matrix W; z = slice thickness).
    keep_reference : bool
        Keep the noise-free ``kspace`` (complex64) in ``mri_score_reference/kspace`` for scoring.
    protocol_name, patient_id : str
        Header ``measurementInformation/protocolName`` and ``subjectInformation/patientID``.
    seed : int
        Seeds the noise (and the default covariance).

    Returns
    -------
    Path
        ``path``.
    """
    ismrmrd = ismrmrd_module(path)
    ks = np.asarray(kspace)
    if not np.iscomplexobj(ks) or ks.ndim != 4 or min(ks.shape) < 1 or not np.isfinite(ks).all():
        raise InputError(f"kspace must be finite complex (slices, coils, H, W), got {ks.dtype} {ks.shape}")
    s, c, h, w = ks.shape
    if acs_mode not in ACS_MODES:
        raise InputError(f"acs_mode must be one of {', '.join(ACS_MODES)}, got {acs_mode!r}")
    if not (isinstance(oversampling, int | np.integer) and 1 <= oversampling and oversampling * h <= MAX_COUNTER):
        raise InputError(f"oversampling must be an integer >= 1 with oversampling * H <= {MAX_COUNTER}, got {oversampling}")
    if c > MAX_CHANNELS or w > MAX_COUNTER or s > MAX_COUNTER:
        raise InputError(f"kspace {ks.shape} exceeds the MRD counters ({MAX_CHANNELS} coils, {MAX_COUNTER} lines)")
    if not 0 <= acs_lines <= w or not 1 <= averages <= MAX_COUNTER or not 0 <= noise_scans <= 100_000:
        raise InputError(f"acs_lines must be in [0, {w}], averages >= 1 and noise_scans >= 0")
    recon_y = w if recon_y is None else int(recon_y)
    if not 1 <= recon_y <= MAX_COUNTER:
        raise InputError(f"recon_y must be in [1, {MAX_COUNTER}], got {recon_y}")
    acquired = np.ones(w, dtype=bool) if mask is None else np.asarray(mask).reshape(-1) != 0
    if acquired.shape != (w,):
        raise InputError(f"mask must have {w} entries, got {np.asarray(mask).shape}")
    acs = np.zeros(w, dtype=bool)
    acs[w // 2 - acs_lines // 2 : w // 2 - acs_lines // 2 + acs_lines] = True
    if acs_mode == "embedded":
        acquired |= acs
    if not acquired.any():
        raise InputError("mask acquires no line")
    n = oversampling * h
    noise_samples = n if noise_samples is None else int(noise_samples)
    noise_dwell_us = dwell_us if noise_dwell_us is None else float(noise_dwell_us)
    if not (dwell_us > 0 and noise_dwell_us > 0 and 1 <= noise_samples <= MAX_COUNTER):
        raise InputError("dwell times must be > 0 and noise_samples in [1, 65535]")

    rng = np.random.default_rng(seed)
    if noise_covariance is None:
        if not 0 < snr < float("inf"):
            raise InputError(f"snr must be a finite number > 0, got {snr}")
        image = fft1c(fft1c(ks.astype(np.complex128), inverse=True).swapaxes(-1, -2), inverse=True)
        ref = float(np.percentile(np.sqrt((np.abs(image) ** 2).sum(axis=1)), 99))
        cov = scanner_noise_covariance(c, seed) * (ref / snr) ** 2
    else:
        cov = _check_covariance(noise_covariance, c)
    chol = np.linalg.cholesky(cov)

    def noise(samples: int, scale: float = 1.0) -> np.ndarray:
        z = (rng.standard_normal((c, samples)) + 1j * rng.standard_normal((c, samples))) / np.sqrt(2.0)
        return scale * (chol @ z)

    over = _oversample(ks.astype(np.complex128), oversampling)  # (S, C, n, W)
    rows: list[tuple[int, int, int, int, np.ndarray]] = []  # (flags, slice, e1, average, data (C, samples))
    noise_scale = float(np.sqrt(dwell_us / noise_dwell_us))
    for _ in range(noise_scans):
        rows.append((flag_bit("ACQ_IS_NOISE_MEASUREMENT"), 0, 0, 0, noise(noise_samples, noise_scale)))
    for sl in range(s):
        first = len(rows)
        if acs_mode == "separate":
            for col in np.flatnonzero(acs):
                rows.append((flag_bit("ACQ_IS_PARALLEL_CALIBRATION"), sl, int(col), 0,
                             over[sl, :, :, col] + noise(n)))
        for avg in range(averages):
            for col in np.flatnonzero(acquired):
                flags = flag_bit("ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING") if (acs_mode == "embedded" and acs[col]) else 0
                rows.append((flags, sl, int(col), avg, over[sl, :, :, col] + noise(n)))
        rows[first] = (rows[first][0] | flag_bit("ACQ_FIRST_IN_SLICE") | flag_bit("ACQ_FIRST_IN_ENCODE_STEP1"),
                       *rows[first][1:])
        rows[-1] = (rows[-1][0] | flag_bit("ACQ_LAST_IN_SLICE") | flag_bit("ACQ_LAST_IN_ENCODE_STEP1"), *rows[-1][1:])
    rows[-1] = (rows[-1][0] | flag_bit("ACQ_LAST_IN_MEASUREMENT"), *rows[-1][1:])

    table = np.zeros(len(rows), dtype=ismrmrd.hdf5.acquisition_dtype)
    head = table["head"]
    mask_bits = np.zeros(16, dtype=np.uint64)
    for ch in range(c):
        mask_bits[ch // 64] |= np.uint64(1) << np.uint64(ch % 64)
    for i, (flags, sl, e1, avg, data) in enumerate(rows):
        is_noise = bool(flags & flag_bit("ACQ_IS_NOISE_MEASUREMENT"))
        samples = data.shape[1]
        head["version"][i] = 1
        head["flags"][i] = flags
        head["measurement_uid"][i] = seed % 2**32
        head["scan_counter"][i] = i
        head["acquisition_time_stamp"][i] = i * 4
        head["number_of_samples"][i] = samples
        head["available_channels"][i] = c
        head["active_channels"][i] = c
        head["channel_mask"][i] = mask_bits
        head["center_sample"][i] = 0 if is_noise else samples // 2
        head["sample_time_us"][i] = noise_dwell_us if is_noise else dwell_us
        head["position"][i] = (0.0, 0.0, (sl - (s - 1) / 2) * float(fov_mm[2]))
        head["read_dir"][i] = (1.0, 0.0, 0.0)
        head["phase_dir"][i] = (0.0, 1.0, 0.0)
        head["slice_dir"][i] = (0.0, 0.0, 1.0)
        head["idx"]["kspace_encode_step_1"][i] = e1
        head["idx"]["slice"][i] = sl
        head["idx"]["average"][i] = avg
        table["traj"][i] = np.zeros(0, dtype=np.float32)
        table["data"][i] = np.ascontiguousarray(data.astype(np.complex64)).view(np.float32).reshape(-1)

    import h5py

    xml = np.array([_header_xml(ks.shape, n, recon_y, fov_mm, averages, protocol_name, patient_id)],
                   dtype=h5py.special_dtype(vlen=bytes))
    datasets: dict[str, np.ndarray] = {f"{DEFAULT_GROUP}/xml": xml, f"{DEFAULT_GROUP}/data": table}
    if keep_reference:
        datasets[f"{REFERENCE_GROUP}/kspace"] = ks.astype(np.complex64)
    return atomic_h5_write(Path(path), datasets, {})
