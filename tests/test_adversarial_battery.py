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

import h5py
import numpy as np
import pytest

from mri_score.fastmri_io import build_ismrmrd_header
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


# ------------------------------------------------------------------------------------------------ HDF5 content
# Each case edits a copy of the valid file: (edit(hf, base, d), the phrase the error must contain, where it
# applies: r = reconstruct, s = simulate --source, t = train on a fastMRI directory).  A phrase of None marks a
# valid variant (exit 0).


def _header(**fields) -> bytes:
    xml = build_ismrmrd_header((64, 64, 1), (64, 64, 1)).decode()
    for old, new in fields.items():
        xml = xml.replace(*{"recon_x": ("<reconSpace><matrixSize><x>64</x>", f"<reconSpace><matrixSize><x>{new}</x>"),
                            "center": ("<center>32</center>", f"<center>{new}</center>"),
                            "drop_max": ("<maximum>63</maximum>", "")}[old])
    return xml.encode()


def _put(name, value):
    def edit(hf, base, d):
        if name in hf:
            del hf[name]
        hf[name] = value(base) if callable(value) else value
    return edit


def _attr(name, value):
    def edit(hf, base, d):
        hf.attrs[name] = value
    return edit


def _declared(name, shape, dtype, chunks=None):
    def edit(hf, base, d):
        if name in hf:
            del hf[name]
        hf.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks or tuple(min(s, 64) for s in shape))
    return edit


def _group(name):
    def edit(hf, base, d):
        if name in hf:
            del hf[name]
        hf.create_group(name).create_dataset("x", data=np.zeros(3))
    return edit


def _link(name, make):
    def edit(hf, base, d):
        if name in hf:
            hf.move(name, f"moved_{name}")
        hf[name] = make(h5py, d)
    return edit


def _virtual(hf, base, d):
    layout = h5py.VirtualLayout(shape=base["kspace"].shape, dtype=np.complex64)
    layout[:] = h5py.VirtualSource(str(d / "other.h5"), "kspace", shape=base["kspace"].shape)
    with h5py.File(d / "other.h5", "w") as other:
        other["kspace"] = base["kspace"]
    del hf["kspace"]
    hf.create_virtual_dataset("kspace", layout)


def _external_storage(hf, base, d):
    raw = base["kspace"].astype(np.complex64)
    (d / "raw.bin").write_bytes(raw.tobytes())
    del hf["kspace"]
    hf.create_dataset("kspace", shape=raw.shape, dtype=np.complex64, external=[(str(d / "raw.bin"), 0, raw.nbytes)])


def _scaled(factor):
    return _put("kspace", lambda b: (b["kspace"] * factor).astype(np.complex64))


def _poke(index, value):
    def make(b):
        k = b["kspace"].copy()
        k[index] = value
        return k
    return make


COMPOUND = np.dtype([("a", "<f4"), ("b", "<i4")])
LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
          b'<ismrmrdHeader>&lol2;</ismrmrdHeader>')
