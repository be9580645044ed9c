"""``python benchmarks/run_noncartesian_floor.py``: DDS's data-weight floor on radial and spiral data, per kind.

Run: ``python benchmarks/run_noncartesian_floor.py --threads 2`` → ``benchmarks/results/noncartesian_floor_tuning.md``.

Each DDS step solves ``(I + γAᴴA) x = x̂₀ + γAᴴy`` in part; the noise rule's data weight γ falls below 1 once σ is
small, so its lower clip (``gamma_min``, 1, tuned on Cartesian data) sets the weight for most steps.  On a trajectory
the unweighted NUFFT Gram ``AᴴA`` is not bounded by ``I`` as a masked orthonormal FFT is (its densely sampled centre
has eigenvalues far above 1), so one clip need not suit both physics: on trajectories DDS clips at
``gamma_min_noncartesian`` when given, else at the floor :data:`mri_score.noncartesian.NONCARTESIAN_GAMMA_FLOOR`
gives the trajectory's kind (:meth:`mri_score.samplers.dds.DDSConfig.gamma_floor`).  This script measures PSNR per
floor on the synthetic **tuning** subjects of the development protocol (:class:`benchmarks.tuning_split.TuningSplit`:
``--config``'s ``data.tuning`` subjects, never its test subjects, never real images), per trajectory setting, with
the ``reconstruct`` command's DDS request otherwise (``--nfe`` NFE, K = ``--samples``, virtual coils auto, the CG
steps of :data:`mri_score.noncartesian.NONCARTESIAN_CG_BY_COVERAGE`, ``--grid``: ``auto``, the command's grid).

Decision rule (version 1, fixed before its first run): per trajectory kind, the floor's score is the mean PSNR over
the kind's settings and tuning volumes; the floors 0.1, 0.3 and 1 are swept by
:func:`benchmarks.stats.sweep_until_interior` with step 3 (a best at an end widened by one ×3 step at most twice, an
interior best refined by its half steps ×/÷ √3; ties to the smaller floor).  The kind's best floor becomes its entry of
``NONCARTESIAN_GAMMA_FLOOR`` where it beats 1 (the Cartesian floor) by at least :data:`ADOPT_MARGIN_DB` on the tuning
subjects; otherwise the kind keeps ``gamma_min``.  The choice is then checked, not chosen, on the benchmark's held-out
data (``run_noncartesian.py``: synthetic test subjects and the real development images, against the committed run at
the former default).

Decision rule (version 2, fixed before its first run; with ``--final-denoise k``, k > 0): DDS's final denoising step
(``final_denoise``, :meth:`mri_score.likelihood.Likelihood.carried_noise_std`) removes the data noise the last
data-consistency step keeps, and a higher floor keeps more of it, so the floor is swept again with the step at factor
k on every run (``final_denoise_noncartesian = k``; the same sweep as version 1).  The kind's best floor with the
step is compared with the kind's current default (the request without options: its ``NONCARTESIAN_GAMMA_FLOOR``
entry and its ``NONCARTESIAN_FINAL_DENOISE`` entry, none at the first run), run on the same slices.  The pair (best
floor, k) becomes the kind's default where its mean PSNR over the kind's settings beats the current default by at
least :data:`ADOPT_MARGIN_DB` and no setting's mean is more than :data:`ADOPT_MARGIN_DB` below the default's;
otherwise the kind keeps its default.  k = 1 is the level the carried-noise formula predicts (not tuned).  An
adoption fills both tables and bumps ``NONCARTESIAN_DEFAULTS_VERSION`` (the std factors are refitted).  Command:
``python benchmarks/run_noncartesian_floor.py --threads 2 --spokes 16 32 64 96 --interleaves 4 8 16 --final-denoise 1
--out benchmarks/results/noncartesian_floor_final_denoise.md``.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys

import numpy as np

from benchmarks.harness import check_args, write_report
from benchmarks.provenance import provenance
from benchmarks.stats import sweep_until_interior
from benchmarks.tuning_split import (
    TuningSplit,
    add_trajectory_flags,
    scored_reconstruction,
    setting_label,
    tuning_inputs,
)
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.errors import InputError
from mri_score.noncartesian import NonCartesianVolume, resolve_grid
from mri_score.prior import DEFAULT_PRIOR, ComplexPrior
from mri_score.request import ReconRequest
from mri_score.samplers.dds import FINAL_DENOISE_MAX

#: Rule: the floors every kind's sweep starts from, and its step (×3; half steps ×/÷ √3).
FLOORS = (0.1, 0.3, 1.0)
STEP = 3.0
#: Rule: a best at an end of the sweep widens it by one step at most this many times.
WIDEN = 2
#: Rule: the floor of the Cartesian path (``gamma_min``), which a kind keeps unless its best floor beats it by this.
REFERENCE = 1.0
ADOPT_MARGIN_DB = 0.1


def build_parser() -> argparse.ArgumentParser:
    """The script's flags (the shared ones of :func:`benchmarks.tuning_split.add_trajectory_flags` included)."""
    ap = one_line_usage_errors(add_trajectory_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]),
                                                    "noncartesian_floor_tuning.md"))
    ap.add_argument("--samples", type=int, default=2, help="posterior samples K per slice")
    ap.add_argument("--grid", default="auto", help="sampling grid of DDS: auto (the command's), native or a factor")
    ap.add_argument("--final-denoise", type=float, default=0.0,
                    help="DDS's final_denoise on every run of the sweep (rule version 2 where > 0: the best floor "
                         "with it against the current default); 0: rule version 1, the step off")
    return ap


