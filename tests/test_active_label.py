"""Labelling the selected frames with PySCF (#15 item 4): single-point forces against a
finite difference of its energies, `select(..., label=...)` on database and store pools
against direct single points at the written positions, failed frames dropped and counted,
bad levels refused before any frame is scored, and resuming a killed labelling.

HF/STO-3G (and MP2/STO-3G) on 2-5 atom molecules: a single point takes ~0.1 s."""

import json
import os
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.db import connect

import spk_meta.active.label as label_module
import spk_meta.active.selection as select_module
from spk_meta.active import LabelError, SelectionError, check_level, label_frames, load_ensemble, select, single_point
from spk_meta.cli.main import main
from spk_meta.data import write_database
from spk_meta.data.store import LabelSet, PackedStore, StoreWriter
from test_active_ensemble import ensemble_dir, member_files  # noqa: F401 (fixtures)

pytest.importorskip("pyscf")

LEVEL = "HF/sto-3g"
#: closed-shell molecules of the ensemble's elements (H C N O), jittered
MOLECULES = ("H2O", "NH3", "CH4", "H2CO")


def small_frames(radicals: int = 0):
    rng = np.random.default_rng(0)
    frames = []
    for name in MOLECULES:
        a = molecule(name)
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        frames.append(a)
    for k in range(radicals):  # an odd number of electrons: restricted single points fail
        frames.append(Atoms("OH", positions=[[0, 0, 0], [0.95 + 0.05 * k, 0.1, 0]]))
    return frames


def write_db_pool(path, frames):
    """A database at another level, with made-up labels (eV, eV/Ang)."""
    for i, a in enumerate(frames):
        a.calc = SinglePointCalculator(a, energy=-100.0 - i, forces=np.full((len(a), 3), 0.5))
    return write_database(frames, path, "wB97X/6-31g*", source="small")


def write_store_pool(path, frames):
    with StoreWriter(path, [LabelSet("dft", "wB97X/6-31g*")]) as w:
        for i, a in enumerate(frames):
            w.add_frame(a.numbers, a.positions, {"dft": (-100.0 - i, np.full((len(a), 3), 0.5))})
    return path


@pytest.fixture(autouse=True, scope="module")
def one_pyscf_thread():
    """PySCF's OpenMP threads, when other jobs hold the cores, wait for each other: ten
    times slower on the 2-core development machine. The tests use one."""
    from pyscf import lib

    before = lib.num_threads()
    lib.num_threads(1)
    yield
    lib.num_threads(before)


@pytest.fixture(scope="module")
def ensemble(ensemble_dir):  # noqa: F811
    return load_ensemble(ensemble_dir)


def refuse_scoring(*args, **kwargs):
    raise AssertionError("scored although the input was bad")


@pytest.fixture
def no_scoring(monkeypatch):
    monkeypatch.setattr(select_module, "score_pool", refuse_scoring)


class Counting:
    """Wraps ``single_point``: counts calls; call ``kill_at`` raises KeyboardInterrupt (a killed run)."""

    def __init__(self, kill_at=None):
        self.calls, self.kill_at, self.real = 0, kill_at, label_module.single_point

    def __call__(self, numbers, positions, level):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt
        return self.real(numbers, positions, level)


# -- single points ------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["HF/sto-3g", "MP2/sto-3g"])
def test_forces_are_minus_the_finite_difference_of_the_energy(level):
    water = small_frames()[0]
    energy, forces = single_point(water.numbers, water.positions, level)
    assert forces.shape == (3, 3) and np.isfinite(energy)
    h = 1e-3  # Ang
    for atom, axis in ((1, 0), (0, 2)):
        plus, minus = water.positions.copy(), water.positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        e_plus, _ = single_point(water.numbers, plus, level)
        e_minus, _ = single_point(water.numbers, minus, level)
        assert forces[atom, axis] == pytest.approx(-(e_plus - e_minus) / (2 * h), abs=5e-4)  # eV/Ang


