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
