"""Loss curve and denoising table of the shipped prior: ``python docs/make_prior_figures.py``.

Writes docs/prior_loss.png and docs/prior_denoising.md (held-out corpus slices,
96x96, all four contrast families incl. the held-out FLAIR, seed 0).
"""

import json
from pathlib import Path

import torch

from mri_score.data.datasets import held_out_batch
from mri_score.prior import load_prior

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Write the loss curve and the denoising table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [("stage 1: batch 32 of 64² crops", ROOT / "docs" / "prior_loss.jsonl"),
              ("stage 2: batch 8 of 128² crops", ROOT / "docs" / "prior_stage2_loss.jsonl")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    offset, title = 0, []
    for label, log in stages:
        if not log.is_file():
            continue
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        ax.plot([offset + r["step"] for r in rows], [r["loss"] for r in rows], label=label)
        title.append(f"{rows[-1]['loss']:.3f}")
        offset += rows[-1]["step"]
    ax.set_yscale("log")
    ax.set_xlabel("step (stage 2 continues from stage 1's EMA weights)")
    ax.set_ylabel("EDM loss (mean of 25 steps)")
    ax.set_title("prior_brain_synth: final loss " + "; ".join(title), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "prior_loss.png", dpi=90)
    prior = load_prior()
    x0 = held_out_batch(16)
    g = torch.Generator().manual_seed(0)
    lines = ["| σ | MSE of x + σn | MSE of D(x + σn; σ) | gain (dB) |", "|---|---|---|---|"]
    for sigma in (0.002, 0.01, 0.05, 0.2, 1.0, 5.0, 20.0):
        noisy = x0 + sigma * torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            den = prior(noisy, sigma)
        a, b = float(((noisy - x0) ** 2).mean()), float(((den - x0) ** 2).mean())
        lines.append(f"| {sigma} | {a:.3g} | {b:.3g} | {10 * torch.log10(torch.tensor(a / b)).item():.2f} |")
    (ROOT / "docs" / "prior_denoising.md").write_text(
        "Denoising by the shipped prior on 16 held-out corpus slices (96², t1/t2/pd/flair, seed 0), "
        "scaled by mri_score.scaling; command: `python docs/make_prior_figures.py`.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