H5_CASES = {
    # k-space: dtype, rank, size, values
    "kspace_float32": (_put("kspace", lambda b: b["kspace"].real.astype(np.float32)), "must be complex", "rst"),
    "kspace_int16": (_put("kspace", lambda b: (b["kspace"].real * 100).astype(np.int16)), "must be complex", "rst"),
    "kspace_bool": (_put("kspace", lambda b: b["kspace"].real > 0), "must be complex", "rst"),
    "kspace_text": (_put("kspace", np.array([b"abc"] * 4)), "must be complex", "rst"),
    "kspace_compound": (_put("kspace", np.zeros((2, 4, 8, 8), COMPOUND)), "must be complex", "rst"),
    "kspace_group": (_group("kspace"), "not a dataset", "rst"),
    "kspace_scalar": (_put("kspace", np.complex64(1 + 1j)), "must have shape", "rst"),
    "kspace_1d": (_put("kspace", lambda b: b["kspace"][0, 0, 0]), "must have shape", "rst"),
    "kspace_2d": (_put("kspace", lambda b: b["kspace"][0, 0]), "must have shape", "rst"),
    "kspace_5d": (_put("kspace", lambda b: b["kspace"][None]), "must have shape", "rst"),
    "kspace_zero_slices": (_put("kspace", np.zeros((0, 4, 64, 64), np.complex64)), "empty dimension", "rst"),
    "kspace_zero_coils": (_put("kspace", np.zeros((2, 0, 64, 64), np.complex64)), "empty dimension", "rst"),
    "kspace_nan": (_put("kspace", _poke((0, 0, 3, 3), np.nan)), "NaN or Inf", "rst"),
    "kspace_inf": (_put("kspace", _poke((1, 2, 5, 5), np.inf)), "NaN or Inf", "rst"),
    "kspace_all_zero": (_put("kspace", lambda b: np.zeros_like(b["kspace"])), "all zeros", "rst"),
    "kspace_huge_values": (_scaled(1e30), "too large", "rst"),
    "kspace_max_float32": (_put("kspace", _poke((0, 0, 0, 0), np.float32(3e38))), "too large", "rst"),
    "kspace_denormal": (_scaled(1e-38), "too small", "rst"),
    "kspace_declared_16GiB": (_declared("kspace", (1, 1, 32768, 32768), np.complex128), "too large", "rst"),
    "kspace_declared_2TB": (_declared("kspace", (4000, 32, 2048, 2048), np.complex64), "too large", "rst"),
    # mask
    "mask_text": (_put("mask", np.array([b"1"] * 64)), "mask must be real", "rs"),
    "mask_group": (_group("mask"), "not a dataset", "rs"),
    "mask_compound": (_put("mask", np.zeros(64, COMPOUND)), "mask must be real", "rs"),
    "mask_complex": (_put("mask", np.ones(64, np.complex64)), "mask must be real", "rs"),
    "mask_wrong_length": (_put("mask", np.ones(63, np.float32)), "mask length", "rs"),
    "mask_2d_wrong_shape": (_put("mask", np.ones((32, 64), np.float32)), "mask shape", "rs"),
    "mask_3d": (_put("mask", np.ones((2, 64, 64), np.float32)), "mask must have shape", "rs"),
    "mask_all_zero": (_put("mask", np.zeros(64, np.float32)), "mask is all zeros", "rs"),
    "mask_nan": (_put("mask", np.full(64, np.nan, np.float32)), "mask contains NaN", "rs"),
    "mask_declared_40000sq": (_declared("mask", (40000, 40000), np.float32), "too large", "rs"),
    "mask_no_acs": (_put("mask", (np.arange(64) % 4 == 0).astype(np.float32)), "ACS too narrow", "r"),
    # targets
    "target_1d": (_put("reconstruction_rss", np.ones(64, np.float32)), "must have shape", "rs"),
    "target_text": (_put("reconstruction_rss", np.array([b"x"] * 3)), "must be real", "rs"),
    "target_group": (_group("reconstruction_rss"), "not a dataset", "rs"),
    "target_complex": (_put("reconstruction_rss", lambda b: b["target"].astype(np.complex64)), "must be real", "rs"),
    "target_slice_mismatch": (_put("reconstruction_rss", lambda b: b["target"][:1]), "does not fit", "rs"),
    "target_nan": (_put("reconstruction_rss", lambda b: b["target"] * np.nan), "contains NaN", "rs"),
    "target_declared_40000sq": (_declared("reconstruction_rss", (2, 40000, 40000), np.float32), "too large", "rs"),
    "target_too_wide": (_declared("reconstruction_rss", (2, 64, 1000), np.float32), "does not fit", "rs"),
    # header
    "header_missing": (lambda hf, b, d: hf.__delitem__("ismrmrd_header"), "no 'ismrmrd_header'", "rst"),
    "header_group": (_group("ismrmrd_header"), "not a dataset", "rst"),
    "header_garbled": (_put("ismrmrd_header", np.bytes_(b"<ismrmrdHeader><encoding>")), "not valid XML", "rst"),
    "header_not_xml_bytes": (_put("ismrmrd_header", np.bytes_(b"\xff\xfe\x00binary")), "not valid XML", "rst"),
    "header_entities": (_put("ismrmrd_header", np.bytes_(LAUGHS)), "DTD or entities", "rst"),
    "header_text_value": (_put("ismrmrd_header", np.bytes_(_header(recon_x="sixty-four"))), "not a number", "rst"),
    "header_nan_value": (_put("ismrmrd_header", np.bytes_(_header(recon_x="NaN"))), "finite number", "rst"),
    "header_1e400_value": (_put("ismrmrd_header", np.bytes_(_header(center="1e400"))), "finite number", "rst"),
    "header_huge_value": (_put("ismrmrd_header", np.bytes_(_header(recon_x="1e9"))), "finite number", "rst"),
    "header_negative_recon": (_put("ismrmrd_header", np.bytes_(_header(recon_x="-5"))), "not positive", "rst"),
    "header_missing_field": (_put("ismrmrd_header", np.bytes_(_header(drop_max=True))), "lacks", "rst"),
    "header_integers": (_put("ismrmrd_header", np.arange(10)), "ismrmrd_header must be text", "rst"),
    "header_many_strings": (_put("ismrmrd_header", np.array([b"<a/>"] * 5)), "one string", "rst"),
    "header_declared_huge": (_declared("ismrmrd_header", (), "S100000000", chunks=False), "too large", "rst"),
    "header_recon_larger": (_put("ismrmrd_header", np.bytes_(build_ismrmrd_header((64, 64, 1), (640, 640, 1)))),
                            "larger than", "rst"),
    # attributes
    "attr_acceleration_text": (_attr("acceleration", "four"), "'acceleration' must be a number", "rs"),
    "attr_acceleration_array": (_attr("acceleration", np.array([4.0, 8.0])), "'acceleration' must be a number", "rs"),
    "attr_acceleration_nan": (_attr("acceleration", np.nan), "'acceleration' must be finite", "rs"),
    "attr_acceleration_zero": (_attr("acceleration", 0.0), "'acceleration' must be in", "rs"),
    "attr_num_low_text": (_attr("num_low_frequency", "many"), "'num_low_frequency' must be a number", "rs"),
    "attr_max_inf": (_attr("max", np.inf), "'max' must be finite", "rs"),
    "attr_acquisition_array": (_attr("acquisition", np.array([1, 2, 3])), "'acquisition' must be text", "rs"),
    "attr_acquisition_number": (_attr("acquisition", 7), "'acquisition' must be text", "rs"),
    "attr_patient_id_bytes": (_attr("patient_id", np.void(b"\xff\xfe")), "'patient_id' must be text", "rs"),
    # links and storage that would make the tool open other files
    "kspace_external_link": (_link("kspace", lambda h5py, d: h5py.ExternalLink(str(d / "other.h5"), "/kspace")),
                             "external link", "rst"),
    "kspace_external_system_file": (_link("kspace", lambda h5py, d: h5py.ExternalLink("/etc/passwd", "/x")),
                                    "external link", "rst"),
    "extra_external_link": (_link("notes", lambda h5py, d: h5py.ExternalLink("/etc/shadow", "/")), "external link",
                            "rst"),
    "header_external_link": (_link("ismrmrd_header", lambda h5py, d: h5py.ExternalLink("/etc/hosts", "/h")),
                             "external link", "rst"),
    "kspace_virtual": (_virtual, "virtual dataset", "rst"),
    "kspace_external_storage": (_external_storage, "external files", "rst"),
    "kspace_soft_dangling": (_link("kspace", lambda h5py, d: h5py.SoftLink("/nowhere")), "dangling soft link", "rst"),
    "kspace_soft_self": (_link("kspace", lambda h5py, d: h5py.SoftLink("/kspace")), "loops", "rst"),
    "kspace_soft_loop": (lambda hf, b, d: (_link("kspace", lambda h5py, d: h5py.SoftLink("/a"))(hf, b, d),
                                           _link("a", lambda h5py, d: h5py.SoftLink("/b"))(hf, b, d),
                                           _link("b", lambda h5py, d: h5py.SoftLink("/a"))(hf, b, d)), "loops", "rst"),
    "mask_soft_dangling": (_link("mask", lambda h5py, d: h5py.SoftLink("/gone")), "dangling soft link", "rs"),
    "target_soft_into_dataset": (_link("reconstruction_rss", lambda h5py, d: h5py.SoftLink("/kspace/x")),
                                 "not a group", "rs"),
    # valid variants: the reader follows an internal soft link, ignores unknown attributes
    "valid_soft_link": (lambda hf, b, d: (hf.move("kspace", "data_kspace"),
                                          hf.__setitem__("kspace", h5py.SoftLink("/data_kspace"))),
                        None, "r"),
    "valid_unknown_attr": (_attr("vendor_blob", np.arange(10)), None, "r"),
}


@pytest.fixture(scope="session")
def h5_cases(assets, tmp_path_factory) -> dict[str, Path]:
    """Every :data:`H5_CASES` file, written once: ``<case>/in/x.h5`` (helpers beside ``in/``)."""
    root = tmp_path_factory.mktemp("h5cases")
    with h5py.File(assets["valid"], "r") as hf:
        base = {"kspace": hf["kspace"][()], "header": hf["ismrmrd_header"][()], "target": hf["reconstruction_rss"][()],
                "attrs": dict(hf.attrs)}
    out = {}
    for case, (edit, _, _) in H5_CASES.items():
        d = root / case
        (d / "in").mkdir(parents=True)
        path = d / "in" / "x.h5"
        with h5py.File(path, "w") as hf:
            hf.create_dataset("kspace", data=base["kspace"], chunks=True)
            hf["ismrmrd_header"] = base["header"]
            hf["reconstruction_rss"] = base["target"]
            for k, v in base["attrs"].items():
                hf.attrs[k] = v
            edit(hf, base, d)
        out[case] = path
    return out


def check_refused(rc: int, err: str, phrase: str | None, names: tuple[str, ...], inputs: Path, before: dict,
                  out: Path, scratch: Path) -> None:
    """The bad-input rule for one case: exit 2 and one line (or exit 0 for a valid input), inputs unchanged,
    no output (for a refusal) and no temporary file left."""
    if phrase is None:
        assert rc == 0, err
        assert "Traceback" not in err
    else:
        assert rc == 2, err
        one_line(err, phrase, *names)
        assert not out.exists() or not list(out.iterdir()), list(out.iterdir())
    assert digests(inputs) == before
    assert not leftovers(scratch) and not leftovers(inputs)


def _cases(where: str) -> list[str]:
    return [c for c, (_, _, w) in H5_CASES.items() if where in w]


@pytest.mark.parametrize("case", _cases("r"))
def test_reconstruct_h5(case, h5_cases, assets, tmp_path, capfd):
    path = h5_cases[case]
    phrase = H5_CASES[case][1]
    before = digests(path.parents[1])
    rc = reconstruct_main(["--kspace", str(path), "--out", str(tmp_path / "out"), "--prior", str(assets["prior"]),
                           "--steps", "2", "--center-fraction", "0.25", "--samples", "1", "--maps", "lowres"])
    check_refused(rc, capfd.readouterr().err, phrase, (str(path),), path.parents[1], before, tmp_path / "out", tmp_path)


