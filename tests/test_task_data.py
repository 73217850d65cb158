"""TaskDataset / TaskDataModule on the embedded ethanol data and on databases built here."""

import json

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.db import connect
from ase.units import Bohr, Hartree, kcal, mol
from schnetpack import transform as T
from schnetpack.data import ASEAtomsData

from spk_meta.data import (
    TaskData,
    TaskDataError,
    TaskDataModule,
    TaskDataset,
    TaskSplitMismatch,
    task_sampling_weights,
    write_database,
)
from spk_meta.model.preflight import ModelDataMismatch, check_model_against_data

PRETRAIN = {
    "wb97x_6-31gs": "pretrain_wb97x_631gs_300K",
    "b3lyp_def2-svp": "pretrain_b3lyp_def2svp_600K",
    "hf_def2-svp": "pretrain_hf_def2svp_900K",
}


@pytest.fixture(scope="module")
def tasks(ethanol):
    return {name: ethanol[stem].db for name, stem in PRETRAIN.items()}


def make_dm(tasks, **kw):
    kw.setdefault("batch_size", 8)
    kw.setdefault("num_train", 120)
    kw.setdefault("num_val", 30)
    kw.setdefault("num_test", 50)
    kw.setdefault("transforms", [T.MatScipyNeighborList(5.2), T.CastTo32()])
    dm = TaskDataModule(tasks, **kw)
    dm.setup("fit")
    return dm


# -- tasks and names -----------------------------------------------------------------------


def test_tasks_named_by_level_slug_and_labelled(tasks, in_tmp):
    ds = TaskDataset(list(tasks.values()))
    assert sorted(ds.names) == sorted(tasks)
    for name, data in ds.items():
        assert len(data) == 200 and data.has_forces
        assert data.level_of_theory.slug == name
        assert data.elements == (1, 6, 8)
        assert int(data[0]["_task"]) == data.index


def test_same_level_twice_is_refused(tasks, in_tmp):
    path = tasks["wb97x_6-31gs"]
    with pytest.raises(TaskDataError, match="two tasks named 'wb97x_6-31gs'"):
        TaskDataset([path, path])