def test_single_point_reproduces_the_embedded_mp2_labels(ethanol):
    """The embedded MP2/6-31G* frames were labelled by the data generator (PySCF, 2026):
    an independent record of what this level gives (eV, eV/Ang)."""
    import ase.io

    frame = ase.io.read(ethanol["target_mp2_631gs_train_300K"].extxyz, 0)
    energy, forces = single_point(frame.numbers, frame.positions, "MP2/6-31g*")
    assert energy == pytest.approx(frame.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(forces, frame.get_forces(), atol=1e-4)


def test_a_frame_that_cannot_be_computed_gives_none():
    with pytest.warns(UserWarning, match="single point at HF/sto-3g of a 2-atom frame failed"):
        assert single_point(np.array([8, 1]), np.array([[0, 0, 0], [0.97, 0, 0]]), LEVEL) is None  # OH radical


def test_check_level_names_the_level_and_the_element(monkeypatch):
    check_level("MP2/6-31g*", [1, 6, 7, 8])
    check_level("wB97X/def2-svp", [1, 6])
    with pytest.raises(LabelError, match=r"'MP2/6-31g\*': PySCF has no basis '6-31g\*' for I \(Z=53\)"):
        check_level("MP2/6-31g*", [1, 53])
    with pytest.raises(LabelError, match="does not know the functional 'NOTAFUNCTIONAL'"):
        check_level("NOTAFUNCTIONAL/sto-3g", [1])
    with pytest.raises(LabelError, match="'B3LYP' is not METHOD/BASIS"):
        check_level("B3LYP", [1])
    monkeypatch.setitem(sys.modules, "pyscf", None)  # PySCF not installed
    with pytest.raises(LabelError, match=r"needs the datagen extra: pip install 'spk-meta\[datagen\]'"):
        check_level(LEVEL, [1])


# -- select(..., label=...) -------------------------------------------------------------------------


def test_database_pool_gives_a_database_at_the_new_level(ensemble, ensemble_dir, tmp_path, capsys):  # noqa: F811
    pool = write_db_pool(tmp_path / "pool.db", small_frames())
    result = select(ensemble, pool, tmp_path / "sel.db", n=2, label=LEVEL)
    with connect(tmp_path / "sel.db") as out, connect(pool) as src:
        md, rows = out.metadata, list(out.select())
        assert len(rows) == 2 and md["n_frames"] == 2
        assert md["level_of_theory"]["name"] == LEVEL and md["level_of_theory"]["method"] == "HF"
        assert md["level_of_theory"]["code"].startswith("PySCF ")
        assert md["_property_unit_dict"] == {"energy": "eV", "forces": "eV/Ang"}
        assert md["selection"]["source_rows"] == result.source_index.tolist()
        for row, i in zip(rows, md["selection"]["source_rows"]):
            np.testing.assert_array_equal(row.positions, src.get(id=i + 1).positions)
            energy, forces = single_point(row.numbers, row.positions, LEVEL)
            assert float(row.data["energy"][0]) == pytest.approx(energy, abs=1e-6)
            np.testing.assert_allclose(row.data["forces"], forces, atol=1e-6)
    block = md["selection"]["label"]
    assert block["level"] == LEVEL and block["code"] == md["level_of_theory"]["code"]
    assert (block["n_labelled"], block["n_failed"], block["failed_source_index"]) == (2, 0, [])
    assert block["seconds"] > 0 and block["units"] == {"energy": "eV", "forces": "eV/Ang"}
    assert not (tmp_path / "sel.db.labels.partial.jsonl").exists()  # removed once written

    argv = ["select", str(ensemble_dir), "--from", str(pool), "--n", "2", "--out", str(tmp_path / "cli.db"),
            "--label", LEVEL]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 of 4 frames" in printed and "labelled at HF/sto-3g with PySCF" in printed


@pytest.mark.filterwarnings("ignore:single point at HF/sto-3g of a 2-atom frame failed")
def test_store_pool_gives_one_label_set_and_failed_frames_are_dropped(ensemble, tmp_path):
    """Five frames, the last an OH radical (fails): all chosen, four written, one counted."""
    frames = small_frames(radicals=1)
    pool = write_store_pool(tmp_path / "pool.spkstore", frames)
    with pytest.warns(UserWarning, match=r"1 of 5 single points failed; those frames are dropped \(source indices "
                                         r"\[4\]\)"):
        result = select(ensemble, pool, tmp_path / "sel.spkstore", n=5, label=LEVEL)
    out = PackedStore(tmp_path / "sel.spkstore")
    assert list(out.label_sets) == ["hf_sto-3g"] and out.label_sets["hf_sto-3g"].level_of_theory == LEVEL
    assert out.source_index.tolist() == [0, 1, 2, 3] == result.source_index.tolist()  # frames of the pool
    for k in range(len(out)):
        f = out.frame(k, "hf_sto-3g")
        np.testing.assert_array_equal(f["positions"], frames[k].positions)
        energy, forces = single_point(f["numbers"], f["positions"], LEVEL)
        assert f["energy"] == pytest.approx(energy, abs=1e-6)
        np.testing.assert_allclose(f["forces"], forces, atol=1e-6)
    block = json.loads((tmp_path / "sel.spkstore" / "store.json").read_text())["source"]["selection"]["label"]
    assert (block["n_labelled"], block["n_failed"], block["failed_source_index"]) == (4, 1, [4])

    radicals = write_store_pool(tmp_path / "radicals.spkstore", small_frames(radicals=2)[-2:])
    with pytest.raises(SelectionError, match="the single points of all 2 chosen frames failed.*nothing written"):
        with pytest.warns(UserWarning):
            select(ensemble, radicals, tmp_path / "none.spkstore", n=2, label=LEVEL)
    assert not any(p.name.startswith("none") for p in tmp_path.iterdir())


def test_bad_levels_are_refused_before_scoring(ensemble, ensemble_dir, tmp_path, no_scoring, capsys):  # noqa: F811
    pool = write_store_pool(tmp_path / "pool.spkstore", small_frames())
    cases = [
        ("NOTAFUNCTIONAL/sto-3g", "does not know the functional 'NOTAFUNCTIONAL'"),
        ("HF/not-a-basis", "no basis 'not-a-basis' for H"),
        ("HF/cc-pCVDZ", r"no basis 'cc-pCVDZ' for H \(Z=1\)"),  # core-valence: no hydrogen
        ("HF", "is not METHOD/BASIS"),
    ]
    for level, message in cases:
        with pytest.raises(SelectionError, match=message):
            select(ensemble, pool, tmp_path / "out.spkstore", n=2, label=level)
    argv = ["select", str(ensemble_dir), "--from", str(pool), "--n", "2", "--out", str(tmp_path / "out.spkstore"),
            "--label", "HF/cc-pCVDZ"]
    assert main(argv) == 2
    assert "no basis 'cc-pCVDZ' for H" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.spkstore"]


def test_a_killed_labelling_resumes_and_another_is_refused(ensemble, tmp_path, monkeypatch):
    pool = write_store_pool(tmp_path / "pool.spkstore", small_frames())
    out = tmp_path / "sel.spkstore"
    partial = tmp_path / "sel.spkstore.labels.partial.jsonl"
    monkeypatch.setattr(label_module, "single_point", Counting(kill_at=3))
    with pytest.raises(KeyboardInterrupt):
        select(ensemble, pool, out, n=4, label=LEVEL)
    lines = partial.read_text().splitlines()
    header = json.loads(lines[0])
    assert len(lines) == 1 + 2 and not out.exists()  # header + the two finished single points
    assert header["level"] == LEVEL and "keys" not in header
    done = [json.loads(line) for line in lines[1:]]
    store_in = PackedStore(pool)
    for rec in done:  # each saved label names the geometry it is of
        f = store_in.frame(rec["key"])
        assert rec["geometry"] == label_module.geometry_hash(f["numbers"], f["positions"])
    with open(partial, "a") as f:
        f.write('{"key": 2, "ener')  # a write torn by the kill

    # another labelling: refused (before scoring when the level differs), the partial kept
    with pytest.raises(SelectionError, match=r"partial labels of another labelling \(it differs in level "
                                             r"\('HF/sto-3g' there, 'HF/3-21g' now\)\).*--overwrite"):
        with monkeypatch.context() as m:
            m.setattr(select_module, "score_pool", refuse_scoring)
            select(ensemble, pool, out, n=4, label="HF/3-21g")
    assert partial.read_text().splitlines()[:3] == lines

    resumed = Counting()
    monkeypatch.setattr(label_module, "single_point", resumed)
    result = select(ensemble, pool, out, n=4, label=LEVEL)
    assert resumed.calls == 2 and result.metadata["label"]["n_resumed"] == 2  # only the frames left
    assert not partial.exists()
    store = PackedStore(out)
    for k in range(4):
        f = store.frame(k, "hf_sto-3g")
        assert f["energy"] == pytest.approx(single_point(f["numbers"], f["positions"], LEVEL)[0], abs=1e-6)

    # --overwrite starts a partial of another labelling again
    monkeypatch.setattr(label_module, "single_point", Counting(kill_at=2))
    with pytest.raises(KeyboardInterrupt):
        select(ensemble, pool, tmp_path / "b.spkstore", n=4, label=LEVEL)
    again = Counting()
    monkeypatch.setattr(label_module, "single_point", again)
    select(ensemble, pool, tmp_path / "b.spkstore", n=4, label="HF/3-21g", overwrite=True)
    assert again.calls == 4
    assert PackedStore(tmp_path / "b.spkstore").label_sets["hf_3-21g"].level_of_theory == "HF/3-21g"
    assert not os.path.exists(tmp_path / "b.spkstore.labels.partial.jsonl")


def test_saved_labels_are_reused_only_for_the_same_geometry(tmp_path, monkeypatch):
    """Another choice of frames reuses the labels of the frames it shares; a frame moved
    under the same key (a pool rewritten in place) is computed again."""
    frames = [(a.numbers, a.positions) for a in small_frames()[:3]]
    label_frames(frames[:2], LEVEL, keys=[0, 1], partial=tmp_path / "p.jsonl")
    counting = Counting()
    monkeypatch.setattr(label_module, "single_point", counting)
    moved = (frames[1][0], frames[1][1] + np.array([[0.05, 0.0, 0.0]] + [[0.0, 0.0, 0.0]] * (len(frames[1][0]) - 1)))
    again = label_frames([frames[0], moved, frames[2]], LEVEL, keys=[0, 1, 2], partial=tmp_path / "p.jsonl")
    assert again.n_resumed == 1 and counting.calls == 2  # key 0 reused; key 1 moved, key 2 new
    assert again.energy[1] == pytest.approx(single_point(*moved, LEVEL)[0], abs=1e-6)
    assert again.energy[1] != pytest.approx(single_point(*frames[1], LEVEL)[0], abs=1e-6)


def test_label_frames_keeps_order_and_reports_failures(tmp_path):
    water, oh = small_frames()[0], small_frames(radicals=1)[-1]
    with pytest.warns(UserWarning):
        labels = label_frames([(oh.numbers, oh.positions), (water.numbers, water.positions)], LEVEL, keys=[7, 3],
                              partial=tmp_path / "p.jsonl")
    assert labels.failed.tolist() == [0] and labels.ok.tolist() == [1] and np.isnan(labels.energy[0])
    assert labels.forces[0] is None and labels.forces[1].shape == (3, 3)
    assert labels.energy[1] == pytest.approx(single_point(water.numbers, water.positions, LEVEL)[0], abs=1e-6)
    again = label_frames([(oh.numbers, oh.positions), (water.numbers, water.positions)], LEVEL, keys=[7, 3],
                         partial=tmp_path / "p.jsonl")
    assert again.n_resumed == 2 and again.energy[1] == labels.energy[1]  # exact round trip through JSON
