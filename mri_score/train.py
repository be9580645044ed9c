"""``python -m mri_score.train --config configs/<name>.yaml [--resume] [key=value ...]``.

Trains an EDM-preconditioned score network (denoising score matching with
log-normal σ, Karras et al. 2022) on complex MR slices.  Keeps an EMA copy,
writes safetensors checkpoints (model, EMA, Adam state, RNG state) and a loss
log; ``--resume`` continues at the exact step.  Under ``torchrun`` it runs
DistributedDataParallel (NCCL on GPUs, gloo on CPU); rank 0 logs and saves.
Mixed precision: bf16 autocast on CPUs with native bf16 (``auto``), AMP on CUDA;
channels_last memory format.  ``train.batch`` is the global batch, reached with
``train.micro_batch`` per process and gradient accumulation; fastMRI data
streams from disk (:mod:`mri_score.data.fastmri_stream`), each rank reading its
own slices, and ``--resume`` continues every rank's data walk and generator.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from mri_score import limits
from mri_score.cli import exit_on_input_error, one_line_usage_errors
from mri_score.config import load_config, require
from mri_score.errors import one_line
from mri_score.training import export_prior, rank_world, setup_distributed, train

__all__ = ["main"]


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Train (or resume, or export) from a YAML config; exit 2 on bad input."""
    parser = one_line_usage_errors(argparse.ArgumentParser(prog="python -m mri_score.train", description=__doc__.split("\n")[0]))
    parser.add_argument("--config", required=True, help="YAML config (configs/prior_*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.safetensors")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--export", default=None, help="after training, write the EMA prior here")
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = parser.parse_args(argv)
    limits.check_threads(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    if isinstance(cfg, dict) and cfg.get("task") == "varnet":  # the E2E-VarNet baseline has its own loop
        return _train_varnet(cfg, args, argv)
    device = setup_distributed(args.device)
    try:
        summary = train(cfg, resume=args.resume, device=device, source=str(args.config), config_path=args.config,
                        export=args.export)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank done before any tears the group down (on success only: a failed rank never waits)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    rank, _ = rank_world()
    if rank == 0:
        _report(summary, cfg, args, argv, export_prior)
    return 0


def _train_varnet(cfg: dict, args: argparse.Namespace, argv: list[str] | None) -> int:
    """``task: varnet``: train (and export) the E2E-VarNet baseline (:mod:`mri_score.varnet_training`)."""
    from mri_score.varnet_training import export_varnet, train_varnet

    summary = train_varnet(cfg, resume=args.resume, device=args.device, source=str(args.config),
                           config_path=args.config, export=args.export)
    _report(summary, cfg, args, argv, export_varnet)
    return 0


def _report(summary: dict, cfg: dict, args: argparse.Namespace, argv: list[str] | None,
            export: Callable[[Path, str, str], Path]) -> None:
    """Print the run's one-line summary and, with ``--export``, write the shippable weights with ``export``."""
    tail = summary["losses"][-50:]
    if tail:
        print(f"trained {summary['steps']} steps ({summary['precision']}, {summary['parameters']} parameters) "
              f"in {summary['seconds']:.0f} s; mean loss of last {len(tail)} steps {sum(tail) / len(tail):.4f}")
    else:  # --resume at the last step: nothing to train (e.g. --resume --export)
        print(f"nothing to train: the run is already at step {summary['start']} (train.steps {summary['steps']})")
    if args.export:
        cmd = "python -m mri_score.train " + " ".join(sys.argv[1:] if argv is None else argv)
        export(Path(require(cfg, "out_dir")) / "checkpoint.safetensors", args.export, cmd)
        print(one_line(f"exported weights to {args.export}", sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
