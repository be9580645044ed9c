"""``python -m mri_score.preprocess --data DIR --out SHARDS``: one-time sharded slice cache for training.

Computes every training image of a directory of fully sampled fastMRI files
(ACS coil maps, SENSE-1, the project's scaling) once and writes them as
safetensors shards (:mod:`mri_score.data.shards`).  Train from them with
``data.path=SHARDS`` (any ``data.source: fastmri`` config).  ``--index-only``
just builds (or refreshes) the validated slice index next to the data, which
training otherwise does on its first start (before a multi-node job, so that no
rank waits at a barrier while rank 0 reads the whole data set once).
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split

import argparse
import sys

from mri_score import limits
from mri_score.atomic import check_output_dir
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.data.fastmri_stream import TARGETS
from mri_score.errors import InputError
from mri_score.scaling import TRAIN_CENTER_FRACTION


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mri_score.preprocess``."""
    p = one_line_usage_errors(argparse.ArgumentParser(prog="python -m mri_score.preprocess", description=__doc__.split("\n")[0]))
    p.add_argument("--data", required=True, help="directory of fully sampled fastMRI .h5 files")
    p.add_argument("--out", default=None, help="new output directory for the shards")
    p.add_argument("--index-only", action="store_true", help="only build the slice index (no shards)")
    p.add_argument("--shard-size", type=int, default=256, help="slices per shard file")
    p.add_argument("--target", default="complex", choices=TARGETS)
    p.add_argument("--center-fraction", type=float, default=TRAIN_CENTER_FRACTION)
    p.add_argument("--workers", type=int, default=0, help="worker processes computing the images")
    return p


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Write the shards; 0 on success, 2 (one line on stderr) for bad input."""
    args = build_parser().parse_args(argv)
    if not 0.0 < args.center_fraction < 0.5:
        raise InputError(f"--center-fraction must be in (0, 0.5), got {args.center_fraction}")
    limits.check_int(args.workers, "--workers", 0, limits.max_threads())
    limits.check_int(args.shard_size, "--shard-size", 1, 1_000_000)
    if args.out:
        check_output_dir(args.out, [])
    if args.index_only:
        from mri_score.data.fastmri_stream import build_index

        index = build_index(args.data)
        print(f"indexed {len(index)} slices of {len(index.files)} files ({len(index.scanned)} scanned now) -> {index.path}")
        return 0
    if not args.out:
        raise InputError("--out DIR is required (or --index-only)")
    from mri_score.data.shards import write_shards

    out = write_shards(args.data, args.out, args.shard_size, args.target, args.center_fraction, args.workers)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
