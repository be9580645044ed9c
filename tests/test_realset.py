"""The real-image set: inventory against the headers, completeness, grouping evidence, the frozen split, access rules."""

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from mri_score.data.realset import (  # noqa: E402
    EXCLUDED_FILES,
    FINAL_TEST_CALLERS,
    FINAL_TEST_TOKEN,
    REAL_FILES,
    REAL_VOLUMES,
    SPLIT_TABLE,
    development_set,
    final_test_set,
    header_info,
    load_real_volume,
    nibabel_dir,
    split_digest,
    split_of,
    split_rule,
    volumes_in,
)
from mri_score.errors import InputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: The split was made once; this digest freezes it (changing any assignment must fail here).
FROZEN_SPLIT_DIGEST = "5e2627e47e6b2ae6fca85eb88f79329f089744c282d6041ca7db6bf55c35fa54"
_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img", ".mnc", ".mgz", ".mgh", ".brik", ".brik.gz", ".head", ".par", ".rec",
                   ".dcm", ".dcm.gz", ".v")


def _listed_files():
    usable = [p for f in REAL_FILES.values() for p in f.files]
    excluded = [p for e in EXCLUDED_FILES for p in e.files]
    return usable, excluded


# --- inventory ------------------------------------------------------------------------------------------------


def test_inventory_matches_the_headers():
    for name, entry in REAL_FILES.items():
        matrix, pixel_mm = header_info(name)
        assert matrix == entry.matrix, name
        assert pixel_mm == pytest.approx(entry.pixel_mm), name
        assert min(pixel_mm) > 0 and min(matrix[:2]) >= 32, name
        assert entry.anatomy in ("brain", "phantom") and entry.kind in ("anatomical", "epi", "dwi", "phantom")
        assert 0 < entry.min_object_fraction < 1


def test_every_image_file_of_nibabels_test_data_is_listed_once():
    usable, excluded = _listed_files()
    listed = usable + excluded
    assert len(listed) == len(set(listed)), "a file is listed twice"
    root = nibabel_dir()
    for rel in listed:
        assert (root / rel).is_file(), rel
    found = set()
    for sub in ("tests/data", "nicom/tests/data"):
        for p in (root / sub).iterdir():
            if p.is_file() and p.name.lower().endswith(_IMAGE_SUFFIXES):
                found.add(f"{sub}/{p.name}")
    missing = sorted(found - set(listed))
    assert not missing, f"image files neither usable nor excluded (re-inspect after a nibabel upgrade): {missing}"


def test_grouping_evidence_duplicates_share_a_group():
    root = nibabel_dir()
    group_of = {p: f.acquisition_group for f in REAL_FILES.values() for p in f.files}
    group_of.update({p: e.acquisition_group for e in EXCLUDED_FILES for p in e.files})
    # the three phantom RECs are the same bytes
    recs = ["tests/data/phantom_EPI_asc_CLEAR_2_1.REC", "tests/data/phantom_truncated.REC", "tests/data/phantom_varscale.REC"]
    digests = {hashlib.sha256((root / r).read_bytes()).hexdigest() for r in recs}
    assert len(digests) == 1 and len({group_of[r] for r in recs}) == 1
    # example_nifti2 is a crop of example4d
    big = np.asanyarray(nib.load(str(root / "tests/data/example4d.nii.gz")).dataobj)
    crop = np.asanyarray(nib.load(str(root / "tests/data/example_nifti2.nii.gz")).dataobj)
    np.testing.assert_array_equal(big[48:80, 38:58, 6:18], crop)
    assert group_of["tests/data/example_nifti2.nii.gz"] == group_of["tests/data/example4d.nii.gz"]
    # files that are the same acquisition by name or series
    same = [("tests/data/example4d.nii.gz", "tests/data/example4d+orig.BRIK.gz"),
            ("tests/data/anatomical.nii", "tests/data/reoriented_anat_moved.nii"),
            ("tests/data/anatomical.nii", "tests/data/resampled_anat_moved.nii"),
            ("tests/data/0.dcm", "tests/data/1.dcm"), ("tests/data/0.dcm", "nicom/tests/data/siemens_dwi_0.dcm.gz"),
            ("tests/data/phantom_EPI_asc_CLEAR_2_1.PAR", "tests/data/phantom_truncated.PAR"),
            ("tests/data/phantom_EPI_asc_CLEAR_2_1.PAR", "tests/data/phantom_varscale.PAR")]
    for a, b in same:
        assert group_of[a] == group_of[b], (a, b)
    for sub in ("0.dcm", "1.dcm"):  # the nicom copies are byte-identical
        assert (root / "tests/data" / sub).read_bytes() == (root / "nicom/tests/data" / sub).read_bytes()


# --- split ----------------------------------------------------------------------------------------------------


def test_split_is_frozen_deterministic_and_follows_its_rule():
    groups = sorted({f.acquisition_group for f in REAL_FILES.values()})
    assert sorted(SPLIT_TABLE) == groups  # every usable group has exactly one assignment
    assert split_rule(groups) == SPLIT_TABLE
    assert split_rule(list(reversed(groups))) == SPLIT_TABLE
    assert split_digest() == FROZEN_SPLIT_DIGEST
    assert set(SPLIT_TABLE.values()) == {"development", "final"}
    for name, entry in REAL_FILES.items():
        assert split_of(name) == SPLIT_TABLE[entry.acquisition_group]
    with pytest.raises(InputError):
        split_of("brainweb")


