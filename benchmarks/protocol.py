"""The frozen evaluation protocol: tuning and test slices of held-out subjects, the real set, every method.

A protocol config (``configs/bench_protocol.yaml``) has a ``protocol`` section and names

* ``data.tuning`` and ``data.test``: disjoint sets of held-out (test-split) subjects of the
  subject-level corpus (:func:`mri_score.simulation.subject_volume`), slices per subject and a
  seed each (noise and sampler seeds; the two must differ); ``data.real``: volumes of the
  real set (:mod:`mri_score.data.realset`), every slice, evaluation only;
* ``settings`` (acceleration, mask, centre fraction) and ``methods``.

Procedure, per setting: simulate each volume (``data.coils`` birdcage coils, ``data.snr``),
undersample with the fastMRI mask of its file name, calibrate each slice from its ACS
(maps, scale, σ_y shared by every SENSE-type method; BART's own ``ecalib`` maps only in the
labelled ``bart_ecalib`` row), then

1. **tuning**: every swept method at every λ on the tuning slices; a sweep whose best λ is at an
   edge is widened by one geometric step (up to ``protocol.widen`` times); the λ with the best
   mean clean-truth PSNR is chosen (:func:`benchmarks.stats.select_parameter`); the DDS std
   calibration factor is fitted on the tuning slices' DDS outputs, as the largest of the per-setting
   split-conformal factors so that every setting is covered (:func:`mri_score.uncertainty.every_group_factor`);
2. **test**: every method once, at its chosen λ, on the test slices and the real set, plus the
   ``protocol.oracle_maps`` methods on the real set with the simulator's true coil maps.

Every slice is scored twice: the ``sense`` magnitude ``|x|`` against the noise-free truth
(primary; plus PSNR on object pixels) and the expected-RSS output against the noisy RSS
target (secondary).  Each volume is also scored as one fastMRI volume.  Rows go to a CSV;
:mod:`benchmarks.tables` turns it into the report.
"""

from __future__ import annotations

import csv
import os
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from benchmarks.harness import check_score_method, undersample
from benchmarks.stats import select_parameter
from mri_score import baselines, uncertainty
from mri_score.atomic import atomic_output
from mri_score.calibration import calibrate
from mri_score.config import require
from mri_score.data.mixed import MixedCorpus
from mri_score.data.realset import SPLITS, volumes_in
from mri_score.errors import InputError
from mri_score.metrics import volume_metrics
from mri_score.pipeline import reconstruct_volume
from mri_score.posterior import output_magnitude
from mri_score.prior import ComplexPrior
from mri_score.request import ReconRequest, RequestError
from mri_score.simulation import noise_free_target, simulate_volume, subject_volume
from mri_score.supervised import load_unet, unet_reconstruct
from operators import birdcage_maps, ifft2c, sense1_combine
from operators.errors import OperatorInputError

if TYPE_CHECKING:
    from mri_score.data.domain_random import DomainRandomPool

#: The synthetic test subjects are new warps and contrasts of the training template (ICBM152 2009a is left-right
#: symmetric, so a hemisphere split is no subject split): in distribution, not held-out anatomy.
GROUP_SYNTH = "synthetic, same template as training (in-distribution)"
#: Slices of the domain-randomised generator's held-out family: anatomy from another generator, which no
#: ancestor of the shipped priors saw (:mod:`mri_score.data.domain_random`).
GROUP_OTHER = "synthetic, other generator (anatomy shift)"
#: The real set's groups by split (:mod:`mri_score.data.realset`).
GROUP_REAL = {"development": "real MR, development set", "final": "real MR, final test set"}
#: The evaluation physics of the real set (:func:`mri_score.data.real_physics.simulate_real_acquisition`): loop
#: coils from Biot-Savart (not the training birdcage), smooth background phase, correlated coil noise that the
#: acquisition prewhitens, as a scanner pipeline does with its noise scans.
REAL_PHYSICS = {"coils": 8, "geometry": "head_ring", "snr": 100.0, "correlation": 0.3, "phase_order": 3}
#: Real images smaller than this are zero-padded to it in the image domain (field of view extended, pixel size kept).
MIN_MATRIX = 64
#: The largest matrix a ``real_physics`` variant may pad the real images to (``matrix``; fastMRI's brain width is 320).
MAX_MATRIX = 512
#: Methods a protocol config may list.
PROTOCOL_METHODS = ("zero_filled", "cg_sense", "l1_wavelet", "tv", "bart_pics", "bart_wavelet", "bart_ecalib", "unet",
                    "varnet", "dds", "dds_fp32")
#: The DDS rows: ``dds`` (the request's precision, ``auto``: bf16 where the CPU has it natively) and ``dds_fp32``
#: (the same request in fp32, for the timing table; scored like any row).
DDS = ("dds", "dds_fp32")
#: Separator of an ablation variant's name: ``dds:<name>`` is DDS with its own ``prior``, ``grid``, ``options``,
#: ``nfe`` or ``samples`` (the ablation table's rows).  Variants run on the test data only: they are measured, never
#: tuned, and the std calibration and the registration are the plain ``dds`` entry's.
VARIANT_SEP = ":"
#: Methods swept over ``lams`` and tuned on the tuning slices.
SWEPT = ("cg_sense", "l1_wavelet", "tv", "bart_pics", "bart_wavelet", "bart_ecalib")
#: BART rows: ``pics -R T`` (total variation, as fastMRI's CS baseline script), ``-R W`` (wavelet ℓ1), and TV with
#: BART's own ``ecalib`` maps.
BART = ("bart_pics", "bart_wavelet", "bart_ecalib")
#: Methods that may have an oracle-maps row on the real set.
ORACLE_OK = ("cg_sense", "l1_wavelet", "tv", "bart_pics", "dds")
#: CSV columns, in order.
FIELDS = ("setting", "phase", "group", "volume", "subject", "slice", "unit", "method", "label", "maps", "lam",
          "PSNR", "SSIM", "NMSE", "PSNR_object", "PSNR_rss", "SSIM_rss", "NMSE_rss", "seconds", "cpu_seconds", "nfe",
          "grid_factor", "n_object", "rank_corr_err_std",
          "std_factor", *(f"cov_raw_{round(100 * p)}" for p in uncertainty.RELIABILITY_LEVELS),
          *(f"cov_cal_{round(100 * p)}" for p in uncertainty.RELIABILITY_LEVELS), "sigma_ratio")


