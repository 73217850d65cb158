"""The embedded ethanol data, its manifest, and the extxyz -> database writer."""

import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from schnetpack.data import ASEAtomsData

from spk_meta.data import DatabaseWriteError, LevelOfTheory, extxyz_to_database, level_slug, write_database
from spk_meta.datasets import cache_dir, ethanol_multilevel

LEVELS = {
    "pretrain_wb97x_631gs_300K": "wB97X/6-31g*",
    "pretrain_b3lyp_def2svp_600K": "B3LYP/def2-svp",
    "pretrain_hf_def2svp_900K": "HF/def2-svp",
    "target_mp2_631gs_train_300K": "MP2/6-31g*",
    "target_mp2_631gs_test_300K": "MP2/6-31g*",
    "target_mp2_631gs_test_600K": "MP2/6-31g*",
    "target_mp2_631gs_test_900K": "MP2/6-31g*",
}


def test_manifest_matches_files(ethanol):
    assert ethanol.manifest["units"] == {"energy": "eV", "forces": "eV/Angstrom", "positions": "Angstrom"}
    assert set(ethanol.files) == set(LEVELS)
    for name, f in ethanol.files.items():
        frames = ase.io.read(f.extxyz, ":")
        assert len(frames) == f.frames
        assert f.level_of_theory.name == LEVELS[name]
        assert all(a.info["level_of_theory"] == LEVELS[name] for a in frames)
        assert all(a.get_chemical_formula() == "C2H6O" for a in frames)
        e = np.array([a.get_potential_energy() for a in frames])
        entry = next(x for x in ethanol.manifest["files"] if x["file"] == f.extxyz.name)
        assert e.min() == pytest.approx(entry["energy_eV_min"], abs=1e-8)
        assert e.max() == pytest.approx(entry["energy_eV_max"], abs=1e-8)


@pytest.mark.parametrize("name", ["target_mp2_631gs_train_300K", "pretrain_hf_def2svp_900K"])
def test_database_holds_the_extxyz_labels(ethanol, name):
    f = ethanol[name]
    assert f.db.is_absolute() and f.db.exists()
    data = ASEAtomsData(str(f.db))
    assert len(data) == f.frames
    assert data.units == {"energy": "eV", "forces": "eV/Ang"}
    md = data.metadata["level_of_theory"]
    assert md["name"] == LEVELS[name] and md["slug"] == level_slug(LEVELS[name])
    assert md["code"] == "PySCF 2.14.0"
    frames = ase.io.read(f.extxyz, ":")
    for i in (0, f.frames // 2, f.frames - 1):
        sample = data[i]
        np.testing.assert_allclose(sample["energy"].numpy(), [frames[i].get_potential_energy()], rtol=0, atol=1e-9)
        np.testing.assert_allclose(sample["forces"].numpy(), frames[i].get_forces(), atol=1e-9)
        np.testing.assert_allclose(sample["_positions"].numpy(), frames[i].positions, atol=1e-9)


def test_unknown_file_names_the_choices(ethanol):
    with pytest.raises(KeyError, match="target_mp2_631gs_train_300K"):
        ethanol["mp2"]


def test_cache_dir_is_absolute_and_follows_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPKMETA_CACHE", "rel/cache")
    assert cache_dir() == tmp_path / "rel" / "cache"
    monkeypatch.delenv("SPKMETA_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "spk-meta"
    assert cache_dir("x") == tmp_path / "x"


def test_every_test_gets_a_private_cache_without_asking(tmp_path_factory):
    """conftest's cache fixture is autouse: a test that names no data fixture (run alone,
    e.g. one spktrain test) still builds the embedded databases outside ~/.cache."""
    env = os.environ.get("SPKMETA_CACHE")
    assert env, "SPKMETA_CACHE is not set for a test that did not request cache_root"
    assert Path(env).is_relative_to(tmp_path_factory.getbasetemp())
    assert cache_dir() == Path(env)
    assert not cache_dir().is_relative_to(Path.home() / ".cache")


def test_concurrent_first_use_builds_complete_databases(tmp_path):
    """Two processes building the same cache at once both see complete databases."""
    code = (
        "from spk_meta.datasets import ethanol_multilevel\n"
        "from schnetpack.data import ASEAtomsData\n"
        "d = ethanol_multilevel()\n"
        "print(sum(len(ASEAtomsData(str(f.db))) for f in d.files.values()))\n"
    )
    env = {**os.environ, "SPKMETA_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == str(3 * 200 + 150 + 3 * 30)
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize(
    "name,slug",
    [("wB97X/6-31g*", "wb97x_6-31gs"), ("CCSD(T)/CBS", "ccsd-t_cbs"), ("B3LYP/def2-SVP", "b3lyp_def2-svp"),
     ("wB97X/6-31+G(d,p)", "wb97x_6-31pg-d-p"), ("GFN2-xTB", "gfn2-xtb"), ("PBE0+MBD", "pbe0pmbd")],
)
def test_level_slug(name, slug):
    assert level_slug(name) == slug
    assert LevelOfTheory.parse(name).slug == slug


def _frames(n=3):
    frames = []
    for i in range(n):
        a = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0.0 + 0.01 * i]])
        a.info["energy"] = -2000.0 + i
        a.arrays["forces"] = np.full((3, 3), 0.1 * i)
        frames.append(a)
    return frames


