"""The active-vs-random pre-training loop (spk_meta.experiment.active_pretraining).

Fast tests drive the loop with a stand-in ``spktrain`` that hands out fixed untrained ANI
models (so the committee's choices are known) and check every split, selection and error
against an independent computation: the committee's force spread from ASE frames and each
member's forces through ``spk_meta.evaluate.predict``. The slow test runs real trainings.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ani_potential, install_fake_spktrain
from spk_meta.active import train as train_module
from spk_meta.active import EnsembleError, train_ensemble
from spk_meta.data.splits import load_splits
from spk_meta.evaluate import predict, read_labelled
from spk_meta.experiment import active_pretraining as ap

ROOT = Path(__file__).parents[1]

FAKE_SPKTRAIN = r'''
import json, os, shutil, sys
from pathlib import Path

args = dict(a.split("=", 1) for a in sys.argv[1:])
run = Path(args["run.path"]) / args["run.id"]
run.mkdir(parents=True, exist_ok=True)
with open(os.environ["FAKE_SPKTRAIN_CALLS"], "a") as fh:
    fh.write(json.dumps({"id": args["run.id"], "argv": sys.argv[1:]}) + "\n")
shutil.copy(Path(os.environ["FAKE_MODELS"]) / f"seed{args['seed']}", run / "best_model")
if "data.split_file" in args and not os.environ.get("FAKE_DRAWS_OWN_SPLIT"):
    print(f"[INFO] - Reusing the task splits in {args['data.split_file']}")  # as the data module logs it
'''

SETTINGS = ap.LoopSettings(case="ethanol", members=2, rounds=2, n_start=5, n_add=3, n_val=4, n_test=6, steps=7)


@pytest.fixture
def fake_spktrain(tmp_path, monkeypatch):
    """Member ``i`` of loop seed ``s`` (spktrain seed 100 s + i) gets the untrained ANI
    drawn with torch seed 100 s + i, in every round."""
    models = tmp_path / "models"
    models.mkdir()
    for seed in (0, 1, 100, 101):
        torch.save(ani_potential(seed=seed), models / f"seed{seed}")
    monkeypatch.setenv("FAKE_MODELS", str(models))
    calls = install_fake_spktrain(tmp_path, monkeypatch, FAKE_SPKTRAIN, train_module)
    return models, calls


@pytest.fixture
def gapped_tasks(tmp_path, monkeypatch, ethanol):
    """The loop's tasks as two 40-frame ethanol databases with rows 3 and 10 deleted, so a
    task's database rows (what split files hold) are not its frame positions."""
    import ase.io
    from ase.db import connect

    from spk_meta.data import write_database

    tasks = {}
    for name, key in (("wb97x_6-31gs", "pretrain_wb97x_631gs_300K"), ("b3lyp_def2-svp", "pretrain_b3lyp_def2svp_600K")):
        db = write_database(ase.io.read(ethanol[key].extxyz, ":40"), tmp_path / f"{name}.db", name.upper())
        connect(db).delete([4, 11])
        tasks[name] = str(db)
    monkeypatch.setattr(ap, "data_config_tasks", lambda config: tasks)
    return tasks


def committee_spread(models, frames):
    """Largest per-atom force spread (sample std over members, eV/Ang) of each frame, by hand."""
    forces = np.stack([np.concatenate(predict(m, frames)[1]) for m in models])  # (M, n_atoms, 3)
    per_atom = np.sqrt(forces.var(axis=0, ddof=1).sum(axis=1))
    bounds = np.cumsum([0] + [len(a) for a in frames])
    return np.array([per_atom[a:b].max() for a, b in zip(bounds[:-1], bounds[1:])])


