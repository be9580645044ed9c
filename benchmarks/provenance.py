"""The stamp every results file carries: command, date, machine, package versions."""

from __future__ import annotations

import datetime as dt
import os
import platform

import numpy as np
import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def provenance(command: str) -> str:
    """Markdown bullet lines: ``command``, UTC date, machine, CPU count, torch threads, native bf16, versions."""
    import scipy
    import sigpy

    from mri_score import baselines
    from mri_score.precision import native_bf16

    return (
        f"- command: `{command}`\n"
        f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}\n"
        f"- machine: {platform.machine()} {cpu_model()}, {os.cpu_count()} cores, {platform.system()}; "
        f"torch threads {torch.get_num_threads()}; native bf16 {'yes' if native_bf16(torch.device('cpu')) else 'no'} "
        f"(network precision auto: {'bf16' if native_bf16(torch.device('cpu')) else 'fp32'} on CPU)\n"
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, sigpy {sigpy.__version__}, "
        f"bart {baselines.bart_version() or 'not installed'}\n"
    )
