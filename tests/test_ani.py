"""ANI representation + element-wise output module vs torchani's own padded API (float64)."""

import ase.io
from ase.data import atomic_numbers
import numpy as np
import pytest
import schnetpack as spk
import torch
from ase import Atoms
from ase.build import molecule
from schnetpack import properties
from schnetpack.interfaces import AtomsConverter
from schnetpack.transform import ASENeighborList, MatScipyNeighborList
from torchani.aev import AEVComputer
from torchani.nn import ANINetworks

from spk_meta.atomistic import ElementwiseAtomwise, copy_element_weights
from spk_meta.representation import ANI

NL_CUTOFF = 5.5  # > 5.2 Å (ANI-1x radial cutoff): extra pairs must be ignored
TOL = 1e-6
DT = torch.float64


@pytest.fixture(scope="module")
def ethanols(ethanol):
    """The MP2 300 K test frames shipped in the installed package (not the source tree)."""
    return ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, ":")


def spk_inputs(atoms_list, neighbor_list=ASENeighborList, strain=False):
    """SchNetPack batch (float64) with ``_Rij`` from ``PairwiseDistances``."""
    conv = AtomsConverter(neighbor_list=neighbor_list(cutoff=NL_CUTOFF), dtype=DT)
    inputs = conv(list(atoms_list))
    if strain:
        inputs = spk.atomistic.Strain()(inputs)
    return spk.atomistic.PairwiseDistances()(inputs)


def padded(atoms_list, elements):
    """torchani padded species indices (-1 = padding) and coordinates."""
    index = {z: i for i, z in enumerate(elements)}
    n = max(len(a) for a in atoms_list)
    species = torch.full((len(atoms_list), n), -1, dtype=torch.long)
    coords = torch.zeros(len(atoms_list), n, 3, dtype=DT)
    for m, a in enumerate(atoms_list):
        species[m, : len(a)] = torch.tensor([index[z] for z in a.numbers])
        coords[m, : len(a)] = torch.from_numpy(a.positions)
    return species, coords


def torchani_pbc_args(atoms):
    if not atoms.pbc.any():
        return None, None
    return torch.from_numpy(atoms.cell.array).to(DT), torch.from_numpy(atoms.pbc)


def compare_aevs(atoms_list, preset="ani1x", neighbor_list=ASENeighborList):
    """Max |AEV_ours - AEV_torchani| (torchani padded API; one structure at a time if periodic)."""
    rep = ANI(preset=preset).to(DT)
    ref = getattr(AEVComputer, "like_1x" if preset == "ani1x" else "like_2x")(
        num_species=len(rep.elements)
    ).to(DT)
    ours = rep(spk_inputs(atoms_list, neighbor_list))["scalar_representation"]
    elements = [atomic_numbers[s] for s in rep.elements]
    if any(a.pbc.any() for a in atoms_list):
        refs = []
        for a in atoms_list:
            species, coords = padded([a], elements)
            refs.append(ref(species, coords, *torchani_pbc_args(a))[0])
        expected = torch.cat(refs)
    else:
        species, coords = padded(atoms_list, elements)
        expected = ref(species, coords)[species >= 0]
    assert ours.shape == (sum(len(a) for a in atoms_list), rep.n_atom_basis)
    assert expected.abs().max() > 0 or all(len(a) == 1 for a in atoms_list)
    return (ours - expected).abs().max().item()


def small_cell():
    """Triclinic cell with ~3.3 Å vectors: every atom sees its own periodic images."""
    cell = np.array([[3.3, 0.0, 0.0], [0.6, 3.1, 0.0], [0.4, -0.5, 3.4]])
    frac = np.array([[0.1, 0.2, 0.3], [0.55, 0.45, 0.6], [0.8, 0.9, 0.1]])
    return Atoms("COH", scaled_positions=frac, cell=cell, pbc=True)


def boxed_ethanol(ethanol):
    a = ethanol.copy()
    a.cell = np.diag([6.0, 6.5, 7.0])
    a.pbc = True
    a.positions += 3.0
    a.wrap()
    return a


# ----------------------------------------------------------------------------- AEVs


def test_aev_single_ethanol(ethanols):
    assert compare_aevs([ethanols[0]]) < TOL


def test_aev_mixed_batch(ethanols):
    batch = [ethanols[1], molecule("CH4"), molecule("H2O"), ethanols[2], Atoms("N")]
    assert compare_aevs(batch) < TOL


def test_aev_isolated_atom():
    rep = ANI().to(DT)
    aev = rep(spk_inputs([Atoms("O", positions=[[0.1, 0.2, 0.3]])]))["scalar_representation"]
    assert aev.shape == (1, 384) and torch.all(aev == 0)
    assert compare_aevs([Atoms("O")]) < TOL


def test_aev_ani2x_elements():
    mol = molecule("CH3SH") + Atoms("FCl", positions=[[2.5, 0.0, 0.0], [-2.5, 0.5, 0.0]])
    assert compare_aevs([mol, molecule("H2O")], preset="ani2x") < TOL