def test_loop_splits_selections_and_errors_match_a_hand_computation(fake_spktrain, gapped_tasks, tmp_path):
    models_dir, calls = fake_spktrain
    out = tmp_path / "loop"
    log = []
    result = ap.run_active_pretraining(out, SETTINGS, seeds=[0], log=log.append, plot=True)
    # round 0 once, then two rounds per strategy; two members each
    assert len(calls()) == 2 * (1 + 2 * 2)
    pools = ap.open_tasks(SETTINGS)
    members = [torch.load(models_dir / f"seed{s}", weights_only=False) for s in (0, 1)]
    first = load_splits(out / "s0" / "r0" / "task_splits.npz")
    for p in pools:
        frames = read_labelled(p.data.path)
        rows = np.asarray(p.data.db_index)
        assert len(frames) == 38 and 3 not in rows and rows[-1] == 39  # rows are not positions
        fixed_val, fixed_test = first[p.name].val, first[p.name].test
        assert len(fixed_val) == 4 and len(fixed_test) == 6 and len(first[p.name].train) == 5
        for strategy in ap.STRATEGIES:
            previous = first[p.name].train
            for r in (1, 2):
                rdir = out / "s0" / strategy / f"r{r}"
                split = load_splits(rdir / "task_splits.npz")[p.name]
                # the fixed sets never change; train grows by n_add and never touches them
                assert np.array_equal(split.val, fixed_val) and np.array_equal(split.test, fixed_test)
                assert len(split.train) == 5 + 3 * r and set(previous) < set(split.train)
                assert not set(split.train) & (set(fixed_val) | set(fixed_test))
                added = np.setdiff1d(split.train, previous)
                record = json.loads((rdir / "selection.json").read_text())["tasks"][p.name]
                assert sorted(record["added_rows"]) == added.tolist()
                if strategy == "active":
                    # the top-3 force spreads among the candidates left, computed independently
                    left = np.setdiff1d(rows, np.concatenate([previous, fixed_val, fixed_test]))
                    spread = committee_spread(members, [frames[int(np.flatnonzero(rows == x)[0])] for x in left])
                    assert set(added) == set(left[np.argsort(-spread)[:3]])
                    assert np.allclose(sorted(record["added_scores"]), sorted(np.sort(spread)[-3:]), rtol=1e-4)
                previous = split.train
        # each member's test force RMSE, by hand
        test_frames = [frames[int(np.flatnonzero(rows == x)[0])] for x in fixed_test]
        ref = np.concatenate([a.get_forces() for a in test_frames])
        want = np.mean([np.sqrt(np.mean((np.concatenate(predict(m, test_frames)[1]) - ref) ** 2)) for m in members])
        got = [r["member_forces_rmse"] for r in result.rows if r["task"] == p.name and r["round"] == 0]
        assert got and np.allclose(got, want, rtol=1e-5)
    # every member trained on its round's split file with matching counts
    for c in calls():
        argv = dict(a.split("=", 1) for a in c["argv"])
        split = load_splits(argv["data.split_file"])
        assert {int(argv["data.num_train"])} == {len(s.train) for s in split.values()}
        assert argv["data.num_val"] == "4" and argv["data.num_test"] == "6" and argv["+trainer.max_steps"] == "7"
    assert (out / "results.md").is_file() and (out / "learning_curve.png").stat().st_size > 0
    assert "| 2 | 11 |" in result.markdown
    # a rerun trains nothing and gives the same table
    again = ap.run_active_pretraining(out, SETTINGS, seeds=[0], log=log.append, plot=False)
    assert len(calls()) == 10 and again.markdown == result.markdown
    # the tables cover every finished seed in the folder, not only the command's
    (out / "s1").mkdir()  # an unfinished seed is left out
    shutil.copytree(out / "s0", out / "s7")
    both = ap.run_active_pretraining(out, SETTINGS, seeds=[0], log=log.append, plot=False)
    assert len(calls()) == 10 and sorted({r["seed"] for r in both.rows}) == [0, 7]
    assert "mean ± std over 2 seeds" in both.markdown