@pytest.mark.parametrize("case", _cases("s"))
def test_simulate_h5(case, h5_cases, tmp_path, capfd):
    from mri_score.simulate import main as simulate_main

    path = h5_cases[case]
    before = digests(path.parents[1])
    rc = simulate_main(["--out", str(tmp_path / "out"), "--source", str(path), "--coils", "2", "--slices", "1"])
    check_refused(rc, capfd.readouterr().err, H5_CASES[case][1], (str(path),), path.parents[1], before,
                  tmp_path / "out", tmp_path)


def _train_config(tmp_path: Path, data: dict | None = None, **sections) -> Path:
    import yaml

    cfg = {"out_dir": str(tmp_path / "run"),
           "data": data or {"source": "synthetic", "pool_size": 4, "sizes": [64], "crop": 32},
           "network": {"base_channels": 8, "channel_mult": [1, 2], "emb_dim": 16, "groups": 4},
           "train": {"steps": 1, "batch": 2, "precision": "fp32"}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("case", _cases("t"))
def test_train_on_fastmri_directory_h5(case, h5_cases, tmp_path, capfd):
    from mri_score.train import main as train_main

    path = h5_cases[case]
    before = digests(path.parents[1])
    cfg = _train_config(tmp_path, {"source": "fastmri", "path": str(path.parent), "crop": 32, "num_workers": 0})
    rc = train_main(["--config", str(cfg)])
    check_refused(rc, capfd.readouterr().err, H5_CASES[case][1], (str(path),), path.parents[1], before,
                  tmp_path / "run", tmp_path)


# ------------------------------------------------------------------------------------------------ output paths


def _out_case(kind: str, tmp_path: Path) -> tuple[Path, list[str], str | None]:
    """An output-path case: (``--out``, extra flags, phrase; None = valid)."""
    out = tmp_path / "out"
    if kind == "out_is_file":
        out.write_bytes(b"not a directory")
        return out, [], "exists and is not a directory"
    if kind == "out_under_file":
        (tmp_path / "plain").write_bytes(b"x")
        return tmp_path / "plain" / "sub", [], "not a directory"
    if kind == "h5_name_is_directory":
        (out / "x.h5").mkdir(parents=True)
        return out, [], "a directory of that name exists"
    if kind == "png_name_is_directory":
        (out / "x.png").mkdir(parents=True)
        return out, ["--png"], "a directory of that name exists"
    if kind == "summary_name_is_directory":
        (out / "summary.csv").mkdir(parents=True)
        return out, ["--directory-run"], "a directory of that name exists"
    if kind == "unwritable_directory":
        return Path("/sys/kernel/mri_score_out"), [], "cannot write there"
    if kind == "out_is_the_prior":
        return Path("PRIOR"), [], "exists and is not a directory"
    if kind == "nonexistent_parents":
        return tmp_path / "a" / "b" / "c", [], None
    raise AssertionError(kind)


OUT_CASES = ["out_is_file", "out_under_file", "h5_name_is_directory", "png_name_is_directory",
             "summary_name_is_directory", "unwritable_directory", "out_is_the_prior", "nonexistent_parents"]


@pytest.mark.parametrize("kind", OUT_CASES)
def test_reconstruct_output_path_errors(kind, assets, tmp_path, capfd):
    (tmp_path / "in").mkdir()
    src = shutil.copy(assets["valid"], tmp_path / "in" / "x.h5")
    out, extra, phrase = _out_case(kind, tmp_path)
    out = assets["prior"] if str(out) == "PRIOR" else out
    kspace = str(tmp_path / "in") if "--directory-run" in extra else str(src)
    extra = [e for e in extra if e != "--directory-run"]
    listing = sorted(os.listdir(out)) if out.is_dir() else None
    before = digests(tmp_path / "in")
    rc = reconstruct_main(["--kspace", kspace, "--out", str(out), "--prior", str(assets["prior"]), "--steps", "2",
                           "--center-fraction", "0.25", "--samples", "1", *extra])
    err = capfd.readouterr().err
    if phrase is None:
        assert rc == 0 and "Traceback" not in err, err
        assert (out / "x.h5").is_file()
    else:
        assert rc == 2
        one_line(err, phrase, "out" if kind != "out_is_the_prior" else str(out))
        assert (sorted(os.listdir(out)) if out.is_dir() else None) == listing  # nothing added
    assert digests(tmp_path / "in") == before and not leftovers(tmp_path)


@pytest.mark.parametrize("directory_run", [False, True])
def test_file_names_the_locale_cannot_encode(assets, tmp_path, capfd, directory_run):
    """A valid input whose name is not UTF-8 is reconstructed; messages and the summary escape the name."""
    d = tmp_path / os.fsdecode(b"in\xff")
    d.mkdir()
    src = d / os.fsdecode(b"x\xfe.h5")
    shutil.copy(assets["valid"], src)
    rc = reconstruct_main(["--kspace", str(d if directory_run else src), "--out", str(tmp_path / "out"),
                           "--prior", str(assets["prior"]), "--steps", "2", "--center-fraction", "0.25",
                           "--samples", "1"])
    captured = capfd.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert (tmp_path / "out" / src.name).is_file()


@pytest.mark.parametrize("code", ["ENOSPC", "EFBIG", "EACCES", "EEXIST", "EISDIR", "EROFS", "EDQUOT"])
@pytest.mark.parametrize("style", ["oserror", "h5py-message", "rust-message"])
def test_write_guard_maps_file_system_errors_to_one_line(tmp_path, code, style):
    """ENOSPC/EFBIG/EACCES/EEXIST/EISDIR/… raised by any writer become one InputError; no temporary file stays."""
    import errno

    from mri_score.atomic import atomic_output
    from mri_score.errors import InputError

    number = getattr(errno, code)
    raised = {"oserror": OSError(number, os.strerror(number)),
              "h5py-message": RuntimeError(f"Can't write data (file write failed: errno = {number}, error message = "
                                           f"'{os.strerror(number)}')"),
              "rust-message": Exception(f"I/O error: {os.strerror(number)} (os error {number})")}[style]
    target = tmp_path / "out.h5"
    with pytest.raises(InputError) as info, atomic_output(target) as tmp:
        tmp.write_bytes(b"partial")
        raise raised
    message = str(info.value)
    assert str(target) in message and "cannot write output" in message and "\n" not in message
    assert not target.exists() and not leftovers(tmp_path) and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ real processes


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}


def _limit_file_size() -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that write() fails with EFBIG instead of killing the child
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


@pytest.mark.parametrize("cli", ["reconstruct"])
def test_file_size_limit_gives_one_line_and_leaves_nothing(cli, assets, tmp_path):
    import subprocess
    import sys

    (tmp_path / "in").mkdir()
    src = shutil.copy(assets["valid"], tmp_path / "in" / "x.h5")
    out = tmp_path / "out"
    args = {"reconstruct": ["--kspace", str(src), "--prior", str(assets["prior"]), "--steps", "2",
                            "--center-fraction", "0.25", "--samples", "1"],
            "simulate": ["--size", "64", "64", "--coils", "4", "--slices", "2"]}[cli]
    res = subprocess.run([sys.executable, "-m", f"mri_score.{cli}", "--out", str(out), *args], capture_output=True,
                         text=True, timeout=300, env=_env(), preexec_fn=_limit_file_size)
    assert res.returncode == 2, res.stderr
    one_line(res.stderr, "file too large", str(out))
    assert not out.exists() or not list(out.iterdir())
    assert not leftovers(tmp_path)


