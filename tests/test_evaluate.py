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
        # on the circle: 359.99999999999994 and 0.0 are the same dihedral
        assert abs((frame.get_dihedral(i, j, k, l) - angle + 180) % 360 - 180) < 1e-6
        np.testing.assert_allclose(_bonds(frame, BONDS), _bonds(ethanol_atoms, BONDS), atol=1e-10)
        assert frame.get_angle(i, j, k) == pytest.approx(ethanol_atoms.get_angle(i, j, k), abs=1e-8)
        assert frame.get_angle(j, k, l) == pytest.approx(ethanol_atoms.get_angle(j, k, l), abs=1e-8)
    # the l side of the j-k bond turned (O-H about C-O: H3; C-O-H about C-C: 1 2 3 4 5),
    # the other side did not move
    moving = [3] if dihedral == (0, 1, 2, 3) else [2, 3, 4, 5]
    still = sorted(set(range(9)) - set(moving) - {k})
    start = ethanol_atoms.get_dihedral(i, j, k, l)
    for angle, frame in zip(angles, scan.frames):
        np.testing.assert_allclose(frame.positions[still], ethanol_atoms.positions[still], atol=1e-10)
        if abs((angle - start + 180) % 360 - 180) > 1.0:
            assert np.abs(frame.positions[moving] - ethanol_atoms.positions[moving]).max() > 1e-3


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
    for n in (0, 7):  # each energy is the model's on that frame
        frame = scan.frames[n].copy()
        frame.calc = calculator(model_file)
        assert scan.energies[n] == pytest.approx(frame.get_potential_energy(), abs=1e-6)
    # turning the O-H changes the energy, so the curve has curvature: the metric sees it
    assert np.ptp(scan.energies) > 1e-4
    assert scan.roughness == pytest.approx(roughness(scan.energies)) and scan.roughness > 0
    distances = np.linspace(1.2, 4.0, 15)
    bond = bond_scan(ethanol_atoms, (1, 2), distances, calc)
    report = dissociation_report(bond)
    assert report["minimum_at"] == distances[np.argmin(bond.energies)]
    assert report["well_depth"] == pytest.approx(bond.energies[-1] - bond.energies.min())
    assert report["roughness"] == pytest.approx(roughness(bond.energies))


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


def test_ensemble_of_model_files_loads_them_like_evaluate(model_file, ethanol_atoms, tmp_path):
    from spk_meta.model.loading import UntrustedModelFile

    a = ethanol_atoms.copy()
    a.calc = EnsembleCalculator.from_models([model_file, model_file])
    single = ethanol_atoms.copy()
    single.calc = calculator(model_file)
    assert a.get_potential_energy() == pytest.approx(single.get_potential_energy(), abs=1e-6)
    assert a.calc.results["energy_std"] == pytest.approx(0.0, abs=1e-6)
    marker = tmp_path / "marker"
    crafted = tmp_path / "member"
    torch.save(_RunsCode(marker), crafted)
    with pytest.raises(UntrustedModelFile):
        EnsembleCalculator.from_models([model_file, crafted])
    assert not marker.exists()


def test_md_stability_flags_a_molecule_that_flies_apart(ethanol_atoms):
    ok = md_stability(ethanol_atoms, EMT(), steps=100)
    assert ok["stable"] and ok["steps"] == 100 and ok["max_distance_from_centre"] < 4
    bad = md_stability(ethanol_atoms, LennardJones(sigma=3.0, epsilon=1.0, rc=10.0), steps=100)
    assert not bad["stable"] and bad["max_distance_from_centre"] > 10


# -- model files: what loads, what is refused ------------------------------------------------


class _RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_model_file_that_runs_code_is_refused_unless_trusted(ethanol, tmp_path):
    from spk_meta.model import load_pretrained
    from spk_meta.model.loading import UntrustedModelFile

    marker = tmp_path / "marker"
    crafted = tmp_path / "best_model"
    torch.save(_RunsCode(marker), crafted)
    files = [str(ethanol["target_mp2_631gs_test_300K"].extxyz)]
    result = run_cli(["spkmeta", "evaluate", str(crafted), *files], cwd=tmp_path)
    assert result.returncode == 2
    assert f"{crafted}: refusing to unpickle posix.system" in result.stderr and "--trust" in result.stderr
    with pytest.raises(UntrustedModelFile, match="posix.system"):
        load_pretrained(crafted)  # what pretrained=... runs
    with pytest.raises(UntrustedModelFile):
        evaluate(crafted, files)
    assert not marker.exists()
    # the file really runs code when unpickled: trust is what lets it
    with pytest.raises(ValueError, match="holds no SchNetPack model"):
        evaluate(crafted, files, trust=True)
    assert marker.exists()


def test_saved_models_load_weights_only_and_predict_as_fully_unpickled(model_file, ethanol, tmp_path):
    """A best_model and a Lightning checkpoint of a task load without trust, unchanged."""
    from spk_meta.evaluate import load_model, predict
    from spk_meta.model import load_pretrained

    frames = ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, ":4")
    full = torch.load(model_file, weights_only=False).eval()
    e_ref, f_ref = predict(full, frames)
    e, f = predict(load_model(model_file), frames)
    np.testing.assert_array_equal(e, e_ref)
    np.testing.assert_array_equal(np.concatenate(f), np.concatenate(f_ref))
    # a task checkpoint as SchNetPack writes it: the model in the hyperparameters
    state = {f"model.{k}": v for k, v in full.state_dict().items()}
    ckpt = tmp_path / "epoch=00.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"model": full, "optimizer_cls": torch.optim.AdamW}}, ckpt)
    e, _ = predict(load_pretrained(ckpt).eval(), frames)
    np.testing.assert_array_equal(e, e_ref)