def test_database_values_survive_loading(ethanol, in_tmp):
    """Frames served equal the extxyz they were written from (before E0 subtraction)."""
    f = ethanol["pretrain_hf_def2svp_900K"]
    data = TaskData("hf", f.db)
    frames = ase.io.read(f.extxyz, ":")
    for i in (0, 57, 199):
        s = data[i]
        assert float(s["energy"]) == pytest.approx(frames[i].get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(s["forces"].numpy(), frames[i].get_forces(), atol=1e-12)
        np.testing.assert_allclose(s["_positions"].numpy(), frames[i].positions, atol=1e-12)
        assert s["_idx"].item() == i


# -- splits ----------------------------------------------------------------------------------


def test_splits_are_disjoint_saved_and_reused(tasks, in_tmp):
    dm = make_dm(tasks, split_seed=1)
    assert (in_tmp / "task_splits.npz").exists()
    for name in tasks:
        parts = dm.splits[name]
        assert [len(parts[s]) for s in ("train", "val", "test")] == [120, 30, 50]
        assert len(np.unique(np.concatenate(list(parts.values())))) == 200
    # a resumed run (same directory) reuses the file, whatever seed it is given
    again = make_dm(tasks, split_seed=99)
    for name in tasks:
        for s in ("train", "val", "test"):
            np.testing.assert_array_equal(again.splits[name][s], dm.splits[name][s])
    # a fresh run directory with another seed draws another split
    other = in_tmp / "other"
    other.mkdir()
    fresh = make_dm(tasks, split_seed=2, split_file=str(other / "s.npz"))
    assert not np.array_equal(fresh.splits["hf_def2-svp"]["train"], dm.splits["hf_def2-svp"]["train"])


def test_split_file_of_other_tasks_is_refused(tasks, in_tmp):
    make_dm({k: tasks[k] for k in ["wb97x_6-31gs", "hf_def2-svp"]})
    with pytest.raises(TaskSplitMismatch, match="task_splits.npz.*b3lyp_def2-svp"):
        make_dm(tasks)


def test_fractions_and_per_task_counts(tasks, in_tmp):
    dm = make_dm(tasks, num_train=0.5, num_val={"wb97x_6-31gs": 10, "b3lyp_def2-svp": 20, "hf_def2-svp": 0.25}, num_test=None)
    assert len(dm.splits["wb97x_6-31gs"]["train"]) == 100
    assert len(dm.splits["hf_def2-svp"]["val"]) == 50
    assert len(dm.splits["b3lyp_def2-svp"]["test"]) == 80


def test_split_larger_than_data_names_task(tasks, in_tmp):
    with pytest.raises(TaskDataError, match=r"task 'hf_def2-svp' \(.*pretrain_hf.*\).*250 frames but only 200"):
        make_dm({"hf_def2-svp": tasks["hf_def2-svp"]}, num_train=200, num_val=50, num_test=0)
    assert not (in_tmp / "task_splits.npz").exists()


# -- batches ---------------------------------------------------------------------------------


def test_episode_batches_come_from_one_task_and_cycle(tasks, in_tmp):
    dm = make_dm(tasks, batch_size=16)
    name = "b3lyp_def2-svp"
    stream = dm.task_stream(name)
    train_rows = set(dm.dataset[name].db_index[dm.splits[name]["train"]].tolist())
    seen = []
    k = 3 * stream.batches_per_pass  # k larger than the task: the stream reshuffles
    for _ in range(k):
        b = dm.next_batch(name)
        assert set(b["_task"].tolist()) == {dm.dataset[name].index}
        assert "_idx_i" in b and b["forces"].dtype == torch.float32
        seen += b["_idx"].tolist()
    assert stream.passes == 2
    passes = [seen[i * 120 : (i + 1) * 120] for i in range(3)]
    for p in passes:
        assert sorted(p) == sorted(train_rows)  # each pass: the training split once
    assert passes[0] != passes[1]  # reshuffled


def test_stream_state_resumes_exactly(tasks, in_tmp):
    dm = make_dm(tasks, stream_seed=5)
    for _ in range(11):
        dm.next_batch("wb97x_6-31gs")
    state = dm.state_dict()
    expected = [dm.next_batch("wb97x_6-31gs")["_idx"].tolist() for _ in range(20)]
    resumed = make_dm(tasks, stream_seed=123)
    resumed.load_state_dict(state)
    got = [resumed.next_batch("wb97x_6-31gs")["_idx"].tolist() for _ in range(20)]
    assert got == expected


def test_joint_epoch_covers_every_training_frame_once(tasks, in_tmp):
    dm = make_dm(tasks, batch_size=16)
    loader = dm.train_dataloader()
    counts = {}
    n_batches = 0
    for b in loader:
        task = set(b["_task"].tolist())
        assert len(task) == 1, "a batch mixes levels of theory"
        counts.setdefault(task.pop(), []).extend(b["_idx"].tolist())
        n_batches += 1
    assert n_batches == len(loader) == 3 * 8
    for name, data in dm.dataset.items():
        assert sorted(counts[data.index]) == sorted(data.db_index[dm.splits[name]["train"]].tolist())
    val_tasks = [b["_task"].tolist() for b in dm.val_dataloader()]
    assert all(len(set(t)) == 1 for t in val_tasks)
    assert sorted(sum(val_tasks, [])) == sorted([0] * 30 + [1] * 30 + [2] * 30)


def test_transformed_samples_are_cached_and_not_mutated(tasks, in_tmp):
    dm = make_dm(tasks)
    train = dm.subsets["wb97x_6-31gs"]["train"]
    assert train.cache_enabled
    first = train[0]
    assert train[0] is first
    before = first["_positions"].clone()
    batch = dm.next_batch("wb97x_6-31gs")
    batch["_positions"] += 1.0  # a model writing into its batch must not reach the cache
    np.testing.assert_array_equal(train[0]["_positions"], before)
    # an unknown (possibly random) transform switches the cache off
    dm2 = make_dm(tasks, transforms=[T.MatScipyNeighborList(5.2), Rattle()])
    assert not dm2.subsets["wb97x_6-31gs"]["train"].cache_enabled


class Rattle(T.Transform):
    """A random transform: its output must not be cached."""

    is_preprocessor = True

    def forward(self, inputs):
        inputs["_positions"] = inputs["_positions"] + 0.01 * torch.randn_like(inputs["_positions"])
        return inputs


def test_sampling_weights():
    sizes = {"a": 100, "b": 400}
    assert task_sampling_weights(sizes, "uniform") == {"a": 0.5, "b": 0.5}
    assert task_sampling_weights(sizes, "size") == pytest.approx({"a": 0.2, "b": 0.8})
    assert task_sampling_weights(sizes, "temperature", 2.0) == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    hot = task_sampling_weights(sizes, "temperature", 1000.0)
    assert hot["a"] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="task_sampling"):
        task_sampling_weights(sizes, "bogus")


