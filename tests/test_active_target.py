"""Target structures chosen by a pre-trained committee vs at random (#15 item 4), on a fake
comparison folder: two seeds whose "pre-trained" models are small untrained ANI models and
whose random fine-tunings have splits drawn by the data module. The bookkeeping runs with a
stand-in spktrain; one real spktrain fine-tune checks that the data module trained on the
selected rows (its fitted E0 is that of their MP2 energies)."""

import json
import os

import ase.db
import numpy as np
import pytest
import torch
from schnetpack import transform as T

import spk_meta.experiment.runner as runner_module
from conftest import ani_potential, install_fake_spktrain
from spk_meta.active import read_manifest
from spk_meta.active import load_ensemble
from spk_meta.data import (
    DatabaseIdentity,
    TaskData,
    TaskDataModule,
    TaskSplit,
    load_energy_references,
    load_splits,
    save_splits,
)
from spk_meta.evaluate import predict, read_labelled
from spk_meta.experiment import FinetuneRun, Preset, Runner
from spk_meta.experiment.active_target import (
    ActiveTargetError,
    active_run,
    build_committee,
    choose_split,
    finetune_active,
    read_random_run,
    run_active_target,
    score_rows,
    task_data,
    write_split,
)
from spk_meta.experiment.record import RunSpec, read_record, sha256, write_finished, write_started

K, N, N_VAL, N_TEST, SEEDS = 3, 5, 5, 15, (0, 1)
TASK = "mp2_6-31gs"


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these tiny models run faster without thread hand-offs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def finished(run, overrides, inputs=None):
    """Record ``run`` (with its best_model) as the runner does for a finished spktrain run."""
    write_finished(run, write_started(run, RunSpec(overrides, dict(inputs or {})), ["spktrain"]), 0)


def random_overrides(seed):
    """What Runner.finetune records for the Reptile k = K fine-tuning on N structures (plus
    the tiny training budget of these tests)."""
    return ["experiment=finetune_ani", f"pretrained=runs/pre_ani_k{K}_s{seed}/best_model", "data=ethanol_mp2",
            f"data.num_train={N}", f"data.num_val={N_VAL}", f"seed={seed}", "trainer.max_epochs=1", "logger=csv",
            "data.batch_size=5", "data.num_workers=0"]


@pytest.fixture
def comparison(tmp_path, ethanol):
    """A comparison folder as `spkmeta experiment --k K --n N --seeds 0,1` leaves it."""
    root = tmp_path / "cmp"
    db = ethanol["target_mp2_631gs_train_300K"].db
    for seed in SEEDS:
        pre = root / "runs" / f"pre_ani_k{K}_s{seed}"
        pre.mkdir(parents=True)
        model = ani_potential(seed=seed)
        model.trained_elements = [1, 6, 8]
        torch.save(model, pre / "best_model")
        finished(pre, ["experiment=reptile_ani", f"seed={seed}"])
        ft = root / "runs" / f"ft_ani_k{K}_n{N}_s{seed}"
        ft.mkdir(parents=True)
        torch.save(ani_potential(seed=10 + seed), ft / "best_model")
        np.random.seed(seed)  # spktrain seeds NumPy's global RNG, from which the split is drawn
        dm = TaskDataModule({TASK: db}, num_train=N, num_val=N_VAL, num_test=N_TEST,
                            split_file=str(ft / "task_splits.npz"), references_file=None,
                            transforms=[T.MatScipyNeighborList(5.2), T.CastTo32()])
        dm.setup("fit")
        finished(ft, random_overrides(seed), {"pretrained_sha256": sha256(pre / "best_model")})
    return root


FAKE_SPKTRAIN = r'''
import json, os, shutil, sys
from pathlib import Path

args = dict(a.split("=", 1) for a in sys.argv[1:])
run = Path(args["run.path"]) / args["run.id"]
run.mkdir(parents=True, exist_ok=True)
with open(os.environ["FAKE_SPKTRAIN_CALLS"], "a") as fh:
    fh.write(json.dumps({"id": args["run.id"], "argv": sys.argv[1:], "leftovers": sorted(os.listdir(run))}) + "\n")
if Path(args["data.split_file"]).is_file():  # what the data module logs when it reuses the file
    print(f"[spk_meta.data.splits][INFO] - Reusing the task splits in {args['data.split_file']}")
shutil.copyfile(args["pretrained"], run / "best_model")
'''


@pytest.fixture
def fake_spktrain(tmp_path, monkeypatch):
    return install_fake_spktrain(tmp_path, monkeypatch, FAKE_SPKTRAIN, runner_module)


