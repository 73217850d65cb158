"""The saved split (``task_splits.npz``) and task paths: reuse only what fits this run."""

import logging
import shutil

import ase.io
import numpy as np
import pytest
from schnetpack import transform as T

from spk_meta.data import (
    TaskDataError,
    TaskDataModule,
    TaskDataset,
    TaskSplit,
    TaskSplitMismatch,
    load_energy_references,
    load_splits,
    save_splits,
    write_database,
)
from test_task_data import make_dm as make_task_dm


def make_dm(tasks, **kw):
    """A set-up TaskDataModule: 24/8/8 frames per task, no neighbour list."""
    defaults = {"num_train": 24, "num_val": 8, "num_test": 8, "split_seed": 0, "transforms": [T.CastTo32()]}
    return make_task_dm(tasks, **{**defaults, **kw})


def mp2_frames(ethanol, start, stop):
    return ase.io.read(ethanol["target_mp2_631gs_train_300K"].extxyz, f"{start}:{stop}")


# -- reuse is checked ----------------------------------------------------------------------


def test_new_split_sizes_refuse_the_saved_split(tiny_db, in_tmp):
    """A failed start left a 24/8/8 split; a rerun asking for 5/5/30 must not train on it."""
    make_dm({"mp2": tiny_db})
    with pytest.raises(TaskSplitMismatch) as err:
        make_dm({"mp2": tiny_db}, num_train=5, num_val=5, num_test=None)
    msg = str(err.value)
    assert "task_splits.npz" in msg and "task 'mp2'" in msg
    assert "24/8/8 train/val/test" in msg and "asks for 5/5/30" in msg
    assert "delete" in msg and "run.id" in msg
    # the same counts, as fractions, are the same split: reused
    again = make_dm({"mp2": tiny_db}, num_train=0.6, num_val=0.2, num_test=0.2)
    assert [len(again.splits["mp2"][s]) for s in ("train", "val", "test")] == [24, 8, 8]


def test_rewritten_or_resized_database_refuses_the_saved_split(ethanol, tmp_path, in_tmp):
    db = write_database(mp2_frames(ethanol, 0, 40), tmp_path / "mp2.db", "MP2/6-31g*")
    first = make_dm({"mp2": db})
    # the same number of frames, other structures: the saved rows would mean other frames
    write_database(mp2_frames(ethanol, 40, 80), db, "MP2/6-31g*", overwrite=True)
    with pytest.raises(TaskSplitMismatch, match=r"frames of .*mp2\.db differ from those the split was drawn from"):
        make_dm({"mp2": db})
    # fewer frames: named, with the counts
    write_database(mp2_frames(ethanol, 0, 30), db, "MP2/6-31g*", overwrite=True)
    with pytest.raises(TaskSplitMismatch, match=r"has 30 frames, the split was drawn from 40"):
        make_dm({"mp2": db}, num_train=14)
    # the original content, copied elsewhere (a new path and mtime): the same data, reused
    write_database(mp2_frames(ethanol, 0, 40), db, "MP2/6-31g*", overwrite=True)
    copy = shutil.copy(db, tmp_path / "copy.db")
    reused = make_dm({"mp2": copy})
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(reused.splits["mp2"][s], first.splits["mp2"][s])


def test_a_failed_check_writes_nothing(tiny_db, ethanol, in_tmp):
    """Counts that do not fit one task: no split file for a later start to pick up."""
    big = ethanol["pretrain_hf_def2svp_900K"].db
    with pytest.raises(TaskDataError, match=r"task 'tiny'.*frames but only 40"):
        make_dm({"big": big, "tiny": tiny_db}, num_train=60)
    assert not (in_tmp / "task_splits.npz").exists()


# -- the file and its public reader ----------------------------------------------------------


def test_load_splits_gives_database_rows_with_identity(ethanol, in_tmp):
    db = ethanol["pretrain_wb97x_631gs_300K"].db
    dm = make_dm({"wb97x": db}, num_train=100, num_val=50, num_test=50)
    saved = load_splits(in_tmp / "task_splits.npz")
    split = saved["wb97x"]
    assert isinstance(split, TaskSplit) and split.counts == (100, 50, 50)
    data = dm.dataset["wb97x"]
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(split[s], data.db_index[dm.splits["wb97x"][s]])
    assert split.identity == data.identity()
    fingerprint = split.identity.fingerprint
    assert split.identity.n_frames == 200 and fingerprint.startswith("v2:") and len(fingerprint) == 3 + 64
    with pytest.raises(ValueError, match="read-only"):
        split.val[0] = 7
    # the rows are the database's (= extxyz frame) indices: the same energies
    frames = ase.io.read(ethanol["pretrain_wb97x_631gs_300K"].extxyz, ":")
    row = int(split.val[3])
    assert data.energies[dm.splits["wb97x"]["val"][3]] == pytest.approx(frames[row].get_potential_energy())


