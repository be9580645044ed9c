"""Real-set panels of the frozen protocol (issue 14, item 6): truth, L1-wavelet, DDS, |error| of each, calibrated std.

Run: ``python docs/make_realset_panels.py`` → ``docs/realset_<volume>_<setting>.png``.

The middle slice of each real volume of ``configs/bench_protocol_mixed.yaml`` (the default prior's
protocol), simulated, undersampled and calibrated exactly as the protocol does
(:func:`benchmarks.protocol.acquire`); L1-wavelet at the λ the protocol chose on its tuning slices (read
from ``benchmarks/results/bench_protocol_mixed.csv``), DDS with the protocol's settings and the default
prior, its std scaled by the prior's stored calibration factor.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml

from benchmarks.protocol import acquire, dds_request, protocol_volumes, read_csv, setting_tag, solve
from benchmarks.tables import DEFAULT_CSV, selection
from mri_score import uncertainty
from mri_score.figures import image_row
from mri_score.metrics import volume_metrics
from mri_score.prior import ComplexPrior, default_prior_path, load_prior

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Write one panel per real volume and setting."""
    cfg = yaml.safe_load((ROOT / "configs" / "bench_protocol_mixed.yaml").read_text())
    cfg["data"]["tuning"]["slices_per_subject"] = cfg["data"]["test"]["slices_per_subject"] = 1
    chosen = selection(read_csv(ROOT / "benchmarks" / "results" / DEFAULT_CSV))
    dds = cfg["methods"]["dds"]
    key = uncertainty.settings_key(dds_request(dds))
    factor = (uncertainty.lookup_factor(default_prior_path(), key) or {"factor": 1.0})["factor"]
    prior = ComplexPrior(load_prior())
    coils, snr = int(cfg["data"].get("coils", 8)), float(cfg["data"].get("snr", 100))
    for vol in (v for v in protocol_volumes(cfg) if v["group"].startswith("real")):
        mid = vol["images"].shape[0] // 2
        vol = {**vol, "images": vol["images"][mid : mid + 1]}
        for setting in cfg["settings"]:
            tag = setting_tag(setting)
            acq = acquire(vol, setting, coils, snr)
            lam = chosen[(tag, "l1_wavelet")]["lam"]
            l1 = solve("l1_wavelet", cfg["methods"]["l1_wavelet"], lam, acq, 0, "acs", None, vol["seed"])
            dd = solve("dds", dds, None, acq, 0, "acs", prior, vol["seed"])
            truth = acq["truth"][0]
            psnr = {n: volume_metrics(truth[None], o["primary"][None])["PSNR"] for n, o in (("l1", l1), ("dds", dd))}
            panels = [("truth", truth, "gray"), (f"L1 λ={lam:g} ({psnr['l1']:.1f} dB)", l1["primary"], "gray"),
                      (f"DDS-{dds['nfe']} ({psnr['dds']:.1f} dB)", dd["primary"], "gray"),
                      ("|error| L1", np.abs(l1["primary"] - truth), "magma"),
                      ("|error| DDS", np.abs(dd["primary"] - truth), "magma"),
                      (f"calibrated std (×{factor:.1f})", dd["std"] * factor, "magma")]
            out = ROOT / "docs" / f"realset_{vol['name'].removesuffix('.h5')}_{tag.replace(' ', '_')}.png"
            image_row(out, panels, float(np.percentile(truth, 99.5)),
                      f"{vol['name']} slice {mid}, {tag}, ACS maps (error maps share no window with each other)")
            print(out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
