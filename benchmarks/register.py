"""``python benchmarks/register.py --config configs/bench_final.yaml``: register the final test before it runs.

Writes ``benchmarks/registration.json`` (:mod:`benchmarks.registration`): the config's digest, the prior's SHA-256,
the DDS request, the rules, a digest of the code and the git commit.  Commit it; then
``python benchmarks/run_benchmark.py --config configs/bench_final.yaml`` reads the final test set only while
nothing recorded has changed.  ``--check`` reports whether the current code and settings still match.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys
from pathlib import Path

from benchmarks import registration
from benchmarks.protocol import registered_dds, validate_protocol
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.config import load_config, require
from mri_score.errors import InputError
from mri_score.prior import default_prior_path


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Write (or ``--check``) the registration of a protocol config that reads the final test set."""
    ap = one_line_usage_errors(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    ap.add_argument("--config", required=True, help="the final protocol config (data.real: final)")
    ap.add_argument("--out", default=str(registration.REGISTRATION), help="registration file (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="only verify the existing registration")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    src = str(args.config)
    require(cfg, "name", src)
    validate_protocol(cfg, src)
    if cfg["data"].get("real") != "final":
        raise InputError(f"{src}: data.real must be final: only the final test needs a registration")
    prior = Path(cfg["prior"]) if cfg.get("prior") else default_prior_path()
    if args.check:
        registration.verify(cfg, prior, registered_dds(cfg), args.out)
        print(f"{args.out}: matches the code and settings")
        return 0
    path = registration.write(cfg, prior, registered_dds(cfg), args.out)
    print(f"registered {src} -> {path}; commit it before the final run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