# -- energy references -----------------------------------------------------------------------

E0 = {1: -13.6, 6: -1029.8, 7: -1484.2, 8: -2041.5}


def synthetic_frames(seed=0, n=40):
    """Several compositions (H2O, CH4, NH3, C2H6, CH3OH, CO2) with E = sum E0 exactly."""
    rng = np.random.default_rng(seed)
    names = ["H2O", "CH4", "NH3", "C2H6", "CH3OH", "CO2"]
    frames = []
    for i in range(n):
        atoms = molecule(names[i % len(names)])
        atoms.positions += rng.normal(0, 0.02, atoms.positions.shape)
        atoms.info["energy"] = sum(E0[z] for z in atoms.numbers)
        atoms.arrays["forces"] = rng.normal(0, 0.1, (len(atoms), 3))
        frames.append(atoms)
    return frames


def test_reference_fit_recovers_known_atomic_energies(tmp_path, in_tmp):
    db = write_database(synthetic_frames(), tmp_path / "syn.db", "PBE/def2-svp")
    dm = make_dm([db], num_train=30, num_val=5, num_test=5)
    ref = dm.energy_references["pbe_def2-svp"]
    assert not ref.rank_deficient
    for z, v in E0.items():
        assert ref.as_dict()[z] == pytest.approx(v, abs=1e-6)
    served = torch.cat([b["energy"] for b in dm.train_dataloader()])
    assert served.abs().max() < 1e-3  # float32 after CastTo32; energies are ~ -3000 eV
    saved = json.loads((in_tmp / "energy_references.json").read_text())
    assert saved["pbe_def2-svp"]["symbols"] == ["H", "C", "N", "O"]
    assert saved["pbe_def2-svp"]["values"] == pytest.approx([E0[z] for z in (1, 6, 7, 8)], abs=1e-6)


def test_single_composition_reference_is_min_norm_and_centres_energies(tasks, in_tmp):
    dm = make_dm(tasks)
    for name, data in dm.dataset.items():
        ref = dm.energy_references[name]
        assert ref.rank_deficient and ref.rank == 1
        train = dm.splits[name]["train"]
        raw = data.energies[train]
        served = np.array([float(data[i]["energy"]) for i in train])
        assert abs(served.mean()) < 1e-9
        # what is left to learn is the spread of the data, not thousands of eV
        assert np.sqrt(np.mean(served**2)) == pytest.approx(raw.std(), rel=1e-9)
        # minimum norm: E0 proportional to the element counts' direction (C2 H6 O)
        counts = np.array([6.0, 2.0, 1.0])
        np.testing.assert_allclose(ref.values / counts, ref.values[0] / counts[0], rtol=1e-9)
    # the levels keep their own references
    assert len({round(r.values[0], 3) for r in dm.energy_references.values()}) == 3


def test_addoffsets_sees_the_active_task_only(tasks, in_tmp):
    dm = make_dm(tasks)
    assert dm.active_task is None
    assert torch.all(dm.train_dataset.atomrefs["energy"] == 0)  # pre-training: subtracted energies
    stats = {}
    for name in tasks:
        dm.active_task = name
        ref = dm.energy_references[name]
        table = dm.get_atomrefs("energy")["energy"]
        assert table[6].item() == pytest.approx(ref.as_dict()[6])
        stats[name] = dm.get_stats("energy", True, False)[0].item()
        offsets = T.AddOffsets("energy", add_mean=True, add_atomrefs=True)
        offsets.datamodule(dm)
        # the model adds back E0 of this level: zero network output -> mean total energy
        n = torch.tensor([9])
        out = offsets({"energy": torch.zeros(1, dtype=torch.float64), "_n_atoms": n,
                       "_atomic_numbers": torch.tensor(dm.dataset[name].numbers(0)),
                       "_idx_m": torch.zeros(9, dtype=torch.long)})
        train = dm.splits[name]["train"]
        assert out["energy"].item() == pytest.approx(dm.dataset[name].energies[train].mean(), abs=1e-6)
    # per-task statistics do not overwrite each other
    dm.active_task = "hf_def2-svp"
    assert dm.get_stats("energy", True, False)[0].item() == stats["hf_def2-svp"]
    assert len(set(stats.values())) == 3
    with pytest.raises(TaskDataError, match="active_task 'nope'"):
        dm.active_task = "nope"