def reference_spread(model_files, frames):
    """Largest per-atom force spread (eV/Ang) of each frame, from each member called on its
    own through SchNetPack's AtomsConverter: sample std over members (ddof 1) per component,
    the length of that 3-vector per atom, the maximum over atoms."""
    forces = [predict(torch.load(f, weights_only=False), frames)[1] for f in model_files]
    out = []
    for i in range(len(frames)):
        std = np.std(np.stack([f[i] for f in forces]), axis=0, ddof=1)  # (n_atoms, 3)
        out.append(np.linalg.norm(std, axis=1).max())
    return np.array(out)


# -- the split, by hand ----------------------------------------------------------------------


def test_split_takes_the_top_scores_outside_validation_and_keeps_the_counts():
    rows = np.arange(10)
    scores = np.array([0.9, 0.8, 0.1, 0.7, 0.95, 0.2, 0.3, 0.6, 0.5, 0.4])
    rnd = TaskSplit(train=[2, 5, 6], val=[1, 4], test=[0, 9, 8])
    train, val, test = choose_split(rows, scores, rnd, 3, seed=0)
    # rows 4 (0.95) and 1 (0.8) are validation: the top three of the rest are 0 (0.9), 3 (0.7), 7 (0.6)
    assert train.tolist() == [0, 3, 7] and val.tolist() == [1, 4]
    # test: the random test rows not selected (8, 9) and one row drawn from those left (2, 5, 6)
    assert len(test) == 3 and {8, 9} <= set(test.tolist()) and set(test.tolist()) - {8, 9} <= {2, 5, 6}
    assert not set(train) & set(test) and not set(val) & (set(train) | set(test))
    with pytest.raises(ActiveTargetError, match="9 structures asked of a pool of 8"):
        choose_split(rows, scores, rnd, 9, seed=0)


# -- the whole comparison with a stand-in spktrain ------------------------------------------------


def test_committee_selection_finetunes_and_tabulates(comparison, fake_spktrain, ethanol):
    log = []
    result = run_active_target(comparison, k=K, n=N, seeds=SEEDS, log=log.append)
    # the committee: the two pre-trained models
    file, _, members = read_manifest(comparison / "active" / "committee")
    assert [m.file(file.parent) for m in members] == [comparison / "runs" / f"pre_ani_k{K}_s{s}" / "best_model"
                                                      for s in SEEDS]
    frames = read_labelled(ethanol["target_mp2_631gs_train_300K"].db)  # database order
    spread = reference_spread([m.file(file.parent) for m in members], frames)
    identity = TaskData(TASK, ethanol["target_mp2_631gs_train_300K"].db).identity()
    calls = {c["id"]: c for c in fake_spktrain()}
    for seed in SEEDS:
        rnd = load_splits(comparison / "runs" / f"ft_ani_k{K}_n{N}_s{seed}" / "task_splits.npz")[TASK]
        name = f"ft_ani_k{K}_n{N}_s{seed}_active"
        split = load_splits(comparison / "runs" / name / "task_splits.npz")[TASK]
        # the N structures with the largest spread outside the random run's validation rows
        pool = np.setdiff1d(np.arange(len(frames)), rnd.val)
        expected = np.sort(pool[np.argsort(-spread[pool], kind="stable")[:N]])
        assert split.train.tolist() == expected.tolist()
        assert split.val.tolist() == rnd.val.tolist() and split.counts == rnd.counts
        assert not set(split.train) & set(split.test) and not set(split.val) & set(split.test)
        assert split.identity == identity  # what the data module checks before reusing the file
        # spktrain got the random run's overrides and the split file, and started in a clean directory
        argv = calls[name]["argv"]
        split_file = comparison / "active" / "splits" / f"{name}.npz"
        assert [a for a in argv if not a.startswith(("data.split_file=", "run."))] == [
            a.replace("pretrained=", f"pretrained={comparison}/") for a in random_overrides(seed)]
        assert f"data.split_file={split_file}" in argv and calls[name]["leftovers"] == ["spkmeta_run.json"]
        record = read_record(comparison / "runs" / name)
        assert record["spec"]["inputs"]["active_split_sha256"] == sha256(split_file)
        assert f"data.split_file=active/splits/{name}.npz" in record["spec"]["overrides"]
        selected = json.loads(split_file.with_suffix(".json").read_text())
        assert np.allclose(selected["train_spread"], spread[split.train], rtol=1e-4, atol=1e-7)
        assert min(selected["train_spread"]) >= max(spread[np.setdiff1d(pool, split.train)]) - 1e-6
    # the table: mean ± std over seeds of each run's eval.json, by temperature
    assert {(r["selection"], r["seed"], r["T"]) for r in result.rows} == {
        (sel, s, t) for sel in ("active", "random") for s in SEEDS for t in (300, 600, 900)}
    for sel, suffix in (("active", "_active"), ("random", "")):
        evals = [json.loads((comparison / "runs" / f"ft_ani_k{K}_n{N}_s{s}{suffix}" / "eval.json").read_text())
                 for s in SEEDS]
        f300 = [e["test"]["300"]["forces_rmse"] for e in evals]
        row = next(s for s in result.summary if s["selection"] == sel and s["T"] == 300)
        assert row["forces_rmse"] == pytest.approx(np.mean(f300)) and row["forces_rmse_std"] == pytest.approx(
            np.std(f300))
        assert f"{np.mean(f300):.4f} ± {np.std(f300):.4f}" in result.markdown
    assert result.spread["active"][0] > result.spread["random"][0]
    md = (comparison / "active" / "results.md").read_text()
    assert md == result.markdown and "| 900 |" in md
    assert len((comparison / "active" / "results.csv").read_text().splitlines()) == 1 + 12
    # a rerun trains nothing and reuses the committee
    run_active_target(comparison, k=K, n=N, seeds=SEEDS, log=log.append)
    assert len(fake_spktrain()) == len(SEEDS) and log == [f"{active_run('ani', K, N, s).name}: fine-tuning on "
                                                          "the committee's structures" for s in SEEDS]