def base_method(method: str) -> str:
    """The method a config key names: ``"dds"`` for the ablation variant ``"dds:grid2"``, else the key itself."""
    return method.split(VARIANT_SEP, 1)[0]


def is_dds(method: str) -> bool:
    """Whether a config key is a DDS row (``dds``, ``dds_fp32`` or a ``dds:<name>`` variant)."""
    return base_method(method) in DDS


def setting_tag(setting: dict) -> str:
    """``"4x equispaced"``: how a setting is named in rows and tables (``"4x equispaced, centre 0.2"`` when the centre
    fraction is not fastMRI's default 0.08)."""
    tag = f"{float(setting['accel']):g}x {setting['mask']}"
    centre = float(setting.get("center_fraction", 0.08))
    return tag if centre == 0.08 else f"{tag}, centre {centre:g}"


def method_label(method: str, spec: dict, maps: str = "acs") -> str:
    """The table label of a method row (DDS with its budget and K; oracle-maps and BART-maps rows marked)."""
    base = {"bart_pics": "bart pics TV", "bart_wavelet": "bart pics wavelet",
            "bart_ecalib": "bart pics TV (BART ecalib maps)"}.get(method, method)
    if is_dds(method):
        base = f"{method} (NFE={int(spec['nfe'])}, K={int(spec.get('samples', 2))}" + (
            ", fp32)" if method == "dds_fp32" else ")")
    return base + (", oracle maps" if maps == "oracle" else "")


def validate_protocol(cfg: dict, src: str) -> None:
    """Refuse a protocol config that breaks the protocol's rules, with one line naming ``src`` and the key."""
    data = require(cfg, "data", src)
    for key in ("size", "test", "tuning"):
        require(cfg, f"data.{key}", src)
    for part in ("tuning", "test"):
        spec = data[part]
        if not spec.get("subjects") or int(spec.get("slices_per_subject", 0)) < 1:
            raise InputError(f"{src}: data.{part} needs 'subjects' (a list) and 'slices_per_subject' >= 1")
    if set(map(int, data["tuning"]["subjects"])) & set(map(int, data["test"]["subjects"])):
        raise InputError(f"{src}: data.tuning.subjects and data.test.subjects must be disjoint")
    if int(data["tuning"].get("seed", 1)) == int(data["test"].get("seed", 0)):
        raise InputError(f"{src}: data.tuning.seed must differ from data.test.seed")
    real = data.get("real", [])
    if isinstance(real, str):
        if real not in SPLITS:
            raise InputError(f"{src}: data.real must be development, final or a list of development volumes, got {real!r}")
    else:
        dev = volumes_in("development")
        bad = [n for n in real if n not in dev]
        if bad:
            raise InputError(f"{src}: data.real: {bad} are not development volumes ({', '.join(dev)}); the final test "
                             "set is read only as a whole, by a registered protocol (data.real: final)")
    physics = data.get("real_physics", [REAL_PHYSICS])
    for variant in physics if isinstance(physics, list) else [physics]:
        unknown = sorted(set(variant) - set(REAL_PHYSICS) - {"name", "matrix"})
        if unknown:
            raise InputError(f"{src}: data.real_physics: unknown keys {unknown}; known: {', '.join(REAL_PHYSICS)}, "
                             "name, matrix")
        matrix = variant.get("matrix", MIN_MATRIX)
        if isinstance(matrix, bool) or not isinstance(matrix, int) or not MIN_MATRIX <= matrix <= MAX_MATRIX:
            raise InputError(f"{src}: data.real_physics: matrix must be an integer from {MIN_MATRIX} to {MAX_MATRIX}, "
                             f"got {matrix!r}")
    tags = [setting_tag(s) for s in require(cfg, "settings", src)]
    if len(set(tags)) != len(tags):
        raise InputError(f"{src}: settings: two settings share a name ({', '.join(tags)}); each needs its own")
    methods = require(cfg, "methods", src)
    unknown = [m for m in methods if base_method(m) not in PROTOCOL_METHODS
               or (VARIANT_SEP in m and (base_method(m) != "dds" or not m.split(VARIANT_SEP, 1)[1]))]
    if unknown:
        raise InputError(f"{src}: unknown methods {unknown}; a protocol config may list "
                         f"{', '.join(PROTOCOL_METHODS)} and DDS variants dds{VARIANT_SEP}<name>")
    for m in methods:
        spec = methods[m] or {}
        if m in SWEPT and not spec.get("lams"):
            raise InputError(f"{src}: methods.{m}: a swept method needs 'lams' (the λ sweep)")
        if m in ("unet", "varnet") and not spec.get("weights"):
            raise InputError(f"{src}: methods.{m} needs 'weights' (a trained checkpoint)")
        if is_dds(m):
            check_score_method("dds", spec, f"{src}: methods.{m}")
            if isinstance(spec["nfe"], list):
                raise InputError(f"{src}: methods.{m}.nfe: the protocol reports one budget (an integer)")
            try:
                dds_request(spec)
            except RequestError as err:
                raise InputError(f"{src}: methods.{m}: {err.render({})}") from None
            except (TypeError, ValueError) as err:
                raise InputError(f"{src}: methods.{m}: nfe and samples must be integers ({err})") from None
            if VARIANT_SEP in m and data.get("real") == "final":
                raise InputError(f"{src}: methods.{m}: the final test set runs the registered dds entry only; ablation "
                                 "variants belong to development configs")
            if "prior" in spec and (VARIANT_SEP not in m or not Path(str(spec["prior"])).is_file()):
                raise InputError(f"{src}: methods.{m}.prior: only a dds{VARIANT_SEP}<name> variant names its own prior, "
                                 f"and it must be a file (got {spec['prior']!r})")
    for m in cfg.get("protocol", {}).get("oracle_maps", []):
        if m not in methods or m not in ORACLE_OK:
            raise InputError(f"{src}: protocol.oracle_maps: {m!r} must be a listed method among {', '.join(ORACLE_OK)}")


