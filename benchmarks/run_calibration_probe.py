"""``python benchmarks/run_calibration_probe.py``: does the std calibration transfer to anatomy it was not fitted on?

Issue #13, item 9: the split-conformal factor fitted on the frozen protocol's brain *tuning* slices covers
the synthetic test slices but not the real brain EPI at 8x.  This probe checks candidate changes on data
the protocol never reports, before anything is adopted:

* **a broader calibration set**: procedural body and limb slices (test-split seeds of
  :class:`mri_score.data.mixed.MixedCorpus`, corpus indices from 900, 128², the protocol's noise, masks and
  ACS maps) pooled with the brain tuning slices;
* **a pooled variance**: the K-sample variance averaged over a ``w × w`` window before the square root, so
  that the per-pixel std of K = 2 samples (one degree of freedom) is less heavy-tailed.

* **the factor rule**: one quantile of all settings pooled, or the largest per-setting factor
  (:func:`mri_score.uncertainty.every_group_factor`, the protocol's rule since it was probed here), each
  with and without a **noise floor** (:func:`mri_score.uncertainty.noise_floor_std`) combined in quadrature.

For each window it fits the 90 % factor on the brain tuning slices (both settings pooled, the protocol's
rule before the factor-rule table led it to the largest per-setting factor) and reports the coverage on
the brain tuning slices and on the body/limb slices, per setting, and the factor fitted on brain plus body/limb.
DDS as the protocol runs it (``methods.dds`` of ``--config``: NFE, K), native grid
(every slice here is inside the prior's pixel range).
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys

import numpy as np
import torch

from benchmarks.harness import add_check_flags, check_args, write_report
from benchmarks.protocol import BODY_FIRST, setting_tag, unreported_acquisitions, validate_protocol
from benchmarks.provenance import provenance
from mri_score import limits, uncertainty
from mri_score.cli import exit_on_input_error
from mri_score.config import load_config
from mri_score.errors import InputError
from mri_score.pipeline import reconstruct_volume
from mri_score.posterior import output_magnitude
from mri_score.prior import ComplexPrior, load_prior
from mri_score.request import ReconRequest

LEVEL = 0.9


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run the probe and write its table (``--out``)."""
    ap = add_check_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]), "calibration_probe.md", 128)
    ap.add_argument("--config", default="configs/bench_protocol_mixed.yaml", help="the frozen protocol to probe")
    ap.add_argument("--windows", default="1,3,5,7", help="comma-separated variance-pooling windows (1: the raw std)")
    ap.add_argument("--volumes", type=int, default=2, help="body/limb volumes (of --slices slices each)")
    args = ap.parse_args(argv if argv is not None else sys.argv[1:])
    check_args(args)
    limits.check_int(args.volumes, "--volumes", 1, 100)
    try:
        windows = [int(w) for w in args.windows.split(",")]
    except ValueError:
        raise InputError(f"--windows must be comma-separated odd integers, got {args.windows!r}") from None
    if not windows or any(w < 1 or w % 2 == 0 or w > 31 for w in windows):
        raise InputError(f"--windows must be odd integers in [1, 31], got {args.windows!r}")
    cfg = load_config(args.config)
    validate_protocol(cfg, args.config)
    prior = ComplexPrior(load_prior(cfg.get("prior")))
    dds = cfg["methods"]["dds"] or {}
    nfe, samples = int(dds["nfe"]), int(dds.get("samples", 2))
    outs: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray, torch.Tensor, float]]] = {}
    for tag, group, v, acq in unreported_acquisitions(cfg, args.volumes, args.slices, args.synth_size, 7 + args.seed):
        for s in range(acq["under"].shape[0]):
            cal = acq["cals"][s]
            st = ReconRequest(sampler="dds", steps=nfe, samples=samples, seed=v["seed"] + s, magnitude="sense",
                                 options=dict(dds.get("options", {})))
            res = reconstruct_volume(acq["under"][s : s + 1], acq["mask"], prior, st, calibrations=[cal])
            primary = output_magnitude(res.means[0][None], cal.maps, cal.sigma_y, "sense")[0].numpy()
            floor = uncertainty.noise_floor_std(cal.sigma_y, float(np.mean(acq["mask"] != 0)))
            outs.setdefault((tag, group), []).append((acq["truth"][s], primary, torch.from_numpy(res.std[0]), floor))
        print(f"{tag} {v['name']} done", flush=True)
    tags = [setting_tag(s) for s in cfg["settings"]]
    groups = [g for g in ("brain", "body/limb") if any(k[1] == g for k in outs)]
    head = " | ".join(f"{g} {t}" for g in groups for t in tags)
    lines = ["# Std calibration transfer probe (issue #13, item 9): brain tuning slices → body/limb slices", "",
             provenance(" ".join(["python benchmarks/run_calibration_probe.py", *(argv or sys.argv[1:])])).rstrip("\n"),
             f"- protocol `{args.config}`: DDS-{nfe}, K = {samples}, native grid; brain = its tuning slices "
             f"({sum(len(outs[(t, g)]) for t in tags for g in groups if g == 'brain')} slice × setting pairs); "
             f"body/limb = {args.volumes} × {args.slices} procedural slices from corpus index {BODY_FIRST} (test split, "
             f"{args.synth_size}², never reported); coverage of |err| ≤ {uncertainty.gaussian_z(LEVEL):.3f} · c · σ on "
             "object pixels at the nominal 90 %", "",
             f"| std | factor c (brain) | {head} | factor c (brain + body/limb) |",
             "|---|---|" + "---|" * (len(groups) * len(tags)) + "---|"]
    for w in windows:
        ratios = {key: np.concatenate([uncertainty.error_ratios(t, p, uncertainty.pooled_std(sd, w)) for t, p, sd, _ in items])
                  for key, items in outs.items()}
        brain = np.concatenate([r for (_, g), r in ratios.items() if g == "brain"])
        c = uncertainty.conformal_factor(brain, LEVEL)
        c_all = uncertainty.conformal_factor(np.concatenate(list(ratios.values())), LEVEL)
        cells = " | ".join(f"{100 * uncertainty.coverage(ratios[(t, g)], c, LEVEL):.1f} %" if (t, g) in ratios else "–"
                           for g in groups for t in tags)
        name = "raw K-sample std" if w == 1 else f"variance pooled {w}×{w}"
        lines.append(f"| {name} | {c:.2f} | {cells} | {c_all:.2f} |")
    lines += ["", "## Factor rule (fitted on the brain tuning slices only)", "",
              "*pooled*: one factor from all brain tuning ratios, both settings together (the protocol's rule until "
              "now); *every setting*: the largest of the per-setting factors (group-conditional conformal, so that each "
              "setting of the calibration set is covered at the nominal level by the one factor). *noise floor*: "
              "the calibrated std is `sqrt((c · std)² + floor²)`, the floor the data noise that all K samples "
              "share, not scaled by c (`mri_score.uncertainty.noise_floor_std`).", "",
              f"| std | rule | factor c | {head} |", "|---|---|---|" + "---|" * (len(groups) * len(tags))]
    for floor_on in (False, True):
        ratios = {key: np.concatenate([uncertainty.error_ratios(t, p, sd.numpy(), fl if floor_on else 0.0, LEVEL)
                                       for t, p, sd, fl in items]) for key, items in outs.items()}
        by_setting = {t: np.concatenate([ratios[(t, g)] for g in groups if g == "brain" and (t, g) in ratios])
                      for t in tags}
        rules = {"pooled": uncertainty.conformal_factor(np.concatenate(list(by_setting.values())), LEVEL),
                 "every setting": uncertainty.every_group_factor(by_setting, LEVEL)}
        for rule, c in rules.items():
            cells = " | ".join(f"{100 * uncertainty.coverage(ratios[(t, g)], c, LEVEL):.1f} %" if (t, g) in ratios
                               else "–" for g in groups for t in tags)
            lines.append(f"| {'raw + noise floor' if floor_on else 'raw K-sample std'} | {rule} | {c:.2f} | {cells} |")
    write_report(args.out, lines + [""])
    return 0


if __name__ == "__main__":
    sys.exit(main())
