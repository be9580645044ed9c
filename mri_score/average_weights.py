"""``python -m mri_score.average_weights --base A --tuned B --weight W --out C``: a weight-space average of two priors.

Robust fine-tuning (WiSE-FT; Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): a network
fine-tuned from a parent on new data lies in the parent's basin, and the straight line between the two often holds
networks that keep most of the fine-tune's gain on shifted data without its loss on the parent's data.  The
average ``(1 - W) · base + W · tuned`` of every floating-point tensor is written as a shippable prior whose header
names both inputs (path, SHA-256), the weight, the exact command and, as ``parent``, the base (the fine-tune's own
parent, usually shipped, so :func:`benchmarks.protocol.ancestry` follows the chain even where the fine-tune is not
kept; the average's own config, the fine-tune's, names the new data).  It costs nothing at sampling
time: the averaged network has the parents' architecture.

Both inputs must be exported priors (``kind: prior``) of one architecture (the same ``network`` record, labels,
scaling, tensor names, shapes and dtypes, and equal non-floating tensors), the tuned one fine-tuned from the base
(its ``parent`` record holds the base's SHA-256), with overlapping trained pixel ranges.  Anything else is refused in
one line (exit 2).
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split

import argparse
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from mri_score.atomic import check_output, check_writable
from mri_score.checkpoint import load_checkpoint, save_checkpoint
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.errors import CheckpointError, InputError, one_line
from mri_score.uncertainty import file_sha256

__all__ = ["average_priors", "average_state", "check_weight", "main"]


def check_weight(weight: float) -> None:
    """:class:`InputError` unless ``weight`` (the fine-tune's share, ``--weight``) is a number in [0, 1]."""
    if isinstance(weight, bool) or not (isinstance(weight, (int, float)) and math.isfinite(weight)
                                        and 0.0 <= weight <= 1.0):
        raise InputError(f"the fine-tune's weight must be a number in [0, 1] (--weight), got {weight!r}")


def average_state(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], weight: float,
                  name: str = "weights") -> dict[str, torch.Tensor]:
    """``(1 - weight) · base + weight · tuned`` for every floating tensor, computed in float64, stored in its dtype.

    Parameters
    ----------
    base, tuned : dict of str to torch.Tensor
        State dicts with the same names, shapes and dtypes.
    weight : float
        The tuned network's share, in [0, 1]: 0 gives ``base``, 1 gives ``tuned`` bit for bit.
    name : str
        How errors name the pair.

    Returns
    -------
    dict of str to torch.Tensor
        The averaged state (floating and complex tensors mixed in float64/complex128 and rounded once to their
        dtype); non-floating tensors (counters) must be equal and are copied.
    """
    check_weight(weight)
    if set(base) != set(tuned):
        diff = sorted(set(base) ^ set(tuned))
        raise CheckpointError(f"{name}: the two networks' tensors differ (e.g. {diff[:3]})")
    out = {}
    for key in sorted(base):
        a, b = base[key], tuned[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            raise CheckpointError(f"{name}: tensor {key} is {tuple(a.shape)} {a.dtype} in one and "
                                  f"{tuple(b.shape)} {b.dtype} in the other")
        if a.is_floating_point() or a.is_complex():
            if weight in (0.0, 1.0):  # the endpoints are the inputs bit for bit (no -0.0 -> +0.0, no 0 * inf)
                out[key] = (b if weight == 1.0 else a).clone()
            else:
                wide = torch.complex128 if a.is_complex() else torch.float64
                out[key] = ((1.0 - weight) * a.to(wide) + weight * b.to(wide)).to(a.dtype)
        elif torch.equal(a, b):
            out[key] = a.clone()
        else:
            raise CheckpointError(f"{name}: non-floating tensor {key} differs between the two networks")
    return out


def average_priors(base: str | os.PathLike[str], tuned: str | os.PathLike[str], weight: float,
                   out: str | os.PathLike[str], command: str) -> Path:
    """Write the weight-space average of two exported priors of one architecture to ``out`` (safetensors).

    Parameters
    ----------
    base : path
        The parent prior (share ``1 - weight``); the average's ``parent`` record.
    tuned : path
        A prior fine-tuned from ``base`` (its ``parent`` record names ``base``'s SHA-256; share ``weight``).  Its
        metadata (config, labels, scaling) is the average's; the trained pixel range stored is the intersection
        of the two parents' (:func:`mri_score.resolution.prior_pixel_range`), so ``--grid auto`` claims only
        pixels both saw.
    weight : float
        The fine-tune's share, in [0, 1].
    out : path
        The new prior; written atomically.
    command : str
        The command that made it, stored in the header.

    Returns
    -------
    Path
        ``out``.
    """
    from mri_score.network import NetworkConfig
    from mri_score.resolution import prior_pixel_range

    base, tuned = Path(base), Path(tuned)
    tensors_a, meta_a = load_checkpoint(base)
    tensors_b, meta_b = load_checkpoint(tuned)
    for path, meta in ((base, meta_a), (tuned, meta_b)):
        if meta.get("kind") != "prior":
            raise CheckpointError(f"{path}: not an exported prior (kind {meta.get('kind')!r}); export it with "
                                  "python -m mri_score.train --resume --export")
    if NetworkConfig.stored(meta_a.get("network")) != NetworkConfig.stored(meta_b.get("network")):
        raise CheckpointError(f"{tuned}: its network record differs from {base}'s: not one architecture")
    for key in ("labels", "scaling"):
        if meta_a.get(key) != meta_b.get(key):
            raise CheckpointError(f"{tuned}: its {key} record differs from {base}'s")
    sha_a, sha_b = file_sha256(base), file_sha256(tuned)
    parent = meta_b.get("parent") or {}
    if parent.get("sha256") != sha_a:
        raise CheckpointError(f"{tuned}: not fine-tuned from {base} (its parent is {parent.get('path')!r}, "
                              f"sha256 {str(parent.get('sha256'))[:12]}…): the straight line between unrelated "
                              "networks is no prior")
    (lo_a, hi_a), (lo_b, hi_b) = prior_pixel_range(meta_a), prior_pixel_range(meta_b)
    lo, hi = max(lo_a, lo_b), min(hi_a, hi_b)
    if lo > hi:
        raise CheckpointError(f"{tuned}: its trained pixel range {lo_b:g}-{hi_b:g} mm and {base}'s {lo_a:g}-{hi_a:g} "
                              "mm do not overlap")
    state = average_state(tensors_a, tensors_b, weight, name=f"{base} and {tuned}")
    meta: dict[str, Any] = {k: v for k, v in meta_b.items() if k not in ("format", "step")}
    meta["network"] = NetworkConfig.stored(meta_b.get("network"))
    meta["command"] = command
    meta["pixel_mm"] = [lo, hi]  # what both parents were trained on (read by --grid auto)
    meta["parent"] = {"path": str(base), "sha256": sha_a,
                      "note": "weight-space average of this prior and a fine-tune of it ('average')"}
    meta["average"] = {"base": {"path": str(base), "sha256": sha_a, "step": meta_a.get("step")},
                       "tuned": {"path": str(tuned), "sha256": sha_b, "step": meta_b.get("step")},
                       "weight_tuned": float(weight),
                       "rule": "(1 - weight_tuned) * base + weight_tuned * tuned, every floating tensor"}
    return save_checkpoint(out, state, meta)


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Average two priors in weight space; one line on success, one line and exit 2 on bad input."""
    p = one_line_usage_errors(argparse.ArgumentParser(prog="python -m mri_score.average_weights",
                                                      description=__doc__.split("\n")[0]))
    p.add_argument("--base", required=True, help="the parent prior (safetensors)")
    p.add_argument("--tuned", required=True, help="a prior fine-tuned from --base")
    p.add_argument("--weight", type=float, required=True, help="the fine-tune's share in [0, 1]")
    p.add_argument("--out", required=True, help="the averaged prior to write (safetensors)")
    a = p.parse_args(argv)
    check_weight(a.weight)  # before any file is read
    for flag, path in (("--base", a.base), ("--tuned", a.tuned)):
        if not Path(path).is_file():
            raise InputError(f"{flag} {path}: {'not a file' if os.path.lexists(path) else 'no such file'}")
    check_output(a.out, [a.base, a.tuned])
    check_writable(Path(a.out).parent, "--out")
    command = shlex.join(["python", "-m", "mri_score.average_weights", *(sys.argv[1:] if argv is None else argv)])
    average_priors(a.base, a.tuned, a.weight, a.out, command)
    print(one_line(f"wrote {a.out}: {1 - a.weight:g} x {a.base} + {a.weight:g} x {a.tuned}", sys.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
