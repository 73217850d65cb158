"""The experiment runner's bookkeeping: a run is reused only when its spktrain ended with the
settings asked for now; a killed run is resumed from last.ckpt or redone (and it says which);
a failing spktrain stops the comparison with its run directory and log.

Most tests drive the runner with a stand-in ``spktrain`` that behaves like SchNetPack's on the
run directory (config.yaml, checkpoints/last.ckpt, best_model at the first improving epoch,
CSV test metrics, resuming when config.yaml and last.ckpt exist) and can die at a chosen
point; one slow test resumes a real ``spktrain`` run.
"""

import json
import os
from argparse import Namespace
from pathlib import Path

import pytest

import spk_meta.experiment.launch as launch_module
import spk_meta.experiment.runner as runner_module
from spk_meta.experiment import FinetuneRun, Preset, PretrainRun, RunFailed, Runner, RunSpec, decide
from spk_meta.experiment.record import RECORD, read_record, sha256

from conftest import install_fake_spktrain

FAKE_SPKTRAIN = r'''
import json, os, sys
from pathlib import Path

args = dict(a.split("=", 1) for a in sys.argv[1:])
run = Path(args["run.path"]) / args["run.id"]
run.mkdir(parents=True, exist_ok=True)
resumed = (run / "config.yaml").exists() and (run / "checkpoints" / "last.ckpt").exists()
leftovers = sorted(p.name for p in run.iterdir() if p.name != "spkmeta_run.json")
with open(os.environ["FAKE_SPKTRAIN_CALLS"], "a") as fh:
    fh.write(json.dumps({"id": args["run.id"], "resumed": resumed, "leftovers": leftovers,
                         "argv": sys.argv[1:]}) + "\n")
if resumed:
    print("Restored all states from the checkpoint at checkpoints/last.ckpt")
die = os.environ.get("FAKE_SPKTRAIN_DIE", "")
(run / "config.yaml").write_text("seed: 0\n")
(run / "task_splits.npz").write_bytes(b"split of this attempt")
if die == "before_checkpoint":
    print("Traceback (most recent call last):\nKeyError: 'forces'")
    sys.exit(1)
# SchNetPack writes best_model at the first improving epoch, long before training ends
(run / "best_model").write_text("model after epoch 1 of " + " ".join(sys.argv[1:]))
(run / "checkpoints").mkdir(exist_ok=True)
(run / "checkpoints" / "last.ckpt").write_text("epoch 1")
if die == "after_best_model":
    sys.exit(137)  # SIGKILL
(run / "best_model").write_text("trained model of " + " ".join(sys.argv[1:]) + (" (resumed)" if resumed else ""))
version = len(list((run / "csv").glob("version_*"))) if (run / "csv").exists() else 0
(run / "csv" / f"version_{version}").mkdir(parents=True)
(run / "csv" / f"version_{version}" / "metrics.csv").write_text(
    "epoch,val_loss,test_forces_rmse\n0,0.5,\n0,,0.25\n")
if die == "no_best_model":
    (run / "best_model").unlink()
'''


@pytest.fixture
def fake_spktrain(tmp_path, monkeypatch):
    """Swap the runner's spktrain for the stand-in; returns a reader of its calls."""
    monkeypatch.delenv("FAKE_SPKTRAIN_DIE", raising=False)
    return install_fake_spktrain(tmp_path, monkeypatch, FAKE_SPKTRAIN, runner_module)


def make_runner(root, messages, **preset):
    return Runner(root, Preset(**preset), log=messages.append)


PRE = PretrainRun("ani", 10, 0)


def pretrain_dies(runner, monkeypatch, how: str) -> RunFailed:
    """Pre-train ``PRE`` with a stand-in spktrain that dies ``how``; returns the runner's error."""
    monkeypatch.setenv("FAKE_SPKTRAIN_DIE", how)
    with pytest.raises(RunFailed) as err:
        runner.pretrain(PRE)
    monkeypatch.delenv("FAKE_SPKTRAIN_DIE")
    return err.value