@pytest.mark.parametrize("neighbor_list", [ASENeighborList, MatScipyNeighborList])
def test_aev_periodic(ethanols, neighbor_list):
    assert compare_aevs([boxed_ethanol(ethanols[3])], neighbor_list=neighbor_list) < TOL


@pytest.mark.parametrize("neighbor_list", [ASENeighborList, MatScipyNeighborList])
def test_aev_periodic_self_images(neighbor_list):
    partial = small_cell()
    partial.pbc = [True, True, False]
    partial.cell[2] = [0.0, 0.0, 20.0]
    assert compare_aevs([small_cell()], neighbor_list=neighbor_list) < TOL
    assert compare_aevs([partial], neighbor_list=neighbor_list) < TOL


def test_custom_parameters_match_preset(ethanols):
    custom = dict(
        radial_start=0.9,
        radial_cutoff=5.2,
        radial_eta=16.0,
        radial_num_shifts=16,
        angular_start=0.9,
        angular_cutoff=3.5,
        angular_eta=8.0,
        angular_zeta=32.0,
        angular_num_shifts=4,
        angular_num_sections=8,
    )
    inputs = spk_inputs([ethanols[0]])
    a = ANI(elements=[1, 6, 7, 8], preset=None, **custom).to(DT)(dict(inputs))
    b = ANI(elements=["H", "C", "N", "O"]).to(DT)(dict(inputs))
    assert torch.equal(a["scalar_representation"], b["scalar_representation"])
    rep = ANI(elements=["H", "C", "O"], radial_cutoff=4.6)
    assert rep.cutoff == 4.6 and rep.n_atom_basis == 3 * 16 + 6 * 32
    assert ANI(preset="ani2x").cutoff == 5.1 and ANI(preset="ani2x").n_atom_basis == 1008
    with pytest.raises(ValueError, match="missing"):
        ANI(preset=None, elements=["H"], radial_cutoff=5.0)


# ------------------------------------------------------------------- energies/forces


def spk_model(preset="ani1x", stress=False, seed=0, postprocessors=None):
    """(SchNetPack NNP, torchani ANINetworks with identical weights)."""
    torch.manual_seed(seed)
    nets = (ANINetworks.like_1x() if preset == "ani1x" else ANINetworks.like_2x()).to(DT)
    rep = ANI(preset=preset)
    head = ElementwiseAtomwise(n_in=rep.n_atom_basis, preset=preset, per_atom_output_key="e_i")
    copy_element_weights(nets, head)
    inputs = [spk.atomistic.Strain()] if stress else []
    model = spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=inputs + [spk.atomistic.PairwiseDistances()],
        output_modules=[head, spk.atomistic.Forces(calc_stress=stress)],
        postprocessors=postprocessors,
        input_dtype_str="float64",
    ).to(DT)
    return model.eval(), nets


def predict(model, atoms_list, neighbor_list=ASENeighborList):
    conv = AtomsConverter(neighbor_list=neighbor_list(cutoff=NL_CUTOFF), dtype=DT)
    return model(conv(list(atoms_list)))


def torchani_energy_forces(nets, atoms_list, preset="ani1x"):
    """Energies (n_mol,) and forces (n_atoms, 3) from torchani's padded AEV + ANINetworks."""
    aev = (AEVComputer.like_1x() if preset == "ani1x" else AEVComputer.like_2x()).to(DT)
    elements = [atomic_numbers[s] for s in nets.atomics]
    energies, forces = [], []
    for a in atoms_list:
        species, coords = padded([a], elements)
        coords.requires_grad_()
        e = nets(species, aev(species, coords, *torchani_pbc_args(a)))
        (g,) = torch.autograd.grad(e.sum(), coords)
        energies.append(e.detach())
        forces.append(-g[0])
    return torch.cat(energies), torch.cat(forces)


def test_energies_forces_match_torchani(ethanols):
    batch = [ethanols[4], molecule("CH4"), molecule("H2O"), Atoms("C"), boxed_ethanol(ethanols[5])]
    model, nets = spk_model()
    out = predict(model, batch)
    e_ref, f_ref = torchani_energy_forces(nets, batch)
    assert out["energy"].shape == (len(batch),)
    assert (out["energy"] - e_ref).abs().max() < TOL
    assert (out[properties.forces] - f_ref).abs().max() < TOL
    sums = torch.zeros(len(batch), dtype=DT).index_add(
        0, torch.repeat_interleave(torch.tensor([len(a) for a in batch])), out["e_i"]
    )
    assert torch.allclose(sums, out["energy"])


def test_energies_ani2x_match_torchani():
    mol = molecule("CH3SH") + Atoms("FCl", positions=[[2.5, 0.0, 0.0], [-2.5, 0.5, 0.0]])
    model, nets = spk_model("ani2x")
    out = predict(model, [mol, molecule("NH3")])
    e_ref, f_ref = torchani_energy_forces(nets, [mol, molecule("NH3")], "ani2x")
    assert (out["energy"] - e_ref).abs().max() < TOL
    assert (out[properties.forces] - f_ref).abs().max() < TOL


