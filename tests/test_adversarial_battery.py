"""An adversarial battery, generated here, against every command line (issue 18).

Every case asserts the project's bad-input rule: exit code 2 (0 where the input is
valid), exactly one stderr line naming the file, flag or key, no traceback, the
inputs' SHA-256 unchanged and no output or temporary file left.  Nearly all cases run
in-process (``main(argv)``) and are refused before a prior is loaded or sampling runs;
a handful run as real processes (file-size limit, signals while starting, symlinks).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mri_score.reconstruct import main as reconstruct_main
from tests.conftest import phantom

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ shared inputs


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, Path]:
    """One small valid 64² file (2 slices, 4 coils) and a tiny prior, made once per session."""
    import torch

    from mri_score.checkpoint import save_checkpoint
    from mri_score.fastmri_io import write_fastmri_file
    from mri_score.network import EDMDenoiser, NetworkConfig
    from mri_score.simulation import simulate_volume

    d = tmp_path_factory.mktemp("assets")
    ksp, target, _ = simulate_volume(phantom(64, 2), coils=4, snr=100.0, seed=0)
    valid = write_fastmri_file(d / "valid.h5", ksp, target, "AXT2", "p0")
    cfg = NetworkConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, emb_dim=16, groups=4)
    torch.manual_seed(0)
    model = EDMDenoiser(cfg)
    prior = save_checkpoint(d / "prior.safetensors", {f"ema.{k}": v for k, v in model.state_dict().items()},
                            {"step": 0, "network": cfg.to_dict(), "config": {}, "kind": "prior"})
    return {"valid": valid, "prior": prior, "dir": d}


def digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (symlinks followed), by relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(root: Path) -> list[str]:
    """Temporary files of the write guard anywhere under ``root``."""
    return [str(p) for p in root.rglob(".*.tmp")]


def one_line(text: str, *names: str) -> str:
    """The single stderr line, checked to be an error line naming each of ``names``, without a traceback."""
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------------------ symlinks


@pytest.mark.parametrize("directory_run", [False, True], ids=["file-run", "directory-run"])
@pytest.mark.parametrize("out_via", ["data", "link-to-data"])
def test_symlinked_input_is_never_overwritten(tmp_path, assets, capfd, directory_run, out_via):
    """``in/x.h5 -> ../data/x.h5`` with ``--out data``: refused before any work, the target untouched."""
    (tmp_path / "data").mkdir()
    (tmp_path / "in").mkdir()
    shutil.copy(assets["valid"], tmp_path / "data" / "x.h5")
    os.symlink("../data/x.h5", tmp_path / "in" / "x.h5")
    os.symlink("data", tmp_path / "link-to-data")
    before = digests(tmp_path / "data")
    src = tmp_path / "in" if directory_run else tmp_path / "in" / "x.h5"
    rc = reconstruct_main(["--kspace", str(src), "--out", str(tmp_path / out_via), "--prior", str(assets["prior"]),
                           "--steps", "2", "--png"])
    assert rc == 2
    one_line(capfd.readouterr().err, "--out", "input")
    assert digests(tmp_path / "data") == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["x.h5"]  # nothing left in the output dir
    assert not leftovers(tmp_path)


def test_output_symlink_onto_an_input_is_refused(tmp_path, assets, capfd):
    """An output name that is a symlink to the input (``out/x.h5 -> ../in/x.h5``) is refused, input untouched."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    shutil.copy(assets["valid"], tmp_path / "in" / "x.h5")
    os.symlink("../in/x.h5", tmp_path / "out" / "x.h5")
    before = digests(tmp_path / "in")
    rc = reconstruct_main(["--kspace", str(tmp_path / "in" / "x.h5"), "--out", str(tmp_path / "out"),
                           "--prior", str(assets["prior"]), "--steps", "2"])
    assert rc == 2
    one_line(capfd.readouterr().err, "x.h5", "overwrite an input")
    assert digests(tmp_path / "in") == before and os.path.islink(tmp_path / "out" / "x.h5")
    assert not leftovers(tmp_path)


def test_write_guard_refuses_registered_inputs_through_symlinked_directories(tmp_path):
    """The one write guard compares real paths: a registered input reached through a linked directory."""
    from mri_score.atomic import atomic_output, protected_inputs
    from mri_score.errors import InputError

    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "x.h5"
    target.write_bytes(b"input")
    os.symlink("data", tmp_path / "alias")
    with protected_inputs([tmp_path / "alias" / "x.h5"]):
        with pytest.raises(InputError, match="overwrite an input"), atomic_output(target) as tmp:
            tmp.write_bytes(b"output")
    assert target.read_bytes() == b"input" and not leftovers(tmp_path)
    with atomic_output(target) as tmp:  # outside the run the registry is empty again
        tmp.write_bytes(b"output")
    assert target.read_bytes() == b"output"