def test_killed_run_with_a_best_model_is_resumed_not_reused(tmp_path, fake_spktrain, monkeypatch):
    messages = []
    runner = make_runner(tmp_path / "exp", messages)
    pretrain_dies(runner, monkeypatch, "after_best_model")
    run = runner.run_dir(PRE.name)
    assert (run / "best_model").exists()  # the half-trained model SchNetPack left behind
    assert decide(run, RunSpec(["anything"])).action == "redo"
    assert runner.pretrain(PRE) == run
    calls = fake_spktrain()
    assert len(calls) == 2 and calls[1]["resumed"]  # spktrain ran again and continued from last.ckpt
    assert messages == [f"{PRE.name}: interrupted; resuming from checkpoints/last.ckpt"]
    record = read_record(run)
    assert record["status"] == "finished" and record["exit_status"] == 0 and record["attempts"] == 2
    assert record["best_model_sha256"] == sha256(run / "best_model")
    assert "(resumed)" in (run / "best_model").read_text()
    assert record["test_metrics"] == {"test_forces_rmse": 0.25}
    assert "task.inner_steps=10" in record["spec"]["overrides"]
    log = (tmp_path / "exp" / "logs" / f"{PRE.name}.log").read_text()
    assert log.startswith("# start: ") and "# resume: " in log  # the first attempt's log is kept
    # finished now: a third call trains nothing
    runner.pretrain(PRE)
    assert len(fake_spktrain()) == 2


def test_run_killed_before_its_first_checkpoint_is_redone_from_scratch(tmp_path, fake_spktrain, monkeypatch):
    messages = []
    runner = make_runner(tmp_path / "exp", messages)
    pretrain_dies(runner, monkeypatch, "before_checkpoint")
    runner.pretrain(PRE)
    first, second = fake_spktrain()
    assert not second["resumed"]
    assert second["leftovers"] == []  # the failed start's config and split were removed first
    assert messages == [f"{PRE.name}: redoing it: interrupted before SchNetPack wrote checkpoints/last.ckpt"]
    assert read_record(runner.run_dir(PRE.name))["attempts"] == 1


def test_finished_run_is_reused_only_with_the_same_settings(tmp_path, fake_spktrain):
    messages = []
    root = tmp_path / "exp"
    make_runner(root, messages, pretrain_epochs=2).pretrain(PRE)
    make_runner(root, messages, pretrain_epochs=2).pretrain(PRE)
    assert len(fake_spktrain()) == 1 and messages == []
    make_runner(root, messages, pretrain_epochs=3).pretrain(PRE)
    calls = fake_spktrain()
    assert len(calls) == 2 and not calls[1]["resumed"] and calls[1]["leftovers"] == []
    assert "+trainer.max_steps=90" in calls[1]["argv"]
    assert messages == [f"{PRE.name}: redoing it: finished with other settings (overrides asked now "
                        "['+trainer.max_steps=90'], recorded ['+trainer.max_steps=60'])"]


def test_finetuning_is_redone_when_its_pretraining_was_retrained(tmp_path, fake_spktrain):
    messages = []
    root = tmp_path / "exp"
    ft = FinetuneRun("ani", 10, 25, 0)
    runner = make_runner(root, messages, pretrain_epochs=2)
    runner.pretrain(PRE)
    runner.finetune(ft)
    pre_sha = read_record(runner.run_dir(PRE.name))["best_model_sha256"]
    assert read_record(runner.run_dir(ft.name))["spec"]["inputs"] == {"pretrained_sha256": pre_sha}
    # the fine-tuning overrides do not mention the pre-training budget: only the input hash does
    runner = make_runner(root, messages, pretrain_epochs=3)
    runner.pretrain(PRE)
    runner.finetune(ft)
    assert [c["id"] for c in fake_spktrain()] == [PRE.name, ft.name, PRE.name, ft.name]
    assert messages[-1].startswith(f"{ft.name}: redoing it: finished with other settings (input pretrained_sha256 ")


def test_recorded_paths_are_relative_to_the_folder_and_made_absolute_again(tmp_path):
    """A run record holds paths inside the comparison folder relative to it (a moved folder
    is still reused); spktrain gets them absolute under the folder it runs in now."""
    root = tmp_path / "exp"
    given = [f"pretrained={root}/runs/pre/best_model", f"data.split_file={root}/active/s.npz", "seed=3",
             "pretrained_elsewhere=x", "data.split_file=/abs/outside.npz"]
    recorded = runner_module.recorded_overrides(given, root)
    assert recorded == ["pretrained=runs/pre/best_model", "data.split_file=active/s.npz", "seed=3",
                        "pretrained_elsewhere=x", "data.split_file=/abs/outside.npz"]
    moved = tmp_path / "moved"
    assert runner_module.absolute_overrides(recorded, moved) == [
        f"pretrained={moved}/runs/pre/best_model", f"data.split_file={moved}/active/s.npz", "seed=3",
        "pretrained_elsewhere=x", "data.split_file=/abs/outside.npz"]