#: The row label of the current default (rule version 2: the request without options).
DEFAULT = "default"


def run_floor(rows: list[dict], tag: str, name: str, acq: NonCartesianVolume, prior: ComplexPrior,
              request: ReconRequest, floor: float | str, final_denoise: float = 0.0) -> float:
    """Reconstruct ``acq`` at data-weight floor ``floor`` (:data:`DEFAULT`: the request's own options) with DDS's
    final denoising factor ``final_denoise`` (0: off, as rule version 1 swept it); append ``{setting, volume, floor,
    psnr, seconds}`` (seconds per slice) to ``rows`` and return the volume's PSNR (dB)."""
    options = ({} if floor == DEFAULT else
               {"gamma_min_noncartesian": floor, "final_denoise_noncartesian": final_denoise})
    psnr, seconds = scored_reconstruction(acq, prior, request.replace(options=options))
    rows.append({"setting": tag, "volume": name, "floor": floor, "psnr": psnr, "seconds": seconds})
    label = floor if floor == DEFAULT else f"{floor:g}"
    print(f"{tag} | {name} | floor {label}: {psnr:.2f} dB, {seconds:.2f} s/slice", flush=True)
    return psnr


def kind_score(rows: list[dict], acquisitions: list[tuple[str, str, NonCartesianVolume, ReconRequest]],
               prior: ComplexPrior, floor: float | str, final_denoise: float = 0.0) -> float:
    """The rule's score of ``floor`` on one kind: the mean PSNR over its ``(setting, volume, acquisition, request)``."""
    return float(np.mean([run_floor(rows, tag, name, acq, prior, request, floor, final_denoise)
                          for tag, name, acq, request in acquisitions]))


def setting_means(rows: list[dict], floor: float | str, tags: list[str]) -> dict[str, float]:
    """Mean PSNR per setting of the rows at ``floor``."""
    return {t: float(np.mean([r["psnr"] for r in rows if r["floor"] == floor and r["setting"] == t])) for t in tags}


def choose_with_step(best: float, scores: dict, per_setting: dict[str, dict[str, float]]) -> bool:
    """Rule version 2: whether the kind's best floor with the final denoising step replaces its default — its mean
    beats :data:`DEFAULT`'s by at least :data:`ADOPT_MARGIN_DB` and no setting is more than that below the default's
    (``per_setting``: ``{"best": {tag: psnr}, "default": {tag: psnr}}``)."""
    if DEFAULT not in scores:
        raise InputError("rule version 2 needs the current default's score")
    if scores[best] - scores[DEFAULT] < ADOPT_MARGIN_DB:
        return False
    return all(per_setting["best"][t] >= per_setting["default"][t] - ADOPT_MARGIN_DB for t in per_setting["default"])


