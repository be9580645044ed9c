"""``python benchmarks/run_conditional.py --config configs/conditional_bench.yaml``: conditional diffusion, measured.

Two parts (issue 16):

* **generation**: EDM Heun samples per label and CFG weight ``w``, and per classifier-guidance
  scale ``s`` (unconditional prior + noise-conditional classifier); the label accuracy of an
  independently trained clean-image classifier on the samples (chance: 1/6 contrast, 1/3 anatomy);
  one PNG grid per label;
* **reconstruction**: DDS on held-out slices (``MixedCorpus`` test split, each with its own labels,
  and the real EPI set, anatomy=brain) at each acceleration: unconditional, conditional (right
  label), CFG ``w``, a wrong label, classifier guidance; PSNR/SSIM of ``|x|`` against the noise-free
  truth (:func:`mri_score.simulation.noise_free_target`), NFE and seconds per slice.

Writes ``OUT/conditional.md`` (tables and provenance) and ``OUT/conditional_grids/*.png``.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import undersample
from benchmarks.provenance import provenance
from mri_score import limits
from mri_score.atomic import atomic_output, check_output_dir
from mri_score.cli import exit_on_input_error
from mri_score.conditioning import Vocabulary, format_condition, parse_condition
from mri_score.config import load_config
from mri_score.errors import InputError
from mri_score.guidance import CLEAN_SIGMA, ClassifierGuidance, GuidedDenoiser, TermGuidedDenoiser, build_guidance
from mri_score.metrics import volume_metrics
from mri_score.request import ReconRequest


def classify(clf: torch.nn.Module, vocab: Vocabulary, x: torch.Tensor) -> list[dict[str, str]]:
    """The clean classifier's labels ``[{field: label}]`` of real-channel images ``(n, 2, H, W)``."""
    with torch.no_grad():
        logits = clf(x, CLEAN_SIGMA)
    return [{f: vocab.classes[k][int(lg[i].argmax())] for k, (f, lg) in enumerate(zip(vocab.fields, logits))}
            for i in range(x.shape[0])]


def accuracy(pred: list[dict[str, str]], want: dict[str, str]) -> dict[str, float]:
    """Fraction of ``pred`` agreeing with ``want`` per field it names."""
    return {f: float(np.mean([p[f] == lab for p in pred])) for f, lab in want.items()}


def generation(cfg: dict, model: torch.nn.Module, vocab: Vocabulary, clean: torch.nn.Module | None,
               noisy: torch.nn.Module | None, out: Path, seed: int) -> list[str]:
    """Sample grids and accuracy rows (markdown lines)."""
    from mri_score.figures import sample_grid
    from mri_score.generation import heun_samples

    g = cfg["generation"]
    n, size, steps = int(g["n"]), int(g["size"]), int(g["steps"])
    cvocab = Vocabulary.from_meta(clean.meta) if clean is not None else None
    rows = ["| label | guidance | NFE | seconds | contrast acc. | anatomy acc. |", "|---|---|---|---|---|---|"]
    for text in g["labels"]:
        cond = parse_condition(text, vocab)
        labels = torch.tensor(vocab.indices(cond))
        mags = []
        runs: list[tuple[str, torch.nn.Module, int]] = [
            (f"CFG w={w:g}", GuidedDenoiser(model, labels, float(w)), GuidedDenoiser(model, labels, float(w))
             .evaluations_per_call) for w in g["weights"]]
        if noisy is not None:
            nv = Vocabulary.from_meta(noisy.meta)
            for s in g.get("classifier_scales", []):
                term = ClassifierGuidance(noisy, torch.tensor(nv.indices(cond)), float(s))
                runs.append((f"classifier s={s:g}", TermGuidedDenoiser(model, [term]), 1))
        for name, den, per_call in runs:
            t0 = time.time()
            x = heun_samples(den, n, size, steps, seed=seed)
            sec = time.time() - t0
            mags.append(torch.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2).numpy())
            acc = accuracy(classify(clean, cvocab, x), cond) if clean is not None else {}
            cells = [f"{acc[f]:.2f}" if f in acc else "–" for f in ("contrast", "anatomy")]
            rows.append(f"| {format_condition(cond)} | {name} | {(2 * steps - 1) * per_call} | {sec:.1f} | "
                        f"{' | '.join(cells)} |")
            print(rows[-1], flush=True)
        grid = np.concatenate(mags)
        names = ", ".join(r[0] for r in runs)
        sample_grid(out / "conditional_grids" / f"{format_condition(cond).replace(',', '_').replace('=', '-')}.png",
                    grid, f"{format_condition(cond)}: rows of {n} per {names}")
    if clean is not None:
        # the measuring classifier on held-out clean test slices: its own accuracy bounds what the table can show
        truth = held_out_slices(int(g.get("classifier_check", 24)), size, seed + 7)
        x = torch.stack([torch.view_as_real(torch.from_numpy(im)).permute(2, 0, 1) for im, _ in truth])
        pred = classify(clean, cvocab, x)
        acc = {f: float(np.mean([p[f] == c[f] for p, (_, c) in zip(pred, truth)])) for f in ("contrast", "anatomy")}
        rows.append(f"| held-out clean test slices (n={len(truth)}) | – | – | – | {acc['contrast']:.2f} | "
                    f"{acc['anatomy']:.2f} |")
    return rows


