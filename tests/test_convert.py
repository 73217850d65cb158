"""`spkmeta convert`: tiny files in each published layout, every number checked after
unit conversion, and the bad inputs."""

import ase.io
import h5py
import numpy as np
import pytest
from ase.units import Bohr, Hartree, kcal, mol

from conftest import run_cli
from spk_meta.convert import ConversionError, convert
from spk_meta.data import TaskData, TaskDataset

RNG = np.random.default_rng(0)
ETHANOL_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
METHANE_Z = np.array([6, 1, 1, 1, 1])
AMMONIA_Z = np.array([7, 1, 1, 1])


def positions(n_conf, n_atoms):
    return RNG.normal(0, 1.2, (n_conf, n_atoms, 3))


def assert_packed_equals_db(format, path, tmp_path, **options):
    """``--format packed`` of ``path`` holds the frames and counts of the per-level databases."""
    from test_convert_packed import assert_same_counts, assert_same_frames

    from spk_meta.data.store import PackedStore

    db = convert(format, path, tmp_path / "cmp-db", progress=False, **options)
    packed = convert(format, path, tmp_path / "cmp-packed", progress=False, output_format="packed", **options)
    assert_same_counts(db, packed)
    store = PackedStore(tmp_path / "cmp-packed" / f"{path.stem}.spkstore")
    for s in db.levels.values():
        assert_same_frames(store, s.database.stem, s.database)


def read_back(db):
    """All frames of a database as served by TaskData (no reference subtracted)."""
    data = TaskData("t", db)
    return data, [data[i] for i in range(len(data))]


# -- ANI-1x ----------------------------------------------------------------------------------


@pytest.fixture
def ani1x_file(tmp_path):
    """Two formulas + one with N; wb97x_dz (E+F), wb97x_tz (E+F, one NaN energy),
    ccsd(t)_cbs (energies only, NaN where not computed), in Hartree and Hartree/Ang."""
    path = tmp_path / "ani1x-release.h5"
    truth = {}
    with h5py.File(path, "w") as f:
        for name, z, n_conf in (("C2H6O", ETHANOL_Z, 3), ("CH4", METHANE_Z, 2), ("H3N", AMMONIA_Z, 2)):
            g = f.create_group(name)
            g["atomic_numbers"] = z.astype(np.uint8)
            g["coordinates"] = positions(n_conf, len(z)).astype(np.float32)
            for key in ("wb97x_dz", "wb97x_tz"):
                g[f"{key}.energy"] = RNG.normal(-150, 1, n_conf)
                g[f"{key}.forces"] = RNG.normal(0, 0.02, (n_conf, len(z), 3)).astype(np.float32)
            cc = RNG.normal(-150, 1, n_conf)
            cc[0] = np.nan
            g["ccsd(t)_cbs.energy"] = cc
            g["wb97x_dz.dipole"] = np.zeros((n_conf, 3))  # other properties are ignored
            truth[name] = {k: g[k][()] for k in g}
        f["C2H6O/wb97x_tz.energy"][1] = np.nan
        truth["C2H6O"]["wb97x_tz.energy"][1] = np.nan
    return path, truth


