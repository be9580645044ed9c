"""``python benchmarks/run_equivalence_check.py --out FILE.npz``: dump DDS and L1 outputs of protocol slices.

Run it in two checkouts (e.g. before and after a refactor, each with ``PYTHONPATH`` at its root) and compare the
files with ``--compare A.npz B.npz``: every array must be bit-identical when the refactor changed no output.
The slices: the first test subject of ``configs/bench_protocol_mixed.yaml`` (2 slices, 8x random), DDS with the
config's settings and L1-wavelet at λ = 0.003, through :func:`benchmarks.protocol.solve`.  Works on checkouts
from before ``ReconRequest`` existed (it only uses the protocol's functions).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mri_score.errors import InputError

try:
    from mri_score.cli import exit_on_input_error, guard_startup, one_line_usage_errors
except ImportError:  # a checkout from before mri_score.cli (this script also runs on older code)
    from mri_score.errors import exit_on_input_error, one_line_usage_errors  # type: ignore[attr-defined,no-redef]

    def guard_startup(name: str) -> None:  # type: ignore[misc]
        """Older checkouts guard start-up on import."""

guard_startup(__name__)


def dump(out: str) -> int:
    """Reconstruct the check's slices and save every output array to ``out``."""
    import torch
    import yaml

    from benchmarks import protocol
    from mri_score.prior import load_prior

    try:
        from mri_score.prior import ComplexPrior
    except ImportError:  # checkouts from before the runtime moved beside the loader
        from mri_score.samplers import ComplexPrior
    torch.set_num_threads(2)
    with open("configs/bench_protocol_mixed.yaml") as fh:
        cfg = yaml.safe_load(fh)
    cfg["data"]["test"].update(subjects=[0], slices_per_subject=2)
    cfg["data"]["tuning"].update(subjects=[30], slices_per_subject=1)
    cfg["data"]["real"] = []
    vols = [v for v in protocol.protocol_volumes(cfg) if v["phase"] == "test"]
    prior = ComplexPrior(load_prior("mri_score/weights/prior_mixed_cond.safetensors"))
    arrays = {}
    for vi, v in enumerate(vols):
        acq = protocol.acquire(v, cfg["settings"][1], 8, 100.0)
        for s in range(acq["under"].shape[0]):
            o = protocol.solve("dds", cfg["methods"]["dds"], None, acq, s, "acs", prior, v["seed"])
            arrays[f"{vi}_{s}_dds"], arrays[f"{vi}_{s}_std"] = o["primary"], o["std"]
            arrays[f"{vi}_{s}_l1"] = protocol.solve("l1_wavelet", cfg["methods"]["l1_wavelet"], 0.003, acq, s, "acs",
                                                    prior, v["seed"])["primary"]
    np.savez(out, **arrays)
    print(f"{out}: {len(arrays)} arrays")
    return 0


def compare(a: str, b: str) -> int:
    """Print the largest difference of every array of two dumps; exit 0 only when all are bit-identical."""
    x, y = np.load(a), np.load(b)
    same = sorted(x.files) == sorted(y.files)
    for k in sorted(x.files):
        equal = k in y.files and np.array_equal(x[k], y[k])
        same &= equal
        diff = float(np.abs(x[k] - y[k]).max()) if k in y.files else float("nan")
        print(f"{k}: max |difference| {diff:.3g}, bit-identical {equal}")
    return 0 if same else 1


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Dump (``--out``) or compare (``--compare A B``)."""
    ap = one_line_usage_errors(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    ap.add_argument("--out", help="write the outputs here (.npz)")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two dumps")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        raise InputError("--out FILE.npz or --compare A B is required")
    return dump(args.out)


if __name__ == "__main__":
    sys.exit(main())