def choose(best: float, scores: dict[float, float]) -> float | None:
    """The rule's entry for a kind from its sweep: ``best`` where it beats :data:`REFERENCE` by at least
    :data:`ADOPT_MARGIN_DB`, else None (the kind keeps ``gamma_min``)."""
    if REFERENCE not in scores:
        raise InputError(f"the sweep must include the reference floor {REFERENCE:g}")
    return best if best != REFERENCE and scores[best] - scores[REFERENCE] >= ADOPT_MARGIN_DB else None


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Sweep the floor per trajectory kind on the tuning slices; write the report with the rule's entries."""
    args = build_parser().parse_args(argv)
    check_args(args)
    if not 0.0 <= args.final_denoise <= FINAL_DENOISE_MAX:
        raise InputError(f"--final-denoise must be in [0, {FINAL_DENOISE_MAX:g}], got {args.final_denoise:g}")
    settings, split, prior, vols = tuning_inputs(args)
    request = ReconRequest(sampler="dds", steps=args.nfe, samples=args.samples, seed=args.seed, grid=args.grid)
    meta = getattr(prior.model, "meta", None)
    rows: list[dict] = []
    sweeps: dict[str, tuple[float, dict[float, float], bool]] = {}
    grids: set[float] = set()
    for kind in dict.fromkeys(k for k, _ in settings):
        acquisitions = []
        for k, count in settings:
            if k != kind:
                continue
            for v in vols:
                acq = split.acquire(v, kind, count)
                resolved = resolve_grid(request, acq, meta)
                grids.add(resolved.grid_factor)
                acquisitions.append((setting_label(kind, count), v["name"], acq, resolved))
        sweeps[kind] = sweep_until_interior(
            lambda f, acqs=acquisitions: kind_score(rows, acqs, prior, f, args.final_denoise), FLOORS, STEP, WIDEN)
        if args.final_denoise > 0:
            sweeps[kind][1][DEFAULT] = kind_score(rows, acquisitions, prior, DEFAULT)
    command = " ".join(["python benchmarks/run_noncartesian_floor.py", *(argv if argv is not None else sys.argv[1:])])
    write_report(args.out, report(args, command, split, rows, sweeps, grids))
    return 0