def test_ani1x_levels_units_and_nan_per_property(ani1x_file, tmp_path):
    path, truth = ani1x_file
    out = tmp_path / "out"
    summary = convert("ani1x", path, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["ccsd-t_cbs.db", "convert_manifest.json", "wb97x_dz.db", "wb97x_tz.db"]
    assert summary.levels["wb97x_dz"].written == 7
    assert summary.levels["wb97x_tz"].written == 6 and summary.levels["wb97x_tz"].skipped["no energy (NaN)"] == 1
    assert summary.levels["ccsd(t)_cbs"].written == 4  # the first conformer of each formula is NaN

    data, frames = read_back(out / "wb97x_dz.db")
    assert data.level_of_theory.name == "wB97X/dz" and data.level_of_theory.basis == "6-31G(d)"
    assert data.metadata["_property_unit_dict"] == {"energy": "eV", "forces": "eV/Ang"}
    expected = [(name, i) for name in ("C2H6O", "CH4", "H3N") for i in range(len(truth[name]["coordinates"]))]
    for frame, (name, i) in zip(frames, expected):
        t = truth[name]
        np.testing.assert_array_equal(frame["_atomic_numbers"].numpy(), t["atomic_numbers"])
        np.testing.assert_allclose(frame["_positions"].numpy(), t["coordinates"][i], rtol=1e-6)
        assert float(frame["energy"]) == pytest.approx(t["wb97x_dz.energy"][i] * Hartree, rel=1e-12)
        np.testing.assert_allclose(frame["forces"].numpy(), t["wb97x_dz.forces"][i] * Hartree, rtol=1e-6)

    cc, cc_frames = read_back(out / "ccsd-t_cbs.db")
    assert not cc.has_forces and cc.level_of_theory.slug == "ccsd-t_cbs"
    assert float(cc_frames[0]["energy"]) == pytest.approx(truth["C2H6O"]["ccsd(t)_cbs.energy"][1] * Hartree)
    assert "ccsd(t)_cbs: 4 frames" in str(summary).replace("CCSD(T)/CBS", "ccsd(t)_cbs")


def test_ani1x_options_only_elements_subset_force_cut(ani1x_file, tmp_path):
    path, truth = ani1x_file
    s = convert("ani1x", path, tmp_path / "a", only=["wb97x_dz"], elements="H,C,O", progress=False)
    assert list(s.levels) == ["wb97x_dz"] and s.levels["wb97x_dz"].written == 5
    assert s.skipped == {"element(s) N not in --elements": 2}

    s = convert("ani1x", path, tmp_path / "b", only=["wb97x_dz"], max_frames=4, seed=1, progress=False)
    _, frames = read_back(tmp_path / "b" / "wb97x_dz.db")
    all_e = np.concatenate([truth[n]["wb97x_dz.energy"] for n in ("C2H6O", "CH4", "H3N")]) * Hartree
    got = [float(f["energy"]) for f in frames]
    assert len(got) == 4 and all(np.isclose(all_e, e).any() for e in got)
    first = convert("ani1x", path, tmp_path / "c", only=["wb97x_dz"], max_frames=4, progress=False)
    assert first.frames_read == 4

    cut = 0.02 * 2.5 * Hartree  # eV/Ang: some frames have larger forces
    s = convert("ani1x", path, tmp_path / "d", only=["wb97x_dz"], max_force=cut, progress=False)
    n_big = sum(
        np.linalg.norm(truth[n]["wb97x_dz.forces"][i] * Hartree, axis=1).max() > cut
        for n in truth for i in range(len(truth[n]["coordinates"]))
    )
    assert 0 < n_big < 7 and s.levels["wb97x_dz"].written == 7 - n_big


def test_energy_cut_drops_outliers(ani1x_file, tmp_path):
    path, _ = ani1x_file
    with h5py.File(path, "r+") as f:
        f["CH4/wb97x_dz.energy"][0] = 1e4  # a broken calculation
    s = convert("ani1x", path, tmp_path / "o", only=["wb97x_dz"], energy_cut=1000.0, progress=False)  # eV/atom; sizes differ a lot here
    assert s.levels["wb97x_dz"].written == 6
    assert sum(s.levels["wb97x_dz"].skipped.values()) == 1


# -- other layouts ---------------------------------------------------------------------------


def test_anidataset_through_torchani(tmp_path):
    import torch
    from torchani.datasets import ANIDataset

    path = tmp_path / "ds.h5"
    ds = ANIDataset(str(path), grouping="by_num_atoms")
    coords = positions(2, 5).astype(np.float32)
    energies = np.array([-40.1, -40.2])
    forces = RNG.normal(0, 0.01, (2, 5, 3)).astype(np.float32)
    ds.append_conformers("005", {
        "species": torch.tensor(np.tile(METHANE_Z, (2, 1))), "coordinates": torch.tensor(coords),
        "energies": torch.tensor(energies), "forces": torch.tensor(forces),
    })
    with pytest.raises(ConversionError, match="does not record its level of theory; pass --level"):
        convert("anidataset", path, tmp_path / "o", progress=False)
    convert("anidataset", path, tmp_path / "o", level="wB97X/6-31g*", progress=False)
    _, frames = read_back(tmp_path / "o" / "wb97x_6-31gs.db")
    assert float(frames[1]["energy"]) == pytest.approx(-40.2 * Hartree)
    np.testing.assert_allclose(frames[0]["forces"].numpy(), forces[0] * Hartree, rtol=1e-6)
    np.testing.assert_allclose(frames[0]["_positions"].numpy(), coords[0], rtol=1e-6)
    assert_packed_equals_db("anidataset", path, tmp_path, level="wB97X/6-31g*")


def test_qm7x(tmp_path):
    path = tmp_path / "1000.hdf5"
    truth = []
    with h5py.File(path, "w") as f:
        for m in (1, 2):
            mol_group = f.create_group(str(m))
            for conf in ("opt", "d1"):
                g = mol_group.create_group(f"Geom-m{m}-i1-c1-{conf}")
                g["atNUM"] = METHANE_Z
                g["atXYZ"] = positions(1, 5)[0]
                g["ePBE0+MBD"] = np.array([RNG.normal(-1100, 1)])
                g["totFOR"] = RNG.normal(0, 0.1, (5, 3))
                g["eDFTB+MBD"] = np.array([0.0])
                truth.append((g["atXYZ"][()], g["ePBE0+MBD"][0], g["totFOR"][()]))
    convert("qm7x", tmp_path, tmp_path / "o", progress=False)  # a directory of files
    data, frames = read_back(tmp_path / "o" / "pbe0pmbd.db")
    assert data.level_of_theory.method == "PBE0+MBD" and len(frames) == 4
    got = sorted((float(f["energy"]), f) for f in frames)
    for (e, frame), (pos, e_ref, f_ref) in zip(got, sorted(truth, key=lambda t: t[1])):
        assert e == pytest.approx(e_ref)
        np.testing.assert_allclose(frame["forces"].numpy(), f_ref)
        np.testing.assert_allclose(frame["_positions"].numpy(), pos)
    assert_packed_equals_db("qm7x", tmp_path / "1000.hdf5", tmp_path)


def test_transition1x_converts_each_frame_once(tmp_path):
    path = tmp_path / "transition1x.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("data/C2H6O/rxn0001")
        g["atomic_numbers"] = ETHANOL_Z
        g["positions"] = positions(3, 9)
        g["wB97x_6-31G(d).energy"] = RNG.normal(-4200, 1, 3)
        g["wB97x_6-31G(d).forces"] = RNG.normal(0, 0.5, (3, 9, 3))
        g["wB97x_6-31G(d).atomization_energy"] = RNG.normal(-30, 1, 3)
        f["train/C2H6O/rxn0001"] = g  # the split groups hard-link the same reactions
        truth = {k: g[k][()] for k in g}
    summary = convert("transition1x", path, tmp_path / "o", progress=False)
    assert summary.frames_read == 3
    _, frames = read_back(tmp_path / "o" / "wb97x_6-31g-d.db")
    for i, fr in enumerate(frames):
        assert float(fr["energy"]) == pytest.approx(truth["wB97x_6-31G(d).energy"][i])
        np.testing.assert_allclose(fr["forces"].numpy(), truth["wB97x_6-31G(d).forces"][i])
    assert_packed_equals_db("transition1x", path, tmp_path)


def test_rmd17_kcal_per_mol(tmp_path):
    path = tmp_path / "rmd17_ethanol.npz"
    e = RNG.normal(-97000, 1, 4)
    f = RNG.normal(0, 10, (4, 9, 3))
    np.savez(path, nuclear_charges=ETHANOL_Z, coords=positions(4, 9), energies=e, forces=f,
             old_indices=np.arange(4), old_energies=e)
    convert("rmd17", path, tmp_path / "o", progress=False)
    data, frames = read_back(tmp_path / "o" / "pbe_def2-svp.db")
    assert data.level_of_theory.code == "ORCA"
    assert float(frames[2]["energy"]) == pytest.approx(e[2] * kcal / mol)
    np.testing.assert_allclose(frames[2]["forces"].numpy(), f[2] * kcal / mol)
    assert_packed_equals_db("rmd17", path, tmp_path)


def test_spice_bohr_hartree_gradient(tmp_path):
    path = tmp_path / "SPICE.hdf5"
    with h5py.File(path, "w") as h:
        g = h.create_group("methane")
        g["atomic_numbers"] = METHANE_Z.astype(np.int16)
        g["conformations"] = (positions(2, 5) / Bohr).astype(np.float32)
        g["dft_total_energy"] = np.array([-40.5, -40.4])
        g["dft_total_gradient"] = RNG.normal(0, 0.01, (2, 5, 3)).astype(np.float32)
        g["smiles"] = [b"C"]
        nog = h.create_group("no-gradient")  # some groups lack gradients: skipped, counted
        nog["atomic_numbers"] = METHANE_Z.astype(np.int16)
        nog["conformations"] = (positions(1, 5) / Bohr).astype(np.float32)
        nog["dft_total_energy"] = np.array([-40.0])
        truth = {k: g[k][()] for k in ("conformations", "dft_total_energy", "dft_total_gradient")}
    s = convert("spice", path, tmp_path / "o", progress=False)
    assert s.levels["wb97m-d3-bj_def2-tzvppd"].skipped["no forces"] == 1
    _, frames = read_back(tmp_path / "o" / "wb97m-d3-bj_def2-tzvppd.db")
    assert len(frames) == 2
    np.testing.assert_allclose(frames[1]["_positions"].numpy(), truth["conformations"][1] * Bohr, rtol=1e-6)
    assert float(frames[1]["energy"]) == pytest.approx(-40.4 * Hartree)
    assert_packed_equals_db("spice", path, tmp_path)
    np.testing.assert_allclose(frames[1]["forces"].numpy(), -truth["dft_total_gradient"][1] * Hartree / Bohr, rtol=1e-6)


def test_ase_round_trip_of_the_embedded_data(ethanol, tmp_path):
    """extxyz -> databases (per level) -> TaskDataset: the same energies and forces."""
    names = ("pretrain_wb97x_631gs_300K", "pretrain_hf_def2svp_900K")
    for name in names:
        convert("ase", ethanol[name].extxyz, tmp_path / "o", progress=False)
    ds = TaskDataset(sorted((tmp_path / "o").glob("*.db")))
    assert sorted(ds.names) == ["hf_def2-svp", "wb97x_6-31gs"]
    for name in names:
        task = ds[ethanol[name].level_of_theory.slug]
        frames = ase.io.read(ethanol[name].extxyz, ":")
        assert len(task) == len(frames) == 200
        for i in (0, 99, 199):
            assert float(task[i]["energy"]) == pytest.approx(frames[i].get_potential_energy(), abs=1e-9)
            np.testing.assert_allclose(task[i]["forces"].numpy(), frames[i].get_forces(), atol=1e-12)


# -- bad input -------------------------------------------------------------------------------


def assert_nothing_written(outdir):
    assert not outdir.exists() or list(outdir.iterdir()) == []


def test_missing_key_names_key_group_and_file(tmp_path):
    path = tmp_path / "broken.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("CH4")
        g["atomic_numbers"] = METHANE_Z
        g["wb97x_dz.energy"] = np.zeros(2)
    with pytest.raises(ConversionError, match=r"broken\.h5: group '/CH4' has no 'coordinates'"):
        convert("ani1x", path, tmp_path / "o", progress=False)
    assert_nothing_written(tmp_path / "o")


def test_inconsistent_shapes_leave_nothing_behind(ani1x_file, tmp_path):
    path, _ = ani1x_file
    with h5py.File(path, "r+") as f:
        del f["H3N/wb97x_dz.forces"]
        f["H3N/wb97x_dz.forces"] = np.zeros((2, 3, 3))  # 4 atoms
    with pytest.raises(ConversionError, match=r"'/H3N/wb97x_dz.forces' has shape \(2, 3, 3\), expected \(2, 4, 3\)"):
        convert("ani1x", path, tmp_path / "o", progress=False)
    assert_nothing_written(tmp_path / "o")  # the two formulas before were not kept either


def test_corrupted_hdf5(ani1x_file, tmp_path):
    path, _ = ani1x_file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ConversionError, match="not a readable HDF5 file"):
        convert("ani1x", path, tmp_path / "o", progress=False)
    assert_nothing_written(tmp_path / "o")


