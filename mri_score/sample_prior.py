"""``python -m mri_score.sample_prior [--prior CKPT] --out grid.png``: samples from a prior, optionally conditioned.

EDM Heun sampler (Karras et al. 2022, deterministic 2nd-order ODE;
:func:`mri_score.generation.heun_samples`), so a user can see what the prior
learned.  ``--condition LABEL`` (e.g. ``t2``, ``contrast=flair,anatomy=brain``) samples a
conditional prior, ``--guidance W`` with classifier-free guidance, ``--classifier CKPT
--classifier-scale S`` with classifier guidance (:mod:`mri_score.guidance`).
Magnitudes are shown as a PNG grid (:func:`mri_score.figures.sample_grid`).
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split

import argparse
import sys
from pathlib import Path

import torch

from mri_score import limits
from mri_score.atomic import check_output, check_writable
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.errors import InputError, one_line
from mri_score.figures import sample_grid
from mri_score.generation import heun_samples

#: Bounds of ``--n`` and ``--size``; the samples' working memory is checked as this many copies of them.
MAX_N, MAX_SIZE, MEM_COPIES = 1024, 2048, 256


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Write a PNG grid of samples from a prior."""
    p = one_line_usage_errors(argparse.ArgumentParser(prog="python -m mri_score.sample_prior",
                                                      description=__doc__.split("\n")[0]))
    p.add_argument("--prior", default=None)
    p.add_argument("--out", default="prior_samples.png")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--condition", default="none", metavar="LABEL|none",
                   help="a label (t2, knee) or field=label pairs (contrast=t2,anatomy=brain); none: unconditional")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="classifier-free guidance weight w >= 0 (conditional prior; default 1)")
    p.add_argument("--classifier", default=None, metavar="CKPT", help="classifier for classifier guidance")
    p.add_argument("--classifier-scale", type=float, default=None, metavar="S", help="classifier-guidance scale (default 1)")
    p.add_argument("--classifier-input", default="noisy", choices=["noisy", "denoised"])
    a = p.parse_args(argv)
    limits.check_int(a.n, "--n", 1, MAX_N)
    limits.check_int(a.size, "--size", 8, MAX_SIZE)
    limits.check_steps(a.steps)
    limits.check_seed(a.seed)
    limits.check_fits(a.n * a.size**2 * 2 * 4 * MEM_COPIES, f"--n {a.n} samples of --size {a.size}")
    check_output(a.out, [p for p in (a.prior, a.classifier) if p])
    check_writable(Path(a.out).parent, "--out")
    if a.guidance is not None and not 0 <= a.guidance < float("inf"):
        raise InputError(f"--guidance must be a finite number >= 0, got {a.guidance}")
    if a.classifier is None and (a.classifier_scale is not None or a.classifier_input != "noisy"):
        raise InputError("--classifier-scale/--classifier-input given without --classifier")
    scale = 1.0 if a.classifier_scale is None else a.classifier_scale
    if not 0 < scale < float("inf"):
        raise InputError(f"--classifier-scale must be a finite number > 0, got {a.classifier_scale}")
    from mri_score.guidance import GuidanceOptions, TermGuidedDenoiser
    from mri_score.prior import load_prior

    model = load_prior(a.prior)
    classifier = None
    if a.classifier is not None:
        from mri_score.classifier import load_classifier

        try:
            classifier = load_classifier(a.classifier)
        except InputError as err:
            raise InputError(f"--classifier: {err}") from None
    try:
        options = GuidanceOptions.create(model, a.condition, a.guidance, classifier, scale, a.classifier_input,
                                         allow_auto=False)
        adapter, terms, attrs = options.setup(model)
    except InputError as err:
        raise InputError(f"--condition/--guidance: {err}") from None
    denoiser = TermGuidedDenoiser(adapter.model, terms) if terms else adapter.model
    x = heun_samples(denoiser, a.n, a.size, a.steps, seed=a.seed)
    mag = torch.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2).numpy()
    nfe = (2 * a.steps - 1) * adapter.evaluations_per_call
    title = f"samples, EDM Heun {a.steps} steps ({nfe} NFE)"
    if attrs["condition"] != "none":
        title += ", " + ", ".join(f"{k} {v}" for k, v in attrs.items())
    sample_grid(a.out, mag, title)
    print(one_line(a.out, sys.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
