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
from spk_meta.model.preflight import model_cutoff
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
    from spk_meta.evaluate import load_model

    torch.save(as_saved_before_the_fix(ani_model(seed=1)), tmp_path / "old_model")
    for model in (torch.load(tmp_path / "old_model", weights_only=False), load_model(tmp_path / "old_model")):
        rep = model.representation  # also through spk-meta's weights-only loader
        assert isinstance(rep.cutoff, torch.Tensor) and rep.radial_cutoff == CUTOFF
    assert "cutoff" not in rep.state_dict()  # state dicts unchanged by the buffer
    spkdeploy(model, tmp_path / "deployed.pt")
    check_deployed(model, tmp_path / "deployed.pt", frames)


def test_cutoff_buffer_follows_the_model_dtype_and_is_read_as_the_cutoff():
    model = ani_model().float()
    assert model.representation.cutoff.dtype == torch.float32
    assert model_cutoff(model) == CUTOFF  # 5.19999981 in float32, read as 5.2
    assert model_cutoff(ani_model().double()) == CUTOFF


# ---------------------------------------------------------------- spkmeta predict, spkpredict


def calculator_results(model, frames):
    """SchNetPack's ASE calculator, frame by frame: energies (n,) and forces list. In
    float64: in its default float32 the E0 sum of ~4e3 eV alone is off by ~1e-3 eV."""
    calc = spk.interfaces.SpkCalculator(
        model, neighbor_list=T.MatScipyNeighborList(CUTOFF), energy_unit="eV", position_unit="Ang",
        dtype=torch.float64,
    )
    energies, forces = [], []
    for ref in frames:
        atoms = ref.copy()
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return np.array(energies), forces


@pytest.fixture
def saved_model(tmp_path):
    torch.save(ani_model(seed=2), tmp_path / "best_model")
    return tmp_path / "best_model"


def read_predictions(out):
    """Energies (n,), forces list, and the (source, index) of each frame of an output."""
    if out.suffix == ".npz":
        data = np.load(out)
        forces = np.split(data["forces"], np.cumsum(data["n_atoms"])[:-1])
        return data["energy"], forces, list(zip(data["source"], data["source_index"])), data["positions"]
    written = ase.io.read(out, ":")
    return (np.array([a.get_potential_energy() for a in written]), [a.get_forces() for a in written],
            [(a.info["source"], a.info["source_index"]) for a in written],
            np.concatenate([a.positions for a in written]))


def test_spkmeta_predict_matches_spkcalculator(saved_model, tmp_path, frames, ethanol):
    from spk_meta.cli.main import main
    from spk_meta.data import write_database
    from spk_meta.evaluate import read_labelled

    ase.io.write(tmp_path / "three.extxyz", frames)
    mp2 = ase.io.read(ethanol["target_mp2_631gs_train_300K"].extxyz, ":4")
    tiny_db = write_database(mp2, tmp_path / "four.db", "MP2/6-31g*")
    inputs = frames + read_labelled(tiny_db)
    results = {}
    for suffix in (".extxyz", ".npz"):
        out = tmp_path / f"pred{suffix}"
        assert main(["predict", str(saved_model), str(tmp_path / "three.extxyz"), str(tiny_db),
                     "--out", str(out), "--batch-size", "5"]) == 0
        results[suffix] = read_predictions(out)
    (e, f, where, pos), (e2, f2, where2, pos2) = results[".extxyz"], results[".npz"]
    assert len(e) == len(inputs) == 7
    assert where == where2 and where[2:5] == [(str(tmp_path / "three.extxyz"), 2), (str(tiny_db), 0), (str(tiny_db), 1)]
    assert np.allclose(pos, np.concatenate([a.positions for a in inputs])) and np.allclose(pos, pos2)
    assert np.allclose(e, e2, rtol=0, atol=1e-8) and all(np.allclose(a, b, atol=1e-8) for a, b in zip(f, f2))
    e_ref, f_ref = calculator_results(torch.load(saved_model, weights_only=False), inputs)
    assert np.allclose(e, e_ref, rtol=0, atol=1e-4)
    assert all(np.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(f, f_ref))
    assert not np.allclose(e, [a.get_potential_energy() for a in inputs], atol=1e-2)  # not the labels


