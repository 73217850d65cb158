"""Each experiment end to end through `spktrain` on the embedded data (1 epoch, CPU):
fit, test on the best checkpoint, best_model in SpkCalculator; fine-tuning from a
pre-trained model, with and without frozen layers. The `spktrain` runs are marked slow
(`make test-slow`); loading a pre-trained file is tested in-process in `make test`."""

import warnings

import ase.io
import numpy as np
import pytest
import torch
from schnetpack.interfaces import SpkCalculator
from schnetpack.transform import ASENeighborList

from conftest import ani_potential, run_cli
from spk_meta.model import frozen_parameters, load_pretrained, warn_untrained_elements

QUICK = ["trainer.max_epochs=1", "logger=csv", "data.batch_size=8"]
SMALL_TASKS = ["data.num_train=40", "data.num_val=8", "data.num_test=8"]


def spktrain(cwd, *args):
    result = run_cli(["spktrain", *args], cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def energies(model_path, frames):
    calc = SpkCalculator(str(model_path), neighbor_list=ASENeighborList(cutoff=5.2), energy_unit="eV", position_unit="Ang")
    out = []
    for ref in frames:
        atoms = ref.copy()
        atoms.calc = calc
        f = atoms.get_forces()
        assert f.shape == (9, 3) and np.isfinite(f).all()
        out.append(atoms.get_potential_energy())
    return np.array(out)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, cache_root):
    """A Reptile-pre-trained ANI (1 epoch, k = 5) on the three embedded levels."""
    cwd = tmp_path_factory.mktemp("pre")
    result = spktrain(cwd, "experiment=reptile_ani", *QUICK, *SMALL_TASKS, "task.inner_steps=5", "run.id=pre")
    assert "test_hf_def2-svp_forces_rmse" in result.stdout
    return cwd / "runs" / "pre" / "best_model"


@pytest.mark.slow
def test_joint_ani_runs_end_to_end(tmp_path, ethanol):
    result = spktrain(tmp_path, "experiment=joint_ani", *QUICK, *SMALL_TASKS, "run.id=j")
    assert "test_wb97x_6-31gs_energy_mae" in result.stdout
    model = torch.load(tmp_path / "runs" / "j" / "best_model", weights_only=False)
    assert model.trained_elements == [1, 6, 8]
    frames = ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, ":2")
    # several levels, none active: the model predicts reference-subtracted energies
    assert np.abs(energies(tmp_path / "runs" / "j" / "best_model", frames)).max() < 50


@pytest.mark.slow
def test_finetune_from_reptile_refits_the_target_reference(pretrained, tmp_path, ethanol):
    result = spktrain(tmp_path, "experiment=finetune_ani", f"pretrained={pretrained}", *QUICK,
                      "data.num_train=25", "data.num_val=10", "data.num_test=15", "run.id=ft")
    assert "test_forces_rmse" in result.stdout
    run = tmp_path / "runs" / "ft"
    frames = ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, ":3")
    predicted = energies(run / "best_model", frames)
    reference = np.array([f.get_potential_energy() for f in frames])
    # the MP2 E0 is added back: the scale of the target (about -4204 eV), within a few eV
    assert np.abs(predicted - reference).max() < 5.0
    assert "mp2_6-31gs" in (run / "energy_references.json").read_text()


@pytest.mark.slow
def test_finetune_with_relative_path_and_frozen_layers(pretrained, tmp_path):
    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / "best_model").write_bytes(pretrained.read_bytes())
    frozen = "output_modules.0.atomics.H.layers.0"
    spktrain(tmp_path, "experiment=finetune_ani", "pretrained=pre/best_model", f"model.freeze=[{frozen}]",
             *QUICK, "data.num_train=25", "data.num_val=10", "data.num_test=15", "run.id=tl")
    before = torch.load(pretrained, weights_only=False)
    after = torch.load(tmp_path / "runs" / "tl" / "best_model", weights_only=False)
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    assert frozen_parameters(after) == [n for n in a if n.startswith(frozen)]
    for name in a:
        if name.startswith(frozen):
            assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["output_modules.0.atomics.C.layers.0.weight"], b["output_modules.0.atomics.C.layers.0.weight"])


@pytest.mark.slow
def test_transfer_ani_pretrains_on_one_level(tmp_path):
    result = spktrain(tmp_path, "experiment=transfer_ani", *QUICK, *SMALL_TASKS, "run.id=t")
    assert "test_forces_rmse" in result.stdout
    assert "wb97x_6-31gs" in (tmp_path / "runs" / "t" / "energy_references.json").read_text()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """An ANI potential saved like SchNetPack's best_model, recording the elements it was
    trained on as our tasks do (H, C, O: the embedded ethanol data)."""
    model = ani_potential(seed=0)
    model.trained_elements = [1, 6, 8]
    path = tmp_path_factory.mktemp("saved") / "best_model"
    torch.save(model, path)
    return path


def test_load_pretrained_errors(tmp_path, saved_model):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="freeze: no parameter of best_model starts with 'xyz'"):
        load_pretrained(saved_model, freeze=["xyz"])
    bad = tmp_path / "bad.pt"
    torch.save({"a": 1}, bad)
    with pytest.raises(ValueError, match="bad.pt: holds no SchNetPack model"):
        load_pretrained(bad)


def test_new_elements_are_named_when_fine_tuning(saved_model):
    model = load_pretrained(saved_model)

    class Data:
        def task_elements(self):
            return {"pbe": ("/x/pbe.db", {1, 6, 7, 8})}

    with pytest.warns(UserWarning, match=r"task 'pbe' \(/x/pbe.db\) contains N, which the pre-trained model never saw"):
        assert warn_untrained_elements(model, Data()) == {7}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.trained_elements = [1, 6, 7, 8]
        assert warn_untrained_elements(model, Data()) == set()


@pytest.mark.slow
def test_python_api_example_runs(tmp_path, cache_root):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples" / "reptile_python_api.py"
    result = subprocess.run(
        [sys.executable, str(script), "--epochs", "1", "--finetune-epochs", "1", "--n-target", "25",
         "--k", "3", "--out", str(tmp_path / "api")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [l for l in result.stdout.splitlines() if l.startswith("MP2 test")]
    assert len(lines) == 3 and all("force RMSE" in l for l in lines)
    assert (tmp_path / "api" / "finetuned_model").exists()