def test_symlinked_input_in_a_real_process(assets, tmp_path):
    import subprocess
    import sys

    (tmp_path / "data").mkdir()
    (tmp_path / "in").mkdir()
    shutil.copy(assets["valid"], tmp_path / "data" / "x.h5")
    os.symlink("../data/x.h5", tmp_path / "in" / "x.h5")
    before = digests(tmp_path / "data")
    res = subprocess.run([sys.executable, "-m", "mri_score.reconstruct", "--kspace", str(tmp_path / "in"), "--out",
                          str(tmp_path / "data"), "--prior", str(assets["prior"]), "--steps", "2"],
                         capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path)
    assert res.returncode == 2
    one_line(res.stderr, "--out", "input")
    assert digests(tmp_path / "data") == before and os.listdir(tmp_path / "data") == ["x.h5"]


def _signals_caught(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see when handlers are installed")
@pytest.mark.parametrize("signame,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_while_starting_exits_quietly(signame, code, tmp_path):
    """SIGINT/SIGTERM while the command line imports torch: one line, 130/143, no traceback, nothing written."""
    import signal
    import subprocess
    import sys
    import time

    sig = getattr(signal, signame)
    proc = subprocess.Popen([sys.executable, "-m", "mri_score.simulate", "--out", str(tmp_path / "out"),
                             "--size", "64", "64", "--slices", "1"], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not _signals_caught(proc.pid) & (1 << (signal.SIGTERM - 1)):  # the start-up guard is installed
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "while starting" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ arguments
# (argv with {valid} {prior} {out} {tmp} placeholders, the phrase and the flag the one line must contain)

R = ["--kspace", "{valid}", "--out", "{out}", "--prior", "{prior}", "--center-fraction", "0.25", "--samples", "1"]
RECONSTRUCT_ARGS = {
    "seed_negative": (R + ["--seed", "-1"], "must be in", "--seed"),
    "seed_2_40": (R + ["--seed", str(2**40)], "must be in", "--seed"),
    "threads_zero": (R + ["--threads", "0"], "must be in", "--threads"),
    "threads_negative": (R + ["--threads", "-4"], "must be in", "--threads"),
    "threads_huge": (R + ["--threads", "1000000"], "must be in", "--threads"),
    "steps_zero": (R + ["--steps", "0"], "must be in", "--steps"),
    "steps_negative": (R + ["--steps", "-5"], "must be in", "--steps"),
    "steps_huge": (R + ["--steps", "1000000000"], "must be in", "--steps"),
    "nfe_alias_huge": (R + ["--nfe", str(10**12)], "must be in", "--steps"),
    "samples_zero": (R[:-2] + ["--samples", "0"], "must be in", "--samples"),
    "samples_huge": (R[:-2] + ["--samples", "100000000"], "must be in", "--samples"),
    "accel_below_one": (R + ["--accel", "0.5"], "must be in", "--accel"),
    "accel_huge": (R + ["--accel", "1000"], "must be in", "--accel"),
    "accel_nan": (R + ["--accel", "nan"], "must be in", "--accel"),
    "accel_fractional_equispaced": (R + ["--accel", "4.5"], "", "--accel"),
    "center_fraction_zero": (R[:-4] + ["--center-fraction", "0"], "must be in", "--center-fraction"),
    "center_fraction_half": (R[:-4] + ["--center-fraction", "0.6"], "must be in", "--center-fraction"),
    "center_fraction_nan": (R[:-4] + ["--center-fraction", "nan"], "must be in", "--center-fraction"),
    "sampler_unknown": (R + ["--sampler", "magic"], "unknown sampler", "magic"),
    "sampler_opt_unknown": (R + ["--sampler-opt", "warp=9"], "unknown dds option", "--sampler-opt"),
    "sampler_opt_malformed": (R + ["--sampler-opt", "cg_iters"], "key=value", "--sampler-opt"),
    "sampler_opt_twice": (R + ["--sampler-opt", "cg_iters=2", "--sampler-opt", "cg_iters=3"], "twice",
                          "--sampler-opt"),
    "sampler_opt_text_number": (R + ["--sampler-opt", "cg_iters=many"], "must be", "--sampler-opt"),
    "gamma_for_pc": (R + ["--sampler", "pc", "--gamma", "1"], "no gamma", "--gamma"),
    "grid_text": (R + ["--grid", "huge"], "must be native, auto", "--grid"),
    "grid_too_fine": (R + ["--grid", "9"], "must be native, auto", "--grid"),
    "device_bogus": (R + ["--device", "tpu"], "must be cpu", "--device"),
    "guidance_negative": (R + ["--guidance", "-1"], "finite number >= 0", "--guidance"),
    "guidance_inf": (R + ["--guidance", "inf"], "finite number >= 0", "--guidance"),
    "classifier_scale_alone": (R + ["--classifier-scale", "2"], "without --classifier", "--classifier"),
    "condition_unknown_label": (R + ["--condition", "t2"], "conditional prior", "--condition"),
    "classifier_missing": (R + ["--classifier", "{tmp}/nope.safetensors"], "not found", "--classifier"),
    "kspace_missing": (["--kspace", "{tmp}/nope.h5", "--out", "{out}", "--prior", "{prior}"], "no such file", "nope.h5"),
    "kspace_empty_dir": (["--kspace", "{tmp}/empty", "--out", "{out}", "--prior", "{prior}"], "no .h5 files", "empty"),
    "kspace_fifo": (["--kspace", "{tmp}/fifo.h5", "--out", "{out}", "--prior", "{prior}"], "not a file", "fifo.h5"),
    "kspace_required": (["--out", "{out}", "--prior", "{prior}"], "--kspace PATH is required", "--kspace"),
    "prior_missing": (R[:4] + ["--prior", "{tmp}/nope.safetensors"], "not found", "nope.safetensors"),
    "prior_text_file": (R[:4] + ["--prior", "{tmp}/text.safetensors"], "not a readable", "text.safetensors"),
    "prior_is_directory": (R[:4] + ["--prior", "{tmp}/empty"], "not found", "empty"),
    "prior_zero_bytes": (R[:4] + ["--prior", "{tmp}/zero.safetensors"], "not a readable", "zero.safetensors"),
}


def _fill(argv: list[str], paths: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]


@pytest.fixture
def scratch(tmp_path, assets) -> dict[str, Path]:
    """Per-test paths: a copy of the valid file in ``in/``, an empty directory, a FIFO and junk checkpoints."""
    (tmp_path / "in").mkdir()
    (tmp_path / "empty").mkdir()
    os.mkfifo(tmp_path / "fifo.h5")
    (tmp_path / "text.safetensors").write_text("a text file, not a checkpoint\n" * 20)
    (tmp_path / "zero.safetensors").write_bytes(b"")
    valid = Path(shutil.copy(assets["valid"], tmp_path / "in" / "x.h5"))
    return {"valid": valid, "prior": assets["prior"], "out": tmp_path / "out", "tmp": tmp_path}


def _run_case(main, argv, phrase, name, scratch, capfd, out: Path | None = None) -> None:
    before = digests(scratch["tmp"] / "in")
    prior_before = digests(scratch["prior"].parent)
    rc = main(_fill(argv, scratch))
    err = capfd.readouterr().err
    assert rc == 2, err
    one_line(err, phrase, name)
    out = out or scratch["out"]
    assert not out.exists() or (out.is_dir() and not list(out.iterdir()))
    assert digests(scratch["tmp"] / "in") == before and digests(scratch["prior"].parent) == prior_before
    assert not leftovers(scratch["tmp"])


@pytest.mark.parametrize("case", list(RECONSTRUCT_ARGS))
def test_reconstruct_arguments(case, scratch, capfd):
    argv, phrase, name = RECONSTRUCT_ARGS[case]
    _run_case(reconstruct_main, argv + ["--steps", "2"] * ("--steps" not in argv and "--nfe" not in argv), phrase, name,
              scratch, capfd)


S = ["--out", "{out}", "--size", "64", "64", "--coils", "2", "--slices", "1"]
SIMULATE_ARGS = {
    "size_small": (S[:2] + ["--size", "8", "64"], "--size must lie", "--size"),
    "size_huge": (S[:2] + ["--size", "100000", "64"], "--size must lie", "--size"),
    "coils_zero": (S[:-4] + ["--coils", "0"], "must be in", "--coils"),
    "coils_huge": (S[:-4] + ["--coils", "5000"], "must be in", "--coils"),
    "slices_zero": (S[:-2] + ["--slices", "0"], "must be in", "--slices"),
    "slices_huge": (S[:-2] + ["--slices", "100000000"], "must be in", "--slices"),
    "volumes_zero": (S + ["--volumes", "0"], "must be in", "--volumes"),
    "volumes_huge": (S + ["--volumes", "100000000"], "must be in", "--volumes"),
    "seed_negative": (S + ["--seed", "-3"], "must be in", "--seed"),
    "snr_zero": (S + ["--snr", "0"], "finite number > 0", "--snr"),
    "snr_nan": (S + ["--snr", "nan"], "finite number > 0", "--snr"),
    "snr_inf": (S + ["--snr", "inf"], "finite number > 0", "--snr"),
    "accel_one": (S + ["--accel", "1"], "must be in", "--accel"),
    "center_fraction_too_big": (S + ["--accel", "4", "--center-fraction", "0.5"], "must be in", "--center-fraction"),
    "prefix_with_path": (S + ["--prefix", "../escape"], "plain file-name prefix", "--prefix"),
    "prefix_empty": (S + ["--prefix", ""], "plain file-name prefix", "--prefix"),
    "out_is_file": (["--out", "{valid}", "--size", "64", "64"], "exists and is not a directory", "--out"),
    "source_missing": (S + ["--source", "{tmp}/nope.npy"], "no such file", "nope.npy"),
    "source_unknown_format": (S + ["--source", "{tmp}/text.safetensors"], "unknown image format", "text.safetensors"),
    "source_npy_text": (S + ["--source", "{tmp}/text.npy"], "cannot read images", "text.npy"),
    "source_npy_object": (S + ["--source", "{tmp}/object.npy"], "cannot read images", "object.npy"),
    "source_npy_1d": (S + ["--source", "{tmp}/line.npy"], "must be (slices, H, W)", "line.npy"),
    "source_npy_nan": (S + ["--source", "{tmp}/nan.npy"], "NaN or Inf", "nan.npy"),
    "source_npy_declared_huge": (S + ["--source", "{tmp}/huge.npy"], "cannot read images", "huge.npy"),
    "source_npy_empty": (S + ["--source", "{tmp}/empty.npy"], "must be (slices, H, W)", "empty.npy"),
    "family_unknown": (S + ["--family", "t9"], "must be one of", "--family"),
}


@pytest.mark.parametrize("case", list(SIMULATE_ARGS))
def test_simulate_arguments(case, scratch, capfd):
    from mri_score.simulate import main as simulate_main

    t = scratch["tmp"]
    (t / "text.npy").write_text("not numpy")
    np.save(t / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(t / "line.npy", np.ones(64, np.float32))
    np.save(t / "nan.npy", np.full((1, 64, 64), np.nan, np.float32))
    np.save(t / "empty.npy", np.zeros((0, 64, 64), np.float32))
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    with open(t / "huge.npy", "wb") as fh:  # a header that declares 10^6 slices of 10^4 x 10^4 and no data
        np.lib.format.write_array_header_1_0(fh, {**header, "shape": (10**6, 10**4, 10**4)})
    argv, phrase, name = SIMULATE_ARGS[case]
    _run_case(simulate_main, argv, phrase, name, scratch, capfd)


P = ["--prior", "{prior}", "--out", "{out}/grid.png", "--n", "2", "--size", "32", "--steps", "2"]
SAMPLE_PRIOR_ARGS = {
    "n_zero": (P + ["--n", "0"], "must be in", "--n"),
    "n_huge": (P + ["--n", "100000000"], "must be in", "--n"),
    "size_tiny": (P + ["--size", "2"], "must be in", "--size"),
    "size_huge": (P + ["--size", "1000000"], "must be in", "--size"),
    "n_times_size_too_big": (P + ["--n", "1024", "--size", "2048"], "available", "--n"),
    "steps_zero": (P + ["--steps", "0"], "must be in", "--steps"),
    "steps_huge": (P + ["--steps", "10000000000"], "must be in", "--steps"),
    "seed_negative": (P + ["--seed", "-1"], "must be in", "--seed"),
    "guidance_negative": (P + ["--guidance", "-2"], "finite number >= 0", "--guidance"),
    "classifier_scale_alone": (P + ["--classifier-scale", "3"], "without --classifier", "--classifier"),
    "condition_on_unconditional": (P + ["--condition", "t2"], "conditional prior", "--condition"),
    "out_is_directory": (P + ["--out", "{tmp}/empty"], "a directory of that name exists", "empty"),
    "out_under_file": (P + ["--out", "{valid}/grid.png"], "not a directory", "grid.png"),
    "out_unwritable": (P + ["--out", "/sys/kernel/grid.png"], "cannot write there", "--out"),
    "out_is_the_prior": (P + ["--out", "{prior}"], "overwrite an input", "prior.safetensors"),
    "prior_missing": (P + ["--prior", "{tmp}/nope.safetensors"], "not found", "nope.safetensors"),
    "prior_text": (P + ["--prior", "{tmp}/text.safetensors"], "not a readable", "text.safetensors"),
}


@pytest.mark.parametrize("case", list(SAMPLE_PRIOR_ARGS))
def test_sample_prior_arguments(case, scratch, capfd):
    from mri_score.sample_prior import main as sample_main

    argv, phrase, name = SAMPLE_PRIOR_ARGS[case]
    _run_case(sample_main, argv, phrase, name, scratch, capfd)


PREPROCESS_ARGS = {
    "workers_negative": (["--data", "{tmp}/in", "--out", "{out}", "--workers", "-1"], "must be in", "--workers"),
    "workers_huge": (["--data", "{tmp}/in", "--out", "{out}", "--workers", "100000"], "must be in", "--workers"),
    "shard_size_zero": (["--data", "{tmp}/in", "--out", "{out}", "--shard-size", "0"], "must be in", "--shard-size"),
    "center_fraction_bad": (["--data", "{tmp}/in", "--out", "{out}", "--center-fraction", "0.9"], "must be in",
                            "--center-fraction"),
    "data_missing": (["--data", "{tmp}/nope", "--out", "{out}"], "not a directory", "nope"),
    "out_is_file": (["--data", "{tmp}/in", "--out", "{valid}"], "exists and is not a directory", "--out"),
    "no_out": (["--data", "{tmp}/in"], "--out DIR is required", "--out"),
}


@pytest.mark.parametrize("case", list(PREPROCESS_ARGS))
def test_preprocess_arguments(case, scratch, capfd):
    from mri_score.preprocess import main as preprocess_main

    argv, phrase, name = PREPROCESS_ARGS[case]
    _run_case(preprocess_main, argv, phrase, name, scratch, capfd)


# ------------------------------------------------------------------------------------------------ training configs

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
TRAIN_TEXT = {  # raw config files: (text or bytes, phrase)
    "binary": (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4, "binary file"),
    "not_utf8": ("out_dir: r\u00e9sum\u00e9\n".encode("latin-1"), "not UTF-8"),
    "too_large": (("# " + "x" * 100 + "\n") * 11000, "too large"),
    "anchor_bomb": (BOMB, "expands to"),
    "recursive_alias": ("a: &a [*a]\n", "refers to itself"),
    "list": ("- 1\n- 2\n", "must be a YAML mapping"),
    "scalar": ("42\n", "must be a YAML mapping"),
    "empty": ("", "must be a YAML mapping"),
    "invalid_yaml": ("train: [unclosed\n", "not valid YAML"),
    "two_documents": ("a: 1\n---\nb: 2\n", "not valid YAML"),
    "deep_nesting": ("x: " + "[" * 1000 + "]" * 1000 + "\n", "nested too deeply"),
}
TRAIN_KEYS = {  # (dotted key, value, phrase); the line must name the key
    "lr_negative": ("train.lr", -1, "must be in"), "lr_huge": ("train.lr", 10.0, "must be in"),
    "lr_text": ("train.lr", "fast", "must be a number"), "lr_nan": ("train.lr", float("nan"), "finite"),
    "lr_bool": ("train.lr", True, "must be a number"), "lr_list": ("train.lr", [0.1], "must be a number"),
    "batch_zero": ("train.batch", 0, "must be in"), "batch_negative": ("train.batch", -2, "must be in"),
    "batch_huge": ("train.batch", 10**9, "must be in"), "batch_text": ("train.batch", "x", "must be an integer"),
    "batch_fraction": ("train.batch", 2.5, "must be an integer"), "steps_zero": ("train.steps", 0, "must be in"),
    "steps_text": ("train.steps", "many", "must be an integer"),
    "micro_batch_above_batch": ("train.micro_batch", 3, "larger than"),
    "micro_batch_zero": ("train.micro_batch", 0, "must be in"), "ema_decay_above_one": ("train.ema_decay", 1.5, "must be in"),
    "warmup_negative": ("train.warmup", -1, "must be in"), "grad_clip_zero": ("train.grad_clip", 0, "must be in"),
    "precision_unknown": ("train.precision", "fp8", "must be one of"),
    "channels_last_text": ("train.channels_last", "yes", "true or false"),
    "seed_negative": ("train.seed", -1, "must be in"), "label_lr_mult_zero": ("train.label_lr_mult", 0, "must be in"),
    "label_dropout_two": ("train.label_dropout", 2, "must be in"), "train_unknown_key": ("train.lr_rate", 0.1, "unknown key"),
    "train_scalar": ("train", 5, "must be a mapping"), "data_list": ("data", [1, 2], "must be a mapping"),
    "data_source_unknown": ("data.source", "imagenet", "must be one of"), "crop_zero": ("data.crop", 0, "must be in"),
    "sizes_scalar": ("data.sizes", 64, "must be a list"), "pixel_mm_three": ("data.pixel_mm", [1, 2, 3], "entries"),
    "families_string": ("data.families", "t1", "must be a list"),
    "pool_does_not_fit": ("data.pool_size", 10**7, "available"),
    "fastmri_without_path": ("data.source", "fastmri", "needs data.path"),
    "data_unknown_key": ("data.shuffle", True, "unknown key"), "network_scalar": ("network", 5, "must be a mapping"),
    "groups_zero": ("network.groups", 0, "must be in"), "channel_mult_empty": ("network.channel_mult", [], "entries"),
    "emb_dim_odd": ("network.emb_dim", 7, "must be even"), "base_channels_text": ("network.base_channels", "wide",
                                                                                "must be an integer"),
    "groups_not_dividing": ("network.base_channels", 6, "network.groups 4 does not divide"),
    "network_does_not_fit": ("network.base_channels", 1024, "available"),
    "network_unknown_key": ("network.depth", 3, "unknown key"), "p_std_negative": ("sigma.p_std", -1, "must be in"),
    "sigma_text": ("sigma", "x", "must be a mapping"), "task_unknown": ("task", "gan", "must be one of"),
    "top_unknown_key": ("optimizer", "adam", "unknown key"), "out_dir_null": ("out_dir", None, "must not be null"),
}


def _set(cfg: dict, dotted: str, value) -> dict:
    node = cfg
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    if dotted == "network.base_channels" and value == 1024:
        node["channel_mult"] = [1, 8, 8]
    return cfg


@pytest.mark.parametrize("case", list(TRAIN_TEXT))
def test_train_config_files(case, tmp_path, capfd):
    from mri_score.train import main as train_main

    text, phrase = TRAIN_TEXT[case]
    path = tmp_path / "cfg.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = digests(tmp_path)
    rc = train_main(["--config", str(path)])
    check_refused(rc, capfd.readouterr().err, phrase, (str(path),), tmp_path, before, tmp_path / "run", tmp_path)


@pytest.mark.parametrize("case", list(TRAIN_KEYS))
def test_train_config_keys(case, tmp_path, capfd):
    import yaml

    from mri_score.train import main as train_main

    key, value, phrase = TRAIN_KEYS[case]
    path = _train_config(tmp_path)
    cfg = _set(yaml.safe_load(path.read_text()), key, value)
    path.write_text(yaml.safe_dump(cfg))
    before = digests(tmp_path)
    rc = train_main(["--config", str(path)])
    check_refused(rc, capfd.readouterr().err, phrase, (str(path), key), tmp_path, before, tmp_path / "run", tmp_path)


@pytest.mark.parametrize("overrides,phrase,name", [
    (["train.lr"], "must look like", "train.lr"), (["train.lr=abc"], "must be a number", "train.lr"),
    (["=5"], "empty key", "=5"), (["train.steps.x=1"], "not a mapping", "steps"),
    (["out_dir={cfgfile}"], "exists and is not a directory", "out_dir"),
    (["train.init_from={tmp}/nope.safetensors"], "not found", "nope.safetensors"),
], ids=["no_equals", "text_number", "empty_key", "through_a_value", "out_dir_is_a_file", "init_from_missing"])
def test_train_overrides(overrides, phrase, name, tmp_path, capfd):
    from mri_score.train import main as train_main

    path = _train_config(tmp_path)
    overrides = [o.format(cfgfile=path, tmp=tmp_path) for o in overrides]
    before = digests(tmp_path)
    rc = train_main(["--config", str(path), *overrides])
    check_refused(rc, capfd.readouterr().err, phrase, (name,), tmp_path, before, tmp_path / "run", tmp_path)


@pytest.mark.parametrize("edit", [{"train": {"label_lr_mult": 20}}, {"train": {"lr": "1e-3", "steps": "1e3"}},
                                  {"train": {"lr": 0}}, {"task": "classifier"}],
                         ids=["label_lr_mult", "numbers_as_text", "lr_zero", "classifier_task"])
def test_valid_training_configs_pass_validation(edit, tmp_path):
    import yaml

    from mri_score.train_config import validate_config

    cfg = yaml.safe_load(_train_config(tmp_path).read_text())
    for section, values in edit.items():
        cfg[section] = {**cfg[section], **values} if isinstance(values, dict) else values
    out = validate_config(cfg)
    assert isinstance(out["train"].get("lr", 0.0), float) and isinstance(out["train"]["steps"], int)


def test_every_shipped_training_config_is_valid():
    from mri_score.config import load_config
    from mri_score.train_config import validate_config
    from mri_score.varnet_training import validate_varnet_config

    configs = [p for p in sorted((ROOT / "configs").glob("*.yaml")) if "out_dir" in load_config(p)]
    assert len(configs) >= 8
    for path in configs:
        cfg = load_config(path)
        (validate_varnet_config if cfg.get("task") == "varnet" else validate_config)(cfg, str(path))


# ------------------------------------------------------------------------------------------------ checkpoints

TINY_NET = {"base_channels": 8, "channel_mult": [1, 2], "emb_dim": 16, "groups": 4}


def _training_checkpoint(path: Path, edit: str) -> Path:
    """A training checkpoint of the battery's config network, crafted per ``edit`` and validly signed."""
    import torch

    from mri_score.checkpoint import save_checkpoint
    from mri_score.network import EDMDenoiser, NetworkConfig

    cfg = NetworkConfig.from_dict(TINY_NET)
    model = EDMDenoiser(cfg)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in model.state_dict().items()})
    for i, p in enumerate(model.parameters()):
        tensors.update({f"opt.{i}.step": torch.tensor(1.0), f"opt.{i}.exp_avg": torch.zeros_like(p),
                        f"opt.{i}.exp_avg_sq": torch.zeros_like(p)})
    tensors["rng.gen.0"] = torch.Generator().get_state()
    meta = {"step": 1, "network": cfg.to_dict(), "config": {}, "kind": "training", "task": "score"}
    if edit == "step_missing":
        del meta["step"]
    elif edit in ("step_text", "step_negative", "step_fraction"):
        meta["step"] = {"step_text": "5", "step_negative": -3, "step_fraction": 1.5}[edit]
    elif edit == "optimizer_wrong_shape":
        tensors["opt.0.exp_avg"] = torch.zeros(3)
    elif edit == "optimizer_unknown_parameter":
        tensors["opt.9999.exp_avg"] = torch.zeros(3)
    elif edit == "optimizer_missing_moment":
        del tensors["opt.1.exp_avg_sq"]
    elif edit == "optimizer_integer_state":
        tensors["opt.0.exp_avg"] = torch.zeros_like(tensors["opt.0.exp_avg"], dtype=torch.int32)
    elif edit == "rng_wrong_size":
        tensors["rng.gen.0"] = torch.zeros(10, dtype=torch.uint8)
    elif edit == "rng_wrong_dtype":
        tensors["rng.gen.0"] = tensors["rng.gen.0"].float()
    elif edit == "network_groups_zero":
        meta["network"] = {**meta["network"], "groups": 0}
    elif edit == "weights_missing":
        tensors = {k: v for k, v in tensors.items() if not k.startswith("model.net.stem")}
    return save_checkpoint(path, tensors, meta)


RESUME_CASES = {
    "step_missing": "'step' must be", "step_text": "'step' must be", "step_negative": "'step' must be",
    "step_fraction": "'step' must be", "optimizer_wrong_shape": "opt.0.exp_avg has shape",
    "optimizer_unknown_parameter": "opt.9999.exp_avg does not belong", "optimizer_missing_moment": "lacks exp_avg_sq",
    "optimizer_integer_state": "opt.0.exp_avg has shape", "rng_wrong_size": "RNG state rng.gen.0",
    "rng_wrong_dtype": "RNG state rng.gen.0", "network_groups_zero": "architecture differs",
    "weights_missing": "do not match the architecture", "not_a_checkpoint": "not a readable",
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_from_crafted_checkpoint(case, tmp_path, capfd):
    from mri_score.train import main as train_main

    run = tmp_path / "run"
    run.mkdir()
    ckpt = run / "checkpoint.safetensors"
    if case == "not_a_checkpoint":
        ckpt.write_text("step: 5\n")
    else:
        _training_checkpoint(ckpt, case)
    path = _train_config(tmp_path, train={"steps": 3, "batch": 2, "precision": "fp32"}, network=TINY_NET)
    before = digests(tmp_path)
    rc = train_main(["--config", str(path), "--resume"])
    assert rc == 2
    one_line(capfd.readouterr().err, RESUME_CASES[case], str(ckpt))
    assert digests(tmp_path) == before and not leftovers(tmp_path)  # the checkpoint untouched, nothing written


PRIOR_META = {  # crafted, validly signed prior metadata: (edit of meta["network"] or meta, phrase)
    "groups_zero": ({"groups": 0}, "network.groups must be in"),
    "channel_mult_empty": ({"channel_mult": []}, "channel_mult must have"),
    "channel_mult_text": ({"channel_mult": "1,2"}, "channel_mult must be a list"),
    "emb_dim_odd": ({"emb_dim": 15}, "emb_dim must be even"),
    "base_channels_huge": ({"base_channels": 10**9}, "base_channels must be in"),
    "in_channels_zero": ({"in_channels": 0}, "in_channels must be in"),
    "label_classes_negative": ({"label_classes": [-1]}, "label_classes[0] must be in"),
    "sigma_data_nan": ({"sigma_data": float("nan")}, "sigma_data must be a finite"),
    "too_wide": ({"base_channels": 1024, "channel_mult": [1, 16]}, "channels (at most"),
    "does_not_fit": ({"base_channels": 1024, "channel_mult": [1, 8, 8], "num_res_blocks": 16}, "available"),
    "network_not_mapping": ("text", "no valid 'network'"),
    "task_classifier": ({"task": "classifier"}, "not a score prior"),
}


def _crafted_prior(path: Path, case: str) -> Path:
    import torch

    from mri_score.checkpoint import save_checkpoint

    edit, _ = PRIOR_META[case]
    meta = {"step": 0, "network": {**TINY_NET, "in_channels": 2}, "config": {}, "kind": "prior"}
    if edit == "text":
        meta["network"] = "a string"
    elif "task" in edit:
        meta.update(edit)
    else:
        meta["network"] = {**meta["network"], **edit}
    return save_checkpoint(path, {"ema.w": torch.zeros(2)}, meta)


@pytest.mark.parametrize("case", list(PRIOR_META))
@pytest.mark.parametrize("cli", ["reconstruct", "sample_prior"])
def test_crafted_prior_metadata_is_refused_before_building(cli, case, scratch, capfd):
    from mri_score.sample_prior import main as sample_main

    prior = _crafted_prior(scratch["tmp"] / "crafted.safetensors", case)
    argv = {"reconstruct": R[:4] + ["--prior", str(prior), "--steps", "2"],
            "sample_prior": ["--prior", str(prior), "--out", "{out}/g.png", "--n", "1", "--size", "16", "--steps", "1"]}
    main = {"reconstruct": reconstruct_main, "sample_prior": sample_main}[cli]
    _run_case(main, argv[cli], PRIOR_META[case][1], str(prior), scratch, capfd)


def test_diverging_loss_names_the_likely_setting(tmp_path, assets, capfd, monkeypatch):
    """A loss that becomes NaN stops training with one line naming train.lr; no diverged checkpoint is written."""
    import torch

    import mri_score.training as train_module

    monkeypatch.setattr(train_module, "edm_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    (tmp_path / "data").mkdir()
    shutil.copy(assets["valid"], tmp_path / "data" / "x.h5")
    path = _train_config(tmp_path, {"source": "fastmri", "path": str(tmp_path / "data"), "crop": 32, "num_workers": 0},
                         train={"steps": 2, "batch": 2, "precision": "fp32", "lr": 0.05, "warmup": 1})
    from mri_score.train import main as train_main

    rc = train_main(["--config", str(path)])
    assert rc == 2
    one_line(capfd.readouterr().err, "became NaN at step 1", "train.lr=0.05")
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists() and not leftovers(tmp_path)


# ------------------------------------------------------------------------------------------------ benchmarks

BENCHMARKS = {  # (script module, argv, phrase, name)
    "benchmark_binary_config": ("run_benchmark", ["--config", "{tmp}/binary.yaml", "--out-dir", "{out}"], "binary",
                                "binary.yaml"),
    "benchmark_bomb_config": ("run_benchmark", ["--config", "{tmp}/bomb.yaml", "--out-dir", "{out}"], "expands to",
                              "bomb.yaml"),
    "benchmark_missing_config": ("run_benchmark", ["--config", "{tmp}/nope.yaml", "--out-dir", "{out}"], "not found",
                                 "nope.yaml"),
    "benchmark_threads_negative": ("run_benchmark", ["--config", "{tmp}/bomb.yaml", "--threads", "-2", "--out-dir",
                                                     "{out}"], "must be in", "--threads"),
    "benchmark_out_dir_is_file": ("run_benchmark", ["--config", "{tmp}/bomb.yaml", "--out-dir", "{valid}"],
                                  "exists and is not a directory", "--out-dir"),
    "conditional_threads_huge": ("run_conditional", ["--config", "{tmp}/bomb.yaml", "--threads", "999999", "--out",
                                                     "{out}"], "must be in", "--threads"),
    "conditional_list_config": ("run_conditional", ["--config", "{tmp}/list.yaml", "--out", "{out}"],
                                "must be a YAML mapping", "list.yaml"),
    "grid_check_nfe_zero": ("run_grid_check", ["--nfe", "0", "--out", "{out}/g.md"], "must be in", "--nfe"),
    "grid_check_seed_negative": ("run_grid_check", ["--seed", "-1", "--out", "{out}/g.md"], "must be in", "--seed"),
    "grid_check_out_is_directory": ("run_grid_check", ["--out", "{tmp}/empty"], "a directory of that name", "empty"),
    "maps_check_nfe_huge": ("run_maps_check", ["--nfe", "10", "10000000", "--out", "{out}/m.md"], "must be in", "--nfe"),
    "memory_coils_zero": ("run_memory", ["--coils", "0", "--out", "{out}/m.md"], "must be in", "--coils"),
    "memory_steps_huge": ("run_memory", ["--steps", "100000000", "--out", "{out}/m.md"], "must be in", "--steps"),
    "stream_memory_seed_negative": ("run_stream_memory", ["--work", "{tmp}/w", "--seed", "-9", "--out", "{out}/s.md"],
                                    "must be in", "--seed"),
    "tables_csv_missing": ("make_tables", ["--csv", "{tmp}/nope.csv", "--readme", "{tmp}/README.md"], "no such",
                           "nope.csv"),
    "tables_csv_garbage": ("make_tables", ["--csv", "{tmp}/binary.yaml", "--readme", "{tmp}/README.md"],
                           "not a protocol results CSV", "binary.yaml"),
    "tables_readme_missing": ("make_tables", ["--csv", "{tmp}/rows.csv", "--readme", "{tmp}/nope.md"], "not found",
                              "nope.md"),
}


@pytest.mark.parametrize("case", list(BENCHMARKS))
def test_benchmark_scripts(case, scratch, capfd):
    import importlib

    module, argv, phrase, name = BENCHMARKS[case]
    t = scratch["tmp"]
    (t / "binary.yaml").write_bytes(bytes(range(256)))
    (t / "bomb.yaml").write_text(BOMB)
    (t / "list.yaml").write_text("- a\n- b\n")
    (t / "rows.csv").write_text("unit,phase\nslice,test\n")
    (t / "README.md").write_text("# a README without a results block\n")
    main = importlib.import_module(f"benchmarks.{module}").main
    _run_case(main, argv, phrase, name, scratch, capfd)


# ------------------------------------------------------------------------------------------------ memory

MEMORY_CASES = {  # datasets under the size caps that would not fit in 256 MiB of available memory
    "kspace_3GiB": ("kspace", (1, 1, 20000, 20000), np.complex64, "kspace of shape"),
    "mask_1_6GiB": ("mask", (20000, 20000), np.float32, "mask of shape"),
    "target_1_6GiB": ("reconstruction_rss", (2, 20000, 10000), np.float32, "reconstruction_rss of shape"),
}


@pytest.mark.parametrize("case", list(MEMORY_CASES))
def test_reads_are_refused_before_allocating_beyond_available_memory(case, assets, tmp_path, capfd, monkeypatch):
    from mri_score import limits

    name, shape, dtype, phrase = MEMORY_CASES[case]
    (tmp_path / "in").mkdir()
    path = Path(shutil.copy(assets["valid"], tmp_path / "in" / "x.h5"))
    with h5py.File(path, "a") as hf:
        if name in hf:
            del hf[name]
        hf.create_dataset(name, shape=shape, dtype=dtype, chunks=(1,) * (len(shape) - 2) + (100, 100))
    monkeypatch.setattr(limits, "available_memory", lambda: 256 * 2**20)
    before = digests(tmp_path / "in")
    rc = reconstruct_main(["--kspace", str(path), "--out", str(tmp_path / "out"), "--prior", str(assets["prior"]),
                           "--steps", "2"])
    check_refused(rc, capfd.readouterr().err, "is available; refused before reading", (str(path), phrase),
                  tmp_path / "in", before, tmp_path / "out", tmp_path)


# ------------------------------------------------------------------------------------------------ property


@pytest.mark.parametrize("seed", range(30))
def test_random_byte_corruptions_exit_0_or_2_and_write_only_under_out(seed, assets, tmp_path, capfd):
    """Seeded byte-level corruptions of the valid file: exit 0 or 2 only, no traceback, nothing outside --out."""
    rng = np.random.default_rng(seed)
    data = bytearray(assets["valid"].read_bytes())
    kind = seed % 3
    if kind == 0:  # flip a few bytes anywhere (superblock, object headers, B-trees, data)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
            data[pos] ^= int(rng.integers(1, 256))
    elif kind == 1:  # overwrite a run of bytes with noise
        start = int(rng.integers(0, len(data) - 64))
        data[start:start + int(rng.integers(8, 64))] = rng.integers(0, 256, size=64, dtype=np.uint8).tobytes()[
            : int(rng.integers(8, 64))]
    else:  # truncate or append garbage
        data = data[: int(rng.integers(0, len(data)))] if rng.random() < 0.5 else data + rng.bytes(512)
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "x.h5"
    path.write_bytes(bytes(data))
    before = digests(tmp_path)
    rc = reconstruct_main(["--kspace", str(path), "--out", str(tmp_path / "out"), "--prior", str(assets["prior"]),
                           "--steps", "2", "--samples", "1", "--center-fraction", "0.25", "--maps", "lowres"])
    err = capfd.readouterr().err
    assert rc in (0, 2), err
    assert "Traceback" not in err
    if rc == 2:
        one_line(err, str(path))
    after = digests(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out/")} == before  # nothing written outside --out
    assert sorted(k for k in after if k.startswith("out/")) == (["out/x.h5"] if rc == 0 else [])
    assert not leftovers(tmp_path)
