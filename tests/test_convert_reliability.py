"""`spkmeta convert` as a folder owner: exactly this run's output plus a manifest, one
conversion per folder, no leftovers of killed runs, non-finite and absurd energies
reported, counts and OUTDIR checked (issue #14 items 3, 4, 6, 7, 11; issue #11)."""

import json
import os
import sqlite3

import h5py
import numpy as np
import pytest
from ase.units import Hartree

from spk_meta.cli.main import main
from spk_meta.convert import ConversionError, convert
from spk_meta.convert.outdir import LOCK_NAME, MANIFEST_NAME, OutputFolder
from spk_meta.data import DatabaseWriter, TaskData

#: per-element energies (Hartree) close to real wB97X ones, so compositions differ a lot
E_ATOM = {1: -0.5, 6: -37.8, 7: -54.6, 8: -75.0}
FORMULAS = {"C2H6O": [6, 6, 8, 1, 1, 1, 1, 1, 1], "CH4": [6, 1, 1, 1, 1], "H3N": [7, 1, 1, 1], "H2O": [8, 1, 1]}


def write_ani1x(path, n_conf=8, ccsd=True, edit=None, seed=0):
    """An ANI-1x-layout file: four formulas x ``n_conf`` conformers, energies = sum of
    per-element energies + noise (Hartree); wb97x_dz/wb97x_tz with forces, ccsd(t)_cbs
    energies only (all NaN when ``ccsd`` is false). ``edit(file)`` may corrupt values."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        for name, z in FORMULAS.items():
            g = f.create_group(name)
            g["atomic_numbers"] = np.array(z, dtype=np.uint8)
            g["coordinates"] = rng.normal(0, 1.2, (n_conf, len(z), 3)).astype(np.float32)
            base = sum(E_ATOM[a] for a in z)
            for key in ("wb97x_dz", "wb97x_tz"):
                g[f"{key}.energy"] = base + rng.normal(0, 0.005 * len(z), n_conf)
                g[f"{key}.forces"] = rng.normal(0, 0.02, (n_conf, len(z), 3)).astype(np.float32)
            cc = base + rng.normal(0, 0.005 * len(z), n_conf)
            g["ccsd(t)_cbs.energy"] = cc if ccsd else np.full(n_conf, np.nan)
        if edit is not None:
            edit(f)
    return path


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


# -- item 3: --overwrite leaves exactly this run's output, plus a manifest --------------------


def test_overwrite_removes_stale_databases_keeps_other_files(tmp_path):
    out = tmp_path / "out"
    full = write_ani1x(tmp_path / "full.h5")
    no_cc = write_ani1x(tmp_path / "no_cc.h5", ccsd=False, seed=1)
    convert("ani1x", full, out, progress=False)
    assert listing(out) == ["ccsd-t_cbs.db", MANIFEST_NAME, "wb97x_dz.db", "wb97x_tz.db"]
    (out / "notes.txt").write_text("mine")
    mine = DatabaseWriter(out / "mine.db", "MP2/6-31g*", source="user", has_forces=False)
    mine.add(np.array([1, 1]), np.array([[0, 0, 0], [0, 0, 0.74]]), -31.0)
    mine.close()  # a user's own database (not written by spkmeta convert)
    con = sqlite3.connect(out / "other.db")  # and a foreign SQLite file: must stay untouched
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    other = (out / "other.db").read_bytes()

    s = convert("ani1x", no_cc, out, overwrite=True, progress=False)
    assert s.levels["ccsd(t)_cbs"].database is None and s.removed == ["ccsd-t_cbs.db"]
    assert s.kept == ["mine.db", "other.db"]
    assert listing(out) == [MANIFEST_NAME, "mine.db", "notes.txt", "other.db", "wb97x_dz.db", "wb97x_tz.db"]
    assert (out / "other.db").read_bytes() == other
    text = str(s)
    assert "removed (earlier output this run did not write, --overwrite): ccsd-t_cbs.db" in text
    assert "kept (not written by spkmeta convert; remove by hand if unwanted): mine.db, other.db" in text

    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert sorted(manifest["files"]) == ["wb97x_dz.db", "wb97x_tz.db"]
    for name, entry in manifest["files"].items():
        assert entry["frames"] == len(TaskData("t", out / name)) == 32
        assert entry["source"] == str(no_cc) and entry["format"] == "ani1x"
        assert entry["options"]["overwrite"] is True and entry["spk_meta_version"]
    assert manifest["last_run"]["nothing_written"] == ["CCSD(T)/CBS"]
    assert manifest["last_run"]["removed"] == ["ccsd-t_cbs.db"]


def test_overwrite_without_a_manifest_removes_converted_databases_only(tmp_path):
    """Output of a version before manifests: converted databases are still recognised."""
    out = tmp_path / "out"
    convert("ani1x", write_ani1x(tmp_path / "full.h5"), out, progress=False)
    (out / MANIFEST_NAME).unlink()
    s = convert("ani1x", write_ani1x(tmp_path / "no_cc.h5", ccsd=False), out, overwrite=True, progress=False)
    assert s.removed == ["ccsd-t_cbs.db"]
    assert listing(out) == [MANIFEST_NAME, "wb97x_dz.db", "wb97x_tz.db"]


def test_runs_without_overwrite_add_to_the_manifest(tmp_path):
    out = tmp_path / "out"
    src = write_ani1x(tmp_path / "full.h5")
    convert("ani1x", src, out, only=["wb97x_dz"], progress=False)
    convert("ani1x", src, out, only=["ccsd(t)_cbs"], max_frames=10, progress=False)
    assert listing(out) == ["ccsd-t_cbs.db", MANIFEST_NAME, "wb97x_dz.db"]
    files = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert files["wb97x_dz.db"]["frames"] == 32 and files["wb97x_dz.db"]["options"]["only"] == ["wb97x_dz"]
    assert files["ccsd-t_cbs.db"]["frames"] == 10 and files["ccsd-t_cbs.db"]["options"]["max_frames"] == 10


# -- item 4: one conversion per folder; no replacement at rename time -------------------------


def test_a_second_conversion_into_a_locked_folder_fails_fast(tmp_path, capsys):
    out = tmp_path / "out"
    src = write_ani1x(tmp_path / "a.h5")
    with OutputFolder(out):  # another conversion holds the folder
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(ConversionError, match=rf"{out}: another spkmeta convert \(pid {os.getpid()}\) is writing"):
            convert("ani1x", src, out, progress=False)
        assert main(["convert", "ani1x", str(src), str(out), "--no-progress"]) == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        assert listing(out) == [LOCK_NAME]
    assert listing(out) == []  # the lock file goes with the lock
    convert("ani1x", src, out, progress=False)  # free again
    assert LOCK_NAME not in listing(out)


def test_a_file_that_appears_meanwhile_is_never_replaced(tmp_path, monkeypatch):
    """Without --overwrite the final names are checked again at the rename: a database
    that another process wrote meanwhile survives, and this run leaves nothing behind."""
    from spk_meta.convert.ani import ANI1xReader

    out = tmp_path / "out"
    frames = ANI1xReader.frames

    def frames_then_someone_writes(self):
        yield from frames(self)
        (out / "wb97x_tz.db").write_bytes(b"someone else's")

    monkeypatch.setattr(ANI1xReader, "frames", frames_then_someone_writes)
    with pytest.raises(FileExistsError, match=r"wb97x_tz\.db appeared while this database was being written"):
        convert("ani1x", write_ani1x(tmp_path / "a.h5"), out, progress=False)
    assert (out / "wb97x_tz.db").read_bytes() == b"someone else's"
    assert listing(out) == ["wb97x_tz.db"]  # wb97x_dz.db, renamed first, was rolled back


def test_a_failed_conversion_into_a_new_folder_leaves_no_folder(tmp_path):
    def bad_shape(f):
        del f["H2O/wb97x_dz.forces"]
        f["H2O/wb97x_dz.forces"] = np.zeros((8, 2, 3))

    with pytest.raises(ConversionError, match=r"'/H2O/wb97x_dz.forces' has shape \(8, 2, 3\)"):
        convert("ani1x", write_ani1x(tmp_path / "bad.h5", edit=bad_shape), tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


# -- issue #11: temporary files of killed conversions -----------------------------------------


def test_temporary_files_of_a_killed_writer_are_removed_on_the_next_run(tmp_path):
    out = tmp_path / "out"
    pid = os.fork()
    if pid == 0:  # a writer killed before close(): its temporary database stays
        try:
            w = DatabaseWriter(out / "wb97x_dz.db", "wB97X/6-31g(d)", has_forces=False)
            w.add(np.array([1, 1]), np.zeros((2, 3)), -31.0)
            w._commit()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    (leftover,) = [p for p in out.iterdir()]
    assert leftover.name.startswith(f".wb97x_dz.{pid}-") and leftover.name.endswith(".tmp.db")
    alive = out / f".wb97x_tz.{os.getpid()}-abcdef12.tmp.db"  # a live writer's: left alone
    alive.write_bytes(b"")
    user = out / ".my.tmp.db"  # not our name pattern
    user.write_bytes(b"")

    s = convert("ani1x", write_ani1x(tmp_path / "a.h5"), out, only=["wb97x_dz"], progress=False)
    assert s.removed_temporaries == [leftover.name]
    assert f"removed temporary files of an interrupted conversion: {leftover.name}" in str(s)
    assert listing(out) == [".my.tmp.db", alive.name, MANIFEST_NAME, "wb97x_dz.db"]


# -- item 6: inf labels and absurd energies ----------------------------------------------------


def _corrupt(f):
    f["CH4/wb97x_dz.energy"][2] = np.inf
    f["H2O/wb97x_dz.energy"][1] = -np.inf
    f["H3N/wb97x_dz.energy"][0] = np.nan
    forces = f["C2H6O/wb97x_dz.forces"][()]
    forces[3, 0, 0] = np.inf
    f["C2H6O/wb97x_dz.forces"][...] = forces
    f["H3N/wb97x_dz.energy"][5] = 1e6  # a broken calculation: 10^6 Hartree


def test_inf_has_its_own_reason_and_absurd_energies_are_reported(tmp_path):
    src = write_ani1x(tmp_path / "bad.h5", edit=_corrupt)
    s = convert("ani1x", src, tmp_path / "o", only=["wb97x_dz"], progress=False)
    level = s.levels["wb97x_dz"]
    assert level.skipped == {"non-finite energy (inf)": 2, "no energy (NaN)": 1, "non-finite forces (inf)": 1}
    assert level.written == 28
    rows = [float(TaskData("t", level.database)[i]["energy"]) for i in range(level.written)]
    assert level.outliers is not None and level.outliers.count == 1
    assert rows[level.outliers.first_row - 1] == pytest.approx(1e6 * Hartree)  # ase db rows count from 1
    assert level.outliers.most_extreme == pytest.approx(1e6 * Hartree)
    text = str(s)
    assert "skipped 2: non-finite energy (inf)" in text and "skipped 1: no energy (NaN)" in text
    assert "warning: 1 energies lie far outside this level's distribution" in text
    assert f"row {level.outliers.first_row} of wb97x_dz.db" in text
    assert f"--energy-cut {level.outliers.energy_cut:g} drops them" in text

    # the suggested cut does what it says: exactly that frame goes
    cut = convert("ani1x", src, tmp_path / "c", only=["wb97x_dz"], energy_cut=level.outliers.energy_cut, progress=False)
    assert cut.levels["wb97x_dz"].written == 27 and cut.levels["wb97x_dz"].outliers is None
    manifest = json.loads((tmp_path / "o" / MANIFEST_NAME).read_text())
    assert manifest["files"]["wb97x_dz.db"]["energy_outliers"] == 1


def test_no_outliers_reported_on_clean_data(tmp_path, ethanol):
    s = convert("ani1x", write_ani1x(tmp_path / "ok.h5"), tmp_path / "o", progress=False)
    assert all(level.outliers is None for level in s.levels.values())
    assert "far outside" not in str(s)
    # real data: the embedded MD at 300-900 K, three levels of theory
    for name in ("pretrain_wb97x_631gs_300K", "pretrain_b3lyp_def2svp_600K", "pretrain_hf_def2svp_900K"):
        s = convert("ase", ethanol[name].extxyz, tmp_path / "e", progress=False)
        (level,) = s.levels.values()
        assert level.written == 200 and level.outliers is None, name


# -- item 7: counts; item 11: OUTDIR that is a file ---------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-frames", "-5"], "argument --max-frames: must be 1 or more, got -5"),
        (["--max-frames", "0"], "argument --max-frames: must be 1 or more, got 0"),
        (["--max-frames", "-5", "--seed", "1"], "argument --max-frames: must be 1 or more, got -5"),
        (["--max-frames", "3", "--seed", "-1"], "argument --seed: must be 0 or more, got -1"),
        (["--max-frames", "2.5"], "argument --max-frames: expected a whole number, got '2.5'"),
        (["--max-force", "-1"], "argument --max-force: must be a positive number, got -1"),
        (["--energy-cut", "nan"], "argument --energy-cut: must be a positive number, got nan"),
    ],
)
def test_bad_counts_are_usage_errors(tmp_path, capsys, args, message):
    src = write_ani1x(tmp_path / "a.h5", n_conf=1)
    with pytest.raises(SystemExit) as exit:
        main(["convert", "ani1x", str(src), str(tmp_path / "o"), *args])
    assert exit.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_counts_through_the_python_api(tmp_path):
    src = write_ani1x(tmp_path / "a.h5", n_conf=1)
    for kwargs, message in (
        ({"max_frames": 0}, "max_frames must be a whole number >= 1, got 0"),
        ({"max_frames": -5, "seed": 1}, "max_frames must be a whole number >= 1, got -5"),
        ({"max_frames": 2, "seed": -1}, "seed must be a whole number >= 0, got -1"),
        ({"max_frames": True}, "max_frames must be a whole number >= 1, got True"),
        ({"energy_cut": 0.0}, "energy_cut must be a positive number, got 0.0"),
    ):
        with pytest.raises(ConversionError, match=message.replace("(", r"\(")):
            convert("ani1x", src, tmp_path / "o", progress=False, **kwargs)
    assert not (tmp_path / "o").exists()


def test_outdir_that_is_a_file(tmp_path, capsys):
    src = write_ani1x(tmp_path / "a.h5", n_conf=1)
    target = tmp_path / "taken"
    target.write_text("a file")
    with pytest.raises(ConversionError, match=f"OUTDIR is a file, not a folder: {target}$"):
        convert("ani1x", src, target, progress=False)
    assert main(["convert", "ani1x", str(src), str(target), "--no-progress"]) == 2
    assert f"spkmeta convert: error: OUTDIR is a file, not a folder: {target}" in capsys.readouterr().err
    with pytest.raises(ConversionError, match=f"OUTDIR {target}/sub cannot be created: {target} is a file"):
        convert("ani1x", src, target / "sub", progress=False)
    assert target.read_text() == "a file"


def test_manifest_records_the_command_line(tmp_path, capsys):
    src = write_ani1x(tmp_path / "a.h5", n_conf=2)
    out = tmp_path / "o"
    assert main(["convert", "ani1x", str(src), str(out), "--only", "wb97x_dz", "--max-frames", "3", "--seed", "0", "--no-progress"]) == 0
    assert f"manifest: {out / MANIFEST_NAME}" in capsys.readouterr().out
    entry = json.loads((out / MANIFEST_NAME).read_text())["files"]["wb97x_dz.db"]
    assert entry["command"] == f"spkmeta convert ani1x {src} {out} --only wb97x_dz --max-frames 3 --seed 0"
    assert entry["frames"] == 3 and entry["level"] == "wB97X/dz"