def test_bad_settings_fail_before_any_training(fake_spktrain, tmp_path):
    _, calls = fake_spktrain
    with pytest.raises(ap.ActivePretrainingError, match="--members must be >= 2"):
        ap.run_active_pretraining(tmp_path / "a", ap.LoopSettings(case="ethanol", members=1))
    with pytest.raises(ap.ActivePretrainingError, match=r"task 'wb97x_6-31gs' .* has 200 frames"):
        ap.run_active_pretraining(tmp_path / "b", ap.LoopSettings(case="ethanol", n_start=150, n_add=20))
    with pytest.raises(ap.ActivePretrainingError, match="--criterion"):
        ap.run_active_pretraining(tmp_path / "c", ap.LoopSettings(case="ethanol", criterion="energy"))
    with pytest.raises(ap.ActivePretrainingError, match="strategies"):
        ap.run_active_pretraining(tmp_path / "d", ap.LoopSettings(case="ethanol"), strategies=["greedy"])
    for override in ("data.num_train=50", "+trainer.max_steps=5", "data=ethanol_multilevel"):
        with pytest.raises(ap.ActivePretrainingError, match=f"the loop sets {override.split('=')[0].lstrip('+')}"):
            ap.run_active_pretraining(tmp_path / "f", ap.LoopSettings(case="ethanol", overrides=(override,)))
    assert calls() == []
    # a folder that holds a loop with other settings is refused, naming what differs
    ap.claim_settings(tmp_path / "e", SETTINGS)
    with pytest.raises(ap.ActivePretrainingError, match=r"other settings \(n_add differ"):
        ap.run_active_pretraining(tmp_path / "e", ap.LoopSettings(**{**SETTINGS.to_json(), "n_add": 4}))
    assert calls() == []


def test_a_member_that_drew_its_own_split_is_an_error(fake_spktrain, tmp_path, monkeypatch):
    """Without the data module's 'Reusing the task splits in <file>' in a member's log, the
    member may have trained on the fixed test frames: the loop stops and names the log."""
    monkeypatch.setenv("FAKE_DRAWS_OWN_SPLIT", "1")
    with pytest.raises(ap.ActivePretrainingError, match=r"m0.log: no line 'Reusing the task splits in .*r0/task_splits"):
        ap.run_active_pretraining(tmp_path / "loop", SETTINGS, seeds=[0])


def test_a_rewritten_split_file_redoes_the_members(fake_spktrain, tmp_path, monkeypatch):
    """The ensemble record holds the split file's SHA-256: the same path with other frames
    must not reuse members trained on the old ones."""
    _, calls = fake_spktrain
    monkeypatch.chdir(tmp_path)
    split = tmp_path / "split.npz"
    split.write_bytes(b"first")
    train_ensemble("reptile_ani", 2, "ens", [f"data.split_file={split}"])
    train_ensemble("reptile_ani", 2, "ens", [f"data.split_file={split}"])
    assert len(calls()) == 2
    split.write_bytes(b"second")
    train_ensemble("reptile_ani", 2, "ens", [f"data.split_file={split}"])
    assert len(calls()) == 4
    # an absolute split that does not exist yet would be hashed only after the first member
    with pytest.raises(EnsembleError, match="does not exist. Members share an absolute split file only if"):
        train_ensemble("reptile_ani", 2, "ens2", [f"data.split_file={tmp_path / 'missing.npz'}"])
    assert len(calls()) == 4


@pytest.mark.slow
def test_example_runs_the_loop_with_real_trainings(tmp_path):
    """examples/active_pretraining.py end to end: real spktrain members on the organic case."""
    out = tmp_path / "loop"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "active_pretraining.py"), str(out), "--case",
                           "organic", "--members", "2", "--rounds", "1", "--n-start", "8", "--n-add", "8",
                           "--steps", "40"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rdir in (out / "s0" / "r0", out / "s0" / "active" / "r1", out / "s0" / "random" / "r1"):
        for i in (0, 1):
            log = (rdir / "ensemble" / "logs" / f"m{i}.log").read_text()
            assert f"Reusing the task splits in {rdir / 'task_splits.npz'}" in log
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 2 * 2  # header + tasks x strategies x rounds
    assert (out / "learning_curve.png").stat().st_size > 0 and "| 1 | 16 |" in proc.stdout
