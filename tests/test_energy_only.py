"""Energy-only targets (e.g. the CCSD(T)/CBS database ``spkmeta convert ani1x`` writes):
a task whose loss includes forces trains on energies, with one warning, instead of
SchNetPack's bare ``KeyError: 'forces'`` (issue #14 item 5)."""

import warnings

import ase.io
import pytest
import pytorch_lightning as pl
import schnetpack as spk
import torch
from schnetpack import transform as T
from schnetpack.data import AtomsDataModule

from conftest import run_cli
from spk_meta.atomistic import ElementwiseAtomwise
from spk_meta.data import TaskDataModule, write_database
from spk_meta.model import ModelDataMismatch, data_labels, drop_unlabelled_outputs
from spk_meta.representation import ANI
from spk_meta.task import AtomisticTask

CUTOFF = 5.2


@pytest.fixture(scope="module")
def mp2_frames(ethanol):
    return ase.io.read(ethanol["target_mp2_631gs_train_300K"].extxyz, ":24")


@pytest.fixture(scope="module")
def energy_only_db(tmp_path_factory, mp2_frames):
    """24 ethanol frames with energies and no forces, as ``spkmeta convert`` writes a
    CCSD(T) level."""
    out = tmp_path_factory.mktemp("eonly") / "ccsd-t_cbs.db"
    return write_database(mp2_frames, out, "CCSD(T)/CBS", source="test", forces_key=None)


def ani_model(seed=0):
    torch.manual_seed(seed)
    rep = ANI()
    return spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[ElementwiseAtomwise(n_in=rep.n_atom_basis), spk.atomistic.Forces()],
    )


def make_task(model, *names):
    """Our AtomisticTask with an MSE loss on each of ``names``."""
    outputs = [spk.task.ModelOutput(n, loss_fn=torch.nn.MSELoss(), loss_weight=0.5, metrics={}) for n in names]
    return AtomisticTask(model=model, outputs=outputs, optimizer_args={"lr": 1e-3})


def task_dm(tasks, tmp_path):
    dm = TaskDataModule(
        tasks, batch_size=4, num_train=8, num_val=4, num_test=4, split_seed=0,
        split_file=str(tmp_path / "split.npz"), references_file=None,
        transforms=[T.MatScipyNeighborList(CUTOFF), T.CastTo32()],
    )
    dm.setup("fit")
    return dm


def fit(task, dm, steps=2):
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(task, datamodule=dm)


def test_energy_only_task_trains_on_energies_with_one_warning(energy_only_db, tmp_path):
    dm = task_dm({"ccsd-t_cbs": energy_only_db}, tmp_path)
    assert data_labels(dm) == {"energy"}
    model = ani_model()
    task = make_task(model, "energy", "forces")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(UserWarning, match=r"ccsd-t_cbs\.db\) has no 'forces' labels: training on energy only") as rec:
        fit(task, dm)  # SchNetPack alone: KeyError: 'forces' in training_step
    assert sum("'forces' labels" in str(w.message) for w in rec) == 1
    assert [o.name for o in task.outputs] == ["energy"]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # the model still predicts forces (the Forces module stays): usable for MD
    batch = next(iter(dm.val_dataloader()))
    out = model.eval()(batch)
    assert out["forces"].shape == batch["_positions"].shape and torch.isfinite(out["forces"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert drop_unlabelled_outputs(task, dm) == []  # a second setup says nothing


def test_stock_atoms_data_module_energy_only(energy_only_db, tmp_path):
    dm = AtomsDataModule(
        str(energy_only_db), batch_size=4, num_train=8, num_val=4, num_test=4, num_workers=0,
        transforms=[T.MatScipyNeighborList(CUTOFF), T.CastTo32()],
        split_file=str(tmp_path / "split.npz"),
    )
    dm.setup("fit")
    assert data_labels(dm) == {"energy"}
    task = make_task(ani_model(), "energy", "forces")
    with pytest.warns(UserWarning, match=r"ccsd-t_cbs\.db has no 'forces' labels"):
        fit(task, dm, steps=1)
    assert [o.name for o in task.outputs] == ["energy"]


def test_forces_kept_when_any_task_has_them(energy_only_db, tiny_db, tmp_path):
    """Several tasks: an output is dropped only if no task has its labels (Reptile skips
    the force loss per batch for the energy-only ones)."""
    dm = task_dm({"ccsd-t_cbs": energy_only_db, "mp2": tiny_db}, tmp_path)
    assert data_labels(dm) == {"energy", "forces"}
    task = make_task(ani_model(), "energy", "forces")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert drop_unlabelled_outputs(task, dm) == []
    assert [o.name for o in task.outputs] == ["energy", "forces"]


def test_unlabelled_non_derivative_target_is_a_clear_error(energy_only_db, tmp_path):
    dm = task_dm({"ccsd-t_cbs": energy_only_db}, tmp_path)
    task = make_task(ani_model(), "energy", "dipole_moment")
    with pytest.raises(ModelDataMismatch, match=r"needs 'dipole_moment'.*ccsd-t_cbs.*has no 'dipole_moment' labels"):
        drop_unlabelled_outputs(task, dm)


@pytest.mark.slow
def test_spktrain_scratch_and_finetune_on_energy_only_data(energy_only_db, tmp_path, ethanol):
    """scratch_ani and finetune_ani on an energy-only level; the fine-tuned best_model
    still predicts forces."""
    tasks = f"+data.tasks={{ccsd-t_cbs: {energy_only_db}}}"
    common = ["data=tasks", tasks, "data.num_train=8", "data.num_val=4", "data.num_test=4",
              "data.batch_size=4", "trainer.max_epochs=1", "logger=csv"]
    first = run_cli(["spktrain", "experiment=scratch_ani", *common, "run.id=s"], cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "has no 'forces' labels: training on energy only" in first.stderr
    assert "test_energy_rmse" in first.stdout and "test_forces_rmse" not in first.stdout
    second = run_cli(["spktrain", "experiment=finetune_ani", "pretrained=runs/s/best_model", *common,
                      "run.id=f"], cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "has no 'forces' labels" in second.stderr
    model = torch.load(tmp_path / "runs/f/best_model", weights_only=False)
    frames = ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, ":2")
    conv = spk.interfaces.AtomsConverter(neighbor_list=T.MatScipyNeighborList(CUTOFF), dtype=torch.float32)
    out = model(conv(frames))
    assert out["forces"].shape == (18, 3) and torch.isfinite(out["forces"]).all()


@pytest.mark.slow
def test_spktrain_stock_experiment_with_task_atomistic_on_energy_only_data(energy_only_db, tmp_path):
    """SchNetPack's own md17 experiment (PaiNN, stock AtomsDataModule) with our task. Its
    ``property_units`` name forces, which SchNetPack's ASEAtomsData refuses for a database
    without them: that key goes."""
    result = run_cli(
        ["spktrain", "experiment=md17", "task=atomistic", "data=custom", f"data.datapath={energy_only_db}",
         "~data.property_units.forces",
         "run.experiment=eonly", "data.num_train=8", "data.num_val=4", "data.num_test=4", "data.batch_size=4",
         "data.num_workers=0", "data.num_val_workers=0", "data.num_test_workers=0",
         "model.representation.n_atom_basis=16", "model.representation.n_interactions=1",
         "trainer.max_epochs=1", "logger=csv", "run.id=m"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "has no 'forces' labels: training on energy only" in result.stderr
    assert (tmp_path / "runs/m/best_model").is_file()
