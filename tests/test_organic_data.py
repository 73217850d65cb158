"""The embedded organic case: shipped files match the manifest, the pre-training sets are
each their own level and molecules, and none contains the target's formula."""

import ase.io
import numpy as np
import pytest

from spk_meta.datasets import organic_multilevel

PRETRAIN = {
    "pretrain_ani1x_like_wb97x_631gs": "wB97X/6-31g*",
    "pretrain_qm7x_like_pbe0_def2svp": "PBE0/def2-svp",
    "pretrain_t1x_like_b3lyp_def2svp": "B3LYP/def2-svp",
    "pretrain_carbonyls_hf_def2svp": "HF/def2-svp",
}
TARGET = ["target_mp2_631gs_train_300K", "target_mp2_631gs_test_300K", "target_mp2_631gs_test_600K",
          "target_mp2_631gs_test_900K"]
SCANS = ["scan_mp2_631gs_torsion_CCNH", "scan_mp2_631gs_stretch_NH", "scan_mp2_631gs_stretch_CH"]


@pytest.fixture(scope="module")
def organic():
    return organic_multilevel()


def test_files_levels_and_counts_match_the_manifest(organic):
    assert set(organic.files) == set(PRETRAIN) | set(TARGET) | set(SCANS)
    for name, f in organic.files.items():
        frames = ase.io.read(f.extxyz, ":")
        assert len(frames) == f.frames > 0
        level = PRETRAIN.get(name, "MP2/6-31g*")
        assert f.level_of_theory.name == level
        assert {a.info["level_of_theory"] for a in frames} == {level}
        for a in frames:
            assert np.isfinite(a.get_potential_energy()) and np.isfinite(a.get_forces()).all()


def test_no_pretraining_set_contains_the_target_formula(organic):
    seen = {}
    for name in PRETRAIN:
        frames = ase.io.read(organic[name].extxyz, ":")
        formulas = {a.get_chemical_formula(mode="hill") for a in frames}
        assert "C2H7N" not in formulas, name
        molecules = {a.info["molecule"] for a in frames}
        assert len(molecules) >= 3, f"{name}: several molecules expected, got {molecules}"
        assert molecules == set(organic[name].entry["molecules"])
        seen[name] = molecules
    # each set has its own molecules (isomers such as ethanol and dimethyl ether may share a formula)
    names = list(seen)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not seen[a] & seen[b], (a, b, seen[a] & seen[b])
    for name in TARGET + SCANS:
        assert {a.get_chemical_formula(mode="hill") for a in ase.io.read(organic[name].extxyz, ":")} == {"C2H7N"}


def test_scans_cover_their_coordinate(organic):
    for name, lo, hi in (("scan_mp2_631gs_torsion_CCNH", 0.0, 360.0), ("scan_mp2_631gs_stretch_NH", 0.7, 2.5),
                         ("scan_mp2_631gs_stretch_CH", 0.7, 2.5)):
        frames = ase.io.read(organic[name].extxyz, ":")
        x = np.array([a.info["scan_coordinate"] for a in frames])
        assert np.all(np.diff(x) > 0) and x[0] == pytest.approx(lo) and x[-1] == pytest.approx(hi)
        i, j = [int(v) for v in np.atleast_1d(frames[0].info["scan_atoms"])][:2]
        if "stretch" in name:  # the geometry really has the recorded bond length
            assert [a.get_distance(i, j) for a in frames] == pytest.approx(list(x), abs=1e-6)