def test_finetuning_needs_a_finished_pretraining(tmp_path, fake_spktrain, monkeypatch):
    runner = make_runner(tmp_path / "exp", [])
    pretrain_dies(runner, monkeypatch, "after_best_model")
    with pytest.raises(RunFailed, match=f"training run {PRE.name} has not finished"):
        runner.finetune(FinetuneRun("ani", 10, 25, 0))
    assert len(fake_spktrain()) == 1  # the half-trained best_model was not fine-tuned


def test_failed_spktrain_names_run_directory_log_and_error(tmp_path, fake_spktrain, monkeypatch):
    runner = make_runner(tmp_path / "exp", [])
    text = str(pretrain_dies(runner, monkeypatch, "before_checkpoint"))
    assert "spktrain exited with status 1" in text
    assert f"run directory: {runner.run_dir(PRE.name)}" in text
    assert f"log: {tmp_path / 'exp' / 'logs' / (PRE.name + '.log')}" in text
    assert "KeyError: 'forces'" in text


def test_spktrain_exiting_0_without_best_model_is_a_failure(tmp_path, fake_spktrain, monkeypatch):
    runner = make_runner(tmp_path / "exp", [])
    assert "spktrain exited 0 but wrote no best_model" in str(pretrain_dies(runner, monkeypatch, "no_best_model"))
    assert read_record(runner.run_dir(PRE.name))["status"] == "started"


def cli_args(out, *extra):
    """``spkmeta experiment`` arguments as its own parser reads them (1-epoch budgets)."""
    from spk_meta.cli.main import build_parser

    return build_parser().parse_args(["experiment", "--out", str(out), "--pretrain-epochs", "1",
                                      "--finetune-epochs", "1", *extra])


def test_cli_stops_at_the_first_failed_run(tmp_path, fake_spktrain, monkeypatch, capsys):
    from spk_meta.cli.experiment import run

    monkeypatch.setenv("FAKE_SPKTRAIN_DIE", "before_checkpoint")
    assert run(cli_args(tmp_path / "exp", "--methods", "none,joint,reptile", "--k", "10")) == 1
    err = capsys.readouterr().err
    assert "spkmeta experiment: error: training run pre_ani_k1_s0 failed" in err
    assert str(tmp_path / "exp" / "runs" / "pre_ani_k1_s0") in err and "pre_ani_k1_s0.log" in err
    assert [c["id"] for c in fake_spktrain()] == ["pre_ani_k1_s0"]  # k=10 was not started


def test_ctrl_c_leaves_the_run_to_be_resumed(tmp_path, fake_spktrain, monkeypatch, capsys):
    from spk_meta.cli.experiment import run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(launch_module.subprocess, "run", interrupted)
    assert run(cli_args(tmp_path / "exp", "--methods", "joint")) == 130
    assert "interrupted. Rerun the same command to continue" in capsys.readouterr().err
    assert read_record(tmp_path / "exp" / "runs" / "pre_ani_k1_s0")["status"] == "started"


def test_one_comparison_per_output_folder(tmp_path, fake_spktrain, capsys):
    """A second comparison in the same folder would redo the first one's running trainings."""
    from spk_meta.cli.experiment import run
    from spk_meta.experiment import OutputBusy, output_lock

    root = tmp_path / "exp"
    args = cli_args(root, "--methods", "joint")
    with output_lock(root) as lock:
        with pytest.raises(OutputBusy, match=f"pid {os.getpid()}"):
            with output_lock(root):
                pass
        assert run(args) == 1
        assert f"{root.absolute()} is in use by another spkmeta experiment or ensemble (pid {os.getpid()}" in capsys.readouterr().err
        assert fake_spktrain() == []
    with output_lock(root):  # released when the first holder ended
        assert lock.exists()
    (tmp_path / "file").write_text("x")
    assert run(Namespace(**{**vars(args), "out": str(tmp_path / "file")})) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