def held_out_slices(count: int, size: int, seed: int, pixel_mm: tuple[float, float] = (0.5, 3.0)
                    ) -> list[tuple[np.ndarray, dict[str, str]]]:
    """``count`` scaled ``MixedCorpus`` test-split slices ``(size, size)`` complex64 and their labels.

    ``pixel_mm``: the pixel-size range (mm); the reconstruction rows use 2-3 mm so that the object lies
    inside a 96-pixel field of view (at 0.5-3 mm two slices in three are cut by it).
    """
    from mri_score.data.corpus import ANATOMIES, CONTRASTS
    from mri_score.data.mixed import MixedCorpus
    from mri_score.scaling import TRAIN_CENTER_FRACTION, image_scale

    corpus = MixedCorpus("test", seed=seed, pixel_mm=pixel_mm)
    out = []
    for i in range(count):
        img, info = corpus.generate(i, shape=(size, size))
        c, a = corpus.labels(info)
        x = torch.from_numpy(img)
        out.append(((x / image_scale(x, TRAIN_CENTER_FRACTION)).numpy().astype(np.complex64),
                    {"contrast": CONTRASTS[c], "anatomy": ANATOMIES[a]}))
    return out


def wrong_label(cond: dict[str, str]) -> dict[str, str]:
    """A label the slice is not: brain ↔ limb, and a contrast other than its own."""
    anatomy = "limb" if cond.get("anatomy") == "brain" else "brain"
    contrast = "fatsat" if cond.get("contrast") != "fatsat" else "flair"
    return {"contrast": contrast, "anatomy": anatomy} if "contrast" in cond else {"anatomy": anatomy}


