"""``python -m mri_score.reconstruct --kspace PATH``: posterior-sampling reconstruction of MRI k-space files.

Inputs (a file or a directory of them, recognised by content): fastMRI ``.h5``, ISMRMRD/MRD raw ``.h5``
(Cartesian) and BART ``.cfl``/``.hdr``.  A test-split file (with ``mask``) uses its own mask; a fully sampled
file is undersampled retrospectively with fastMRI's mask functions seeded by the file name (default 4x
equispaced, centre fraction 0.08).  Coil maps, intensity scale and noise level come from the ACS of the
undersampled k-space.  Writes ``OUT/<stem>.h5`` (``reconstruction`` float32 at the recon-size crop,
``reconstruction_std`` with more than one sample, ``mask``, the settings as attrs), atomically, and on request
a PNG panel and NIfTI, DICOM or BART exports.  ``reconstruction`` is by default the coil-combined
posterior-mean magnitude ``|x|``, the anatomy estimate (``--magnitude sense``); ``--magnitude rss`` is the
option that matches fastMRI's noisy RSS targets.  This module only parses flags: the work is
:func:`mri_score.pipeline.reconstruct_file` with one :class:`mri_score.request.ReconRequest`.
Slices of a volume are sampled in batches (``--batch-slices``, :mod:`mri_score.batching`; the output does not
depend on it); a directory run can be split over torchrun ranks or ``--shard i/n`` processes, which deal the
files the same way and leave one merged ``summary.csv`` (:mod:`mri_score.sharding`, :mod:`mri_score.runs`).
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split

import argparse
import functools
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mri_score import limits, runs, sharding, uncertainty
from mri_score.adapt import ADAPT_PARAMS, AdaptSettings
from mri_score.atomic import check_output, check_output_dir, protected_inputs
from mri_score.batching import parse_batch_slices
from mri_score.cli import exit_on_input_error, one_line_usage_errors, sampler_options
from mri_score.errors import InputError, one_line
from mri_score.guidance import GuidanceOptions
from mri_score.inputs import input_kind, list_inputs, skipped_inputs
from mri_score.pipeline import demo_volume, output_paths, reconstruct_file
from mri_score.precision import PRECISIONS
from mri_score.prior import ComplexPrior
from mri_score.request import EXPORT_FORMATS, FLAGS, MAGNITUDES, MAP_PHASE_CHOICES, ReconRequest, RequestError
from mri_score.resolution import MAX_GRID_FACTOR
from mri_score.samplers import DEFAULT_STEPS, SAMPLERS
from operators.coils import DEFAULT_MAP_PHASE, ESPIRIT_THRESHOLD, MAPS_THRESHOLD
from operators.errors import OperatorInputError
from operators.masks import MASK_TYPES, create_mask_for_mask_type


def resolve_device(name: str) -> torch.device:
    """``cpu`` / ``cuda`` / ``cuda:N``, or an :class:`InputError` when CUDA is asked for but absent."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name} was asked for but CUDA is not available on this machine")
        return torch.device(name)
    if name != "cpu":
        raise InputError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    return torch.device("cpu")


def format_summary(s: dict) -> str:
    """One line per reconstructed file: timing, NFE, mask, metrics and what they are against, output path."""
    line = (f"{Path(s['file']).name}: {s['slices']} slices, {s['seconds']:.1f} s ({s['seconds_per_slice']:.2f} s/slice), "
            f"NFE {s['nfe_per_slice']}/slice, R={s['acceleration']:g} ({s['mask']})")
    if "PSNR" in s:
        line += f", PSNR {s['PSNR']:.2f} dB, SSIM {s['SSIM']:.4f}, NMSE {s['NMSE']:.4g} (against {s['target']})"
    elif s.get("target"):
        line += f" ({s['target']})"
    return line + f" -> {s['output']}"


EXAMPLES = """examples:
  python -m mri_score.reconstruct --demo
  python -m mri_score.reconstruct --kspace file_brain_AXT2_200_2000019.h5 --out recon
  python -m mri_score.reconstruct --kspace multicoil_val/ --out recon --accel 8 --mask-type random --quiet
  python -m mri_score.reconstruct --kspace raw_mrd.h5 --export nifti,dicom --png
  python -m mri_score.reconstruct --kspace scan.cfl --samples 8 --magnitude rss
  python -m mri_score.reconstruct --kspace multicoil_val/ --out recon --shard 0/4 --batch-slices 8
  torchrun --standalone --nproc_per_node=4 -m mri_score.reconstruct --kspace multicoil_val/ --out recon --device cuda
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after every flag's help; the examples block kept as written."""