def test_truncated_or_foreign_model_files_are_named(model_file, ethanol, tmp_path):
    from spk_meta.model import load_pretrained
    from spk_meta.model.loading import NotAModelFile

    truncated = tmp_path / "best_model"
    truncated.write_bytes(model_file.read_bytes()[:4000])
    text = tmp_path / "model.txt"
    text.write_text("energy 1 2 3\n")
    for path in (truncated, text):
        with pytest.raises(NotAModelFile, match=rf"not a SchNetPack model file \(truncated or another format\): {path}"):
            load_pretrained(path)
    files = [str(ethanol["target_mp2_631gs_test_300K"].extxyz)]
    result = run_cli(["spkmeta", "evaluate", str(truncated), *files], cwd=tmp_path)
    assert result.returncode == 2
    assert f"not a SchNetPack model file (truncated or another format): {truncated}" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_names_a_file_that_fails_and_keeps_the_others(model_file, ethanol, tmp_path):
    good = str(ethanol["target_mp2_631gs_test_300K"].extxyz)
    frames = ase.io.read(good, ":3")
    for a in frames:
        a.numbers[2] = 16  # sulfur: ANI-1x has no network for it
    bad = tmp_path / "bad.extxyz"
    ase.io.write(bad, frames)
    out = tmp_path / "errors.json"
    result = run_cli(["spkmeta", "evaluate", str(model_file), good, str(bad), "--json", str(out)], cwd=tmp_path)
    assert result.returncode == 1
    assert f"{bad}: ANI representation does not support element(s) S" in result.stderr
    assert "1 of 2 files failed" in result.stderr
    saved = json.loads(out.read_text())
    assert saved[good]["n_frames"] == 30 and saved[good]["forces_rmse"] > 0
    assert saved[str(bad)] == {"error": f"{bad}: ANI representation does not support element(s) S (Z=16); "
                                         "supported elements: H, C, N, O"}
    assert good[-50:] in result.stdout
    with pytest.raises(ValueError, match=f"{bad}: ANI representation"):  # the Python API raises
        evaluate(model_file, [good, bad])


def _multilevel_model(atomref=0.0):
    """Saved like a Reptile/joint pre-training on several levels with no active one: the
    AddOffsets adds back neither an E0 nor a mean (reference-subtracted energies)."""
    torch.manual_seed(0)
    rep = ANI(preset="ani1x")
    offsets = AddOffsets("energy", add_mean=True, add_atomrefs=True,
                         atomrefs=torch.full((100,), atomref), property_mean=torch.tensor(0.0))
    return NeuralNetworkPotential(
        representation=rep, input_modules=[PairwiseDistances()],
        output_modules=[ElementwiseAtomwise(n_in=rep.n_atom_basis, preset="ani1x"), Forces()],
        postprocessors=[CastTo64(), offsets],
    )


def test_energies_of_a_model_without_active_level_are_refused(model_file, ethanol, tmp_path):
    files = [str(ethanol["target_mp2_631gs_test_300K"].extxyz)]
    multi = _multilevel_model()
    with pytest.warns(UserWarning, match="several levels of theory with none active"):
        row = evaluate(multi, files)[files[0]]
    assert row["energy_rmse"] is None and row["energy_mae"] is None and "E0" in row["energy_note"]
    # forces do not depend on the energy reference: still reported, equal to a model with an E0
    with_e0 = _multilevel_model(atomref=-100.0)
    row_e0 = evaluate(with_e0, files)[files[0]]
    assert row["forces_rmse"] == pytest.approx(row_e0["forces_rmse"], rel=1e-6)
    assert row_e0["energy_rmse"] > 1000  # what used to be reported silently, in kind
    # the level our tasks record decides over the heuristic
    multi.energy_level = "mp2_6-31gs"
    assert evaluate(multi, files)[files[0]]["energy_rmse"] is not None
    single = torch.load(model_file, weights_only=False)
    single.energy_level = None
    with pytest.warns(UserWarning):
        assert evaluate(single, files)[files[0]]["energy_rmse"] is None
    # the command line: n/a, a warning saying why, exit 0 (forces are meaningful)
    saved = tmp_path / "multi_model"
    torch.save(_multilevel_model(), saved)
    result = run_cli(["spkmeta", "evaluate", str(saved), *files], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "WARNING: energy errors not reported (n/a)" in result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith(files[0][-50:]))
    assert line.split()[2:4] == ["n/a", "n/a"] and float(line.split()[4]) > 0


def test_tasks_record_the_energy_level(ethanol, tmp_path, monkeypatch):
    from schnetpack import transform as T

    from spk_meta.data import TaskDataModule
    from spk_meta.task import AtomisticTask

    monkeypatch.chdir(tmp_path)
    levels = {"wb97x_6-31gs": ethanol["pretrain_wb97x_631gs_300K"].db,
              "hf_def2-svp": ethanol["pretrain_hf_def2svp_900K"].db}
    dm = TaskDataModule(levels, batch_size=8, num_train=20, num_val=5, num_test=5, split_file=None,
                        references_file=None, transforms=[T.MatScipyNeighborList(5.2), T.CastTo32()])
    dm.setup("fit")
    task = AtomisticTask(_multilevel_model(), outputs=[], optimizer_args={"lr": 1e-3})
    task._record_energy_level(dm)
    assert task.model.energy_level is None
    dm.active_task = "hf_def2-svp"
    task._record_energy_level(dm)
    assert task.model.energy_level == "hf_def2-svp"
    task._record_energy_level(object())  # a data module without levels: nothing claimed
    assert "energy_level" not in vars(task.model)
