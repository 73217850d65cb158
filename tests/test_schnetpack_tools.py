"""SchNetPack's own tools with spk-meta models: spkdeploy (TorchScript for LAMMPS),
spkpredict, SpkCalculator and spkmd (issue #14 items 16a, 16b)."""

import copy
import runpy

import ase.io
import numpy as np
import pytest
import schnetpack as spk
import torch
from schnetpack import transform as T
from schnetpack.interfaces import AtomsConverter

from conftest import VENV_BIN, run_cli
from spk_meta.atomistic import ElementwiseAtomwise
from spk_meta.model.compat import model_cutoff
from spk_meta.representation import ANI

CUTOFF = 5.2


@pytest.fixture(scope="module")
def frames(ethanol):
    return ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, ":3")


def ani_model(seed=0):
    """An ANI model laid out as spktrain saves it (CastTo64, AddOffsets with E0 and mean)."""
    torch.manual_seed(seed)
    rep = ANI()
    atomrefs = torch.zeros(100, dtype=torch.float64)
    atomrefs[[1, 6, 8]] = torch.tensor([-13.6, -1029.8, -2041.5], dtype=torch.float64)
    return spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[ElementwiseAtomwise(n_in=rep.n_atom_basis), spk.atomistic.Forces()],
        postprocessors=[
            T.CastTo64(),
            T.AddOffsets("energy", add_mean=True, add_atomrefs=True, atomrefs=atomrefs,
                         property_mean=torch.tensor(0.01, dtype=torch.float64)),
        ],
    ).eval()


def as_saved_before_the_fix(model):
    """The representation as models pickled before ``cutoff`` became a buffer hold it."""
    rep = model.representation
    value = rep.radial_cutoff
    del rep._buffers["cutoff"], rep.__dict__["radial_cutoff"]
    rep.__dict__["cutoff"] = value
    return model


def spkdeploy(model, path):
    """SchNetPack's ``spkdeploy`` script (its ``save_jit_model``, run in-process)."""
    script = runpy.run_path(str(VENV_BIN / "spkdeploy"))  # not as __main__: defines only
    script["save_jit_model"](copy.deepcopy(model), str(path))


def predict(model, frames):
    conv = AtomsConverter(neighbor_list=T.MatScipyNeighborList(CUTOFF), dtype=torch.float32)
    out = model(conv(frames))
    return out["energy"].detach().double(), out["forces"].detach().double()


def check_deployed(model, path, frames):
    extra = {"cutoff": ""}
    deployed = torch.jit.load(str(path), _extra_files=extra)
    assert float(extra["cutoff"]) == pytest.approx(CUTOFF, abs=1e-6)  # what LAMMPS reads
    e, f = predict(model, frames)
    e_dep, f_dep = predict(deployed, frames)
    assert torch.allclose(e_dep, e, rtol=0, atol=1e-4)  # |E| ~ 4e3 eV
    assert torch.allclose(f_dep, f, rtol=0, atol=1e-5)
    assert f.abs().max() > 1e-2  # non-trivial forces (untrained weights: ~0.05 eV/Ang)


def test_spkdeploy_ani_model_loads_and_matches(tmp_path, frames):
    """Before: AttributeError: 'float' object has no attribute 'item' (ANI's cutoff was a
    float, SchNetPack's representations keep a tensor buffer)."""
    model = ani_model()
    torch.save(model, tmp_path / "best_model")
    model = torch.load(tmp_path / "best_model", weights_only=False)
    spkdeploy(model, tmp_path / "deployed.pt")
    check_deployed(model, tmp_path / "deployed.pt", frames)


def test_ani_model_pickled_before_the_buffer_still_loads_and_deploys(tmp_path, frames):
    torch.save(as_saved_before_the_fix(ani_model(seed=1)), tmp_path / "old_model")
    model = torch.load(tmp_path / "old_model", weights_only=False)
    rep = model.representation
    assert isinstance(rep.cutoff, torch.Tensor) and rep.radial_cutoff == CUTOFF
    assert "cutoff" not in rep.state_dict()  # state dicts unchanged by the buffer
    spkdeploy(model, tmp_path / "deployed.pt")
    check_deployed(model, tmp_path / "deployed.pt", frames)


def test_cutoff_buffer_follows_the_model_dtype_and_is_read_as_the_cutoff():
    model = ani_model().float()
    assert model.representation.cutoff.dtype == torch.float32
    assert model_cutoff(model) == CUTOFF  # 5.19999981 in float32, read as 5.2
    assert model_cutoff(ani_model().double()) == CUTOFF
