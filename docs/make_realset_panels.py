"""Development-set panels of the protocol: truth, L1-wavelet, DDS, |error| of each, calibrated std, with PSNR/SSIM.

Run: ``python docs/make_realset_panels.py [--prior PATH] [--out-dir docs]`` →
``<out-dir>/realset_<volume>_<setting>.png``.

The middle slice of each real development volume of ``configs/bench_dev.yaml`` (the development protocol),
under its evaluation physics, undersampled and calibrated exactly as the protocol does
(:func:`benchmarks.protocol.real_volumes`, the real part of :func:`~benchmarks.protocol.protocol_volumes`, and
:func:`~benchmarks.protocol.acquire` of the whole volume, so the slice's noise and DDS seed are the protocol's);
L1-wavelet at the λ the protocol chose on its tuning slices (:func:`benchmarks.tables.selection` of
``benchmarks/results/bench_dev.csv``), DDS with the protocol's request and ``--prior`` (default: the shipped
prior), its std scaled by that prior's stored calibration factor for the request
(:func:`mri_score.uncertainty.lookup_factor`; the raw std, so labelled, where its sidecar has none).  PSNR and
SSIM are the protocol's (:func:`benchmarks.protocol.score`, against the noise-free truth).  The final test
volumes are never read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.protocol import acquire, dds_request, read_csv, real_volumes, score, setting_tag, solve
from benchmarks.tables import DEFAULT_CSV, selection
from mri_score import uncertainty
from mri_score.config import load_config
from mri_score.figures import image_row
from mri_score.prior import ComplexPrior, default_prior_path, load_prior

ROOT = Path(__file__).resolve().parents[1]
#: The development protocol whose acquisition, settings and DDS request the panels use.
CONFIG = ROOT / "configs" / "bench_dev.yaml"


def calibration(prior_path: Path, dds: dict) -> tuple[float, str]:
    """The std factor stored for the protocol's DDS request in the prior's sidecar, and the std panel's title.

    Parameters
    ----------
    prior_path : Path
        The prior file (its sidecar is ``<prior>.calibration.json``).
    dds : dict
        The protocol's ``methods.dds`` entry.

    Returns
    -------
    (float, str)
        The factor (1.0 when none is stored) and the panel title.
    """
    key = uncertainty.settings_key(dds_request(dds))
    entry = uncertainty.lookup_factor(prior_path, key)
    if entry is None:
        return 1.0, f"raw std (no calibration for {key})"
    return float(entry["factor"]), f"calibrated std (×{entry['factor']:.2f})"


def panels_for(vol: dict, setting: dict, cfg: dict, lam: float, prior: ComplexPrior,
               std: tuple[float, str]) -> tuple[list[tuple[str, np.ndarray, str]], float, str]:
    """The panels of one volume's middle slice in one setting, the gray window and the figure title.

    Parameters
    ----------
    vol : dict
        A real volume as the protocol lists it.
    setting : dict
        One of the protocol's settings.
    cfg : dict
        The protocol config.
    lam : float
        The L1-wavelet λ chosen for the setting.
    prior : ComplexPrior
        The prior DDS samples with.
    std : (float, str)
        The std factor and its panel title (:func:`calibration`).

    Returns
    -------
    (list of (str, np.ndarray, str), float, str)
        Panels for :func:`mri_score.figures.image_row`, the truth's 99.5th percentile and the title; an empty
        list when the setting's mask is not realisable on the volume.
    """
    tag, data, dds = setting_tag(setting), cfg["data"], cfg["methods"]["dds"]
    acq = acquire(vol, setting, int(data.get("coils", 8)), float(data.get("snr", 100)))
    if acq is None:
        return [], 0.0, ""
    mid = acq["truth"].shape[0] // 2
    truth = acq["truth"][mid]
    outs = {"l1": solve("l1_wavelet", cfg["methods"]["l1_wavelet"], lam, acq, mid, "acs", None, vol["seed"]),
            "dds": solve("dds", dds, None, acq, mid, "acs", prior, vol["seed"])}
    m = {k: score(truth, acq["target_rss"][mid], o) for k, o in outs.items()}
    grid = outs["dds"]["grid_factor"]
    panels = [("truth (noise-free)", truth, "gray"),
              (f"L1 λ={lam:g}: {m['l1']['PSNR']:.2f} dB, SSIM {m['l1']['SSIM']:.3f}", outs["l1"]["primary"], "gray"),
              (f"DDS-{dds['nfe']}: {m['dds']['PSNR']:.2f} dB, SSIM {m['dds']['SSIM']:.3f}", outs["dds"]["primary"], "gray"),
              ("|error| L1", np.abs(outs["l1"]["primary"] - truth), "magma"),
              ("|error| DDS", np.abs(outs["dds"]["primary"] - truth), "magma"),
              (std[1], outs["dds"]["std"] * std[0], "magma")]
    title = (f"{vol['name'].removesuffix('.h5')} slice {mid}, {tag}, {vol['pixel_mm'][0]:g} mm, ACS maps, DDS grid "
             f"×{grid:g} ({cfg['name']}; error and std maps each windowed to their own 99.5th percentile)")
    return panels, float(np.percentile(truth, 99.5)), title


def main(argv: list[str] | None = None) -> int:
    """Write one panel per real development volume and setting."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default=None, help="prior checkpoint (default: the shipped default prior)")
    ap.add_argument("--out-dir", default=str(ROOT / "docs"), help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    cfg = load_config(CONFIG)
    chosen = selection(read_csv(ROOT / "benchmarks" / "results" / DEFAULT_CSV))
    prior_path = Path(args.prior) if args.prior else default_prior_path()
    std = calibration(prior_path, cfg["methods"]["dds"])
    prior = ComplexPrior(load_prior(prior_path))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for vol in real_volumes(cfg):
        for setting in cfg["settings"]:
            tag = setting_tag(setting)
            panels, vmax, title = panels_for(vol, setting, cfg, chosen[(tag, "l1_wavelet")]["lam"], prior, std)
            if not panels:
                continue
            out = out_dir / f"realset_{vol['name'].removesuffix('.h5')}_{tag.replace(' ', '_')}.png"
            image_row(out, panels, vmax, title)
            print(out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