def build_parser() -> argparse.ArgumentParser:
    """The ``reconstruct`` command line."""
    from mri_score import __version__

    p = one_line_usage_errors(argparse.ArgumentParser(prog="python -m mri_score.reconstruct",
                                                      description=__doc__.split("\n")[0], epilog=EXAMPLES,
                                                      formatter_class=_HelpFormatter))
    p.add_argument("--version", action="version", version=f"mri-score {__version__}")
    p.add_argument("--kspace", help="input: a fastMRI .h5, MRD raw .h5 or BART .cfl file, or a directory of them")
    p.add_argument("--out", default="reconstructions", help="output directory (created)")
    p.add_argument("--sampler", default="dds", help=f"posterior sampler, one of {', '.join(SAMPLERS)}")
    p.add_argument("--steps", "--nfe", dest="steps", type=int, default=None,
                   help="budget of network evaluations (NFE), for every sampler; None = the sampler's default "
                        f"({', '.join(f'{k} {v}' for k, v in DEFAULT_STEPS.items())})")
    p.add_argument("--samples", type=int, default=2, help="posterior samples K (mean and std; 1 writes no std)")
    p.add_argument("--prior", default=None, help="prior checkpoint (.safetensors); None = the shipped prior")
    p.add_argument("--accel", type=float, default=None,
                   help="retrospective acceleration R for fully sampled files (None: a file's own mask, else 4)")
    p.add_argument("--mask-type", default="equispaced", choices=MASK_TYPES, help="retrospective fastMRI mask")
    p.add_argument("--center-fraction", type=float, default=0.08, help="fully sampled centre fraction of the mask")
    p.add_argument("--maps", default="auto", choices=["auto", "espirit", "lowres"], help="coil-map estimator (ACS)")
    p.add_argument("--maps-phase", default="auto", choices=MAP_PHASE_CHOICES,
                   help="phase reference of the estimated maps, so the phase of the image the prior reconstructs: "
                        "virtual (a virtual body coil: the coils' dominant principal component made real), "
                        "estimator (ESPIRiT's coil 0 made real, as sigpy and BART return them) or auto (Cartesian "
                        f"data: {DEFAULT_MAP_PHASE}; radial and spiral: estimator). The output magnitude is the same "
                        "physics either way")
    p.add_argument("--maps-threshold", default=None, metavar="T",
                   help="ESPIRiT's relative singular-value threshold of the signal subspace, in (0, 1), or noise "
                        "(per slice, the calibration matrix's noise edge at the estimated k-space noise) (default "
                        f"{MAPS_THRESHOLD} on Cartesian data, sigpy's {ESPIRIT_THRESHOLD:g} where no noise is "
                        f"measurable; radial and spiral data: {ESPIRIT_THRESHOLD:g})")
    p.add_argument("--magnitude", default="sense", choices=MAGNITUDES,
                   help="sense: the coil-combined posterior-mean magnitude |x|, the anatomy estimate; rss: the "
                        "expected RSS of the noisy coil images, the option for scoring against fastMRI's noisy RSS "
                        "targets (noise floor included)")
    p.add_argument("--sampler-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a sampler option (repeatable), e.g. cg_iters=5 for dds (Cartesian data; "
                        "cg_iters_noncartesian on radial and spiral data); unknown keys are refused with the sampler's "
                        "list")
    p.add_argument("--gamma", type=float, default=None,
                   help="DDS data weight, the same as --sampler-opt gamma=G (None: from the noise levels)")
    p.add_argument("--condition", default="none", metavar="LABEL|auto|none",
                   help="label condition: none, auto (from each file's acquisition attribute, e.g. AXT2 -> "
                        "contrast=t2,anatomy=brain; none when unknown), a label (t2, knee) or field=label pairs "
                        "(contrast=t2,anatomy=brain); needs a conditional --prior or a --classifier")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="classifier-free guidance weight w >= 0 (conditional prior; None = 1, the conditional "
                        "prior; 0 = unconditional; w not 0 or 1 costs 2 NFE per step)")
    p.add_argument("--classifier", default=None, metavar="CKPT", help="noise-conditional classifier for classifier "
                   "guidance toward --condition")
    p.add_argument("--classifier-scale", type=float, default=None, metavar="S", help="classifier-guidance scale s > 0 "
                   "(None = 1)")
    p.add_argument("--classifier-input", default="noisy", choices=["noisy", "denoised"],
                   help="classify the noisy image or the denoised estimate (autograd through the prior; one extra "
                        "NFE per step outside dps)")
    p.add_argument("--grid", default="auto", metavar="native|auto|F",
                   help="sampling grid: auto (2x below 5.66x acceleration, or on radial and spiral data from grid "
                        "coverage 0.116, on matrices up to 128^2, or finer by the half-integer factor that brings "
                        "the header's pixel size into the prior's trained range, whichever is larger; else "
                        "native), native (the measured "
                        f"matrix) or a factor F in [1, {MAX_GRID_FACTOR:g}]; data consistency stays on the measured matrix")
    p.add_argument("--virtual-coils", default="auto", metavar="auto|all|N",
                   help="virtual coils the sampler works on for radial and spiral data (data and maps compressed "
                        "alike by density-weighted SVD): auto (3, measured on 8-coil data: "
                        "benchmarks/results/coil_compression.md), all (no compression) or N; Cartesian data keep "
                        "every coil")
    p.add_argument("--adapt", action="store_true",
                   help="test-time adaptation: a pilot reconstruction at half the NFE, the prior's norm and bias "
                        "parameters fine-tuned on it (denoising score matching), then the reconstruction "
                        "(mri_score.adapt; its time cost: benchmarks/results/adapt_check.md)")
    p.add_argument("--adapt-steps", type=int, default=None, help="adaptation: Adam steps (None = 40)")
    p.add_argument("--adapt-params", default=None, choices=ADAPT_PARAMS, help="adaptation: parameters trained "
                   "(None = bias)")
    p.add_argument("--adapt-sigma-min", type=float, default=None,
                   help="adaptation: lowest noise level trained on, scaled units (None = 0.1)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="network arithmetic: auto (bf16 autocast on CUDA and on CPUs with native bf16, else fp32), "
                        "bf16 or fp32")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler noise; slice i uses seed + i")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (torchrun: cuda means cuda:LOCAL_RANK)")
    p.add_argument("--batch-slices", default="auto", metavar="N|auto",
                   help="slices of a volume sampled together (network and data consistency on N x samples images); "
                        "auto: as many as fit in half the free memory of a GPU, one on a CPU (batches ran slower there); the "
                        "output does not depend on it")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="directory runs: reconstruct shard I of N (0-based, 0 <= I < N) of the inputs, dealt "
                        "largest first so the shards finish together (as torchrun rank I of N would; for Slurm "
                        "arrays and job queues); the last shard to finish writes the merged summary.csv")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's default)")
    p.add_argument("--png", action="store_true", help="write a PNG panel per file (<stem>.png)")
    p.add_argument("--export", default="", metavar="FORMATS",
                   help=f"also write the result as any of {', '.join(EXPORT_FORMATS)} (comma-separated): "
                        "<stem>.nii.gz and <stem>_std.nii.gz, DICOM series <stem>_dicom/ and <stem>_std_dicom/, "
                        "BART <stem>_reconstruction.cfl/.hdr")
    p.add_argument("--quiet", action="store_true", help="no progress display (result lines are still printed)")
    p.add_argument("--redo", action="store_true",
                   help="directory runs: recompute outputs that exist with the same settings (otherwise they are skipped)")
    p.add_argument("--demo", action="store_true", help="the shipped prior on the sample volume (README default)")
    return p