def test_writer_reads_info_and_arrays(tmp_path):
    db = write_database(_frames(), tmp_path / "w.db", "HF/sto-3g", units={"energy": "kcal/mol", "forces": "kcal/mol/Ang"})
    data = ASEAtomsData(str(db), property_units={"energy": "eV", "forces": "eV/Ang"})
    assert data.metadata["n_frames"] == 3 and data.metadata["elements"] == [1, 8]
    assert data[2]["energy"].item() == pytest.approx(-1998.0 * 0.0433641, rel=1e-4)


@pytest.mark.parametrize(
    "break_frame,message",
    [
        (lambda a: a.info.pop("energy"), "frame 1: no energy"),
        (lambda a: a.info.update(energy=float("nan")), "frame 1: energy is not finite"),
        (lambda a: a.arrays.pop("forces"), "frame 1: no forces"),
        (lambda a: a.arrays.__setitem__("forces", np.full((3, 3), np.inf)), "frame 1: forces contain NaN"),
    ],
)
def test_writer_rejects_bad_frames_and_leaves_nothing(tmp_path, break_frame, message):
    frames = _frames()
    break_frame(frames[1])
    with pytest.raises(DatabaseWriteError, match=f"water.xyz: {message}"):
        write_database(frames, tmp_path / "bad.db", "HF/sto-3g", source="water.xyz")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_wrong_force_shape(tmp_path):
    frames = _frames()
    frames[2].calc = None
    frames[2].arrays["forces"] = np.zeros((3, 3))
    from ase.calculators.singlepoint import SinglePointCalculator

    frames[2].calc = SinglePointCalculator(frames[2], energy=-1.0, forces=np.zeros((2, 3)))
    with pytest.raises(DatabaseWriteError, match=r"frame 2: forces must have shape \(3, 3\)"):
        write_database(frames, tmp_path / "bad.db", "HF/sto-3g")
    assert list(tmp_path.iterdir()) == []


def test_extxyz_refuses_mixed_levels_and_existing_output(tmp_path, ethanol):
    src = ethanol["target_mp2_631gs_test_300K"].extxyz
    frames = ase.io.read(src, ":5")
    frames[3].info["level_of_theory"] = "HF/def2-svp"
    mixed = tmp_path / "mixed.extxyz"
    ase.io.write(mixed, frames)
    with pytest.raises(DatabaseWriteError, match="mixed.extxyz: frame 3: level_of_theory 'HF/def2-svp'"):
        extxyz_to_database(mixed, tmp_path / "mixed.db")
    assert not (tmp_path / "mixed.db").exists()
    out = extxyz_to_database(src, tmp_path / "ok.db")  # level read from the file
    assert ASEAtomsData(str(out)).metadata["level_of_theory"]["name"] == "MP2/6-31g*"
    with pytest.raises(FileExistsError, match="ok.db"):
        extxyz_to_database(src, tmp_path / "ok.db")
    extxyz_to_database(src, tmp_path / "ok.db", overwrite=True)