def reconstruction(cfg: dict, model: torch.nn.Module, noisy: torch.nn.Module | None, seed: int) -> list[str]:
    """Reconstruction rows (markdown lines): mean PSNR/SSIM/NFE/seconds per group, acceleration and method."""
    from mri_score.data.realset import load_real_volume
    from mri_score.pipeline import reconstruct_volume
    from mri_score.simulation import noise_free_target, simulate_volume

    r = cfg["reconstruction"]
    size = int(r["size"])
    slices: list[tuple[str, np.ndarray, dict[str, str]]] = [
        ("synthetic test split", im, lab) for im, lab in held_out_slices(int(r["slices"]), size, seed,
                                                                          tuple(r.get("pixel_mm", (2.0, 3.0))))]
    for name in r.get("real", []):
        vol = load_real_volume(name)
        mid = vol.images.shape[0] // 2
        for k in range(int(r.get("real_slices", 2))):
            slices.append(("real EPI (nibabel)", vol.images[mid - 1 + k], {"anatomy": "brain"}))
    settings = ReconRequest(sampler="dds", steps=int(r["nfe"]), samples=1, seed=seed)
    methods: list[tuple[str, dict]] = [("unconditional", {"cond": "none"}), ("conditional (w=1)", {"w": 1.0})]
    methods += [(f"CFG w={w:g}", {"w": float(w)}) for w in r.get("weights", []) if float(w) != 1.0]
    methods.append(("wrong label (w=1)", {"cond": "wrong", "w": 1.0}))
    if noisy is not None:
        methods += [(f"classifier s={s:g}", {"classifier": float(s)}) for s in r.get("classifier_scales", [])]
    results: dict[tuple[str, float, str], list[dict]] = {}
    for i, (group, img, truth_label) in enumerate(slices):
        ksp, _, _ = simulate_volume(img[None], coils=int(r["coils"]), snr=float(r["snr"]), seed=seed + i)
        target = noise_free_target(img[None], int(r["coils"]))  # the clean truth (the output is |x|)
        for accel in r["accelerations"]:
            acq = undersample(ksp, "equispaced", float(accel), 0.08 if accel <= 4 else 0.04, f"slice{i}")
            under, mask, cals = acq["under"], acq["mask"], acq["cals"]
            for name, m in methods:
                cond = {} if m.get("cond") == "none" else wrong_label(truth_label) if m.get("cond") == "wrong" \
                    else truth_label
                if "classifier" in m:  # the unconditional prior (null label) guided by the classifier
                    prior, terms = build_guidance(model, {}, None)[0], [ClassifierGuidance(
                        noisy, torch.tensor(Vocabulary.from_meta(noisy.meta).indices(cond)), m["classifier"])]
                else:
                    prior, terms = build_guidance(model, cond, m.get("w"))
                t0 = time.time()
                res = reconstruct_volume(under, mask, prior, settings, calibrations=cals, extra_terms=terms)
                met = volume_metrics(target, res.image)
                results.setdefault((group, float(accel), name), []).append(
                    {**met, "NFE": res.nfe[0], "seconds": time.time() - t0})
            print(f"slice {i} ({group}, {format_condition(truth_label)}) R={accel}: done", flush=True)
    rows = ["| slices | R | method | PSNR (dB) | SSIM | NFE | s/slice | n |", "|---|---|---|---|---|---|---|---|"]
    for (group, accel, name), per in results.items():
        mean = {k: float(np.mean([p[k] for p in per])) for k in ("PSNR", "SSIM", "NFE", "seconds")}
        rows.append(f"| {group} | {accel:g} | {name} | {mean['PSNR']:.2f} | {mean['SSIM']:.4f} | {mean['NFE']:.0f} | "
                    f"{mean['seconds']:.1f} | {len(per)} |")
    return rows


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run the conditional benchmark per the config; write the results file."""
    p = argparse.ArgumentParser(prog="python benchmarks/run_conditional.py", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    a = p.parse_args(argv)
    limits.check_threads(a.threads)
    check_output_dir(a.out, [])
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(a.config, a.overrides)
    seed = int(cfg.get("seed", 0))
    from mri_score.classifier import load_classifier
    from mri_score.prior import load_prior

    model = load_prior(cfg["prior"])
    vocab = Vocabulary.from_meta(model.meta, "prior")
    if vocab is None:
        raise InputError(f"{cfg['prior']}: the benchmark needs a conditional prior")
    clean = load_classifier(cfg["clean_classifier"]) if cfg.get("clean_classifier") else None
    noisy = load_classifier(cfg["classifier"]) if cfg.get("classifier") else None
    out = Path(a.out)
    t0 = time.time()
    gen_rows = generation(cfg, model, vocab, clean, noisy, out, seed) if cfg.get("generation") else []
    rec_rows = reconstruction(cfg, model, noisy, seed) if cfg.get("reconstruction") else []
    command = "python benchmarks/run_conditional.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"# Conditional diffusion (issue 16)\n\n{provenance(command)}- seed: {seed}\n"
            f"- prior: `{cfg['prior']}` (step {model.meta.get('step')}); clean classifier: "
            f"`{cfg.get('clean_classifier')}`; guidance classifier: `{cfg.get('classifier')}`\n"
            f"- total: {time.time() - t0:.0f} s\n\n"
            f"## Generation (EDM Heun, {cfg.get('generation', {}).get('steps')} steps, "
            f"{cfg.get('generation', {}).get('size')}², n={cfg.get('generation', {}).get('n')} per row; accuracy of "
            "the clean-image classifier; chance 1/6 contrast, 1/3 anatomy)\n\n" + "\n".join(gen_rows) +
            f"\n\n## Reconstruction (DDS, budget {cfg.get('reconstruction', {}).get('nfe')} NFE; CFG w≠1 spends 2 "
            "per step; equispaced masks; |x| against the noise-free truth; synthetic slices at 2-3 mm pixels)\n\n"
            + "\n".join(rec_rows)
            + "\n")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "conditional.md") as tmp:
        tmp.write_text(text)
    print(out / "conditional.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