def request_from_args(args: argparse.Namespace) -> ReconRequest:
    """The validated :class:`ReconRequest` of the flags; a bad value is one line naming its flag."""
    try:
        return ReconRequest(
            sampler=args.sampler, steps=args.steps, samples=args.samples, seed=args.seed,
            options=sampler_options(args.sampler_opt, args.gamma, args.sampler), maps=args.maps,
            maps_phase=args.maps_phase, maps_threshold=args.maps_threshold,
            magnitude=args.magnitude, precision=args.precision, grid=args.grid, accel=args.accel,
            mask_type=args.mask_type, center_fraction=args.center_fraction, adapt=adapt_from_args(args),
            condition=args.condition, guidance=args.guidance, classifier=args.classifier,
            classifier_scale=args.classifier_scale, classifier_input=args.classifier_input, png=args.png,
            exports=args.export, virtual_coils=args.virtual_coils)
    except RequestError as err:
        raise InputError(err.render(FLAGS)) from None


def adapt_from_args(args: argparse.Namespace) -> AdaptSettings | None:
    """``--adapt`` and its ``--adapt-*`` options as :class:`AdaptSettings` (None without ``--adapt``), validated."""
    options = {"steps": args.adapt_steps, "params": args.adapt_params, "sigma_min": args.adapt_sigma_min}
    if not args.adapt:
        given = [k for k, v in options.items() if v is not None]
        if given:
            raise InputError(f"--adapt-{given[0].replace('_', '-')} given without --adapt")
        return None
    try:
        return AdaptSettings.from_options(**options)
    except InputError as err:
        raise InputError(f"--adapt: {err}") from None


