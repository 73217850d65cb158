"""Checkpoints reload under torch >= 2.6 weights-only with an allow-list; code in a foreign
checkpoint never runs unless that one plugin object is told to trust it."""

import os
import pickle

import pytest
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from spk_meta.model.loading import UntrustedModelFile
from spk_meta.train import RunCheckpointIO


class _RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _checkpoint_with_module():
    # like SchNetPack's: the model itself sits in the hyperparameters
    return {"state_dict": {"model.weight": torch.ones(1, 2)},
            "hyper_parameters": {"model": torch.nn.Linear(2, 1)}}


def _crafted_checkpoint(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"model": _RunsCode(marker)}}, path)
    return path


def test_schnetpack_style_checkpoint_loads_weights_only_from_anywhere(tmp_path):
    """A checkpoint holding only model classes loads without trust, own or foreign."""
    io = RunCheckpointIO()
    own = tmp_path / "run" / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_checkpoint_with_module(), own)
    assert isinstance(io.load_checkpoint(own)["hyper_parameters"]["model"], torch.nn.Linear)
    foreign = tmp_path / "downloads" / "model.ckpt"
    foreign.parent.mkdir()
    torch.save(_checkpoint_with_module(), foreign)
    loaded = RunCheckpointIO().load_checkpoint(foreign)
    assert isinstance(loaded["hyper_parameters"]["model"], torch.nn.Linear)
    assert torch.equal(loaded["state_dict"]["model.weight"], torch.ones(1, 2))
    # torch's own default is untouched: no allow-list leaks into the process
    with pytest.raises(pickle.UnpicklingError):
        torch.load(foreign)


def test_crafted_last_ckpt_in_the_run_dir_runs_no_code_on_resume(tmp_path):
    """Resuming reads last.ckpt from an earlier process: neither the run directory nor
    RunCheckpointIO() built in it (the old default trusted the cwd) makes it trusted."""
    marker = tmp_path / "marker"
    ckpt = _crafted_checkpoint(tmp_path / "checkpoints" / "last.ckpt", marker)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for io in (RunCheckpointIO(), RunCheckpointIO(run_dir=tmp_path)):
            with pytest.raises(UntrustedModelFile, match=r"last\.ckpt.*posix\.system.*trust_checkpoint=true"):
                io.load_checkpoint(ckpt)
    finally:
        os.chdir(cwd)
    assert not marker.exists()
    # trust is per object: one trusting plugin does not make another one trust
    trusting = RunCheckpointIO(trust=True)
    trusting.load_checkpoint(ckpt)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UntrustedModelFile):
        RunCheckpointIO().load_checkpoint(ckpt)
    assert not marker.exists()


def test_files_this_plugin_wrote_load_fully_others_not(tmp_path):
    """A checkpoint with more than model classes (here a Fraction) reloads in the process that
    wrote it (trainer.test(ckpt_path="best")), and is refused by another plugin."""
    from fractions import Fraction

    ckpt = {"state_dict": {}, "extra": Fraction(1, 3)}
    writer = RunCheckpointIO()
    path = tmp_path / "epoch=00.ckpt"
    writer.save_checkpoint(ckpt, path)
    assert writer.load_checkpoint(path)["extra"] == Fraction(1, 3)
    with pytest.raises(UntrustedModelFile, match="fractions.Fraction"):
        RunCheckpointIO().load_checkpoint(path)
    # an explicit weights_only=False by the caller is the caller's decision
    assert RunCheckpointIO().load_checkpoint(path, weights_only=False)["extra"] == Fraction(1, 3)


def test_task_installs_the_plugin_through_the_public_strategy_api(tmp_path):
    """A stock trainer gets RunCheckpointIO via ``trainer.strategy.checkpoint_io``."""
    import pytorch_lightning as pl
    from schnetpack.model import NeuralNetworkPotential

    from spk_meta.task.atomistic import AtomisticTask

    trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    assert type(trainer.strategy.checkpoint_io) is TorchCheckpointIO
    model = NeuralNetworkPotential(representation=torch.nn.Identity(), output_modules=[])
    task = AtomisticTask(model=model, outputs=[], optimizer_args={"lr": 1e-3})
    task.trainer = trainer
    task._use_run_checkpoint_io()
    assert isinstance(trainer.strategy.checkpoint_io, RunCheckpointIO)
    assert not trainer.strategy.checkpoint_io.trust


def test_load_from_checkpoint_refuses_a_crafted_checkpoint(tmp_path):
    from spk_meta.task.atomistic import AtomisticTask

    marker = tmp_path / "marker"
    ckpt = _crafted_checkpoint(tmp_path / "best.ckpt", marker)
    with pytest.raises(UntrustedModelFile, match="best.ckpt"):
        AtomisticTask.load_from_checkpoint(ckpt)
    assert not marker.exists()


@pytest.mark.slow
def test_spktrain_does_not_resume_from_a_crafted_last_ckpt(tmp_path):
    """End to end: spktrain finds runs/<id>/checkpoints/last.ckpt and resumes from it; a
    crafted one stops the run with the file named, and its code never runs."""
    from conftest import run_cli

    marker = tmp_path / "marker"
    _crafted_checkpoint(tmp_path / "runs" / "r" / "checkpoints" / "last.ckpt", marker)
    (tmp_path / "runs" / "r" / "config.yaml").write_text("{}\n")  # an earlier start: resume
    result = run_cli(
        ["spktrain", "experiment=reptile_ani", "model=schnet", "model.representation.n_atom_basis=16",
         "model.representation.n_interactions=1", "logger=csv", "data.num_train=24", "data.num_val=8",
         "data.num_test=8", "data.batch_size=8", "task.inner_steps=3", "trainer.max_epochs=1", "run.id=r"],
        cwd=tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "last.ckpt: refusing to unpickle posix.system" in log and "trust_checkpoint=true" in log
    assert not marker.exists()
