"""SchNetPack's whole `spktrain` flow in our pinned stack (torch >= 2.6): fit, test on the
best checkpoint, best_model, SpkCalculator, resume - with a SchNetPack representation."""

import numpy as np
import pytest
import torch
from schnetpack.interfaces import SpkCalculator
from schnetpack.transform import ASENeighborList

from conftest import run_cli

TINY_SCHNET = [
    "model=schnet",
    "model.representation.n_atom_basis=16",
    "model.representation.n_interactions=1",
    "logger=csv",
]


def _tiny_data(db):
    return [f"data.datapath={db}", "data.num_train=24", "data.num_val=8", "data.num_test=8", "data.batch_size=8"]


def _assert_calculator_runs(model_path, ethanol_atoms, reference_subtracted=False):
    calc = SpkCalculator(
        str(model_path), neighbor_list=ASENeighborList(cutoff=5.2), energy_unit="eV", position_unit="Ang"
    )
    atoms = ethanol_atoms.copy()
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    assert np.isfinite(energy) and forces.shape == (9, 3) and np.isfinite(forces).all()
    if reference_subtracted:
        # pre-trained on several levels, no level chosen yet: no E0 is added back
        assert abs(energy) < 50.0
    else:
        # energies come back on the scale of the data (AddOffsets restores the E0)
        assert abs(energy - ethanol_atoms.get_potential_energy()) < 50.0


TINY_TASKS = ["data.num_train=24", "data.num_val=8", "data.num_test=8", "data.batch_size=8"]


def test_our_experiment_fits_tests_saves_and_resumes(tmp_path, ethanol):
    """The one end-to-end `spktrain` smoke test of `make test` (the rest are marked slow):
    our experiment file, task, data module and checkpoint plugin, fit -> test -> best_model
    -> SpkCalculator -> resume."""
    import ase.io

    atoms = ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, 0)
    args = ["spktrain", "experiment=reptile_ani", *TINY_SCHNET, *TINY_TASKS, "task.inner_steps=3", "run.id=r"]
    first = run_cli([*args, "trainer.max_epochs=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run = tmp_path / "runs" / "r"
    assert (run / "best_model").exists() and (run / "checkpoints" / "last.ckpt").exists()
    for task in ("wb97x_6-31gs", "b3lyp_def2-svp", "hf_def2-svp"):
        assert f"test_{task}_forces_rmse" in first.stdout
    assert (run / "task_splits.npz").exists() and (run / "energy_references.json").exists()
    _assert_calculator_runs(run / "best_model", atoms, reference_subtracted=True)

    steps_one_epoch = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert steps_one_epoch == 9  # 3 tasks x 24 frames / batch 8 = 9 inner steps = 3 outer steps
    second = run_cli([*args, "trainer.max_epochs=2"], cwd=tmp_path)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert "Restored all states from the checkpoint at checkpoints/last.ckpt" in log
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    # continued with the second epoch instead of starting over
    assert ckpt["global_step"] == 2 * steps_one_epoch
    assert "Epoch 1/1" in log and "Epoch 0/1" not in log


@pytest.mark.slow
def test_stock_schnetpack_experiment_with_the_readme_override(tmp_path, tiny_db):
    """The README's one-line override makes a stock SchNetPack experiment finish."""
    result = run_cli(
        [
            "spktrain", "experiment=md17", "data=custom", *_tiny_data(tiny_db),
            "model/representation=schnet", *TINY_SCHNET[1:],
            "data.property_units.energy=eV", "data.property_units.forces=eV/Ang", "data.num_workers=0",
            "data.num_val_workers=0", "data.num_test_workers=0",
            "trainer.max_epochs=1", "run.id=stock", "run.experiment=md17_ethanol",
            "task=atomistic",  # installs the checkpoint plugin in the stock trainer itself
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "runs" / "stock" / "best_model").exists()
    assert "test_energy_mae" in result.stdout


@pytest.mark.slow
def test_stock_experiment_turns_to_reptile_with_one_override(tmp_path):
    """md17 (kcal/mol, RemoveOffsets, AddOffsets(add_mean)) + task=reptile + task data."""
    result = run_cli(
        [
            "spktrain", "experiment=md17", "task=reptile", "data=ethanol_multilevel",
            "run.experiment=md17_reptile", "model/representation=schnet", *TINY_SCHNET[1:],
            *TINY_TASKS, "task.inner_steps=3", "trainer.max_epochs=1", "run.id=m",
        ],
        cwd=tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "drops the RemoveOffsets transform" in log and "add_atomrefs=True" in log
    assert "test_hf_def2-svp_energy_mae" in result.stdout
    refs = (tmp_path / "runs" / "m" / "energy_references.json").read_text()
    assert '"unit": "kcal/mol"' in refs  # the experiment's units reached the data module