def guidance_for(request: ReconRequest, prior: torch.nn.Module, runtime: ComplexPrior) -> GuidanceOptions:
    """The run's conditioning from the request (the classifier loaded once); errors name the flags."""
    classifier = None
    if request.classifier is not None:
        from mri_score.classifier import load_classifier

        try:
            classifier = load_classifier(request.classifier, runtime.device)
        except InputError as err:
            raise InputError(f"--classifier: {err}") from None
    scale = 1.0 if request.classifier_scale is None else request.classifier_scale
    try:
        return GuidanceOptions.create(prior, request.condition, request.guidance, classifier, scale,
                                      request.classifier_input, base=runtime)
    except InputError as err:
        raise InputError(f"--condition/--guidance: {err}") from None


def std_calibration_entry(prior: str | None, key: str) -> dict | None:
    """The entry ``key`` of the sidecar of ``prior`` (None: the shipped prior) with ``key`` and ``sidecar`` added, or None.

    None also when the sidecar was written for another prior file (SHA-256: :func:`mri_score.uncertainty.lookup_factor`).
    Keys: :func:`mri_score.uncertainty.settings_key` (Cartesian), :func:`mri_score.noncartesian.calibration_key`.
    """
    from mri_score.prior import default_prior_path

    path = Path(prior) if prior else default_prior_path()
    entry = uncertainty.lookup_factor(path, key)
    return None if entry is None else {**entry, "key": key, "sidecar": uncertainty.sidecar_path(path).name}


def trajectory_calibrations(prior: str | None, request: ReconRequest) -> dict:
    """The sidecar entries of ``prior`` fitted for ``request`` on a non-Cartesian trajectory under the current
    non-Cartesian defaults (keys ending ``/nc@vN``, :func:`mri_score.noncartesian.calibration_key`): ``{key: entry}``."""
    from mri_score.noncartesian import CALIBRATION_KEY_SUFFIX, trajectory_settings_key
    from mri_score.prior import default_prior_path

    path = Path(prior) if prior else default_prior_path()
    stem = trajectory_settings_key(request) + "/traj="
    return {k: v for k, v in sorted(uncertainty.matching_entries(path).items()) if k.startswith(stem)
            and k.endswith(CALIBRATION_KEY_SUFFIX)}