def protocol_volumes(cfg: dict, registration_ok: bool = False) -> list[dict]:
    """Tuning and test volumes (one per held-out subject) and the real set: ``[{name, phase, group, images, ...}]``.

    Subject ``k`` gets contrast family ``data.families[k % len]``; tuning slices start at corpus
    index offset ``data.tuning.first`` (default 500) so they never repeat a test slice's geometry.
    ``data.pixel_mm`` (default 0.8–1.5) is the pixel-size range (mm) of the synthetic slices.
    """
    data = cfg["data"]
    vols = synthetic_subject_volumes(data, "tuning") + synthetic_subject_volumes(data, "test")
    other = data.get("other_generator")
    if other:
        vols += other_generator_volumes(other, int(data["test"].get("seed", 0)))
    vols += real_volumes(cfg, registration_ok)
    return vols


def synthetic_spec(data: dict, phase: str) -> dict:
    """The settings of a config's synthetic ``phase`` (``tuning`` or ``test``) with the protocol's defaults.

    ``{subjects, slices, first, seed, families, corpus_seed, pixel_mm, size, coils, snr}``: ``first`` defaults to
    500 for tuning (so tuning slices never repeat a test slice's geometry) and 0 for test, ``seed`` to 1 and 0,
    ``families`` to t1, t2, pd, ``pixel_mm`` to 0.8–1.5 mm, ``coils`` 8, ``snr`` 100.
    """
    spec = data[phase]
    return {"subjects": tuple(int(s) for s in spec["subjects"]), "slices": int(spec["slices_per_subject"]),
            "first": int(spec.get("first", 500 if phase == "tuning" else 0)),
            "seed": int(spec.get("seed", 1 if phase == "tuning" else 0)),
            "families": tuple(str(f) for f in data.get("families", ["t1", "t2", "pd"])),
            "corpus_seed": int(data.get("corpus_seed", 0)),
            "pixel_mm": tuple(float(v) for v in data.get("pixel_mm", (0.8, 1.5))),
            "size": tuple(int(v) for v in data["size"]), "coils": int(data.get("coils", 8)),
            "snr": float(data.get("snr", 100))}


def pixel_range_at(pixel_mm: Sequence[float], base: int, size: int) -> tuple[float, float]:
    """The synthetic pixel range (mm) on a ``size``² matrix of a protocol whose ``pixel_mm`` range belongs to its
    ``base``² matrix: unchanged up to ``base`` (a smaller matrix is a crop of the field of view), ``× base / size``
    above it (the same field of view, resolved more finely)."""
    scale = float(base) / max(int(size), int(base))
    return float(pixel_mm[0]) * scale, float(pixel_mm[1]) * scale


def spec_pixel_range(spec: dict, size: int | None = None) -> tuple[float, float]:
    """The pixel range (mm) a :func:`synthetic_spec` draws on a ``size``² matrix (default: its own):
    :func:`pixel_range_at` of its ``pixel_mm`` at its ``size``."""
    base = max(spec["size"])
    return pixel_range_at(spec["pixel_mm"], base, base if size is None else int(size))


def synthetic_subject_volumes(data: dict, phase: str, subjects: Sequence[int] | None = None,
                              slices: int | None = None, size: tuple[int, int] | None = None) -> list[dict]:
    """One volume per held-out subject of the config's synthetic ``phase``: ``[{name, phase, group, subject, images,
    seed, pixel_mm}]`` (:func:`synthetic_spec`; ``subjects``, ``slices`` and ``size`` replace the config's).

    Subject ``k`` gets contrast family ``families[k % len]`` (:func:`mri_score.simulation.subject_volume` of the
    held-out split from corpus slice ``first``); each volume records the coarsest pixel of the range (for
    ``grid: auto``).  A ``size`` larger than the config's keeps its field of view (:func:`pixel_range_at`).
    """
    spec = synthetic_spec(data, phase)
    families = spec["families"]
    pixel_mm = spec_pixel_range(spec, max(size) if size else None)
    vols = []
    for subj in spec["subjects"] if subjects is None else subjects:
        subj = int(subj)
        fam = families[subj % len(families)]
        imgs = subject_volume("test", subj, spec["slices"] if slices is None else slices, size or spec["size"], fam,
                              spec["corpus_seed"], first=spec["first"], pixel_mm=pixel_mm)
        vols.append({"name": f"{phase}_subject{subj:02d}_{fam}.h5", "phase": phase, "group": GROUP_SYNTH,
                     "subject": subj, "images": imgs, "seed": spec["seed"], "pixel_mm": (pixel_mm[1], pixel_mm[1])})
    return vols


