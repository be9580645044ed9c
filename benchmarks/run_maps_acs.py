"""Coil maps from a narrow ACS: model error of each estimator against the simulation's true maps.

Run: ``python benchmarks/run_maps_acs.py`` → ``benchmarks/results/maps_acs.md``.

For each synthetic slice (training-split brain subjects of the corpus and procedural body and limb
cross-sections; no real image and no test subject, so the map settings chosen from this table are
disjoint from every reported number), 8 birdcage coils, SNR 100, and a column mask of every 4th line
plus ``w`` centre lines, it reports the **coil-model error**: the fraction of the energy of the true
coil images ``S_c x`` that the estimated maps ``Ŝ`` cannot represent,
``Σ |S x − Ŝ Ŝᴴ S x|² / Σ |S x|²`` in dB (lower is better; an error of −30 dB bounds the PSNR of any
SENSE reconstruction with those maps at roughly 30 dB above the image energy).

Estimators: the low-resolution maps (:func:`operators.coils.maps_lowres`), ESPIRiT on the square
``w × w`` region (sigpy's layout, :func:`operators.coils.maps_espirit` with ``two_d=True``) and
ESPIRiT on the rectangular region of a column mask (``48 × w``) with the kernel across the ACS
``2..6`` wide (the shipped rule, ``w // 3``, is marked).
"""

from __future__ import annotations

import argparse

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.harness import write_report
from benchmarks.provenance import provenance
from mri_score import limits
from mri_score.atomic import check_output
from mri_score.cli import exit_on_input_error
from mri_score.data.body import body_slice
from mri_score.simulation import simulate_volume, subject_volume
from operators.coils import birdcage_maps, espirit_kernel_shape, maps_espirit, maps_lowres

WIDTHS = (4, 5, 8, 12, 16, 24)
KERNELS = (2, 3, 4, 5, 6)


def slices(seed: int) -> list[tuple[str, np.ndarray]]:
    """Named complex slices: 3 training-split brain subjects (128², 2–2.5 mm) and 3 body/limb sections."""
    out = [(f"brain train subject {s} ({fam})",
            subject_volume("train", s, 1, (128, 128), fam, seed, first=3, pixel_mm=(2.0, 2.5))[0])
           for s, fam in enumerate(("t1", "t2", "flair"))]
    for i, (kind, shape) in enumerate((("body", (128, 96)), ("limb", (96, 96)), ("body", (192, 160)))):
        pix = (400.0 if kind == "body" else 200.0) / shape[1]
        out.append((f"{kind} {shape[0]}×{shape[1]}", body_slice(np.random.default_rng([seed, 5, i]), kind, shape, pix,
                                                                 "t2")))
    return out


def model_error_db(image: torch.Tensor, maps: torch.Tensor, est: torch.Tensor) -> float:
    """Energy of the coil images ``maps · image`` outside the span of ``est`` per pixel, relative, in dB."""
    coil = maps * image
    proj = est * (est.conj() * coil).sum(0, keepdim=True)
    return float(10 * np.log10(((coil - proj).abs() ** 2).sum() / (coil.abs() ** 2).sum()))


def estimators(width: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Name -> function of the undersampled k-space giving maps."""
    shipped = espirit_kernel_shape((48, width), two_d=False)[1]
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"low-resolution": lambda k: maps_lowres(k, width)}
    if width >= 8:
        out["ESPIRiT square w×w, kernel 6"] = lambda k: maps_espirit(k, width, two_d=True)
    for kc in KERNELS:
        if kc <= width - 2 or kc == 2:
            tag = " (shipped)" if kc == shipped else ""
            out[f"ESPIRiT 48×w, kernel 6×{kc}{tag}"] = lambda k, kc=kc: maps_espirit(k, width, kernel=(6, kc))
    return out


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run every estimator on every slice and ACS width; write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/maps_acs.md")
    args = ap.parse_args(argv)
    limits.check_seed(args.seed)
    limits.check_threads(args.threads)
    check_output(args.out)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    table: dict[tuple[int, str], list[float]] = {}
    seconds: dict[tuple[int, str], list[float]] = {}
    names = []
    for i, (name, img) in enumerate(slices(args.seed)):
        names.append(name)
        h, w = img.shape
        ksp, _, _ = simulate_volume(img[None], coils=8, snr=100.0, seed=args.seed + i)
        k = torch.from_numpy(ksp[0])
        x = torch.from_numpy(img.astype(np.complex64))
        maps = torch.from_numpy(birdcage_maps(8, (h, w)))
        for width in WIDTHS:
            mask = torch.zeros(w)
            mask[::4] = 1
            mask[w // 2 - width // 2: w // 2 - width // 2 + width] = 1
            for est_name, fn in estimators(width).items():
                t0 = time.perf_counter()
                est = fn(k * mask)
                seconds.setdefault((width, est_name), []).append(time.perf_counter() - t0)
                table.setdefault((width, est_name), []).append(model_error_db(x, maps, est))
        print(f"[{time.time() - t_start:.0f}s] {name}", flush=True)
    cmd = "python benchmarks/run_maps_acs.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# Coil maps from a narrow ACS: coil-model error against the true maps", "",
             provenance(cmd).rstrip("\n"), f"- n = {len(names)} slices per cell: " + "; ".join(names),
             "- data: 8 birdcage coils, SNR 100, column mask of every 4th line plus w centre lines", "",
             "Coil-model error Σ|Sx − ŜŜᴴSx|² / Σ|Sx|² in dB, mean [min, max] over the slices (lower is better), "
             "and the median seconds per slice.", "",
             "| ACS lines w | estimator | model error (dB) | s/slice |", "|---:|---|---|---:|"]
    for (width, est_name), vals in table.items():
        lines.append(f"| {width} | {est_name} | {np.mean(vals):.1f} [{np.min(vals):.1f}, {np.max(vals):.1f}] | "
                     f"{np.median(seconds[(width, est_name)]):.2f} |")
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