def _kind(path: Path) -> str | None:
    """The input's kind (:func:`mri_score.inputs.input_kind`), sniffed once per file; None when it cannot be read
    (:func:`mri_score.pipeline.reconstruct_file` then says why)."""
    try:
        return input_kind(path)
    except (InputError, OSError):
        return None


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Reconstruct ``--kspace`` (a file or a directory of them) into ``--out``; exit 2 on bad input."""
    args = build_parser().parse_args(argv)
    limits.check_threads(args.threads)
    limits.check_seed(args.seed)
    limits.check_steps(args.steps)
    limits.check_int(args.samples, "--samples", 1, limits.MAX_SAMPLES)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.demo:
        args.kspace = str(demo_volume())
        args.png = True
        if args.out == "reconstructions":
            args.out = "demo_output"
    if not args.kspace:
        raise InputError("--kspace PATH is required (or --demo)")
    request = request_from_args(args)
    batch_slices = parse_batch_slices(args.batch_slices)
    rank, world = sharding.process_of(args.shard)
    if request.accel is not None:  # e.g. a fractional R for the equispaced mask: refused once, before any file
        try:
            create_mask_for_mask_type(request.mask_type, [request.center_fraction], [request.accel])
        except OperatorInputError as err:
            raise InputError(f"--accel/--mask-type: {err}") from None
    if args.device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    device = resolve_device(args.device)
    src = Path(args.kspace)
    directory_run = src.is_dir()
    every = list_inputs(src)
    unreadable = [str(p) for p in skipped_inputs(src)]
    files = sharding.files_of(every, rank, world)
    csv_path = runs.summary_path(args.out, rank, world)
    others = [Path(p) for p in (args.prior, args.classifier) if p]
    summaries = [csv_path] if directory_run else []
    if directory_run and world > 1:
        summaries += [runs.summary_path(args.out), runs.marker_path(args.out, rank, world)]
        check_output_dir(args.out, every)  # also where this process was dealt no file
    check_outputs(args.out, files, [*others, *every], request, summaries=summaries)
    for path in unreadable if rank == 0 else []:  # a dangling link or a symlink loop: reported, the rest goes on
        print(f"error: {one_line(f'{path}: not a readable file (a dangling link or a symlink loop?); skipped')}",
              file=sys.stderr)
    run = _Run(args, request, device, batch_slices, directory_run, csv_path, rank, world, every)
    with protected_inputs([*files, *others]):
        rc = _run(run, files)
    return 2 if unreadable and rank == 0 else rc


def check_outputs(out: str | os.PathLike[str], files: list[Path], others: list[Path], request: ReconRequest,
                  summaries: Sequence[Path] = ()) -> None:
    """Refuse, before any work, outputs that would land on an input (real paths) or cannot be written.

    ``--out`` must be a directory (or absent) that does not resolve to the directory of an
    input or of the file a symlinked input names; no output (:func:`mri_score.pipeline.output_paths`: the
    ``.h5``, PNG and exports; the summary) may resolve to an input (``files`` and ``others``: the prior, the
    classifier), be a directory or lie under a file (:func:`mri_score.atomic.check_output`), and two inputs
    may not share an output (``a.h5`` and ``a.cfl``).  ``summaries`` are the run's own files (its summary CSV and,
    split over processes, the merged summary and its completion marker).
    """
    check_output_dir(out, files)
    inputs = [*files, *others]
    planned: list[Path] = []
    seen: dict[Path, Path] = {}
    for f in files:
        h5 = output_paths(f, out, request)["h5"]
        if h5 in seen:
            raise InputError(f"{f} and {seen[h5]} would both be written to {h5}; reconstruct them separately")
        seen[h5] = f
        planned += [p for key, p in output_paths(f, out, request).items() if not key.startswith("dicom")]
    planned += summaries
    for path in planned:
        check_output(path, inputs)


class _Progress:
    """Per-slice progress with ETA on stderr when it is a terminal (never mixed into stdout's result lines)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.label = ""
        self.t0 = time.time()
        self.shown = False

    def start(self, label: str) -> None:
        """A new file begins."""
        self.label, self.t0 = label, time.time()

    def __call__(self, done: int, total: int) -> None:
        """``done`` of ``total`` slices are reconstructed."""
        if not self.enabled:
            return
        elapsed = time.time() - self.t0
        eta = elapsed / done * (total - done)
        sys.stderr.write(f"\r\033[K{self.label}: slice {done}/{total}, {elapsed:.0f} s, ETA {eta:.0f} s")
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        """Erase the progress line before a result line is printed."""
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.shown = False


@dataclass
class _Run:
    """What one process of a reconstruction run does: its flags, request, device, batch and place in the run."""

    args: argparse.Namespace
    request: ReconRequest
    device: torch.device
    batch_slices: int | str
    directory_run: bool
    csv_path: Path
    rank: int
    world: int
    #: every input of the run (all processes'), in listing order
    inputs: list[Path]


def _run(run: _Run, files: list[Path]) -> int:
    """Load the prior once and reconstruct ``files`` (inputs registered, outputs checked by :func:`main`).

    A file that fails is reported in one line and recorded in the summary; the others go on (exit 2 at the
    end).  Split over processes, the process then marks itself finished and, if it is the last, merges the
    summaries (:func:`mri_score.runs.finish_process`).
    """
    from mri_score.prior import load_prior

    args, request = run.args, run.request
    prior = load_prior(args.prior, device=run.device)
    runtime = ComplexPrior(prior, request.precision)  # the one network runtime of the run
    # the prior's std factors by calibration key: the request's (Cartesian) and one per trajectory (non-Cartesian)
    std_cal_lookup = functools.lru_cache(maxsize=None)(functools.partial(std_calibration_entry, args.prior))
    std_cal = std_cal_lookup(uncertainty.settings_key(request))
    guidance = guidance_for(request, prior, runtime)
    progress = _Progress(not args.quiet)
    bad: list[str] = []
    run_settings = {"request": request.identity(), "prior": str(args.prior or "default"),
                    "prior_id": runs.prior_identity(getattr(prior, "meta", {})), "std_calibration": std_cal}
    # a non-Cartesian file's factor is keyed by its trajectory, known once it is read: its skip key carries every
    # trajectory entry of this request, so storing or changing one redoes those files (never the Cartesian ones)
    from mri_score.noncartesian import NONCARTESIAN_DEFAULTS_VERSION

    trajectory_settings = {**run_settings, "std_calibration_trajectories": trajectory_calibrations(args.prior, request),
                           "noncartesian_defaults": NONCARTESIAN_DEFAULTS_VERSION}
    if run.directory_run and run.world > 1:
        runs.start_process(args.out, run.rank, run.world)
    rows: list[dict] = []
    t_run, slices_done = time.time(), 0
    for n, f in enumerate(files, start=1):
        kind = _kind(f)
        key = runs.run_key(f, trajectory_settings if kind == "mrd_noncartesian" else run_settings)
        out_file = output_paths(f, args.out, request)["h5"]
        if run.directory_run and not args.redo and runs.is_done(out_file, key):
            rows.append({**runs.stored_summary(out_file), "file": str(f), "status": "skipped", "output": str(out_file)})
            print(one_line(f"{f.name}: done earlier with the same settings, skipped -> {out_file}", sys.stdout),
                  flush=True)
            runs.write_summary(run.csv_path, rows)
            continue
        progress.start(f"[{n}/{len(files)}] {f.name}" if len(files) > 1 else f.name)
        try:
            adapter, terms, attrs = guidance.setup(prior, f)
            summary = reconstruct_file(f, adapter, request, args.out, prior_name=str(args.prior or "default"),
                                       extra_terms=terms, extra_attrs={"run_settings": key, **attrs},
                                       progress=progress, batch_slices=run.batch_slices,
                                       std_calibration_lookup=std_cal_lookup, kind=kind)
        except Exception as err:  # one failed file never stops the others (SIGINT/SIGTERM are not Exceptions)
            progress.clear()
            if len(files) == 1:
                raise
            message = str(err) if isinstance(err, InputError) else f"{f}: {type(err).__name__}: {err}"
            print(f"error: {one_line(message)}", file=sys.stderr)
            bad.append(str(f))
            rows.append({"file": str(f), "status": "failed", "error": one_line(message)})
        else:
            progress.clear()
            print(one_line(format_summary(summary), sys.stdout), flush=True)
            slices_done += summary["slices"]
            rows.append({**summary, "status": "done", "slices_per_s": summary["slices"] / max(summary["seconds"], 1e-9)})
        if run.directory_run:
            runs.write_summary(run.csv_path, rows)  # after every file: a killed job leaves a current summary
    if run.directory_run:
        runs.write_summary(run.csv_path, rows)  # also for a process that was dealt no file
        seconds = time.time() - t_run
        merged = None
        if run.world > 1:
            merged = runs.finish_process(args.out, run.rank, run.world, runs.run_id(run.inputs, run_settings, run.world),
                                         [str(p) for p in run.inputs])
        where = f"; merged summary {merged}" if merged else ""
        print(one_line(f"rank {run.rank} of {run.world}: {slices_done} slices reconstructed in {seconds:.1f} s "
                       f"({slices_done / max(seconds, 1e-9):.3f} slices/s), {sum(r['status'] == 'skipped' for r in rows)} "
                       f"files skipped, {len(bad)} failed; summary {run.csv_path}{where}", sys.stdout), flush=True)
    if bad:
        print(f"error: {one_line(f'{len(bad)} of {len(files)} files failed: ' + ', '.join(bad))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
