"""``python -m mri_score.reconstruct --kspace PATH``: posterior-sampling reconstruction of fastMRI files.

A test-split file (with ``mask``) uses its own mask; a fully sampled file is
undersampled retrospectively with fastMRI's mask functions seeded by the file
name (default 4x equispaced, centre fraction 0.08).  Coil maps and the
intensity scale come from the ACS of the undersampled k-space.  Writes
``OUT/<name>.h5`` with ``reconstruction`` (float32, recon-size crop),
``reconstruction_std``, ``mask`` and the settings as attrs, atomically.
``reconstruction`` is by default the expected root-sum-of-squares magnitude
(noise floor included), i.e. the quantity fastMRI's targets are; ``--magnitude
sense`` writes the coil-combined ``|x|`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mri_score.errors import InputError, exit_on_input_error
from mri_score.fastmri_io import FastMRIVolume, center_crop, read_fastmri, recon_crop_size, save_reconstruction
from mri_score.metrics import volume_metrics
from mri_score.posterior import MAGNITUDES, SamplerSettings, check_acs, reconstruct_slice
from mri_score.samplers import SAMPLERS
from mri_score.simulate import make_mask
from operators.masks import MASK_TYPES

#: Working memory per slice is estimated as this many copies of one slice's multi-coil k-space.
_MEM_COPIES = 24


def resolve_device(name: str) -> torch.device:
    """``cpu`` / ``cuda`` / ``cuda:N``, or an :class:`InputError` when CUDA is asked for but absent."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name} was asked for but CUDA is not available on this machine")
        return torch.device(name)
    if name != "cpu":
        raise InputError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    return torch.device("cpu")


def check_memory(vol: FastMRIVolume, samples: int, device: torch.device) -> None:
    """Refuse before allocating when one slice's working set would not fit in memory."""
    _, c, h, w = vol.kspace.shape
    need = _MEM_COPIES * max(samples, 1) * c * h * w * 8
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):  # pragma: no cover - non-POSIX
            return
    if need > free:
        raise InputError(
            f"{vol.path}: one slice needs about {need / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB is free"
        )


def undersampling_mask(vol: FastMRIVolume, args: argparse.Namespace) -> tuple[np.ndarray, float, str]:
    """The mask to reconstruct with: the file's own (test split) or a retrospective fastMRI mask."""
    h, w = vol.kspace.shape[-2:]
    if vol.is_undersampled and args.accel is None:
        mask = vol.sampling_mask
        accel = float(vol.attrs.get("acceleration", w / max(1.0, float(mask.sum()) / (h if mask.ndim == 2 else 1))))
        return mask, accel, "file"
    accel = args.accel if args.accel is not None else 4.0
    mask, _ = make_mask(args.mask_type, accel, args.center_fraction, (h, w), vol.path.name)
    if mask.ndim == 1:
        mask[: vol.padding_left] = 0
        mask[vol.padding_right :] = 0
    return mask, accel, f"{args.mask_type}"


def reconstruct_file(path: Path, prior: torch.nn.Module, settings: SamplerSettings, args: argparse.Namespace,
                     device: torch.device) -> dict:
    """Reconstruct one file, write the output, return a summary."""
    vol = read_fastmri(path)
    mask, accel, mask_src = undersampling_mask(vol, args)
    check_acs(mask, str(path))
    check_memory(vol, settings.samples, device)
    channels = prior.cfg.in_channels
    if channels != 2:
        raise InputError(f"{args.prior or 'default prior'}: prior has {channels} image channels; complex MR images need 2")
    s, c, h, w = vol.kspace.shape
    crop = recon_crop_size((h, w), vol.recon_size)
    means, stds, zfs = [], [], []
    nfe = 0
    t0 = time.time()
    mask_t = torch.from_numpy(mask)
    for i in range(s):
        ks = torch.from_numpy(vol.kspace[i])
        res = reconstruct_slice(ks, mask_t, prior, SamplerSettings(**{**settings.__dict__, "seed": settings.seed + i}))
        means.append(center_crop(res.image, crop).numpy())
        stds.append(center_crop(res.std, crop).numpy())
        zfs.append(center_crop(res.zero_filled.abs(), crop).numpy())
        nfe += res.nfe
    seconds = time.time() - t0
    recon = np.stack(means).astype(np.float32)
    std = np.stack(stds).astype(np.float32)
    summary = {"file": str(path), "seconds": seconds, "seconds_per_slice": seconds / s, "nfe_per_slice": nfe // s,
               "slices": s, "acceleration": accel, "mask": mask_src}
    target = None
    if vol.target is not None and not vol.is_undersampled:
        target = center_crop(vol.target, recon_crop_size(vol.target.shape[-2:], vol.recon_size))
        if target.shape == recon.shape:
            summary.update(volume_metrics(target, recon))
        else:
            target = None
    attrs = {"sampler": settings.sampler, "steps": int(settings.steps), "samples": settings.samples,
             "seed": settings.seed, "magnitude": settings.magnitude, "acceleration": accel, "mask_source": mask_src,
             "nfe_per_slice": nfe // s,
             "prior": str(args.prior or "default"), "options": json.dumps(settings.options),
             "acquisition": str(vol.attrs.get("acquisition", "")), "patient_id": str(vol.attrs.get("patient_id", ""))}
    out = save_reconstruction(args.out, path.name, recon, {"reconstruction_std": std, "mask": mask}, attrs)
    summary["output"] = str(out)
    if args.png:
        from mri_score.figures import recon_panel

        png = Path(args.out) / (path.stem + ".png")
        recon_panel(png, np.stack(zfs), recon, std, target, title=f"{path.name} {settings.sampler} R={accel:g}")
        summary["png"] = str(png)
    return summary