def test_old_format_split_is_reused_after_a_count_check_with_a_warning(tiny_db, in_tmp):
    np.savez(in_tmp / "task_splits.npz", tasks=np.array(["mp2"]), **{
        "mp2/train_idx": np.arange(0, 24), "mp2/val_idx": np.arange(24, 32), "mp2/test_idx": np.arange(32, 40)})
    with pytest.warns(UserWarning, match="old-format split file .*counts only"):
        dm = make_dm({"mp2": tiny_db})
    np.testing.assert_array_equal(dm.splits["mp2"]["val"], np.arange(24, 32))
    with pytest.raises(TaskSplitMismatch, match="asks for 20/8/8"):
        make_dm({"mp2": tiny_db}, num_train=20)
    np.savez(in_tmp / "task_splits.npz", tasks=np.array(["mp2"]), **{
        "mp2/train_idx": np.arange(0, 24), "mp2/val_idx": np.arange(24, 32), "mp2/test_idx": np.arange(92, 100)})
    with pytest.raises(TaskSplitMismatch, match=r"split 'test' names database rows \[92, 93, 94, 95, 96\] that "
                                                r".*tiny\.db does not provide; delete the file"):
        make_dm({"mp2": tiny_db})


def test_save_splits_round_trip_and_bad_files(tmp_path):
    from spk_meta.data import DatabaseIdentity

    ident = DatabaseIdentity("/data/a.db", 10, "ab" * 32)
    save_splits(tmp_path / "s.npz", {"a": TaskSplit([0, 3], [5], [7, 8, 9], identity=ident)})
    back = load_splits(tmp_path / "s.npz")["a"]
    assert back.counts == (2, 1, 3) and back.identity == ident
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]  # no temporary left
    (tmp_path / "bad.npz").write_text("not numpy")
    with pytest.raises(TaskSplitMismatch, match=r"bad\.npz: not a task split file"):
        load_splits(tmp_path / "bad.npz")


def test_energy_references_file_reads_back(tiny_db, in_tmp):
    dm = make_dm({"mp2": tiny_db})
    refs = load_energy_references(in_tmp / "energy_references.json")
    ref, unit = refs["mp2"]
    assert unit == "eV" and ref.elements == dm.energy_references["mp2"].elements
    np.testing.assert_array_equal(ref.values, dm.energy_references["mp2"].values)
    (in_tmp / "broken.json").write_text("{")
    with pytest.raises(ValueError, match=r"broken\.json: not an energy reference file"):
        load_energy_references(in_tmp / "broken.json")


# -- task paths and the start-up log ---------------------------------------------------------


@pytest.fixture
def hydra_started_in(monkeypatch):
    """Pretend to be inside a Hydra app started in ``start`` (as ``spktrain`` is)."""
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    def start(directory):
        cfg = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
        cfg.hydra.runtime.cwd = str(directory)
        HydraConfig.instance().set_config(cfg)

    yield start
    HydraConfig.instance().cfg = None


def test_relative_task_paths_resolve_against_the_start_directory(tiny_db, tmp_path, monkeypatch, hydra_started_in):
    start, run_dir = tmp_path / "project", tmp_path / "project" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    shutil.copy(tiny_db, start / "a.db")
    monkeypatch.chdir(run_dir)  # spktrain runs in the run directory
    hydra_started_in(start)
    ds = TaskDataset({"a": "a.db"})
    assert ds["a"].path == start / "a.db" and len(ds["a"]) == 40
    with pytest.raises(TaskDataError) as err:
        TaskDataset({"b": "data/b.db"})
    assert str(err.value) == f"data/b.db (resolved to {start / 'data' / 'b.db'}): no such task database"


