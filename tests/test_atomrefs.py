"""Per-element reference energies (E0): exact on synthetic data, sane on rank-deficient data."""

import ase.io
import numpy as np
import pytest

from spk_meta.data import fit_atomic_energies


def test_recovers_known_atomic_energies_from_several_compositions():
    rng = np.random.default_rng(0)
    true = {1: -13.6, 6: -1029.8, 7: -1484.2, 8: -2041.3}
    numbers = [rng.choice(list(true), size=rng.integers(3, 20)) for _ in range(60)]
    energies = [sum(true[z] for z in zs) for zs in numbers]
    fit = fit_atomic_energies(numbers, energies)
    assert fit.elements == (1, 6, 7, 8) and not fit.rank_deficient
    for z, v in fit.as_dict().items():
        assert v == pytest.approx(true[z], abs=1e-6)
    assert fit.residual_rms < 1e-6
    assert fit.to_atomref()[8] == pytest.approx(true[8], abs=1e-6)


def test_single_composition_gives_minimum_norm_solution_on_real_data(ethanol):
    frames = ase.io.read(ethanol["pretrain_wb97x_631gs_300K"].extxyz, ":")
    numbers = [a.numbers for a in frames]
    energies = np.array([a.get_potential_energy() for a in frames])
    fit = fit_atomic_energies(numbers, energies)
    assert fit.rank == 1 and fit.rank_deficient
    # the references reproduce the mean energy of the molecule exactly ...
    assert fit.energy(frames[0].numbers) == pytest.approx(energies.mean(), abs=1e-8)
    # ... so what is left is the spread of the data about its mean (~0.1-1 eV, not ~4000 eV)
    residual = energies - np.array([fit.energy(z) for z in numbers])
    assert np.sqrt(np.mean(residual**2)) == pytest.approx(energies.std(), rel=1e-6)
    assert abs(residual.mean()) < 1e-8
    # minimum norm: E0 is proportional to the element counts (C2 H6 O1)
    e0 = fit.as_dict()
    assert e0[1] / e0[8] == pytest.approx(6.0) and e0[6] / e0[8] == pytest.approx(2.0)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="2 structures but 1 energies"):
        fit_atomic_energies([[1, 1], [1]], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        fit_atomic_energies([[1, 1]], [np.nan])
    fit = fit_atomic_energies([[1, 1], [1, 8]], [-1.0, -2.0])
    with pytest.raises(KeyError, match="no atomic energy for C"):
        fit.energy([6, 1])
