"""Evaluation tools: metrics on analytic curves, scan geometry, batched predictions vs the
ASE calculator, ensembles, MD stability and `spkmeta evaluate`."""

import json

import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from schnetpack.atomistic import Forces, PairwiseDistances
from schnetpack.model import NeuralNetworkPotential
from schnetpack.transform import AddOffsets, CastTo64

from conftest import run_cli
from spk_meta.atomistic import ElementwiseAtomwise
from spk_meta.evaluate import (
    EnsembleCalculator,
    bond_scan,
    calculator,
    dissociation_report,
    error_metrics,
    evaluate,
    gradient_error,
    md_stability,
    roughness,
    spurious_barriers,
    torsion_scan,
)
from spk_meta.representation import ANI


@pytest.fixture(scope="module")
def ethanol_atoms(ethanol):
    return ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, 0)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An (untrained) ANI NNP saved like SchNetPack's best_model, offset to ~ -4204 eV."""
    torch.manual_seed(0)
    rep = ANI(preset="ani1x")
    offsets = AddOffsets("energy", add_mean=True, property_mean=torch.tensor(-4204.0 / 9))
    model = NeuralNetworkPotential(
        representation=rep, input_modules=[PairwiseDistances()],
        output_modules=[ElementwiseAtomwise(n_in=rep.n_atom_basis, preset="ani1x"), Forces()],
        postprocessors=[CastTo64(), offsets],
    )
    path = tmp_path_factory.mktemp("model") / "best_model"
    torch.save(model, path)
    return path


# -- metrics on analytic data ----------------------------------------------------------------


def test_error_metrics_of_known_residuals():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    assert error_metrics(ref + [1, -1, 1, -1], ref) == {"rmse": 1.0, "mae": 1.0}
    m = error_metrics([3.0, 4.0], [0.0, 0.0])
    assert m["rmse"] == pytest.approx(np.sqrt(12.5)) and m["mae"] == 3.5
    with pytest.raises(ValueError, match="shape"):
        error_metrics([1.0], [1.0, 2.0])


def test_roughness_orders_smooth_below_noisy():
    x = np.linspace(0, 2 * np.pi, 73)
    smooth = 0.1 * np.cos(3 * x)
    noisy = smooth + np.random.default_rng(0).normal(0, 0.01, x.size)
    assert roughness(2 * x + 1) == pytest.approx(0.0, abs=1e-12)  # a line has no curvature
    # noise of 0.01 eV gives second differences of ~0.01*sqrt(6); the cosine ~0.005
    assert roughness(noisy) > 3 * roughness(smooth)


def test_gradient_error():
    x = np.linspace(0, np.pi, 50)
    assert gradient_error(x, np.sin(x), x, np.sin(x) + 5.0) == pytest.approx(0.0, abs=1e-12)
    assert gradient_error(x, np.sin(x), x[::5], np.cos(x[::5])) > 0.5


def morse(r, d=4.0, a=2.0, r0=1.0):
    return d * (1 - np.exp(-a * (r - r0))) ** 2 - d


def test_spurious_barriers_on_morse_curves():
    r = np.linspace(0.7, 4.0, 60)
    assert spurious_barriers(r, morse(r)) == 0
    bumpy = morse(r) + 0.3 * np.exp(-((r - 2.0) / 0.1) ** 2)
    assert spurious_barriers(r, bumpy) == 1
    assert spurious_barriers(r, bumpy, tolerance=1.0) == 0


# -- scan geometry ---------------------------------------------------------------------------


def _bonds(atoms, pairs):
    return np.array([atoms.get_distance(i, j) for i, j in pairs])


BONDS = [(0, 1), (1, 2), (2, 3), (1, 4), (1, 5), (0, 6), (0, 7), (0, 8)]  # C0-C1-O2-H3 ethanol


@pytest.mark.parametrize("dihedral", [(0, 1, 2, 3), (6, 0, 1, 2)])
def test_torsion_scan_changes_only_the_dihedral(ethanol_atoms, dihedral):
    angles = np.arange(0, 360, 30.0)
    scan = torsion_scan(ethanol_atoms, dihedral, angles)
    i, j, k, l = dihedral
    for angle, frame in zip(angles, scan.frames):
        assert frame.get_dihedral(i, j, k, l) == pytest.approx(angle % 360, abs=1e-6) or \
            abs(frame.get_dihedral(i, j, k, l) - angle) % 360 < 1e-6
        np.testing.assert_allclose(_bonds(frame, BONDS), _bonds(ethanol_atoms, BONDS), atol=1e-10)
        assert frame.get_angle(i, j, k) == pytest.approx(ethanol_atoms.get_angle(i, j, k), abs=1e-8)
        assert frame.get_angle(j, k, l) == pytest.approx(ethanol_atoms.get_angle(j, k, l), abs=1e-8)
    # the other side did not move
    still = [0, 6, 7, 8] if dihedral == (0, 1, 2, 3) else [0, 6, 7, 8]
    for frame in scan.frames:
        np.testing.assert_allclose(frame.positions[still], ethanol_atoms.positions[still], atol=1e-10)