def test_unknown_format_unit_and_existing_output(ani1x_file, ethanol, tmp_path):
    path, _ = ani1x_file
    with pytest.raises(ConversionError, match="unknown format 'xyz'; choose one of: ani1x"):
        convert("xyz", path, tmp_path / "o")
    with pytest.raises(ConversionError, match="unknown unit: energy 'furlong'"):
        convert("ase", ethanol["target_mp2_631gs_test_300K"].extxyz, tmp_path / "o", energy_unit="furlong")
    convert("ani1x", path, tmp_path / "o", only=["wb97x_dz"], progress=False)
    with pytest.raises(ConversionError, match=r"wb97x_dz\.db already exist\(s\); pass --overwrite"):
        convert("ani1x", path, tmp_path / "o", only=["wb97x_dz"], progress=False)
    convert("ani1x", path, tmp_path / "o", only=["wb97x_dz"], overwrite=True, progress=False)


def test_cli_summary_and_errors(ani1x_file, tmp_path):
    path, _ = ani1x_file
    ok = run_cli(["spkmeta", "convert", "ani1x", str(path), str(tmp_path / "o"), "--elements", "H,C,O", "--no-progress"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "wB97X/dz: 5 frames" in ok.stdout and "skipped 2 structures: element(s) N not in --elements" in ok.stdout
    assert "elements H C O" in ok.stdout and "units: Ang, eV, eV/Ang" in ok.stdout
    again = run_cli(["spkmeta", "convert", "ani1x", str(path), str(tmp_path / "o")], cwd=tmp_path)
    assert again.returncode == 2 and "already exist" in again.stderr
    bad = run_cli(["spkmeta", "convert", "nosuch", str(path), str(tmp_path / "o")], cwd=tmp_path)
    assert bad.returncode == 2 and "invalid choice: 'nosuch'" in bad.stderr
    missing = run_cli(["spkmeta", "convert", "rmd17", str(tmp_path / "none.npz"), str(tmp_path / "o2")], cwd=tmp_path)
    assert missing.returncode == 2 and "none.npz: no such file or directory" in missing.stderr