# -- the decision on hand-made run directories --------------------------------------------

SPEC = RunSpec(["experiment=reptile_ani", "seed=0"])


def write_record(run: Path, status: str, overrides=SPEC.overrides, **extra):
    run.mkdir(parents=True, exist_ok=True)
    record = {"format": 1, "status": status, "spec": {"overrides": list(overrides), "inputs": {}}, **extra}
    (run / RECORD).write_text(json.dumps(record))


def test_decisions_on_run_directories(tmp_path):
    assert decide(tmp_path / "absent", SPEC).action == "start"
    (tmp_path / "empty").mkdir()
    assert decide(tmp_path / "empty", SPEC).action == "start"

    legacy = tmp_path / "legacy"  # what the runner left before it kept records
    (legacy / "checkpoints").mkdir(parents=True)
    for name in ("best_model", "config.yaml", "checkpoints/last.ckpt", "eval.json"):
        (legacy / name).write_text("x")
    decision = decide(legacy, SPEC)
    assert decision.action == "redo" and RECORD in decision.reason

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / RECORD).write_text('{"status": "finis')
    decision = decide(broken, SPEC)
    assert decision.action == "redo" and "unreadable run record" in decision.reason

    done = tmp_path / "done"
    done.mkdir()
    (done / "best_model").write_text("weights")
    write_record(done, "finished", best_model_sha256=sha256(done / "best_model"))
    assert decide(done, SPEC).action == "reuse"
    other = decide(done, RunSpec(["experiment=reptile_ani", "seed=1"]))
    assert other.action == "redo" and "['seed=1'], recorded ['seed=0']" in other.reason
    assert decide(done, RunSpec(SPEC.overrides, {"pretrained_sha256": "ab" * 32})).action == "redo"
    (done / "best_model").write_text("weights, truncated")
    assert "best_model changed" in decide(done, SPEC).reason
    (done / "best_model").unlink()
    assert "best_model is gone" in decide(done, SPEC).reason

    killed = tmp_path / "killed"
    write_record(killed, "started")
    (killed / "best_model").write_text("epoch 1")
    assert decide(killed, SPEC).action == "redo"  # no checkpoint to resume from
    (killed / "checkpoints").mkdir()
    (killed / "checkpoints" / "last.ckpt").write_text("epoch 1")
    (killed / "config.yaml").write_text("seed: 0")
    assert decide(killed, SPEC).action == "resume"
    changed = decide(killed, RunSpec(["experiment=reptile_ani", "seed=0", "trainer.max_epochs=5"]))
    assert changed.action == "redo" and "started with other settings" in changed.reason


@pytest.mark.slow
def test_real_spktrain_run_resumes_from_its_last_checkpoint(tmp_path, cache_root):
    """A pre-training run whose record says it never ended continues from SchNetPack's last.ckpt."""
    messages = []
    tiny = ("model.representation.n_atom_basis=16", "data.num_train=16", "data.num_val=8", "data.num_test=8",
            "data.batch_size=8")
    runner = Runner(tmp_path / "exp", Preset(pretrain_epochs=1, extra=tiny), log=messages.append)
    pre = PretrainRun("schnet", 3, 0)
    run = runner.pretrain(pre)
    record = read_record(run)
    assert record["status"] == "finished" and any(k.startswith("test_") for k in record["test_metrics"])
    # as if killed after the last checkpoint, before spktrain ended
    (run / RECORD).write_text(json.dumps({**record, "status": "started"}))
    runner.pretrain(pre)
    assert messages == [f"{pre.name}: interrupted; resuming from checkpoints/last.ckpt"]
    log = (tmp_path / "exp" / "logs" / f"{pre.name}.log").read_text()
    assert "Restored all states from the checkpoint at checkpoints/last.ckpt" in log
    assert read_record(run)["status"] == "finished"


# -- methods and cases ---------------------------------------------------------------------