def test_bond_scan_moves_the_fragment_rigidly(ethanol_atoms):
    distances = np.linspace(1.2, 3.0, 7)
    scan = bond_scan(ethanol_atoms, (1, 2), distances)  # pull the OH group off
    for d, frame in zip(distances, scan.frames):
        assert frame.get_distance(1, 2) == pytest.approx(d, abs=1e-10)
        assert frame.get_distance(2, 3) == pytest.approx(ethanol_atoms.get_distance(2, 3), abs=1e-10)
        np.testing.assert_allclose(frame.positions[[0, 1, 4, 5, 6, 7, 8]], ethanol_atoms.positions[[0, 1, 4, 5, 6, 7, 8]])
    with pytest.raises(ValueError, match="not bonded"):
        bond_scan(ethanol_atoms, (0, 3), distances)


def test_scans_with_a_model(model_file, ethanol_atoms):
    calc = calculator(model_file)
    scan = torsion_scan(ethanol_atoms, (0, 1, 2, 3), np.arange(0, 360, 20.0), calc)
    assert scan.energies.shape == (18,) and np.isfinite(scan.energies).all()
    assert scan.roughness >= 0
    report = dissociation_report(bond_scan(ethanol_atoms, (1, 2), np.linspace(1.2, 4.0, 15), calc))
    assert set(report) == {"roughness", "spurious_barriers", "well_depth", "minimum_at"}


# -- predictions -----------------------------------------------------------------------------


def test_batched_evaluation_equals_the_ase_calculator(model_file, ethanol, tmp_path):
    from spk_meta.convert import convert

    extxyz = ethanol["target_mp2_631gs_test_600K"].extxyz
    frames = ase.io.read(extxyz, ":")
    calc = calculator(model_file)
    de, df = [], []
    for ref in frames:
        a = ref.copy()
        a.calc = calc
        de.append(a.get_potential_energy() - ref.get_potential_energy())
        df.append(a.get_forces() - ref.get_forces())
    rmse_e = np.sqrt(np.mean(np.square(de)))
    rmse_f = np.sqrt(np.mean(np.square(np.concatenate(df))))
    convert("ase", extxyz, tmp_path / "db", progress=False)
    results = evaluate(model_file, [extxyz, tmp_path / "db" / "mp2_6-31gs.db"], batch_size=7)
    for row in results.values():
        assert row["n_frames"] == 30
        assert row["energy_rmse"] == pytest.approx(rmse_e, rel=1e-5)
        assert row["forces_rmse"] == pytest.approx(rmse_f, rel=1e-4)
        assert row["energy_mae"] <= row["energy_rmse"]


def test_cli_evaluate(model_file, ethanol, tmp_path):
    files = [str(ethanol[f"target_mp2_631gs_test_{t}K"].extxyz) for t in (300, 900)]
    out = tmp_path / "errors.json"
    result = run_cli(["spkmeta", "evaluate", str(model_file), *files, "--json", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "F RMSE" in result.stdout and "units: energies eV, forces eV/Ang" in result.stdout
    saved = json.loads(out.read_text())
    assert set(saved) == set(files) and all(r["n_frames"] == 30 for r in saved.values())
    missing = run_cli(["spkmeta", "evaluate", str(tmp_path / "nope"), *files], cwd=tmp_path)
    assert missing.returncode == 2 and "nope: no such model file" in missing.stderr


def test_ensemble_mean_and_spread(ethanol_atoms):
    calcs = [LennardJones(sigma=1.0, epsilon=e, rc=6.0) for e in (0.01, 0.03)]
    single = []
    for c in calcs:
        a = ethanol_atoms.copy()
        a.calc = c
        single.append((a.get_potential_energy(), a.get_forces()))
    a = ethanol_atoms.copy()
    a.calc = EnsembleCalculator(calcs)
    assert a.get_potential_energy() == pytest.approx((single[0][0] + single[1][0]) / 2)
    np.testing.assert_allclose(a.get_forces(), (single[0][1] + single[1][1]) / 2)
    assert a.calc.results["energy_std"] == pytest.approx(abs(single[0][0] - single[1][0]) / 2)


def test_md_stability_flags_a_molecule_that_flies_apart(ethanol_atoms):
    ok = md_stability(ethanol_atoms, EMT(), steps=100)
    assert ok["stable"] and ok["steps"] == 100 and ok["max_distance_from_centre"] < 4
    bad = md_stability(ethanol_atoms, LennardJones(sigma=3.0, epsilon=1.0, rc=10.0), steps=100)
    assert not bad["stable"] and bad["max_distance_from_centre"] > 10