def report(args: argparse.Namespace, command: str, split: TuningSplit, rows: list[dict],
           sweeps: dict[str, tuple[float, dict[float, float], bool]], grids: set[float]) -> list[str]:
    """The markdown report: provenance, mean PSNR per setting and floor, each kind's sweep and the rule's entries."""
    spec = split.spec
    tags = list(dict.fromkeys(r["setting"] for r in rows))
    floors: list[float | str] = sorted({r["floor"] for r in rows if r["floor"] != DEFAULT})
    if any(r["floor"] == DEFAULT for r in rows):
        floors.append(DEFAULT)
    step = args.final_denoise
    rule = (f"version 2, fixed before the run: the floors swept as in version 1 with "
            f"`final_denoise_noncartesian={step:g}` on every run; the kind's best floor with it becomes its default "
            f"(floor and final denoising) where its mean beats "
            f"the current default (row *{DEFAULT}*: the request without options) by at least {ADOPT_MARGIN_DB:g} dB "
            f"and no setting's mean is more than {ADOPT_MARGIN_DB:g} dB below the default's" if step > 0 else
            f"version 1, fixed before the run: per kind the mean PSNR over its settings and volumes; floors "
            f"{', '.join(f'{f:g}' for f in FLOORS)} swept with step ×{STEP:g} (an end widened at most {WIDEN} times, an "
            f"interior best refined by ×/÷ √{STEP:g}; ties to the smaller); the best becomes the kind's "
            f"`NONCARTESIAN_GAMMA_FLOOR` entry where it beats {REFERENCE:g} by at least {ADOPT_MARGIN_DB:g} dB")
    volumes = len({r["volume"] for r in rows})
    lines = ["# DDS's data-weight floor on non-Cartesian data (issue #32)", "",
             provenance(command)
             + f"- prior: {args.prior or f'shipped default (`mri_score/weights/{DEFAULT_PRIOR}`)'}; DDS with the "
             f"`reconstruct` defaults at {args.nfe} NFE, K = {args.samples}, sampler seed {args.seed} (+ slice index), "
             f"grid {args.grid} ({', '.join(sorted(f'{g:g}x' for g in grids))} here), virtual coils auto, the tuned CG "
             "steps; only `gamma_min_noncartesian` varies"
             + (f", every floor with `final_denoise_noncartesian={step:g}` (the row *{DEFAULT}* without options)"
                if step > 0 else ", the final denoising step off (`final_denoise_noncartesian=0`)")
             + "\n"
             f"- data: `{args.config}` tuning subjects {', '.join(map(str, split.subjects))} (held-out split, from "
             f"corpus slice {spec['first']}), {args.slices} slice(s) each at {args.synth_size}², {spec['coils']} "
             f"birdcage coils, SNR {spec['snr']:g}; never test subjects or real images; n = {volumes} volumes per "
             "setting\n"
             "- PSNR: fastMRI's per-volume PSNR of |x| against the noise-free magnitude, mean over volumes; time: "
             "median seconds per slice over the setting's volumes (calibration included)\n"
             f"- rule ({rule})", "",
             "## Mean PSNR (dB) and seconds per slice", "",
             "| floor | " + " | ".join(tags) + " |", "|---|" + "---|" * len(tags)]
    for f in floors:
        cells = []
        for t in tags:
            sel = [r for r in rows if r["floor"] == f and r["setting"] == t]
            cells.append(f"{np.mean([r['psnr'] for r in sel]):.2f} ({np.median([r['seconds'] for r in sel]):.2f} s)"
                         if sel else "")
        lines.append(f"| {f if f == DEFAULT else format(f, 'g')} | " + " | ".join(cells) + " |")
    ref = DEFAULT if step > 0 else f"{REFERENCE:g}"
    lines += ["", "## Per kind: the rule's sweep", "", f"| kind | floor: mean PSNR (dB) | best | interior | Δ vs {ref} "
              "| entry |", "|---|---|---|---|---|---|"]
    entries = {}
    for kind, (best, scores, interior) in sweeps.items():
        sweep = ", ".join(f"{f:g}: {s:.2f}" for f, s in sorted((f, v) for f, v in scores.items() if f != DEFAULT))
        if step > 0:
            kind_tags = [t for t in tags if t.startswith(kind)]
            per = {"best": setting_means(rows, best, kind_tags), "default": setting_means(rows, DEFAULT, kind_tags)}
            adopt = choose_with_step(best, scores, per)
            entries[kind] = (best, step) if adopt else None
            sweep += f", {DEFAULT}: {scores[DEFAULT]:.2f}"
            entry = "keeps its default" if not adopt else f"floor {best:g}, final_denoise {step:g}"
            delta = scores[best] - scores[DEFAULT]
        else:
            entries[kind] = choose(best, scores)
            entry = "keeps gamma_min" if entries[kind] is None else f"{entries[kind]:g}"
            delta = scores[best] - scores[REFERENCE]
        lines.append(f"| {kind} | {sweep} | {best:g} | {'yes' if interior else 'no'} | {delta:+.2f} | {entry} |")
    table = {k: v for k, v in entries.items() if v is not None}
    target = ("(floor, final_denoise) per kind, `NONCARTESIAN_GAMMA_FLOOR` and the final denoising step" if step > 0
              else "`NONCARTESIAN_GAMMA_FLOOR`")
    lines += ["", f"**Entries by the rule** ({target}): `{table!r}`.", ""]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