def test_random_runs_on_other_data_or_from_another_pretraining_are_refused(comparison, fake_spktrain):
    path = comparison / "runs" / f"ft_ani_k{K}_n{N}_s0" / "task_splits.npz"
    original = path.read_bytes()
    split = load_splits(path)[TASK]
    other = DatabaseIdentity(split.identity.path, split.identity.n_frames, "v2:" + "0" * 64)
    save_splits(path, {TASK: TaskSplit(split.train, split.val, split.test, identity=other)})
    with pytest.raises(ActiveTargetError, match="the random run was trained on other data"):
        run_active_target(comparison, k=K, n=N, seeds=SEEDS)
    path.write_bytes(original)
    pre = comparison / "runs" / f"pre_ani_k{K}_s1"
    torch.save(ani_potential(seed=5), pre / "best_model")  # pre-trained again since the fine-tuning
    finished(pre, ["experiment=reptile_ani", "seed=1"])
    with pytest.raises(ActiveTargetError, match=f"ft_ani_k{K}_n{N}_s1 was fine-tuned from another"):
        run_active_target(comparison, k=K, n=N, seeds=SEEDS)
    assert fake_spktrain()[0]["id"] == f"ft_ani_k{K}_n{N}_s0_active" and len(fake_spktrain()) == 1


def test_example_prints_the_table_and_names_what_is_missing(comparison, fake_spktrain, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "active_target_selection.py"
    spec = importlib.util.spec_from_file_location("active_target_selection", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main([str(comparison), "--k", str(K), "--n", str(N), "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert f"Fine-tuned from Reptile k={K} on N = {N} MP2 structures" in out and "results.csv" in out
    assert example.main([str(comparison), "--k", "30", "--n", str(N), "--seeds", "0,1"]) == 1
    assert "training run pre_ani_k30_s0 has not finished" in capsys.readouterr().err


# -- one real spktrain fine-tune --------------------------------------------------------------


def test_spktrain_trains_on_the_selected_rows(comparison, ethanol, monkeypatch):
    """The real data module reuses the split: the run's E0 (for ethanol's one composition,
    exactly the mean training energy) is that of the selected rows' MP2 energies."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # spktrain's torch: see one_thread
    runner = Runner(comparison, Preset(), log=[].append)
    committee = build_committee(runner, "ani", K, SEEDS)
    data = task_data(runner)
    rows, scores = score_rows(load_ensemble(committee), data)
    rnd, spec = read_random_run(runner, FinetuneRun("ani", K, N, 0))
    train, val, test = choose_split(rows, scores, rnd, N, seed=0)
    assert set(train) != set(rnd.train)
    act = active_run("ani", K, N, 0)
    split_file = write_split(comparison / "active" / "splits" / f"{act.name}.npz", TASK, train, val, test,
                             data.identity(), print)
    run = finetune_active(runner, act, spec, split_file)
    saved = load_splits(run / "task_splits.npz")[TASK]
    assert saved.train.tolist() == train.tolist() and saved.val.tolist() == rnd.val.tolist()
    ref, unit = load_energy_references(run / "energy_references.json")[TASK]
    assert unit == "eV"
    e0 = dict(zip(ref.elements, ref.values))
    ethanol_e0 = 6 * e0[1] + 2 * e0[6] + e0[8]  # C2H6O
    with ase.db.connect(ethanol["target_mp2_631gs_train_300K"].db) as con:  # SchNetPack's ASE database
        assert con.metadata["_property_unit_dict"]["energy"] == "eV"
        energy = {r.id - 1: float(r.data["energy"][0]) for r in con.select()}
    assert ethanol_e0 == pytest.approx(np.mean([energy[r] for r in train]), abs=1e-6)
    assert abs(ethanol_e0 - np.mean([energy[r] for r in rnd.train])) > 1e-3
    assert os.path.getsize(run / "best_model") > 0