def test_spkmeta_predict_names_a_failing_file_and_writes_nothing(saved_model, tmp_path, frames, capsys):
    from ase.build import molecule

    from spk_meta.cli.main import main

    ase.io.write(tmp_path / "good.extxyz", frames)
    ase.io.write(tmp_path / "silane.extxyz", [molecule("SiH4")])
    out = tmp_path / "pred.extxyz"
    args = ["predict", str(saved_model), str(tmp_path / "good.extxyz"), str(tmp_path / "silane.extxyz")]
    assert main([*args, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "silane.extxyz" in err and "Si (Z=14)" in err and "nothing written" in err
    assert not out.exists() and list(tmp_path.glob("*.tmp*")) == []
    assert main([*args[:3], "--out", str(tmp_path / "pred.csv")]) == 2
    assert "unknown format" in capsys.readouterr().err


@pytest.mark.slow
def test_spkpredict_with_grad_and_batch_writer_matches_spkcalculator(saved_model, tmp_path, tiny_db):
    """SchNetPack's own spkpredict works for force models with ``enable_grad=true
    write_interval=batch``; its default epoch writer fails under Lightning 2.x."""
    from spk_meta.evaluate import read_labelled

    result = run_cli(
        ["spkpredict", f"modeldir={saved_model.parent}", f"datapath={tiny_db}", f"outputdir={tmp_path / 'out'}",
         f"cutoff={CUTOFF}", "enable_grad=true", "write_interval=batch", "batch_size=40"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pred = torch.load(tmp_path / "out" / "0" / "0.pt")
    e_ref, f_ref = calculator_results(torch.load(saved_model, weights_only=False), read_labelled(tiny_db))
    assert np.allclose(pred["energy"].numpy(), e_ref, rtol=0, atol=1e-4)
    assert np.allclose(pred["forces"].numpy(), np.concatenate(f_ref), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------ MD


def test_schnetpack_md_runs_an_ani_model(saved_model, frames):
    """What ``spkmd`` runs: SchNetPack's MD engine with its SchNetPackCalculator on our
    model file, 5 velocity-Verlet steps. (``script_model=True`` fails for every model
    spktrain saves, PaiNN too: SchNetPack's own ``CastTo64`` is not scriptable.)"""
    from schnetpack.md import Simulator, System, UniformInit
    from schnetpack.md.calculators import SchNetPackCalculator
    from schnetpack.md.integrators import VelocityVerlet
    from schnetpack.md.neighborlist_md import NeighborListMD

    system = System()
    system.load_molecules(frames[0], n_replicas=1, position_unit_input="Angstrom")
    UniformInit(300, remove_center_of_mass=True).initialize_system(system)
    calc = SchNetPackCalculator(
        str(saved_model), "forces", "eV", "Angstrom",
        NeighborListMD(cutoff=CUTOFF, cutoff_shell=1.0, base_nbl=T.ASENeighborList),
        energy_key="energy",
    )
    start = system.positions.clone()
    Simulator(system, VelocityVerlet(time_step=0.5), calc).simulate(5)
    moved = (system.positions - start).abs().max().item()  # internal units (nm)
    assert 0 < moved < 0.01 and torch.isfinite(system.forces).all()
    # the forces the engine used are the model's (its internal units: kJ/mol/nm)
    e, f = predict(ani_model(seed=2).double(), [system.get_ase_atoms()[0]])
    assert np.allclose(system.forces[0].numpy() * 0.01036427 / 10, f.numpy(), rtol=0, atol=1e-5)


#: A whole ``spkmd`` config in one file. SchNetPack 2.2.0's wheel ships ``spkmd`` without
#: its ``md_configs`` ("Cannot find primary config 'config'"), so users pass their own
#: with ``--config-dir``; this is the repository's default, flattened, with 5 steps.
SPKMD_CONFIG = """\
# @package _global_
device: cpu
precision: 64
seed: 0
simulation_dir: ???
overwrite: false
restart: null
load_config: null
calculator:
  _target_: schnetpack.md.calculators.SchNetPackCalculator
  required_properties: [energy, forces]
  model_file: ???
  force_key: forces
  energy_unit: eV
  position_unit: Angstrom
  energy_key: energy
  stress_key: null
  script_model: false
  neighbor_list:
    _target_: schnetpack.md.neighborlist_md.NeighborListMD
    cutoff: 5.2
    cutoff_shell: 1.0
    requires_triples: false
    base_nbl: schnetpack.transform.ASENeighborList
    collate_fn: schnetpack.data.loader._atoms_collate_fn
system:
  molecule_file: ???
  load_system_state: null
  n_replicas: 1
  position_unit_input: Angstrom
  mass_unit_input: 1.0
  initializer:
    _target_: schnetpack.md.UniformInit
    temperature: 300
    remove_center_of_mass: true
    remove_translation: true
    remove_rotation: true
    wrap_positions: false
dynamics:
  integrator:
    _target_: schnetpack.md.integrators.VelocityVerlet
    time_step: 0.5
  n_steps: 5
  thermostat: null
  barostat: null
  progress: false
  simulation_hooks: []
callbacks:
  hdf5:
    _target_: schnetpack.md.simulation_hooks.FileLogger
    filename: simulation.hdf5
    buffer_size: 10
    data_streams:
      - _target_: schnetpack.md.simulation_hooks.MoleculeStream
        store_velocities: true
      - _target_: schnetpack.md.simulation_hooks.PropertyStream
        target_properties: [energy]
    every_n_steps: 1
    precision: ${precision}
hydra:
  run:
    dir: ${simulation_dir}
  job:
    chdir: true
"""


@pytest.mark.slow
def test_spkmd_runs_5_steps_of_an_ani_model(saved_model, tmp_path, frames):
    from schnetpack.md.data import HDF5Loader

    (tmp_path / "md_configs").mkdir()
    (tmp_path / "md_configs" / "ani_md.yaml").write_text(SPKMD_CONFIG)
    ase.io.write(tmp_path / "start.xyz", frames[0])
    result = run_cli(
        ["spkmd", "--config-dir", str(tmp_path / "md_configs"), "--config-name", "ani_md",
         f"simulation_dir={tmp_path / 'sim'}", f"calculator.model_file={saved_model}",
         f"system.molecule_file={tmp_path / 'start.xyz'}"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = HDF5Loader(str(tmp_path / "sim" / "simulation.hdf5"))
    positions = data.get_positions()
    assert positions.shape == (5, 9, 3) and np.isfinite(data.get_property("energy", False)).all()
    assert 0 < np.abs(positions[-1] - positions[0]).max() < 0.1  # Ang: it moved, a little
