"""``python -m mri_score.evaluate``: score reconstructions against targets, as fastMRI's ``evaluate.py``.

``--target-dir T --predictions-dir P [--challenge multicoil|singlecoil] [--acceleration R]
[--acquisition NAME]``: every ``T/NAME.h5`` is scored against ``P/NAME.h5``
(:func:`mri_score.evaluation.evaluate_dirs`: target ``reconstruction_rss`` or
``reconstruction_esc``, prediction ``reconstruction``, target-width centre crop, MSE, NMSE,
PSNR and SSIM with the target's maximum as data range).  fastMRI's flag names
``--target-path``/``--predictions-path`` are accepted too.

Prints one line per scored volume, then fastMRI's line (``MSE = ... +/- ...``, mean +/- twice
the sample std).  A volume that cannot be scored (no prediction, unreadable, shapes that do not
match after the crop, ...) gets one ``error:`` line on stderr and the exit code is 2; so do bad
directories and flags.  ``--json FILE`` writes every per-volume result, failure and skip
(atomically); nothing else is written.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from mri_score.atomic import atomic_output, check_output
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.errors import InputError, one_line
from mri_score.evaluation import SUFFIX, TARGET_KEYS, evaluate_dirs


def build_parser() -> argparse.ArgumentParser:
    """The ``evaluate`` command line."""
    p = one_line_usage_errors(argparse.ArgumentParser(prog="python -m mri_score.evaluate",
                                                      description=__doc__.split("\n")[0]))
    p.add_argument("--target-dir", "--target-path", dest="target_dir", required=True,
                   help="directory of fastMRI files holding the targets")
    p.add_argument("--predictions-dir", "--predictions-path", dest="predictions_dir", required=True,
                   help="directory of reconstructions ('reconstruction'), one per target, same file names")
    p.add_argument("--challenge", default="multicoil", choices=list(TARGET_KEYS),
                   help="multicoil scores against reconstruction_rss, singlecoil against reconstruction_esc")
    p.add_argument("--acceleration", type=float, default=None, help="score only targets with this 'acceleration' attr")
    p.add_argument("--acquisition", default=None, help="score only targets with this 'acquisition' attr (e.g. AXT2)")
    p.add_argument("--json", default=None, help="also write all results to this JSON file")
    return p


def _finite_or_none(value: Any) -> Any:
    """JSON-safe: NaN/Inf floats (the std of a single volume) become None, containers recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def _inputs(*dirs: str) -> list[Path]:
    """The ``.h5`` files of ``dirs`` (those a ``--json`` output must never replace)."""
    files: list[Path] = []
    for d in dirs:
        path = Path(d)
        if path.is_dir():
            files.extend(p for p in path.iterdir() if p.name.endswith(SUFFIX))
    return files


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Score ``--predictions-dir`` against ``--target-dir``; 0 when every selected volume was scored, else 2."""
    a = build_parser().parse_args(argv)
    if a.acquisition is not None and (not a.acquisition or not a.acquisition.isprintable()):
        raise InputError(f"--acquisition must be a printable name, got {a.acquisition!r}")
    if a.json is not None:
        check_output(a.json, _inputs(a.target_dir, a.predictions_dir))
    result = evaluate_dirs(a.target_dir, a.predictions_dir, a.challenge, a.acceleration, a.acquisition)
    volumes, failed, skipped = result["volumes"], result["failed"], result["skipped"]
    if not volumes and not failed:
        wanted = " ".join(f"--{k} {v:g}" if isinstance(v, float) else f"--{k} {v}"
                          for k, v in result["filters"].items() if v is not None)
        raise InputError(f"--target-dir {a.target_dir}: no volume matches {wanted or 'the selection'} "
                         f"({len(skipped)} skipped: " + "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:3]) + ")")
    if a.json is not None:
        text = json.dumps(_finite_or_none(result), indent=2, allow_nan=False) + "\n"
        with atomic_output(a.json) as tmp:
            tmp.write_text(text, encoding="utf-8")
    for name, row in volumes.items():
        print(one_line(f"{name}: " + " ".join(f"{k} = {v:.6g}" for k, v in row.items()), sys.stdout))
    if volumes:
        print(one_line(result["report"], sys.stdout))
    for reason in failed.values():
        print(f"error: {one_line(reason)}", file=sys.stderr)
    if failed:
        total = len(volumes) + len(failed)
        print(f"error: {one_line(f'{len(failed)} of {total} volumes could not be scored: ' + ', '.join(failed))}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