def test_every_method_trains_with_its_experiment_data_and_the_same_inner_step_budget(tmp_path, fake_spktrain):
    """Budget: 2 passes over the organic case's training batches (160, 160, 200, 240 frames
    in batches of 16: 10 + 10 + 13 + 15) = 96 inner steps for every method; FOMAML's
    counter also holds one outer step per k = 3 inner steps (96 * 4 / 3 = 128). Multi-head
    fine-tuning starts from the best head."""
    from spk_meta.experiment import CASES, Variant

    runner = Runner(tmp_path / "exp", Preset(pretrain_epochs=2, num_val=5), log=[].append, case=CASES["organic"])
    variants = [Variant("joint"), Variant("reptile", 10), Variant("multihead"), Variant("fomaml", 3),
                Variant("transfer")]
    for v in variants:
        runner.pretrain(PretrainRun("ani", v, 0))
        runner.finetune(FinetuneRun("ani", v, 25, 0))
    runner.finetune(FinetuneRun("ani", None, 25, 0))
    argv = {c["id"]: c["argv"] for c in fake_spktrain()}
    expected = {
        "pre_ani_k1_s0": ["experiment=joint_ani", "data=organic_multilevel", "+trainer.max_steps=96"],
        "pre_ani_k10_s0": ["experiment=reptile_ani", "data=organic_multilevel", "+trainer.max_steps=96",
                           "task.inner_steps=10"],
        "pre_ani_multihead_s0": ["experiment=multihead_ani", "data=organic_multilevel", "+trainer.max_steps=96"],
        "pre_ani_fomaml_k3_s0": ["experiment=reptile_ani", "task=fomaml", "task.inner_steps=3",
                                 "data=organic_multilevel", "+trainer.max_steps=128"],
        "pre_ani_transfer_s0": ["experiment=transfer_ani", "data=organic_hf_def2svp", "+trainer.max_steps=96"],
    }
    for name, parts in expected.items():
        assert set(parts) <= set(argv[name]), (name, argv[name])
    for v in variants:
        ft = argv[FinetuneRun("ani", v, 25, 0).name]
        assert {"experiment=finetune_ani", "data=ethylamine_mp2", "data.num_train=25", "data.num_val=5"} <= set(ft)
        assert ("model.head=best" in ft) == (v.method == "multihead")
        pre = PretrainRun("ani", v, 0).name
        assert f"pretrained={runner.run_dir(pre) / 'best_model'}" in ft
    assert {"experiment=scratch_ani", "data=ethylamine_mp2"} <= set(argv["ft_ani_none_n25_s0"])


def test_pretraining_budget_counts_the_cases_training_frames(cache_root, tmp_path, monkeypatch):
    """The frame count that sets each case's budget equals what the data module trains on
    with the case's own data config (its tasks and split fractions)."""
    from omegaconf import OmegaConf

    from spk_meta.data import TaskDataModule
    from spk_meta.experiment import CASES
    from spk_meta.resolvers import RESOLVERS

    import spk_meta.configs

    monkeypatch.chdir(tmp_path)
    for name, fn in RESOLVERS.items():
        OmegaConf.register_new_resolver(name, fn, replace=True)
    for case in CASES.values():
        conf = OmegaConf.load(Path(spk_meta.configs.__file__).parent / "data" / f"{case.pretrain_data}.yaml")
        counts = {k: conf[k] for k in ("num_train", "num_val", "num_test")}
        dm = TaskDataModule(tasks=OmegaConf.to_container(conf.tasks, resolve=True), batch_size=16,
                            references_file=None, split_file=f"{case.name}_splits.npz", **counts)
        dm.setup("fit")
        assert tuple(len(dm.subsets[t]["train"]) for t in dm.task_names) == case.pretrain_train_frames, case.name


def test_an_output_folder_holds_one_case(tmp_path, fake_spktrain, capsys, monkeypatch):
    from spk_meta.cli.experiment import run

    root = tmp_path / "exp"
    monkeypatch.setenv("FAKE_SPKTRAIN_DIE", "before_checkpoint")
    assert run(cli_args(root, "--methods", "joint")) == 1  # the ethanol case, stopped by a failed run
    capsys.readouterr()
    assert run(cli_args(root, "--case", "organic", "--methods", "joint")) == 1
    err = capsys.readouterr().err
    assert f"{root} holds the ethanol case's comparison" in err and "choose another --out for --case organic" in err
    assert [c["id"] for c in fake_spktrain()] == ["pre_ani_k1_s0"]
