"""Committees (#15 item 1): the manifest and its checks, committee statistics against a hand
computation from each member called on its own (SchNetPack's AtomsConverter path), the
batched inputs against SchNetPack's neighbour lists, and `spkmeta ensemble` with a stand-in
spktrain (one slow test trains a real two-member ensemble and selects with it)."""

import json
import os

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from schnetpack.atomistic import Forces, PairwiseDistances
from schnetpack.model import NeuralNetworkPotential
from schnetpack.transform import AddOffsets, CastTo64

import spk_meta.active.train as train_module
from conftest import ani_potential, install_fake_spktrain, run_cli
from spk_meta.active import (
    MANIFEST,
    EnsembleError,
    ensemble_from_models,
    load_ensemble,
    read_manifest,
    train_ensemble,
)
from spk_meta.active.ensemble import shares_representation
from spk_meta.active.batch import atoms_batch, block_pairs, neighbor_pairs, vesin_pairs
from spk_meta.atomistic import ElementwiseAtomwise
from spk_meta.cli.main import build_parser, main
from spk_meta.evaluate import predict
from spk_meta.experiment.record import sha256
from spk_meta.model.loading import load_model
from spk_meta.representation import ANI

E_MEAN = -4204.0 / 9  # eV per atom: untrained models predict ethanol-like totals


def offset_ani(seed: int, **ani) -> NeuralNetworkPotential:
    """An untrained ANI-1x NNP (as `model=ani` builds it) adding a mean energy; ``ani``
    goes to the representation (``radial_cutoff``, ``elements``)."""
    if not ani:
        return ani_potential(seed=seed, postprocessors=[CastTo64(), AddOffsets("energy", add_mean=True,
                                                                              property_mean=torch.tensor(E_MEAN))])
    torch.manual_seed(seed)
    rep = ANI(preset="ani1x", **ani)
    return NeuralNetworkPotential(
        representation=rep, input_modules=[PairwiseDistances()],
        output_modules=[ElementwiseAtomwise(n_in=rep.n_atom_basis, preset="ani1x", elements=ani.get("elements")),
                        Forces()],
        postprocessors=[CastTo64(), AddOffsets("energy", add_mean=True, property_mean=torch.tensor(E_MEAN))],
    )


def spk_painn(seed: int) -> NeuralNetworkPotential:
    """A small untrained SchNetPack PaiNN NNP (learned representation)."""
    import schnetpack as spk

    torch.manual_seed(seed)
    rep = spk.representation.PaiNN(n_atom_basis=8, n_interactions=1,
                                   radial_basis=spk.nn.GaussianRBF(n_rbf=8, cutoff=5.0),
                                   cutoff_fn=spk.nn.CosineCutoff(5.0))
    return NeuralNetworkPotential(representation=rep, input_modules=[PairwiseDistances()],
                                  output_modules=[spk.atomistic.Atomwise(n_in=8, output_key="energy"), Forces()])


@pytest.fixture(scope="module")
def member_files(tmp_path_factory):
    """Two untrained ANI models (seeds 0 and 1) saved like SchNetPack's best_model."""
    folder = tmp_path_factory.mktemp("members")
    files = []
    for seed in (0, 1):
        torch.save(offset_ani(seed), folder / f"best_model_{seed}")
        files.append(folder / f"best_model_{seed}")
    return files


@pytest.fixture(scope="module")
def ensemble_dir(member_files, tmp_path_factory):
    """The two members as an ensemble (manifest only)."""
    out = tmp_path_factory.mktemp("ensemble") / "ens"
    ensemble_from_models(member_files, out, seeds=[0, 1])
    return out


@pytest.fixture(scope="module")
def frames(ethanol):
    return ase.io.read(ethanol["pretrain_wb97x_631gs_300K"].extxyz, ":7")


def hand_committee(member_files, frames):
    """Each member called on its own (spk_meta.evaluate.predict: AtomsConverter and
    MatScipy's neighbour list), and the statistics written out for two members."""
    e, f = zip(*(predict(load_model(p), frames) for p in member_files))
    e, f = np.array(e), [np.concatenate(x) for x in f]
    n = np.array([len(a) for a in frames])
    energy_std = np.abs(e[0] - e[1]) / np.sqrt(2)  # sqrt(sum (x - mean)^2 / (M - 1)), M = 2
    forces_std = np.abs(f[0] - f[1]) / np.sqrt(2)
    atom_spread = np.sqrt((forces_std**2).sum(axis=1))
    starts = np.concatenate([[0], np.cumsum(n)])
    return {
        "energy": (e[0] + e[1]) / 2, "energy_std": energy_std, "rho": energy_std / np.sqrt(n),
        "forces": (f[0] + f[1]) / 2, "forces_std": forces_std,
        "force_spread": np.array([atom_spread[a:b].max() for a, b in zip(starts[:-1], starts[1:])]),
    }