def test_remove_offsets_is_dropped_when_references_are_fitted(tasks, in_tmp):
    with pytest.warns(UserWarning, match=r"drops the RemoveOffsets transform \(train/val/test\)"):
        dm = make_dm(tasks, transforms=[T.RemoveOffsets("energy", remove_mean=True), T.MatScipyNeighborList(5.2)])
    assert not any(isinstance(t, T.RemoveOffsets) for t in dm.subsets["hf_def2-svp"]["train"].transforms)
    kept = make_dm(tasks, reference_energies="none", split_file="s2.npz",
                   transforms=[T.RemoveOffsets("energy", remove_mean=True), T.MatScipyNeighborList(5.2)])
    assert isinstance(kept.subsets["hf_def2-svp"]["train"].transforms[0], T.RemoveOffsets)


# -- units -----------------------------------------------------------------------------------


def test_units_are_converted_on_load(ethanol, tmp_path, in_tmp):
    frames = ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, ":10")
    ev = write_database(frames, tmp_path / "ev.db", "MP2/6-31g*")
    for unit, factor, dist in (("kcal/mol", mol / kcal, "Ang"), ("Hartree", 1 / Hartree, "Bohr")):
        scaled = []
        for a in frames:
            b = Atoms(a.numbers, a.positions / (Bohr if dist == "Bohr" else 1.0))
            b.info["energy"] = a.get_potential_energy() * factor
            b.arrays["forces"] = a.get_forces() * factor * (Bohr if dist == "Bohr" else 1.0)
            scaled.append(b)
        path = tmp_path / f"{unit.replace('/', '_')}.db"
        write_database(scaled, path, "MP2/6-31g*", units={"energy": unit, "forces": f"{unit}/{dist}"})
        if dist == "Bohr":
            with connect(str(path), use_lock_file=False) as conn:
                conn.metadata = {**conn.metadata, "_distance_unit": "Bohr"}
        ds = TaskDataset({"ev": ev, "other": path})
        for i in range(10):
            a, b = ds["ev"][i], ds["other"][i]
            for key in ("energy", "forces", "_positions"):
                np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-10, atol=1e-9, err_msg=f"{unit} {key}")
        assert ds["other"].units == {"energy": "eV", "forces": "eV/Ang"}
    # SchNetPack's property_units pick the target units (as md17 sets kcal/mol)
    dm = make_dm({"ev": ev}, num_train=6, num_val=2, num_test=2,
                 property_units={"energy": "kcal/mol", "forces": "kcal/mol/Ang"})
    raw = dm.dataset["ev"]
    assert raw.energies[0] == pytest.approx(frames[0].get_potential_energy() * mol / kcal)
    np.testing.assert_allclose(raw[0]["forces"].numpy(), frames[0].get_forces() * mol / kcal, rtol=1e-10)


# -- bad input -------------------------------------------------------------------------------


def test_missing_and_non_database_paths(tmp_path):
    with pytest.raises(TaskDataError, match=r"nope\.db: no such task database"):
        TaskDataset({"a": tmp_path / "nope.db"})
    text = tmp_path / "frames.db"
    text.write_text("not a database\n")
    with pytest.raises(TaskDataError, match=r"frames\.db: not an ASE database"):
        TaskDataset({"a": text})


def test_database_without_energies_or_units(tmp_path):
    path = tmp_path / "dipoles.db"
    data = ASEAtomsData.create(str(path), distance_unit="Ang", property_unit_dict={"dipole": "Debye"})
    data.add_system(molecule("H2O"), dipole=np.zeros(3))
    with pytest.raises(TaskDataError, match=r"dipoles\.db: no 'energy' property \(the database has: dipole\)"):
        TaskDataset({"a": path})
    bare = tmp_path / "bare.db"
    with connect(str(bare)) as conn:
        conn.write(molecule("H2O"), data={"energy": np.array([1.0])})
    with pytest.raises(TaskDataError, match=r"bare\.db: the database has no units"):
        TaskDataset({"a": bare})