def test_splits_are_non_empty_and_disjoint_by_acquisition_group():
    dev, final = volumes_in("development"), volumes_in("final")
    assert dev and final and set(dev).isdisjoint(final) and set(dev) | set(final) == set(REAL_FILES)
    dev_groups = {REAL_FILES[n].acquisition_group for n in dev}
    final_groups = {REAL_FILES[n].acquisition_group for n in final}
    assert dev_groups.isdisjoint(final_groups)
    # the two volumes read before the split stay in development
    assert set(REAL_VOLUMES) <= set(dev)
    # both splits have a brain EPI; the only anatomical brain is final
    assert {"epi"} <= {REAL_FILES[n].kind for n in dev}
    assert {"epi", "anatomical"} <= {REAL_FILES[n].kind for n in final}


# --- loading and access ---------------------------------------------------------------------------------------


def test_development_set_loads_magnitude_slices_with_header_geometry():
    vols = development_set()
    assert [v.name for v in vols] == list(volumes_in("development"))
    for v in vols:
        e = REAL_FILES[v.name]
        assert v.split == "development" and v.entry is e
        assert v.images.dtype == np.float32 and v.images.ndim == 3 and v.images.shape[0] >= 1
        assert v.images.shape[1:] == e.matrix[:2] and len(v.slices) == v.images.shape[0]
        assert (v.images >= 0).all() and np.isfinite(v.images).all()
        assert min(v.pixel_mm) > 0 and v.pixel_mm == pytest.approx(e.pixel_mm)
        assert v.fov_mm == pytest.approx((e.matrix[0] * e.pixel_mm[0], e.matrix[1] * e.pixel_mm[1]))
        for s in v.images:  # every kept slice has object
            assert (s > 0.1 * v.images.max()).mean() >= e.min_object_fraction


def test_legacy_loader_is_unchanged_for_the_legacy_volumes():
    assert REAL_VOLUMES == ("nibabel_example4d", "nibabel_phantom_epi")
    vol = load_real_volume("nibabel_example4d")
    assert vol.images.shape == (24, 128, 96) and vol.images.dtype == np.complex64
    assert vol.pixel_mm == (2.0, 2.0) and vol.source.endswith("tests/data/example4d.nii.gz")
    assert np.abs(vol.images.imag).max() == 0
    phantom = load_real_volume("nibabel_phantom_epi")
    assert phantom.pixel_mm == (3.75, 3.75) and phantom.images.shape == (9, 64, 64)
    with pytest.raises(InputError, match="unknown real volume"):
        load_real_volume("brainweb")


@pytest.mark.parametrize("kwargs", [{}, {"registration_ok": True}, {"registration_ok": True, "token": "yes"},
                                    {"registration_ok": False, "token": FINAL_TEST_TOKEN},
                                    {"registration_ok": 1, "token": FINAL_TEST_TOKEN}])
def test_final_test_set_refuses_without_registration_and_token(kwargs):
    with pytest.raises(InputError) as err:
        final_test_set(**kwargs)
    assert "\n" not in str(err.value) and "development_set" in str(err.value)


def test_legacy_loader_refuses_final_volumes():
    for name in volumes_in("final"):
        with pytest.raises(InputError, match="final test set"):
            load_real_volume(name)


def test_final_test_set_opens_with_the_protocols_token():
    # only shapes: the test reads the files to prove the protocol can, and decides nothing on the pixels
    vols = final_test_set(registration_ok=True, token=FINAL_TEST_TOKEN)
    assert [v.name for v in vols] == list(volumes_in("final"))
    for v in vols:
        assert v.split == "final" and v.images.dtype == np.float32 and v.images.shape[0] >= 1
        assert v.images.shape[1:] == REAL_FILES[v.name].matrix[:2] and min(v.pixel_mm) > 0


def test_no_check_or_tuning_script_reads_the_final_test_set():
    # the loader itself, the registered protocol, and the docs generator (which names them in prose, reads headers only)
    allowed = set(FINAL_TEST_CALLERS) | {"mri_score/data/realset.py", "docs/make_realset_table.py"}
    pattern = re.compile(r"\bfinal_test_set\b|\bFINAL_TEST_TOKEN\b")
    offenders = []
    for sub in ("benchmarks", "mri_score", "docs"):
        for path in (ROOT / sub).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in allowed and pattern.search(path.read_text(encoding="utf-8", errors="replace")):
                offenders.append(rel)
    assert not offenders, f"only the registered protocol may read the final test set: {offenders}"


def test_docs_table_is_generated_and_current():
    run = subprocess.run([sys.executable, str(ROOT / "docs" / "make_realset_table.py"), "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    text = (ROOT / "docs" / "realset.md").read_text(encoding="utf-8")
    for name in REAL_FILES:
        assert f"`{name}`" in text
    for e in EXCLUDED_FILES:
        assert e.reason in text