# -- committee statistics ------------------------------------------------------------------


def test_committee_statistics_equal_a_hand_computation(ensemble_dir, member_files, frames):
    ens = load_ensemble(ensemble_dir)
    assert len(ens) == 2 and ens.cutoff == pytest.approx(5.2) and ens.elements == (1, 6, 7, 8)
    hand = hand_committee(member_files, frames)
    assert hand["energy_std"].min() > 1e-3  # the two members disagree
    pred = ens.predict(frames, batch_size=3)  # three batches, the last one short
    for key in ("energy", "energy_std", "rho", "force_spread"):
        np.testing.assert_allclose(getattr(pred, key), hand[key], rtol=1e-5, atol=2e-5, err_msg=key)
    np.testing.assert_allclose(pred.forces, hand["forces"], atol=2e-5)
    np.testing.assert_allclose(pred.forces_std, hand["forces_std"], atol=2e-5)
    # energies only (no autograd, response modules dropped), the AEVs computed once for
    # both members or once per member: the same energies
    assert ens.share_representation
    for share in (True, False):
        ens.share_representation = share
        fast = ens.predict(frames, batch_size=4, forces=False)
        assert fast.forces is None
        np.testing.assert_allclose(fast.member_energies, pred.member_energies, rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(fast.rho, hand["rho"], rtol=1e-5, atol=2e-5)


def test_only_weightless_equal_representations_are_shared():
    assert shares_representation([offset_ani(0), offset_ani(1)])
    assert not shares_representation([offset_ani(0), offset_ani(1, radial_cutoff=4.6)])
    assert shares_representation([offset_ani(0), ani_potential(seed=1)])  # each keeps its own postprocessing
    assert not shares_representation([spk_painn(0), spk_painn(1)])  # learned representations


def test_a_committee_of_painn_models(tmp_path, frames):
    """Learned representations (computed per member), any element: the same statistics."""
    files = []
    for seed in (0, 1):
        files.append(tmp_path / f"painn{seed}")
        torch.save(spk_painn(seed), files[-1])
    ens = load_ensemble(ensemble_from_models(files, tmp_path / "ens"))
    assert ens.elements is None and ens.cutoff == 5.0 and not ens.share_representation
    hand = hand_committee(files, frames)
    for forces in (True, False):
        pred = ens.predict(frames, forces=forces)
        np.testing.assert_allclose(pred.rho, hand["rho"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.energy, hand["energy"], rtol=1e-6, atol=1e-5)


def test_calculator_gives_the_committee_statistics(ensemble_dir, member_files, frames):
    hand = hand_committee(member_files, frames[:1])
    atoms = frames[0].copy()
    atoms.calc = load_ensemble(ensemble_dir).calculator()
    assert atoms.get_potential_energy() == pytest.approx(hand["energy"][0], abs=2e-5)
    np.testing.assert_allclose(atoms.get_forces(), hand["forces"], atol=2e-5)
    assert atoms.calc.results["energy_std"] == pytest.approx(hand["energy_std"][0], abs=2e-5)
    assert atoms.calc.results["rho"] == pytest.approx(hand["rho"][0], abs=1e-5)
    np.testing.assert_allclose(atoms.calc.results["forces_std"], hand["forces_std"], atol=2e-5)


def test_periodic_frames_see_their_images(ensemble_dir, member_files, frames):
    """A molecule in a 7 Ang cell (5.2 Ang cutoff: atoms see their own images), next to a
    molecule without a cell, in one batch: as SchNetPack's converter predicts them."""
    periodic = frames[1].copy()
    periodic.set_cell(np.diag([7.0, 7.5, 8.0]))
    periodic.pbc = True
    pair = [frames[0], periodic]
    hand = hand_committee(member_files, pair)
    pred = load_ensemble(ensemble_dir).predict(pair)
    np.testing.assert_allclose(pred.energy, hand["energy"], atol=2e-5)
    np.testing.assert_allclose(pred.forces, hand["forces"], atol=2e-5)


def test_block_pairs_are_vesins_pairs():
    rng = np.random.default_rng(0)
    mols = [Atoms("C" * n, positions=rng.normal(scale=2.0, size=(n, 3))) for n in (1, 2, 9, 30)]
    batch = atoms_batch(mols)
    i, j, off = neighbor_pairs(batch, 3.0)
    assert not off.any()
    got = set(zip(i.tolist(), j.tolist()))
    want = set()
    for start, a in zip(batch.starts, mols):
        vi, vj, _ = vesin_pairs(a.positions, np.zeros((3, 3)), np.zeros(3, bool), 3.0)
        want |= {(int(x) + start, int(y) + start) for x, y in zip(vi, vj)}
    assert got == want and len(i) == len(got)
    bi, bj = block_pairs(batch.positions, batch.n_atoms, batch.starts, 3.0)
    assert set(zip(bi.tolist(), bj.tolist())) == want
    with pytest.raises(ValueError, match="some directions only"):
        vesin_pairs(mols[2].positions, np.eye(3) * 9, np.array([True, False, True]), 3.0)


# -- the manifest and its checks -------------------------------------------------------------


def test_manifest_records_members(ensemble_dir, member_files):
    file, manifest, members = read_manifest(ensemble_dir / MANIFEST)
    assert manifest["format"] == "spk-meta ensemble"
    for m, path, seed in zip(members, member_files, (0, 1)):
        assert m.file(file.parent).samefile(path)
        assert not os.path.isabs(m.path)
        assert m.sha256 == sha256(path) and m.seed == seed
        assert (m.cutoff, m.elements) == (pytest.approx(5.2), (1, 6, 7, 8))
    with pytest.raises(FileExistsError):
        ensemble_from_models(member_files, ensemble_dir)


def test_bad_ensembles_are_refused_naming_members(member_files, tmp_path):
    with pytest.raises(EnsembleError, match="at least 2 members"):
        ensemble_from_models(member_files[:1], tmp_path / "one")
    assert not (tmp_path / "one").exists()
    short = tmp_path / "short.pt"
    torch.save(offset_ani(2, radial_cutoff=4.6), short)
    with pytest.raises(EnsembleError, match=r"different cutoffs \(m0: 5.2 Ang, m1: 4.6 Ang\)"):
        ensemble_from_models([member_files[0], short], tmp_path / "cut")
    hco = tmp_path / "hco.pt"
    torch.save(offset_ani(3, elements=["H", "C", "O"]), hco)
    with pytest.raises(EnsembleError, match=r"different elements \(m0: H C N O; m1: H C O\)"):
        ensemble_from_models([member_files[0], hco], tmp_path / "el")
    # a manifest edited down to one member
    ensemble_from_models(member_files, tmp_path / "ok")
    manifest = json.loads((tmp_path / "ok" / MANIFEST).read_text())
    manifest["members"] = manifest["members"][:1]
    (tmp_path / "ok" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(EnsembleError, match="at least 2 members, it has 1"):
        load_ensemble(tmp_path / "ok")


def test_a_changed_or_missing_member_file_is_refused(member_files, tmp_path):
    copies = []
    for i, f in enumerate(member_files):
        copies.append(tmp_path / f"m{i}")
        copies[-1].write_bytes(f.read_bytes())
    ensemble_from_models(copies, tmp_path / "ens")
    load_ensemble(tmp_path / "ens")
    torch.save(offset_ani(7), copies[1])  # retrained in place
    with pytest.raises(EnsembleError, match=r"member m1: .*m1 changed since the manifest was written"):
        load_ensemble(tmp_path / "ens" / MANIFEST)
    copies[1].unlink()
    with pytest.raises(EnsembleError, match="member m1: model file .* is missing"):
        load_ensemble(tmp_path / "ens")


# -- spkmeta ensemble with a stand-in spktrain -----------------------------------------------------

FAKE_SPKTRAIN = r'''
import json, os, shutil, sys
from pathlib import Path

args = dict(a.split("=", 1) for a in sys.argv[1:])
run = Path(args["run.path"]) / args["run.id"]
run.mkdir(parents=True, exist_ok=True)
with open(os.environ["FAKE_SPKTRAIN_CALLS"], "a") as fh:
    fh.write(json.dumps({"id": args["run.id"], "argv": sys.argv[1:], "cwd": os.getcwd()}) + "\n")
(run / "config.yaml").write_text("seed: 0\n")
shutil.copy(Path(os.environ["FAKE_MODELS"]) / f"seed{args['seed']}", run / "best_model")
'''


@pytest.fixture
def fake_spktrain(tmp_path, monkeypatch, member_files):
    """spktrain stand-in: member with seed s gets the model file seed<s> as best_model."""
    models = tmp_path / "models"
    models.mkdir()
    for seed in range(4):
        (models / f"seed{seed}").write_bytes(member_files[seed % 2].read_bytes())
    monkeypatch.setenv("FAKE_MODELS", str(models))
    return install_fake_spktrain(tmp_path, monkeypatch, FAKE_SPKTRAIN, train_module)


def test_train_ensemble_records_members_and_reuses_them(fake_spktrain, in_tmp):
    log = []
    manifest = train_ensemble("scratch_ani", 2, "ens", ["trainer.max_epochs=1"], base_seed=0, log=log.append)
    calls = fake_spktrain()
    assert [c["id"] for c in calls] == ["m0", "m1"]
    assert all(c["cwd"] == str(in_tmp) for c in calls)  # relative overrides mean what they mean here
    file, data, members = read_manifest(manifest)
    assert file == in_tmp / "ens" / MANIFEST and data["experiment"] == "scratch_ani"
    for i, m in enumerate(members):
        assert m.path == f"members/m{i}/best_model" and m.seed == i
        assert list(m.overrides) == ["experiment=scratch_ani", f"seed={i}", "trainer.max_epochs=1", "logger=csv"]
        assert calls[i]["argv"][: len(m.overrides)] == list(m.overrides)
        assert m.sha256 == sha256(in_tmp / "ens" / m.path)
    # a rerun with the same settings trains nothing; other settings redo every member
    train_ensemble("scratch_ani", 2, "ens", ["trainer.max_epochs=1"], log=log.append)
    assert len(fake_spktrain()) == 2 and "m0: finished with the same settings, reused" in log
    train_ensemble("scratch_ani", 2, "ens", ["trainer.max_epochs=2"], log=log.append)
    assert [c["id"] for c in fake_spktrain()[2:]] == ["m0", "m1"]
    assert any(line.startswith("m0: redoing it: finished with other settings") for line in log)
    assert load_ensemble("ens").members[1].overrides[2] == "trainer.max_epochs=2"


def test_bad_ensemble_requests_fail_before_training(fake_spktrain, in_tmp, capsys):
    with pytest.raises(EnsembleError, match="at least 2 members, got --members 1"):
        train_ensemble("scratch_ani", 1, "ens")
    with pytest.raises(EnsembleError, match="seed is set by spkmeta ensemble"):
        train_ensemble("scratch_ani", 2, "ens", ["seed=3"])
    assert main(["ensemble", "scratch_ani", "--members", "1", "--out", "ens"]) == 2
    assert "at least 2 members" in capsys.readouterr().err
    assert main(["ensemble", "scratch_ani", "--members", "2", "--out", "ens", "trainer"]) == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err
    assert fake_spktrain() == [] and not (in_tmp / "ens").exists()


def test_cli_takes_overrides_before_and_after_options(fake_spktrain, in_tmp, capsys):
    args = build_parser().parse_args(["ensemble", "scratch_ani", "a=1", "--members", "2", "--out", "d", "b=2"])
    assert (args.experiment, args.overrides, args.members, args.out) == ("scratch_ani", ["a=1", "b=2"], 2, "d")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ensemble", "x", "--members", "2", "--out", "d", "--bogus"])
    assert main(["ensemble", "scratch_ani", "--members", "2", "--out", "ens", "trainer.max_epochs=1"]) == 0
    assert "2 members, cutoff 5.2 Ang, elements H C N O" in capsys.readouterr().out


@pytest.mark.slow
def test_spkmeta_ensemble_trains_and_selects_end_to_end(tmp_path, tiny_db):
    """Two real spktrain members (a few steps on the MP2 ethanol data), then select from a
    database."""
    ens = run_cli(["spkmeta", "ensemble", "scratch_ani", "--members", "2", "--out", "ens",
                   "trainer.max_epochs=2", "data.num_train=20", "data.num_val=5"], cwd=tmp_path)
    assert ens.returncode == 0, ens.stderr[-3000:]
    ensemble = load_ensemble(tmp_path / "ens")
    assert [m.seed for m in ensemble.members] == [0, 1]
    sel = run_cli(["spkmeta", "select", "ens", "--from", str(tiny_db), "--n", "5", "--out", "sel.db"], cwd=tmp_path)
    assert sel.returncode == 0, sel.stderr[-3000:]
    assert "wrote 5 of 40 frames" in sel.stdout