def format_summary(s: dict) -> str:
    line = (f"{Path(s['file']).name}: {s['slices']} slices, {s['seconds']:.1f} s ({s['seconds_per_slice']:.2f} s/slice), "
            f"NFE {s['nfe_per_slice']}/slice, R={s['acceleration']:g} ({s['mask']})")
    if "PSNR" in s:
        line += f", PSNR {s['PSNR']:.2f} dB, SSIM {s['SSIM']:.4f}, NMSE {s['NMSE']:.4g}"
    return line + f" -> {s['output']}"


def demo_volume() -> Path:
    """The README's sample volume: simulated once from the held-out corpus split and cached."""
    from mri_score.simulate import corpus_volume, simulate_volume, write_fastmri_file

    cache = Path(os.environ.get("MRI_SCORE_CACHE", Path.home() / ".cache" / "mri_score"))
    path = cache / "demo" / "demo_brain_t2.h5"
    if not path.is_file():
        imgs = corpus_volume("test", 0, 2, (192, 192), "t2", seed=0)
        ksp, target, _ = simulate_volume(imgs, coils=8, snr=50.0, seed=0)
        write_fastmri_file(path, ksp, target, "SYN_T2", "demo000")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mri_score.reconstruct", description=__doc__.split("\n")[0])
    p.add_argument("--kspace", help="fastMRI .h5 file or a directory of them")
    p.add_argument("--out", default="reconstructions", help="output directory")
    p.add_argument("--sampler", default="dds", help=f"one of {', '.join(SAMPLERS)}")
    p.add_argument("--steps", type=int, default=None, help="network evaluations (sampler default when omitted)")
    p.add_argument("--samples", type=int, default=2, help="posterior samples K (mean and std)")
    p.add_argument("--prior", default=None, help="checkpoint path (default: the shipped prior)")
    p.add_argument("--accel", type=float, default=None, help="retrospective acceleration (fully sampled files)")
    p.add_argument("--mask-type", default="equispaced", choices=MASK_TYPES)
    p.add_argument("--center-fraction", type=float, default=0.08)
    p.add_argument("--maps", default="auto", choices=["auto", "espirit", "lowres"], help="coil-map estimator")
    p.add_argument("--magnitude", default="rss", choices=MAGNITUDES,
                   help="rss: expected RSS of the noisy coil images, as fastMRI targets (default); sense: |x|")
    p.add_argument("--gamma", type=float, default=None, help="DDS data weight (default: from noise levels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--png", action="store_true", help="write a PNG panel per file")
    p.add_argument("--demo", action="store_true", help="shipped prior on the sample volume (README default)")
    return p


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.demo:
        args.kspace = str(demo_volume())
        args.png = True
        if args.out == "reconstructions":
            args.out = "demo_output"
    if not args.kspace:
        raise InputError("--kspace PATH is required (or --demo)")
    if args.sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {args.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if args.accel is not None and not 1.0 < args.accel <= 32:
        raise InputError(f"--accel must be in (1, 32], got {args.accel}")
    if not 0.0 < args.center_fraction < 0.5:
        raise InputError(f"--center-fraction must be in (0, 0.5), got {args.center_fraction}")
    device = resolve_device(args.device)
    from mri_score.prior import load_prior

    prior = load_prior(args.prior, device=device)
    options = {"gamma": args.gamma} if (args.gamma is not None and args.sampler == "dds") else {}
    settings = SamplerSettings(sampler=args.sampler, steps=args.steps, samples=args.samples, seed=args.seed,
                               maps=args.maps, magnitude=args.magnitude, options=options)
    src = Path(args.kspace)
    if src.is_dir():
        files = sorted(src.glob("*.h5"))
        if not files:
            raise InputError(f"{src}: directory holds no .h5 files")
    elif src.exists():
        files = [src]
    else:
        raise InputError(f"{src}: no such file or directory")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    files = files[rank::world]
    if Path(args.out).resolve() in {f.parent.resolve() for f in files}:
        raise InputError(f"{args.out}: output directory must differ from the input directory (inputs are never overwritten)")
    bad: list[str] = []
    iterator = files
    if len(files) > 1:
        from tqdm import tqdm

        iterator = tqdm(files, desc="files", unit="file", disable=not sys.stderr.isatty())
    for f in iterator:
        try:
            summary = reconstruct_file(f, prior, settings, args, device)
        except InputError as err:
            if len(files) == 1:
                raise
            print(f"error: {err}", file=sys.stderr)
            bad.append(str(f))
            continue
        print(format_summary(summary), flush=True)
    if bad:
        print(f"error: {len(bad)} of {len(files)} files failed: {', '.join(bad)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
