"""The registration of the final test: what was frozen before the final real test set was read.

A registration file (``benchmarks/registration.json``) records, before the final run, everything that decides the
final numbers: the protocol config (its content digest), the prior file's SHA-256, the DDS request the protocol
runs (:meth:`mri_score.request.ReconRequest.identity`), the grid and std-calibration rules, a digest of the code
(every ``.py`` file of ``mri_score/``, ``operators/`` and ``benchmarks/``) and, for the record, the git commit.
:func:`verify` compares a fresh record with the file; the protocol reads the final test set
(``data.real: final``) only when nothing differs (:func:`benchmarks.protocol.run_protocol`).  The development
set and every check script never need one, and the final set cannot be read without it
(the real-set loader refuses without the protocol's verified registration).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from mri_score.atomic import atomic_output
from mri_score.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
#: The committed registration of the final test.
REGISTRATION = ROOT / "benchmarks" / "registration.json"
#: Packages whose source is part of the code digest.
CODE_DIRS = ("mri_score", "operators", "benchmarks")
#: The rules the record names (their code is covered by the code digest; the names make the record readable).
RULES = {"grid": "ReconRequest.for_pixels: auto = the largest of 2x below 5.66x acceleration on matrices up to 128^2 "
                 "(mri_score.resolution.acquisition_grid_factor), 2x on trajectories from grid coverage 0.116 on "
                 "matrices up to 128^2 (mri_score.resolution.trajectory_grid_factor) and the smallest half-integer "
                 "factor bringing the pixel into the prior's trained range (mri_score.resolution.auto_grid_factor)",
         "std_calibration": "largest per-setting split-conformal factor on the tuning slices "
                            "(mri_score.uncertainty.every_group_factor)",
         "lambda": "best mean clean-truth PSNR on the tuning slices, sweep widened until interior "
                   "(benchmarks.stats.select_parameter)"}


def code_digest(root: Path = ROOT) -> str:
    """SHA-256 over the paths and bytes of every ``.py`` file under :data:`CODE_DIRS` (sorted; caches excluded)."""
    h = hashlib.sha256()
    for d in CODE_DIRS:
        for path in sorted((root / d).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            h.update(str(path.relative_to(root)).encode())
            h.update(b"\0")
            h.update(path.read_bytes())
    return h.hexdigest()


def config_digest(cfg: dict) -> str:
    """SHA-256 of the protocol config as canonical JSON."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def git_commit(root: Path = ROOT) -> str:
    """The checkout's HEAD commit (``unknown`` outside a git checkout); informational only."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def record(cfg: dict, prior_path: str | os.PathLike[str], dds_identity: dict | None) -> dict[str, Any]:
    """The registration record of a protocol config, its prior and its DDS request's identity (what :func:`verify`
    compares; the caller builds the request: :func:`benchmarks.protocol.dds_request`)."""
    from mri_score.uncertainty import file_sha256

    return {
        "config_sha256": config_digest(cfg),
        "prior": Path(prior_path).name,
        "prior_sha256": file_sha256(prior_path),
        "dds_request": dds_identity,
        "rules": RULES,
        "code_sha256": code_digest(),
        "git_commit": git_commit(),
    }


#: Keys whose difference refuses the final run (the commit is recorded, not compared: a commit that only adds
#: the registration file changes it).
COMPARED = ("config_sha256", "prior", "prior_sha256", "dds_request", "rules", "code_sha256")


def write(cfg: dict, prior_path: str | os.PathLike[str], dds_identity: dict | None,
          path: str | os.PathLike[str] = REGISTRATION) -> Path:
    """Write the registration of ``cfg``, its prior and DDS request to ``path`` atomically; returns the path."""
    rec = record(cfg, prior_path, dds_identity)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    return Path(path)


def verify(cfg: dict, prior_path: str | os.PathLike[str], dds_identity: dict | None,
           path: str | os.PathLike[str] | None = None) -> None:
    """Refuse (:class:`InputError`, one line) unless ``path`` (default :data:`REGISTRATION`) registers exactly this
    config, prior, DDS request and code."""
    path = Path(REGISTRATION if path is None else path)
    if not path.is_file():
        raise InputError(f"{path}: no registration; the final test set is read only by a registered protocol "
                         "(python benchmarks/register.py --config CONFIG, committed before the run)")
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable registration ({err})") from None
    now = json.loads(json.dumps(record(cfg, prior_path, dds_identity), sort_keys=True))  # as stored (tuples become lists)
    differ = [k for k in COMPARED if stored.get(k) != now.get(k)]
    if differ:
        raise InputError(f"{path}: the code or settings differ from the registration ({', '.join(differ)}); "
                         "the final test set is not read")