def domain_random_volume(pool: DomainRandomPool, index: int, slices: int) -> tuple[np.ndarray, list[tuple]]:
    """Volume ``index`` of a domain-randomised test stream: its slices ``index · slices …`` of
    :meth:`mri_score.data.domain_random.DomainRandomPool.generate`, as images ``(slices, H, W)`` complex64, and each
    slice's rendered tuple (image, pixel size in mm, …, family)."""
    rendered = [pool.generate(index * slices + j) for j in range(slices)]
    return np.stack([r[0] for r in rendered]).astype(np.complex64), rendered


def other_generator_volumes(spec: dict, seed: int) -> list[dict]:
    """Test volumes of the domain-randomised generator's ``spec['family']`` (default ``joint``): anatomy shift.

    ``spec``: ``family``, ``volumes`` (default 2), ``slices`` (default 3), ``size`` (default 128).  The slices come
    from the generator's test stream (:meth:`mri_score.data.domain_random.DomainRandomPool.generate`).
    """
    from mri_score.data.domain_random import DomainRandomPool

    family, count = str(spec.get("family", "joint")), int(spec.get("volumes", 2))
    slices, size = int(spec.get("slices", 3)), int(spec.get("size", 128))
    pool = DomainRandomPool(size=size, families=(family,), seed=int(spec.get("seed", 0)), split="test")
    vols = []
    for k in range(count):
        imgs, rendered = domain_random_volume(pool, k, slices)
        pixel = float(np.mean([r[1] for r in rendered]))
        vols.append({"name": f"other_{family}{k:02d}.h5", "phase": "test", "group": GROUP_OTHER, "subject": "",
                     "images": imgs, "seed": seed, "pixel_mm": (pixel, pixel)})
    return vols


def real_volumes(cfg: dict, registration_ok: bool = False) -> list[dict]:
    """The real set's volumes of ``data.real`` under each ``data.real_physics`` variant (evaluation only).

    ``data.real``: ``development`` (every development volume), a list of development volumes, or ``final``
    (the final test set: only with ``registration_ok``, :mod:`benchmarks.registration`).  Images smaller than
    :data:`MIN_MATRIX` are zero-padded (field of view extended, pixel size kept), and to ``matrix`` where a variant
    gives one (a larger matrix at the same pixel size: the field of view of a 320-wide acquisition).  A variant with
    a ``name`` makes its own group (the robustness table); without, the group is the split's.
    """
    from mri_score.data.realset import FINAL_TEST_TOKEN, development_set, final_test_set

    data = cfg["data"]
    real = data.get("real", [])
    if not real:
        return []
    if real == "final":
        loaded = final_test_set(registration_ok, token=FINAL_TEST_TOKEN)
    else:
        loaded = [v for v in development_set() if real == "development" or v.name in real]
    physics = data.get("real_physics", [REAL_PHYSICS])
    variants = physics if isinstance(physics, list) else [physics]
    vols = []
    for variant in variants:
        spec = {**REAL_PHYSICS, **variant}
        for v in loaded:
            imgs = pad_to(v.images, max(MIN_MATRIX, int(spec.get("matrix", MIN_MATRIX))))
            tag = f"@{spec['name']}" if "name" in spec else ""
            group = GROUP_REAL[v.split] + (f" ({spec['name']})" if "name" in spec else "")
            vols.append({"name": f"{v.name}{tag}.h5", "phase": "test", "group": group, "subject": "",
                         "images": imgs, "seed": int(data["test"].get("seed", 0)), "pixel_mm": v.pixel_mm,
                         "physics": spec})
    return vols


def pad_to(images: np.ndarray, minimum: int) -> np.ndarray:
    """``images (S, H, W)`` zero-padded symmetrically so that H and W are at least ``minimum``."""
    h, w = images.shape[-2:]
    ph, pw = max(0, minimum - h), max(0, minimum - w)
    if not ph and not pw:
        return images
    return np.pad(images, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))


#: First corpus index of the body/limb calibration slices (test split; the protocol reports none of them).
BODY_FIRST = 900


def body_limb_volumes(count: int, slices: int, size: int, seed: int) -> list[dict]:
    """``count`` volumes of ``slices`` procedural body/limb slices each, in the protocol's volume layout."""
    corpus = MixedCorpus("test", anatomy_weights={"body": 0.5, "limb": 0.5}, seed=seed, sizes=(size,), square=True)
    vols = []
    for k in range(count):
        imgs = np.stack([corpus.generate(BODY_FIRST + slices * k + j)[0] for j in range(slices)])
        vols.append({"name": f"calibration_bodylimb{k}.h5", "phase": "tuning", "group": "body/limb", "subject": "",
                     "images": imgs, "seed": 1})
    return vols


