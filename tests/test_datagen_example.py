"""examples/make_multilevel_data.py on two frames at a cheap level (HF/STO-3G water)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

pyscf = pytest.importorskip("pyscf")
pytest.importorskip("tblite")

# Every test here needs the datagen extra (PySCF, tblite: real xTB MD and PySCF input
# checks), which `make test-slow` installs and the `test` extra no longer does.
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parents[1] / "examples" / "make_multilevel_data.py"


def test_generator_labels_md_frames_with_pyscf(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--molecule", "H2O", "--job", "HF/sto-3g:300:2",
         "--equilibrate", "4", "--stride", "3", "--seed", "7"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    (entry,) = manifest["files"]
    assert entry["frames"] == 2 and entry["md_seed"] == 7 and "PySCF" in manifest["labels"]
    frames = ase.io.read(tmp_path / entry["file"], ":")
    assert len(frames) == 2 and frames[0].info["level_of_theory"] == "HF/sto-3g"
    assert not np.allclose(frames[0].positions, frames[1].positions)  # MD moved the atoms

    # the labels are PySCF's: energy and a finite-difference check of one force component
    from ase.units import Hartree
    from pyscf import gto, scf

    atoms = frames[0]

    def energy(positions):
        mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), positions)], basis="sto-3g",
                    unit="Angstrom", verbose=0)
        return scf.RHF(mol).density_fit().run().e_tot * Hartree

    assert atoms.get_potential_energy() == pytest.approx(energy(atoms.positions), abs=1e-6)
    h = 1e-3
    shifted = atoms.positions.copy()
    shifted[1, 0] += h
    back = atoms.positions.copy()
    back[1, 0] -= h
    numeric = -(energy(shifted) - energy(back)) / (2 * h)
    assert atoms.get_forces()[1, 0] == pytest.approx(numeric, abs=2e-3)


# ----------------------------------------------------------------------------------------------
# The generator's new features (issue #13). Labels in the fast tests come from ASE's EMT
# calculator standing in for PySCF (the behaviour under test is the bookkeeping, not the
# quantum chemistry); sampling is real GFN2-xTB MD, input checks are real PySCF/ASE checks.


@pytest.fixture(scope="module")
def gen():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_multilevel_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class EMTLabels:
    """Stand-in for ``pyscf_single_point``: EMT energy and forces; ``fail`` calls return None,
    call number ``kill_at`` raises KeyboardInterrupt (a killed run)."""

    def __init__(self, fail=(), kill_at=None):
        self.calls, self.fail, self.kill_at = 0, set(fail), kill_at

    def __call__(self, atoms, level):
        from ase.calculators.emt import EMT

        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt
        if self.calls in self.fail:
            return None
        a = atoms.copy()
        a.calc = EMT()
        return a.get_potential_energy(), a.get_forces()


MD = ["--equilibrate", "4", "--stride", "3"]
JOB = "mix=HF/sto-3g:300-600:5:H2O,CH4"


def refused(gen, capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        gen.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("job, message", [
    ("HF/sto-3g:300:2:H2O,NOTAMOLECULE", "unknown molecule 'NOTAMOLECULE'"),
    ("NOTAFUNCTIONAL/sto-3g:300:2:H2O", "functional 'NOTAFUNCTIONAL'"),
    ("HF/not-a-basis:300:2:H2O", "basis 'not-a-basis'"),
    ("B3LYP:300:2:H2O", "is not METHOD/BASIS"),
    ("HF/sto-3g:300:2:CH3", "cannot build CH3"),  # a radical: restricted SCF impossible
    ("HF/sto-3g:hot:2:H2O", "'hot' is not a number"),
])
def test_bad_input_is_refused_before_any_work(gen, tmp_path, capsys, job, message):
    out = tmp_path / "out"
    err = refused(gen, capsys, [str(out), "--job", job])
    assert message in err
    assert not out.exists()  # nothing sampled, nothing written


def test_excluded_formula_refused_in_pretraining_but_allowed_as_target(gen, tmp_path, capsys):
    out = tmp_path / "out"
    err = refused(gen, capsys, [str(out), "--job", "HF/sto-3g:300:2:CH3OH,C2H6NH", "--exclude-formula", "C2H7N"])
    assert "C2H6NH is C2H7N" in err and not out.exists()
    args = gen.make_parser().parse_args([str(out), "--job", "HF/sto-3g:300:2:CH3OH,H3CNH2", "--exclude-formula", "C2H7N",
                               "--target-job", "target=HF/sto-3g:300:2:CH3CH2NH2"])
    jobs = gen.build_jobs(args)
    assert [j.role for j in jobs] == ["job", "target"]


def test_scan_on_unbonded_atoms_is_refused(gen, tmp_path, capsys):
    err = refused(gen, capsys, [str(tmp_path / "o"), "--scan", "stretch:2,3:0.8:2:3", "--scan-molecule", "CH3OH",
                                "--scan-level", "HF/sto-3g"])
    assert "atoms 2 and 3 are not bonded" in err
    # a torsion whose last atom does not move with the rotated side would not change
    err = refused(gen, capsys, [str(tmp_path / "o"), "--scan", "torsion:5,0,1,2:0:360:3", "--scan-molecule", "CH3OH",
                                "--scan-level", "HF/sto-3g"])
    assert "atom 2 is not on atom 1's side of the 0-1 bond" in err


def test_multi_molecule_job_splits_interleaves_and_ramps(gen, tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "pyscf_single_point", EMTLabels(fail={2}))
    gen.main([str(tmp_path), "--job", JOB, *MD, "--seed", "3"])
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    (entry,) = manifest["files"]
    assert entry["file"] == "mix.extxyz" and entry["complete"] and manifest["complete"]
    assert entry["frames_per_molecule"] == {"H2O": 3, "CH4": 2} and entry["md_seed"] == [3, 1003]
    assert entry["frames"] == 4 and entry["dropped_unconverged"] == 1  # the 2nd single point "failed"
    # rounded to 0.1 s: a few MD steps of water on a quiet machine can round to 0.0
    assert entry["timing"]["label_wall_s"] >= 0 and entry["timing"]["sample_wall_s"] >= 0
    assert manifest["run"]["cpu_count"] == os.cpu_count() and manifest["run"]["versions"]["pyscf"]
    frames = ase.io.read(tmp_path / "mix.extxyz", ":")
    # frame i is molecule i % 2; the dropped one was index 1 (CH4)
    assert [f.info["molecule"] for f in frames] == ["H2O", "H2O", "CH4", "H2O"]
    assert [f.get_chemical_formula() for f in frames] == ["H2O", "H2O", "CH4", "H2O"]
    h2o_t = [f.info["temperature_K"] for f in frames if f.info["molecule"] == "H2O"]
    assert h2o_t == pytest.approx([300, 450, 600])  # ramp over the molecule's 3 frames
    assert all(f.info["level_of_theory"] == "HF/sto-3g" for f in frames)


def test_killed_run_resumes_where_it_stopped(gen, tmp_path, monkeypatch):
    argv = [str(tmp_path / "a"), "--job", JOB, *MD]
    killed = EMTLabels(kill_at=4)
    monkeypatch.setattr(gen, "pyscf_single_point", killed)
    with pytest.raises(KeyboardInterrupt):
        gen.main(argv)
    labels = tmp_path / "a" / "partial" / "mix.labels.jsonl"
    assert len(labels.read_text().splitlines()) == 1 + 3  # header + 3 labelled frames
    with open(labels, "a") as f:
        f.write('{"index": 3, "ener')  # a write torn by the kill

    resumed = EMTLabels()
    monkeypatch.setattr(gen, "pyscf_single_point", resumed)
    gen.main(argv)
    assert resumed.calls == 2  # only the two frames left

    monkeypatch.setattr(gen, "pyscf_single_point", EMTLabels())
    gen.main([str(tmp_path / "b"), "--job", JOB, *MD])
    a, b = (ase.io.read(tmp_path / d / "mix.extxyz", ":") for d in "ab")
    assert len(a) == len(b) == 5
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.positions, y.positions)
        assert x.get_potential_energy() == pytest.approx(y.get_potential_energy())
    assert json.loads((tmp_path / "a" / "MANIFEST.json").read_text())["complete"]


def test_partial_from_other_arguments_and_existing_output_are_refused(gen, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gen, "pyscf_single_point", EMTLabels(kill_at=2))
    with pytest.raises(KeyboardInterrupt):
        gen.main([str(tmp_path / "a"), "--job", JOB, *MD])
    err = refused(gen, capsys, [str(tmp_path / "a"), "--job", JOB, *MD, "--seed", "99"])
    assert "mix.labels.jsonl was made with other arguments" in err

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mix.extxyz").write_text("precious")
    err = refused(gen, capsys, [str(tmp_path / "b"), "--job", JOB, *MD])
    assert "mix.extxyz exists" in err and "--overwrite" in err
    assert (tmp_path / "b" / "mix.extxyz").read_text() == "precious"
    monkeypatch.setattr(gen, "pyscf_single_point", EMTLabels())
    gen.main([str(tmp_path / "b"), "--job", JOB, *MD, "--overwrite"])
    assert len(ase.io.read(tmp_path / "b" / "mix.extxyz", ":")) == 5


def test_stretched_frames_stretch_one_bond_by_the_recorded_factor(gen):
    from ase.build import molecule

    start = molecule("CH3CH2OH")
    rng = np.random.default_rng(0)
    for _ in range(10):
        out = gen.stretch_random_bond(start, start, (1.1, 1.6), rng)
        a, b = out.info["stretched_bond"]
        factor = out.info["stretch_factor"]
        assert 1.1 <= factor <= 1.6
        assert out.get_distance(a, b) == pytest.approx(factor * start.get_distance(a, b))
        moved = np.flatnonzero(np.linalg.norm(out.positions - start.positions, axis=1) > 1e-9)
        assert b in moved and a not in moved and len(moved) <= len(start) // 2  # the smaller side moved
        d0, d1 = start.get_all_distances(), out.get_all_distances()
        np.testing.assert_allclose(d1[np.ix_(moved, moved)], d0[np.ix_(moved, moved)], atol=1e-9)  # rigidly


def test_rigid_scans_of_the_gfn2_geometry(gen):
    # CH3OH: 0 C, 1 O, 2 4 5 H on C, 3 H on O
    torsion = gen.parse_scan("torsion:2,0,1,3:0:360:5", "CH3OH", "HF/sto-3g")
    frames = gen.sample_job(torsion)
    assert [f.info["scan_coordinate"] for f in frames] == [0, 90, 180, 270, 360]
    for f in frames:
        off = (f.get_dihedral(2, 0, 1, 3) - f.info["scan_coordinate"] + 180) % 360 - 180  # 0 and 360 agree
        assert off == pytest.approx(0, abs=1e-6)
        assert f.get_distance(1, 3) == pytest.approx(frames[0].get_distance(1, 3))  # O-H rigid
        np.testing.assert_allclose(f.positions[[0, 1, 2, 4, 5]], frames[0].positions[[0, 1, 2, 4, 5]])  # CH3, O stay
    stretch = gen.parse_scan("OH=stretch:1,3:0.7:2.5:4", "CH3OH", "HF/sto-3g")
    assert stretch.name == "OH"
    frames = gen.sample_job(stretch)
    assert [f.get_distance(1, 3) for f in frames] == pytest.approx([0.7, 1.3, 1.9, 2.5])
    assert all(f.info["scan_unit"] == "Angstrom" for f in frames)


@pytest.mark.slow  # PySCF single points
def test_generator_multi_molecule_job_and_scan_with_pyscf(tmp_path):
    from ase.units import Hartree
    from pyscf import gto, scf

    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--job", "mix=HF/sto-3g:300:2:H2O,CH4", *MD,
         "--scan", "OH=stretch:1,3:0.9:1.3:2", "--scan-molecule", "CH3OH", "--scan-level", "HF/sto-3g"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # one progress line per frame, round-robin over the jobs
    assert [line.split(" |")[0] for line in result.stdout.splitlines() if "| all " in line] == \
        ["mix 1/2", "OH 1/2", "mix 2/2", "OH 2/2"]
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    entries = {e["file"]: e for e in manifest["files"]}
    assert entries["mix.extxyz"]["frames"] == 2 and entries["mix.extxyz"]["molecules"] == ["H2O", "CH4"]
    assert entries["OH.extxyz"]["frames"] == 2 and entries["OH.extxyz"]["scan_atoms"] == [1, 3]
    assert manifest["complete"] and entries["OH.extxyz"]["timing"]["s_per_frame"] > 0
    mix = ase.io.read(tmp_path / "mix.extxyz", ":")
    scan = ase.io.read(tmp_path / "OH.extxyz", ":")
    assert [a.get_chemical_formula() for a in mix] == ["H2O", "CH4"]
    assert [a.info["scan_coordinate"] for a in scan] == [0.9, 1.3]
    for atoms in (mix[1], scan[1]):  # the labels are PySCF's at the job's level
        mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)], basis="sto-3g",
                    unit="Angstrom", verbose=0)
        assert atoms.get_potential_energy() == pytest.approx(scf.RHF(mol).density_fit().run().e_tot * Hartree,
                                                             abs=1e-6)
        assert atoms.info["level_of_theory"] == "HF/sto-3g"