def _raw_db(path, forces, energy=-1.0):
    ASEAtomsData.create(str(path), distance_unit="Ang", property_unit_dict={"energy": "eV", "forces": "eV/Ang"})
    with connect(str(path), use_lock_file=False) as conn:
        for i, f in enumerate(forces):
            e = energy if i else -1.0
            conn.write(molecule("H2O"), data={"energy": np.array([e]), "forces": f})
    return path


def test_forces_with_wrong_shape(tmp_path):
    path = _raw_db(tmp_path / "f.db", [np.zeros((3, 3)), np.zeros((2, 3))])
    with pytest.raises(TaskDataError, match=r"f\.db: row 2: 'forces' must have shape \(3, 3\), got \(2, 3\)"):
        TaskDataset({"a": path})


def test_nan_labels_fail_by_default_or_are_skipped_with_a_count(tmp_path):
    forces = [np.zeros((3, 3))] * 5
    forces[3] = np.full((3, 3), np.nan)
    path = _raw_db(tmp_path / "nan.db", forces)
    with pytest.raises(TaskDataError, match=r"nan\.db: row 4: NaN or inf"):
        TaskDataset({"a": path})
    with pytest.warns(UserWarning, match=r"skipped 1 of 5 frames .*rows \[4\]"):
        ds = TaskDataset({"a": path}, nan_policy="skip")
    assert len(ds["a"]) == 4 and ds["a"].n_skipped == 1
    assert 3 not in ds["a"].db_index.tolist()


def test_energy_only_task(tmp_path, in_tmp):
    frames = synthetic_frames(n=12)
    path = write_database(frames, tmp_path / "ccsd.db", "CCSD(T)/CBS", forces_key=None)
    dm = make_dm({"ccsd-t_cbs": path}, num_train=8, num_val=2, num_test=2, split_seed=0)
    assert not dm.task_has_forces("ccsd-t_cbs")
    batch = next(iter(dm.train_dataloader()))
    assert "forces" not in batch and batch["energy"].shape == (8,)


def test_element_only_outside_the_training_split_gets_zero_reference(tmp_path, in_tmp):
    frames = synthetic_frames(n=7)  # one NH3 (frame 2)
    path = write_database(frames, tmp_path / "syn.db", "PBE/def2-svp")
    split = tmp_path / "split.npz"
    np.savez(split, tasks=np.array(["pbe"]), **{"pbe/train_idx": np.array([0, 1, 3, 4, 5]),
             "pbe/val_idx": np.array([2]), "pbe/test_idx": np.array([6])})
    with pytest.warns(UserWarning, match=r"task 'pbe' \(.*syn\.db\): N occur\(s\) only outside the training split"):
        dm = make_dm({"pbe": path}, split_file=str(split), num_train=5, num_val=1, num_test=1)
    ref = dm.energy_references["pbe"].as_dict()
    assert ref[7] == 0.0 and ref[1] == pytest.approx(E0[1], abs=1e-6)
    assert float(dm.subsets["pbe"]["val"][0]["energy"]) == pytest.approx(E0[7], abs=1e-3)


def test_element_unsupported_by_model_is_reported_before_training(tmp_path, in_tmp):
    from spk_meta.representation import ANI

    frames = synthetic_frames(n=12)  # contains N
    path = write_database(frames, tmp_path / "cno.db", "PBE/def2-svp")
    dm = make_dm({"pbe": path}, num_train=8, num_val=2, num_test=2)
    model = torch.nn.Sequential(ANI(elements=["H", "C", "O"], preset="ani1x"))
    with pytest.raises(ModelDataMismatch, match=r"task 'pbe' \(.*cno\.db\) contains element\(s\) N"):
        check_model_against_data(model, dm)


def test_data_configs_build_the_embedded_tasks(cache_root, in_tmp, monkeypatch):
    import hydra
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setenv("PWD", str(in_tmp))
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="schnetpack.configs", version_base="1.2"):
        cfg = compose(config_name="train", overrides=[
            "model=ani", "data=ethanol_multilevel", "+globals.cutoff=5.2",
            "+globals.energy_key=energy", "+globals.forces_key=forces",
        ])
    GlobalHydra.instance().clear()
    dm = hydra.utils.instantiate(cfg.data, train_sampler_cls=None)
    dm.setup("fit")
    assert sorted(dm.task_names) == sorted(PRETRAIN)
    assert {len(dm.splits[n]["train"]) for n in dm.task_names} == {160}
    model = hydra.utils.instantiate(cfg.model)
    check_model_against_data(model, dm)