def simulate_real(vol: dict, noise_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
    """A real volume's fully sampled k-space under its evaluation physics (``vol['physics']``), prewhitened.

    Per slice: :func:`mri_score.data.real_physics.simulate_real_acquisition` (loop coils, smooth phase, correlated
    noise), then prewhitening with the noise covariance (:func:`operators.loop_coils.prewhiten`), as a scanner
    pipeline does with its noise scans.  Returns ``kspace (S, C, H, W)`` complex64 (unit white noise), the
    noise-free truth ``(S, H, W)`` float32 (RSS of the noise-free whitened coil images, the convention of
    :func:`mri_score.simulation.noise_free_target`), the noisy RSS target and the true (whitened, RSS-normalised)
    maps ``(S, C, H, W)``.
    """
    from mri_score.data.real_physics import simulate_real_acquisition
    from operators import fft2c
    from operators.coils import normalize_maps
    from operators.loop_coils import prewhiten

    spec = vol["physics"]
    ks, truths, rss_t, maps = [], [], [], []
    for i, image in enumerate(np.abs(vol["images"])):
        acq = simulate_real_acquisition(image, vol["pixel_mm"], coils=int(spec["coils"]), geometry=spec["geometry"],
                                        snr=float(spec["snr"]), seed=noise_seed + i, correlation=float(spec["correlation"]),
                                        phase_order=int(spec["phase_order"]))
        white = prewhiten(acq["kspace"], acq["noise_cov"])
        white_maps = torch.from_numpy(prewhiten(acq["maps"], acq["noise_cov"]))
        clean = ifft2c(fft2c(white_maps * torch.from_numpy(acq["truth"])))
        ks.append(white)
        truths.append(clean.abs().square().sum(0).sqrt().numpy())
        rss_t.append(ifft2c(torch.from_numpy(white)).abs().square().sum(0).sqrt().numpy())
        maps.append(normalize_maps(white_maps))
    return (np.stack(ks).astype(np.complex64), np.stack(truths).astype(np.float32), np.stack(rss_t).astype(np.float32),
            torch.stack(maps))


def acquire(vol: dict, setting: dict, coils: int, snr: float) -> dict | None:
    """Simulated, undersampled and calibrated acquisition of one volume in one setting (None: mask not realisable).

    Synthetic volumes use the training physics (birdcage coils, ``coils`` and ``snr``, white noise); real volumes
    their evaluation physics (:func:`simulate_real`).
    """
    tag = setting_tag(setting)
    noise_seed = zlib.crc32(f"{vol['seed']}/{tag}/{vol['name']}".encode())
    if "physics" in vol:
        ksp, truth, target_rss, true_maps = simulate_real(vol, noise_seed)
        sigma = 1.0  # prewhitened: unit noise per complex sample
    else:
        ksp, target_rss, sigma = simulate_volume(vol["images"], coils, snr, seed=noise_seed)
        truth = noise_free_target(vol["images"], coils)
        true_maps = torch.from_numpy(birdcage_maps(coils, ksp.shape[-2:])) if coils > 1 else torch.ones(
            1, *ksp.shape[-2:], dtype=torch.complex64)
        true_maps = true_maps.expand(ksp.shape[0], *true_maps.shape)
    try:
        acq = undersample(ksp, setting["mask"], float(setting["accel"]), float(setting.get("center_fraction", 0.08)),
                          vol["name"])
    except OperatorInputError as err:
        print(f"skipped {tag} {vol['name']}: {err}", flush=True)
        return None
    under, mask, cals = acq["under"], acq["mask"], acq["cals"]
    return {"under": under, "mask": mask, "cals": cals,
            "oracle": [replace(c, maps=true_maps[i].to(c.maps.dtype)) for i, c in enumerate(cals)],
            "pixel_mm": vol.get("pixel_mm"), "truth": truth, "target_rss": target_rss, "sigma": float(sigma)}


def unreported_acquisitions(cfg: dict, volumes: int, slices: int, size: int,
                            seed: int) -> Iterator[tuple[str, str, dict, dict]]:
    """The protocol's brain tuning volumes and ``volumes`` procedural body/limb volumes, acquired per setting.

    Yields ``(setting tag, group, volume, acquisition)`` (``group`` ``"brain"`` or ``"body/limb"``; the acquisition as
    :func:`acquire` makes it, with the config's coils and SNR) for every setting and volume whose mask is
    realisable: the data the check scripts tune on, none of which the protocol reports.
    """
    data = cfg["data"]
    vols = [v for v in protocol_volumes(cfg) if v["phase"] == "tuning"]
    vols += body_limb_volumes(volumes, slices, size, seed)
    for setting in cfg["settings"]:
        tag = setting_tag(setting)
        for v in vols:
            acq = acquire(v, setting, int(data.get("coils", 8)), float(data.get("snr", 100)))
            if acq is not None:
                yield tag, "body/limb" if v["group"] == "body/limb" else "brain", v, acq


def dds_request(spec: dict, seed: int = 0) -> ReconRequest:
    """The :class:`~mri_score.request.ReconRequest` of a DDS method entry (``nfe``, ``samples``, ``options``,
    ``grid: native|auto|factor``, default native; ``maps_phase``, default auto; ``maps_threshold``), in the
    protocol's primary convention (``sense``)."""
    for name in ("nfe", "samples"):  # int() would truncate 2.5 and accept True
        value = spec.get(name, 2)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    return ReconRequest(sampler="dds", steps=int(spec["nfe"]), samples=int(spec.get("samples", 2)), seed=seed,
                        magnitude="sense", options=dict(spec.get("options") or {}), grid=spec.get("grid", "native"),
                        maps_phase=spec.get("maps_phase", "auto"), maps_threshold=spec.get("maps_threshold"))


def registered_dds(cfg: dict) -> dict | None:
    """The identity of the config's DDS request (what a registration records), None without DDS."""
    dds = (cfg.get("methods") or {}).get("dds")
    return dds_request(dds).identity() if dds else None


def cpu_seconds_now() -> float:
    """CPU seconds of this process (all threads) plus those of its finished child processes (BART runs as one)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def solve(method: str, spec: dict, lam: float | None, acq: dict, s: int, maps: str, prior: ComplexPrior | None,
          seed: int, unet: torch.nn.Module | None = None, varnet: torch.nn.Module | None = None) -> dict:
    """One method on slice ``s``: ``primary`` (``|x|``), ``rss`` (expected RSS), ``std`` (DDS), ``seconds``, ``nfe``,
    ``grid_factor`` (DDS's sampling grid over the measured matrix; None for the other methods).

    The one method table of the benchmarks: zero-filled SENSE-1, CG-SENSE, L1-wavelet, TV, BART ``pics`` (shared or
    its own ``ecalib`` maps), the supervised U-Net (``unet``, a magnitude image used for both conventions), the
    E2E-VarNet (``varnet``: its coil-combined output as ``|x|``, its RSS output as the expected RSS) and DDS
    (through :func:`mri_score.pipeline.reconstruct_volume`, the ``reconstruct`` command's path)."""
    ks, mask = acq["under"][s], acq["mask"]
    cal = (acq["oracle"] if maps == "oracle" else acq["cals"])[s]
    if is_dds(method) and maps == "acs" and (spec.get("maps_phase", "auto") != "auto" or "maps_threshold" in spec):
        # an ablation's maps: its phase reference or ESPIRiT threshold, the other settings the default's
        request = dds_request(spec)
        cal = replace(cal, maps=calibrate(torch.from_numpy(ks), torch.from_numpy(mask), maps_phase=request.maps_phase,
                                          maps_threshold=request.maps_threshold).maps)
    t0, c0 = time.perf_counter(), cpu_seconds_now()
    std, nfe, factor = None, 0, None
    if method == "zero_filled":
        x = sense1_combine(ifft2c(torch.from_numpy(ks)), cal.maps).numpy()
        rss_img = baselines.zero_filled_rss(ks, mask)
    elif method == "unet":
        image = unet_reconstruct(unet, torch.from_numpy(ks), torch.from_numpy(mask), cal).numpy()
        return {"primary": image, "rss": image, "std": None, "seconds": time.perf_counter() - t0,
                "cpu_seconds": cpu_seconds_now() - c0, "nfe": 0, "grid_factor": None}
    elif method == "varnet":
        from mri_score.varnet import varnet_outputs

        rss_img, combined = (t.numpy() for t in varnet_outputs(varnet, torch.from_numpy(ks), torch.from_numpy(mask), cal))
        return {"primary": combined, "rss": rss_img, "std": None, "seconds": time.perf_counter() - t0,
                "cpu_seconds": cpu_seconds_now() - c0, "nfe": 0, "grid_factor": None}
    elif is_dds(method):
        request = dds_request(spec, seed + s)
        if method == "dds_fp32":
            request = request.replace(precision="fp32")
        res = reconstruct_volume(ks[None], mask, prior, request, calibrations=[cal], pixel_mm=acq.get("pixel_mm"))
        x, nfe, factor = res.means[0].numpy(), res.nfe[0], res.grid_factor
        std = None if res.std is None else res.std[0]  # K = 1: no spread to report
        rss_img = None
    else:
        iters = int(spec.get("iters", 30 if method == "cg_sense" else 100))
        if method == "cg_sense":
            x = baselines.cg_sense(ks, mask, cal, lam, iters)
        elif method == "l1_wavelet":
            x = baselines.l1_wavelet(ks, mask, cal, lam, iters)
        elif method == "tv":
            x = baselines.total_variation(ks, mask, cal, lam, iters)
        else:
            x = baselines.bart_pics(ks, mask, cal, lam, iters, maps="ecalib" if method == "bart_ecalib" else "shared",
                                    regularizer="W" if method == "bart_wavelet" else "T")
        rss_img = None
    seconds, cpu_seconds = time.perf_counter() - t0, cpu_seconds_now() - c0
    xt = torch.from_numpy(np.asarray(x, dtype=np.complex64))
    primary = output_magnitude(xt, cal.maps, cal.sigma_y, "sense").numpy()
    if rss_img is None:
        rss_img = output_magnitude(xt, cal.maps, cal.sigma_y, "rss").numpy()
    return {"primary": primary, "rss": np.asarray(rss_img), "std": std, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "nfe": nfe, "grid_factor": factor}


def variant_prior(path: str | Path) -> ComplexPrior:
    """The prior an ablation variant names (``methods.dds:<name>.prior``), loaded once per run."""
    from mri_score.prior import load_prior

    return ComplexPrior(load_prior(Path(path)))


def ancestry(meta: dict | None, root: Path | None = None, limit: int = 16) -> list[dict]:
    """The prior and its ancestors, newest first: ``[{path, data_source}]``, following each ``parent`` record.

    A parent is read only when its file exists (relative to the repository) and its SHA-256 matches the record;
    otherwise the chain ends with ``data_source: "unknown (parent file not available)"``.
    """
    from mri_score.checkpoint import load_checkpoint
    from mri_score.uncertainty import file_sha256

    root = root or Path(__file__).resolve().parents[1]
    chain, seen = [], set()
    while meta is not None and len(chain) < limit:
        data = ((meta.get("config") or {}).get("data") or {})
        chain.append({"data_source": str(data.get("source", "unknown"))})
        parent = meta.get("parent") or {}
        path, digest = parent.get("path"), parent.get("sha256")
        if not path or digest in seen:
            break
        seen.add(digest)
        file = Path(path) if Path(path).is_absolute() else root / path
        if not file.is_file() or file_sha256(file) != digest:
            chain.append({"data_source": "unknown (parent file not available)"})
            break
        meta = load_checkpoint(file)[1]
    return chain


def training_split_note(meta: dict | None) -> str:
    """What the prior's training data, and every ancestor's, share with the synthetic test subjects (one sentence).

    Every template-based source (``synthetic``, ``mixed``) renders the ICBM152 2009a template, which is left-right
    symmetric: a hemisphere or slab split is no subject split, so the synthetic test subjects are new warps and
    contrasts of the training brain, reported as in-distribution.  The domain-randomised generator's held-out
    family is anatomy no template-based ancestor produced (the anatomy-shift group).
    """
    sources = [c["data_source"] for c in ancestry(meta)]
    template = {"synthetic", "mixed"}
    chain = " ← ".join(sources) if sources else "unknown"
    if sources and all(s in template for s in sources):
        return (f"training data of the prior and its ancestors ({chain}) all render the symmetric ICBM152 template: the "
                "synthetic test subjects are in-distribution (same brain, new warps and contrasts), not held-out anatomy")
    return f"training data of the prior and its ancestors: {chain}; overlap with the synthetic test subjects as labelled"


def object_psnr(truth: np.ndarray, pred: np.ndarray) -> float:
    """PSNR (dB, peak = truth max) over object pixels only (truth > 5 % of its max)."""
    sel = uncertainty.object_mask(truth)
    err = float(np.mean((np.asarray(pred, np.float64)[sel] - np.asarray(truth, np.float64)[sel]) ** 2))
    return float(10 * np.log10(float(truth.max()) ** 2 / err)) if err > 0 else float("inf")


def score(truth: np.ndarray, target_rss: np.ndarray, out: dict) -> dict:
    """Metrics of one slice (or volume, ``(S, H, W)``): primary vs the clean truth, secondary vs the noisy RSS target."""
    t3, p3 = (a if a.ndim == 3 else a[None] for a in (truth, out["primary"]))
    r3, q3 = (a if a.ndim == 3 else a[None] for a in (target_rss, out["rss"]))
    m, mr = volume_metrics(t3, p3), volume_metrics(r3, q3)
    return {**m, "PSNR_object": object_psnr(t3, p3), "PSNR_rss": mr["PSNR"], "SSIM_rss": mr["SSIM"],
            "NMSE_rss": mr["NMSE"]}


def std_factors(cal_rows: list[dict], levels: tuple[float, ...]) -> dict[float, float]:
    """The DDS std factor per nominal level, fitted on the error ratios (``_ratios``) of the DDS tuning rows.

    Per level, the largest of the per-setting split-conformal factors
    (:func:`mri_score.uncertainty.every_group_factor`): one factor that covers every setting of the
    tuning slices at that level (pooling the settings would let the easier setting, 4x, hide the
    harder one's shortfall).  Empty when ``cal_rows`` is.
    """
    by_setting: dict[str, list[np.ndarray]] = {}
    for r in cal_rows:
        by_setting.setdefault(r["setting"], []).append(r["_ratios"])
    groups = {tag: np.concatenate(rs) for tag, rs in by_setting.items()}
    return {p: uncertainty.every_group_factor(groups, p) for p in levels} if groups else {}


def run_protocol(cfg: dict, prior_module: torch.nn.Module | None, log=print,
                 prior_path: str | Path | None = None) -> tuple[list[dict], dict]:
    """Run the protocol a (validated) config describes.

    ``data.real: final`` reads the final test set, and only after :func:`benchmarks.registration.verify` found
    this config, the prior file at ``prior_path``, its DDS request and the code as registered.

    Returns
    -------
    (list of dict, dict)
        CSV rows (:data:`FIELDS`) and the DDS std calibration ``{"factors": {level: c}, "ratios": …}``
        (``factors`` empty without DDS).
    """
    data, methods = cfg["data"], {m: (s or {}) for m, s in cfg["methods"].items()}
    proto = cfg.get("protocol", {})
    coils, snr = int(data.get("coils", 8)), float(data.get("snr", 100))
    if any(m in BART for m in methods) and not baselines.bart_available():
        raise InputError("the config lists BART methods but bart is not installed (apt-get install -y bart); "
                         "install it or remove them from the config: the reference baseline never changes silently")
    registered = False
    if data.get("real") == "final":
        from benchmarks import registration
        from mri_score.prior import default_prior_path

        registration.verify(cfg, prior_path or default_prior_path(), registered_dds(cfg))
        registered = True
    prior = ComplexPrior(prior_module) if any(is_dds(m) for m in methods) else None
    priors = {m: variant_prior(spec["prior"]) for m, spec in methods.items() if "prior" in spec}
    unet = load_unet(str(methods["unet"]["weights"])) if "unet" in methods else None
    varnet = None
    if "varnet" in methods:
        from mri_score.varnet import load_varnet

        varnet = load_varnet(str(methods["varnet"]["weights"]))
    vols = protocol_volumes(cfg, registered)
    rows: list[dict] = []
    t_start = time.time()
    acqs = {}
    for setting in cfg["settings"]:
        for vi, vol in enumerate(vols):
            acqs[(setting_tag(setting), vi)] = acquire(vol, setting, coils, snr)

    def run(tag: str, vi: int, method: str, lam: float | None, maps: str, phase: str) -> list[dict]:
        vol, acq = vols[vi], acqs[(tag, vi)]
        spec = methods[method]
        out_rows, outs = [], []
        for s in range(acq["under"].shape[0]):
            out = solve(method, spec, lam, acq, s, maps, priors.get(method, prior), vol["seed"], unet, varnet)
            outs.append(out)
            row = {"setting": tag, "phase": phase, "group": vol["group"], "volume": vol["name"],
                   "subject": vol["subject"], "slice": s, "unit": "slice", "method": method,
                   "label": method_label(method, spec, maps), "maps": "ecalib" if method == "bart_ecalib" else maps,
                   "lam": "" if lam is None else lam, "seconds": out["seconds"], "cpu_seconds": out["cpu_seconds"],
                   "nfe": out["nfe"],
                   "grid_factor": "" if out["grid_factor"] is None else out["grid_factor"],
                   "sigma_ratio": acq["cals"][s].sigma_y / acq["sigma"],  # σ̂_y / σ (estimator vs the simulator)
                   **score(acq["truth"][s], acq["target_rss"][s], out)}
            if out["std"] is not None:
                row["_ratios"] = uncertainty.error_ratios(acq["truth"][s], out["primary"], out["std"])
                row["n_object"] = int(row["_ratios"].size)
                row["rank_corr_err_std"] = uncertainty.rank_correlation(acq["truth"][s], out["primary"], out["std"])
            out_rows.append(row)
        if phase == "test":  # the volume as one fastMRI volume
            stacked = {k: np.stack([o[k] for o in outs]) for k in ("primary", "rss")}
            out_rows.append({**{k: out_rows[0][k] for k in ("setting", "phase", "group", "volume", "subject", "method",
                                                             "label", "maps", "lam")},
                             "slice": "", "unit": "volume", "seconds": float(np.mean([o["seconds"] for o in outs])),
                             "cpu_seconds": float(np.mean([o["cpu_seconds"] for o in outs])),
                             "nfe": outs[0]["nfe"], "grid_factor": out_rows[0]["grid_factor"],
                             **score(acq["truth"], acq["target_rss"], stacked)})
        return out_rows

    tuning = [vi for vi, v in enumerate(vols) if v["phase"] == "tuning"]
    chosen: dict[tuple[str, str], float] = {}
    for setting in cfg["settings"]:
        tag = setting_tag(setting)
        for method, spec in methods.items():
            if method not in SWEPT and method != "dds":
                continue
            lams = sorted(float(v) for v in spec["lams"]) if method in SWEPT else [None]
            scores: dict = {}
            for _ in range(int(proto.get("widen", 2)) + 1):
                for lam in [v for v in lams if v not in scores]:
                    new = [r for vi in tuning if acqs[(tag, vi)] is not None for r in run(tag, vi, method, lam, "acs",
                                                                                          "tuning")]
                    rows += new
                    scores[lam] = [r["PSNR"] for r in new]
                if method not in SWEPT:
                    break
                best, where = select_parameter(scores)
                if not where.startswith("edge") or len(lams) < 2:
                    break
                step = lams[1] / lams[0]
                lams = [lams[0] / step, *lams] if where == "edge (lowest)" else [*lams, lams[-1] * step]
                log(f"{tag} {method}: best λ {best:g} at the sweep's {where}; widening to {lams[0]:g}…{lams[-1]:g}")
            if method in SWEPT:
                chosen[(tag, method)] = select_parameter(scores)[0]
            log(f"[{time.time() - t_start:.0f}s] {tag} {method}: tuned")
    levels = uncertainty.RELIABILITY_LEVELS
    cal_rows = [r for r in rows if r["method"] == "dds" and "_ratios" in r]
    factors = std_factors(cal_rows, levels)
    tuning_pixels = int(sum(r["_ratios"].size for r in cal_rows))  # before the ratios are popped below
    tests = [vi for vi, v in enumerate(vols) if v["phase"] == "test"]
    oracle = [m for m in proto.get("oracle_maps", []) if m in methods]
    for setting in cfg["settings"]:
        tag = setting_tag(setting)
        for vi in tests:
            if acqs[(tag, vi)] is None:
                continue
            for method in methods:
                rows += run(tag, vi, method, chosen.get((tag, method)), "acs", "test")
                if method in oracle and vols[vi]["group"].startswith("real"):
                    rows += run(tag, vi, method, chosen.get((tag, method)), "oracle", "test")
            log(f"[{time.time() - t_start:.0f}s] {tag} {vols[vi]['name']} done")
    for r in rows:
        ratios = r.pop("_ratios", None)
        if ratios is not None and factors and r["method"] in DDS:  # a variant's request was not the one calibrated
            r["std_factor"] = factors[0.9] if 0.9 in factors else ""
            for p in levels:
                r[f"cov_raw_{round(100 * p)}"] = uncertainty.coverage(ratios, 1.0, p)
                r[f"cov_cal_{round(100 * p)}"] = uncertainty.coverage(ratios, factors[p], p)
    return rows, {"factors": factors, "tuning_pixels": tuning_pixels}


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write the protocol rows to ``path`` atomically (columns :data:`FIELDS`, floats at full precision)."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()})


def read_csv(path: Path) -> list[dict]:
    """The rows of a protocol CSV, as strings (what :mod:`benchmarks.tables` reads)."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
