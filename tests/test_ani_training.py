"""ANI inside SchNetPack's training flow: spktrain, best_model, SpkCalculator, model/data checks."""

import ase.io
import numpy as np
import pytest
from ase import Atoms
from schnetpack.data import AtomsDataModule
from schnetpack.interfaces import SpkCalculator
from schnetpack.transform import ASENeighborList, MatScipyNeighborList

from conftest import ani_potential, run_cli
from spk_meta.data import write_database
from spk_meta.model import ModelDataMismatch, check_model_against_data


@pytest.mark.slow
def test_scratch_ani_trains_and_best_model_runs_in_spkcalculator(tmp_path, ethanol):
    result = run_cli(
        ["spktrain", "experiment=scratch_ani", "trainer.max_epochs=2", "logger=csv", "run.id=s"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test_forces_rmse" in result.stdout
    model_path = tmp_path / "runs" / "s" / "best_model"
    calc = SpkCalculator(str(model_path), neighbor_list=ASENeighborList(cutoff=5.2), energy_unit="eV", position_unit="Ang")
    frames = ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, ":3")
    for ref in frames:
        atoms = ref.copy()
        atoms.calc = calc
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        assert f.shape == (9, 3) and np.isfinite(f).all()
        # AddOffsets restores the data's mean: after 2 epochs within 1 eV of MP2 (~ -4204 eV)
        assert abs(e - ref.get_potential_energy()) < 1.0
    # the calculator's model refuses elements it has no network for, naming them
    atoms = Atoms("SiH4", positions=np.random.default_rng(0).normal(size=(5, 3)) * 1.5)
    atoms.calc = calc
    with pytest.raises(Exception, match="Si"):
        atoms.get_potential_energy()


def _datamodule(db, cutoff, tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    dm = AtomsDataModule(
        str(db), batch_size=4, num_train=4, num_val=2, num_test=2, num_workers=0,
        transforms=[MatScipyNeighborList(cutoff=cutoff)], split_file=str(tmp_path / "split.npz"),
    )
    dm.setup("fit")
    return dm


def test_short_neighbour_list_is_refused_before_training(tiny_db, tmp_path):
    check_model_against_data(ani_potential(), _datamodule(tiny_db, 5.2, tmp_path))
    with pytest.raises(ModelDataMismatch, match=r"cutoff 4.0 Ang but the model needs 5.2 Ang"):
        check_model_against_data(ani_potential(), _datamodule(tiny_db, 4.0, tmp_path / "b"))


def test_unsupported_element_is_refused_before_training(tmp_path):
    rng = np.random.default_rng(1)
    frames = []
    for i in range(8):
        a = Atoms("SiH4", positions=[[0, 0, 0], [0.9, 0.9, 0.9], [-0.9, -0.9, 0.9], [-0.9, 0.9, -0.9], [0.9, -0.9, -0.9]])
        a.positions += rng.normal(scale=0.05, size=(5, 3))
        a.info["energy"] = -8000.0 + i
        a.arrays["forces"] = np.zeros((5, 3))
        frames.append(a)
    db = write_database(frames, tmp_path / "silane.db", "HF/sto-3g")
    with pytest.raises(ModelDataMismatch, match=r"silane.db contains element\(s\) Si .*supported: H, C, N, O"):
        check_model_against_data(ani_potential(), _datamodule(db, 5.2, tmp_path))
    # ANI-2x adds S, F and Cl but still no Si: refused too, naming Si
    with pytest.raises(ModelDataMismatch, match=r"element\(s\) Si .*supported: H, C, N, O, F, S, Cl"):
        check_model_against_data(ani_potential("ani2x"), _datamodule(db, 5.2, tmp_path / "b"))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["painn", "schnet", "ani"])
@pytest.mark.parametrize("experiment", ["scratch_ani", "reptile_ani", "joint_ani", "transfer_ani"])
def test_architecture_swap_is_one_override(tmp_path, model, experiment):
    """Each architecture runs the whole spktrain flow of each experiment file, one override."""
    small = ["data.num_train=40", "data.num_val=8", "data.num_test=8"] if experiment != "scratch_ani" else []
    result = run_cli(
        ["spktrain", f"experiment={experiment}", f"model={model}", "trainer.max_epochs=1", "logger=csv",
         "run.id=m", *small],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "runs" / "m" / "best_model").exists()