@pytest.mark.parametrize("which", ["ethanol", "small_cell"])
def test_forces_finite_differences(ethanols, which):
    atoms = ethanols[6] if which == "ethanol" else small_cell()
    model, _ = spk_model(seed=1)
    forces = predict(model, [atoms])[properties.forces]
    h, fd = 1e-5, torch.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, k] += sign * h
                energies.append(predict(model, [moved])["energy"].detach())
            fd[i, k] = -(energies[0] - energies[1]).item() / (2 * h)
    assert (forces - fd).abs().max() < TOL


def test_stress_finite_differences():
    atoms = small_cell()
    model, _ = spk_model(stress=True, seed=2)
    stress = predict(model, [atoms])[properties.stress][0]
    h, fd = 1e-5, torch.zeros(3, 3, dtype=DT)
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                eps = np.eye(3)
                eps[a, b] += sign * h  # Strain: r -> r (1 + eps^T)
                deformed = atoms.copy()
                deformed.set_cell(atoms.cell.array @ eps.T, scale_atoms=False)
                deformed.positions = atoms.positions @ eps.T
                energies.append(predict(model, [deformed])["energy"].item())
            fd[a, b] = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
    assert (stress - fd).abs().max() < TOL


def test_invariances(ethanols):
    model, _ = spk_model(seed=3)
    atoms = ethanols[7]
    e0 = predict(model, [atoms])["energy"]
    rot = atoms.copy()
    rot.rotate(37.0, (0.3, -1.0, 0.5), center="COM")
    shifted = atoms.copy()
    shifted.positions += [4.0, -2.5, 11.0]
    perm = atoms[np.random.default_rng(0).permutation(len(atoms))]
    for other in (rot, shifted, perm):
        assert abs(predict(model, [other])["energy"] - e0).item() < 1e-10


def test_add_offsets_postprocessor(ethanols):
    atomrefs = torch.zeros(100, dtype=DT)
    atomrefs[[1, 6, 8]] = torch.tensor([-0.5, -37.8, -75.0], dtype=DT)
    offsets = spk.transform.AddOffsets("energy", add_atomrefs=True, atomrefs=atomrefs)
    model, _ = spk_model(postprocessors=[offsets])
    model.do_postprocessing = False
    raw = predict(model, [ethanols[0]])["energy"].detach()
    model.do_postprocessing = True
    shifted = predict(model, [ethanols[0]])["energy"].detach()
    assert torch.allclose(shifted - raw, atomrefs[torch.from_numpy(ethanols[0].numbers)].sum())


# --------------------------------------------------------------------- layout/errors


def test_layouts_and_weight_copy():
    head = ElementwiseAtomwise(preset="ani2x")
    copy_element_weights(ANINetworks.like_2x(), head)  # same sizes as torchani's 2x
    assert head.elements == ("H", "C", "N", "O", "S", "F", "Cl") and head.n_in == 1008
    h1x = ElementwiseAtomwise()
    dims = {s: [l.out_features for l in n.layers] for s, n in h1x.atomics.items()}
    assert dims == {
        "H": [160, 128, 96],
        "C": [144, 112, 96],
        "N": [128, 112, 96],
        "O": [128, 112, 96],
    }
    back = copy_element_weights(h1x, ANINetworks.like_1x())
    for (k, v), (k2, v2) in zip(h1x.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert set(h1x.to_torchani().state_dict()) == set(h1x.state_dict())
    custom = ElementwiseAtomwise(
        n_in=10, elements=["H", 8], preset=None, hidden={"H": [4], "O": [5, 3]}
    )
    assert [l.out_features for l in custom.atomics["O"].layers] == [5, 3]
    with pytest.raises(ValueError, match="Si"):
        ElementwiseAtomwise(n_in=10, elements=["Si"], preset=None)


def test_unsupported_element_errors():
    silane = molecule("SiH4")
    inputs = spk_inputs([silane])
    with pytest.raises(ValueError, match=r"Si \(Z=14\).*supported elements: H, C, N, O"):
        ANI().to(DT)(inputs)
    inputs["scalar_representation"] = torch.zeros(len(silane), 384, dtype=DT)
    with pytest.raises(ValueError, match=r"Si \(Z=14\).*supported elements: H, C, N, O"):
        ElementwiseAtomwise().to(DT)(inputs)
    with pytest.raises(ValueError, match="Unknown chemical symbol"):
        ANI(elements=["H", "Xx"])


def test_torchscript_matches_eager(ethanols):
    model, _ = spk_model(stress=True, seed=4)
    batch = [small_cell(), boxed_ethanol(ethanols[8])]
    eager = predict(model, batch)
    scripted = predict(torch.jit.script(model), batch)
    for key in ("energy", properties.forces, properties.stress):
        assert (scripted[key] - eager[key]).abs().max() < 1e-12
    with pytest.raises(Exception, match=r"Si \(Z=14\)"):
        predict(torch.jit.script(model), [molecule("SiH4")])