def test_a_spawned_worker_finds_relative_tasks_too(tiny_db, tmp_path, monkeypatch, hydra_started_in):
    """DDP spawns workers without Hydra: the module keeps the start directory it was built in."""
    import pickle

    from hydra.core.hydra_config import HydraConfig

    start, run_dir = tmp_path / "project", tmp_path / "project" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    shutil.copy(tiny_db, start / "a.db")
    monkeypatch.chdir(run_dir)
    hydra_started_in(start)
    built = TaskDataModule({"a": "a.db"}, num_train=24, num_val=8, num_test=8, split_file=None, references_file=None)
    HydraConfig.instance().cfg = None  # the worker process: no Hydra, cwd = run directory
    worker = pickle.loads(pickle.dumps(built))
    worker.setup("fit")
    assert worker.dataset["a"].path == start / "a.db"


def test_start_up_log_names_every_task_with_its_file_and_frames(tiny_db, ethanol, in_tmp, caplog):
    hf = ethanol["pretrain_hf_def2svp_900K"].db
    with caplog.at_level(logging.INFO, logger="spk_meta.data.datamodule"):
        make_dm({"mp2": tiny_db, "hf": hf}, split_file=None, references_file=None)
    lines = [r.getMessage() for r in caplog.records if r.name == "spk_meta.data.datamodule"]
    assert "2 task(s) loaded: mp2, hf" in lines
    assert f"task 'mp2': 40 frames from {tiny_db} (energy+forces)" in lines
    assert f"task 'hf': 200 frames from {hf} (energy+forces)" in lines


# -- through spktrain ------------------------------------------------------------------------


@pytest.mark.slow
def test_spktrain_relative_tasks_log_and_a_rerun_with_new_sizes(tiny_db, tmp_path):
    """`+data.tasks={a: data/a.db}` from the start directory; the log names the task; the
    same run.id with other split sizes stops with the split mismatch instead of training
    on the old split."""
    from conftest import run_cli

    (tmp_path / "data").mkdir()
    shutil.copy(tiny_db, tmp_path / "data" / "a.db")
    common = ["experiment=scratch_ani", "data=tasks", "+data.tasks={a: data/a.db}", "data.batch_size=8",
              "model=schnet", "model.representation.n_atom_basis=8", "model.representation.n_interactions=1",
              "trainer.max_epochs=1", "logger=csv", "run.id=r"]
    first = run_cli(["spktrain", *common, "data.num_train=24", "data.num_val=8", "data.num_test=8"], cwd=tmp_path)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-3000:]
    assert "1 task(s) loaded: a" in log
    assert f"task 'a': 40 frames from {tmp_path / 'data' / 'a.db'} (energy+forces)" in log
    second = run_cli(["spktrain", *common, "data.num_train=5", "data.num_val=5", "data.num_test=5"], cwd=tmp_path)
    log = second.stdout + second.stderr
    assert second.returncode != 0
    assert "TaskSplitMismatch" in log and "it has 24/8/8 train/val/test frames, this run asks for 5/5/5" in log
    missing = run_cli(["spktrain", *common[:2], "+data.tasks={a: data/b.db}", *common[3:]], cwd=tmp_path)
    assert missing.returncode != 0
    assert f"data/b.db (resolved to {tmp_path / 'data' / 'b.db'}): no such task database" in missing.stderr


def test_a_split_fingerprinted_by_an_older_spk_meta_is_reused_after_row_checks(tiny_db, in_tmp):
    """Before the packed store, fingerprints were hashed over every frame (bare hex); they
    cannot be compared with today's, so such a split is reused after its counts, frame count
    and rows are checked, with a warning, instead of being refused as 'rewritten'."""
    from spk_meta.data import DatabaseIdentity, TaskSplit, save_splits

    first = make_dm({"mp2": tiny_db})
    rows = {s: first.dataset["mp2"].db_index[first.splits["mp2"][s]] for s in ("train", "val", "test")}
    save_splits(in_tmp / "task_splits.npz", {"mp2": TaskSplit(
        rows["train"], rows["val"], rows["test"], identity=DatabaseIdentity(str(tiny_db), 40, "ab" * 32))})
    with pytest.warns(UserWarning, match=r"task 'mp2' was split by an older spk-meta .*counts, frame count and rows"):
        again = make_dm({"mp2": tiny_db})
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(again.splits["mp2"][s], first.splits["mp2"][s])
    save_splits(in_tmp / "task_splits.npz", {"mp2": TaskSplit(
        rows["train"], rows["val"], rows["test"], identity=DatabaseIdentity(str(tiny_db), 40, "v2:" + "ab" * 32))})
    with pytest.raises(TaskSplitMismatch, match="differ from those the split was drawn from"):
        make_dm({"mp2": tiny_db})
