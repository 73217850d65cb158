"""`spkmeta convert --format packed`: one packed store per source, holding per level the
very frames, numbers and counts the per-level databases get; the output folder's lock,
manifest, --overwrite and clean-up semantics; interrupted runs leave nothing (issue #11)."""

import json
import os
import shutil

import numpy as np
import pytest
from ase.db import connect

from spk_meta.cli.main import main
from spk_meta.convert import ConversionError, convert
from spk_meta.convert.ani import ANI1xReader
from spk_meta.convert.outdir import MANIFEST_NAME
from spk_meta.convert.packed import NO_LABEL_AT_ANY_LEVEL
from spk_meta.data.store import LabelSet, PackedStore, StoreWriter
from test_convert_reliability import _corrupt, listing, write_ani1x

LEVELS = {"wb97x_dz": "wb97x_dz", "wb97x_tz": "wb97x_tz", "ccsd(t)_cbs": "ccsd-t_cbs"}


def _broken(f):
    """Unusable labels of every kind, at some levels only (see _corrupt for wb97x_dz)."""
    _corrupt(f)
    f["CH4/wb97x_tz.energy"][2] = np.nan  # CH4[2]: inf at dz, NaN at tz, fine at ccsd
    f["H2O/ccsd(t)_cbs.energy"][1] = np.nan  # H2O[1]: -inf at dz, fine at tz
    forces = f["H2O/wb97x_tz.forces"][()]
    forces[4, 1, 2] = np.nan
    f["H2O/wb97x_tz.forces"][...] = forces
    for key in ("wb97x_dz", "wb97x_tz", "ccsd(t)_cbs"):  # H2O[6]: no label at any level
        f[f"H2O/{key}.energy"][6] = np.nan


def db_frames(path):
    """(numbers, positions, energy, forces or None) of every row of a converted database."""
    with connect(str(path), use_lock_file=False) as conn:
        return [
            (row.numbers, row.positions, float(np.asarray(row.data["energy"]).reshape(-1)[0]),
             None if "forces" not in row.data else np.asarray(row.data["forces"]))
            for row in conn.select()
        ]


def assert_same_frames(store: PackedStore, label_set: str, db_path):
    """The store's labelled frames of ``label_set`` equal the database row by row."""
    rows = db_frames(db_path)
    index = store.labelled(label_set)
    assert len(index) == len(rows) > 0
    for i, (numbers, positions, energy, forces) in zip(index, rows):
        frame = store.frame(int(i), label_set)
        np.testing.assert_array_equal(frame["numbers"], numbers)
        np.testing.assert_array_equal(frame["positions"], positions)
        assert frame["energy"] == energy
        if forces is None:
            assert "forces" not in frame
        else:
            np.testing.assert_array_equal(frame["forces"], forces)


def both_format(format, src, tmp_path, **options):
    """Convert ``src`` into OUT/db and OUT/packed: (db summary, packed summary, the store)."""
    db = convert(format, src, tmp_path / "db", progress=False, **options)
    packed = convert(format, src, tmp_path / "packed", progress=False, output_format="packed", **options)
    return db, packed, PackedStore(tmp_path / "packed" / f"{src.stem}.spkstore")


def both(src, tmp_path, **options):
    return both_format("ani1x", src, tmp_path, **options)


def assert_same_counts(db, packed):
    assert packed.frames_read == db.frames_read
    assert list(packed.levels) == list(db.levels)
    for k, d in db.levels.items():
        p = packed.levels[k]
        assert (p.written, p.skipped, p.elements) == (d.written, d.skipped, d.elements), k
        assert (p.energy_min, p.energy_max) == (d.energy_min, d.energy_max), k
        assert (p.outliers is None) == (d.outliers is None), k
        if d.outliers is not None:
            assert (p.outliers.count, p.outliers.most_extreme, p.outliers.energy_cut) == (
                d.outliers.count, d.outliers.most_extreme, d.outliers.energy_cut)
    # the db path counts structures only for --elements; packed adds the ones it leaves out
    assert {r: n for r, n in packed.skipped.items() if r != NO_LABEL_AT_ANY_LEVEL} == dict(db.skipped)


def test_packed_store_equals_the_databases_frame_by_frame(tmp_path):
    src = write_ani1x(tmp_path / "ani.h5", edit=_broken)
    db, packed, store = both(src, tmp_path)
    assert listing(tmp_path / "packed") == ["ani.spkstore", MANIFEST_NAME]
    assert sorted(store.label_sets) == sorted(LEVELS.values())
    assert not store.label_sets["ccsd-t_cbs"].has_forces and store.label_sets["wb97x_tz"].has_forces
    assert_same_counts(db, packed)
    assert db.levels["wb97x_dz"].skipped == {"non-finite energy (inf)": 2, "no energy (NaN)": 2, "non-finite forces (inf)": 1}
    assert db.levels["wb97x_tz"].skipped == {"no energy (NaN)": 2, "forces NaN": 1}
    for key, slug in LEVELS.items():
        assert_same_frames(store, slug, tmp_path / "db" / f"{slug}.db")
    # positions once: 32 structures less the one without any label; unusable -> NaN
    assert len(store) == 31 and packed.skipped == {NO_LABEL_AT_ANY_LEVEL: 1}
    assert np.isnan(store.energy("wb97x_dz")).sum() == 31 - db.levels["wb97x_dz"].written
    ch4_2 = 8 + 2  # CH4 is the second formula: inf at dz, NaN at tz, a value at ccsd
    assert store.source_index[ch4_2] == ch4_2
    assert np.isnan(store.energy("wb97x_dz")[ch4_2]) and np.isnan(store.energy("wb97x_tz")[ch4_2])
    assert np.isfinite(store.energy("ccsd-t_cbs")[ch4_2])
    assert np.isnan(store.forces("wb97x_dz")[store.atoms_slice(ch4_2)]).all()
    assert store.source["written_by"] == "spkmeta convert" and store.source["converted_from"] == "ani1x"
    # the outlier (10^6 Hartree) is named by its frame in the store
    (line,) = [l for l in str(packed).splitlines() if "far outside" in l]
    flagged = int(line.split("first at frame ")[1].split()[0])
    assert store.energy("wb97x_dz")[flagged] == packed.levels["wb97x_dz"].outliers.most_extreme


@pytest.mark.parametrize(
    "options",
    [
        {"elements": "H,C,O"},
        {"max_frames": 11, "seed": 3},
        {"max_frames": 13},
        {"max_force": 0.02 * 2.5 * 27.211386},
        {"energy_cut": 100.0, "only": ["wb97x_dz", "ccsd(t)_cbs"]},
    ],
    ids=["elements", "subset-seed", "subset-first", "max-force", "energy-cut-only"],
)
def test_filters_select_the_same_frames(tmp_path, options):
    src = write_ani1x(tmp_path / "ani.h5", edit=_broken)
    db, packed, store = both(src, tmp_path, **options)
    assert_same_counts(db, packed)
    assert sum(sum(s.skipped.values()) for s in db.levels.values()) + sum(db.skipped.values()) > 0
    for key in db.levels:
        assert_same_frames(store, LEVELS[key], tmp_path / "db" / f"{LEVELS[key]}.db")


def test_generic_readers_pack_the_same_frames(tmp_path, ethanol):
    """A reader without a group layout (extxyz) goes through the same packed path."""
    extxyz = ethanol["pretrain_wb97x_631gs_300K"].extxyz
    db = convert("ase", extxyz, tmp_path / "db", progress=False)
    packed = convert("ase", extxyz, tmp_path / "p", progress=False, output_format="packed")
    assert_same_counts(db, packed)
    store = PackedStore(tmp_path / "p" / f"{extxyz.stem}.spkstore")
    (slug,) = store.label_sets
    assert len(store) == 200
    assert_same_frames(store, slug, tmp_path / "db" / f"{slug}.db")


def test_manifest_lists_the_store(tmp_path):
    src = write_ani1x(tmp_path / "ani.h5", edit=_broken)
    out = tmp_path / "o"
    s = convert("ani1x", src, out, progress=False, output_format="packed", only=["wb97x_dz", "wb97x_tz"])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    entry = manifest["files"]["ani.spkstore"]
    assert entry["kind"] == "packed store" and entry["frames"] == len(PackedStore(out / "ani.spkstore"))
    assert entry["size_bytes"] == sum(p.stat().st_size for p in (out / "ani.spkstore").rglob("*") if p.is_file())
    assert set(entry["label_sets"]) == {"wb97x_dz", "wb97x_tz"}
    assert entry["label_sets"]["wb97x_tz"]["frames"] == s.levels["wb97x_tz"].written
    assert entry["label_sets"]["wb97x_dz"]["level"] == "wB97X/dz"
    assert manifest["last_run"]["output_format"] == "packed" and manifest["last_run"]["written"] == ["ani.spkstore"]


def test_a_store_exists_only_when_the_conversion_finished(tmp_path, monkeypatch):
    src = write_ani1x(tmp_path / "ani.h5")
    out = tmp_path / "o"
    out.mkdir()
    real = ANI1xReader.groups

    def interrupted(self):
        for i, group in enumerate(real(self)):
            if i == 2:
                raise KeyboardInterrupt
            yield group

    monkeypatch.setattr(ANI1xReader, "groups", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert("ani1x", src, out, progress=False, output_format="packed")
    assert listing(out) == []  # no store, no temporary folder, no manifest, no lock

    # a killed writer's temporary folder goes on the next run (a live one's stays)
    pid = os.fork()
    if pid == 0:
        try:
            w = StoreWriter(out / "ani.spkstore", [LabelSet("wb97x_dz")])
            w.add_frame([1, 1], np.zeros((2, 3)), {"wb97x_dz": (-1.0, np.zeros((2, 3)))})
        finally:
            os._exit(0)  # no close, no abort: as if killed
    os.waitpid(pid, 0)
    (leftover,) = listing(out)
    assert leftover.startswith(f".ani.spkstore.{pid}-") and leftover.endswith(".tmp")
    alive = out / f".other.spkstore.{os.getpid()}-abcdef12.tmp"
    alive.mkdir()
    monkeypatch.setattr(ANI1xReader, "groups", real)
    s = convert("ani1x", src, out, progress=False, output_format="packed")
    assert s.removed_temporaries == [leftover]
    assert listing(out) == [alive.name, "ani.spkstore", MANIFEST_NAME]
    assert len(PackedStore(out / "ani.spkstore")) == 32


def test_overwrite_replaces_the_store(tmp_path, capsys):
    first = write_ani1x(tmp_path / "ani.h5", seed=0)
    out = tmp_path / "o"
    convert("ani1x", first, out, progress=False, output_format="packed")
    before = PackedStore(out / "ani.spkstore").energy("wb97x_dz").copy()
    (tmp_path / "again").mkdir()
    second = write_ani1x(tmp_path / "again" / "ani.h5", seed=1)  # same name, other content
    with pytest.raises(ConversionError, match="ani.spkstore already exists; pass --overwrite"):
        convert("ani1x", second, out, progress=False, output_format="packed")
    np.testing.assert_array_equal(PackedStore(out / "ani.spkstore").energy("wb97x_dz"), before)

    # a db conversion before, a foreign store beside: --overwrite keeps only this run's store
    convert("ani1x", first, out, progress=False, only=["wb97x_dz"])
    foreign = out / "mine.spkstore"
    shutil.copytree(out / "ani.spkstore", foreign)
    meta = json.loads((foreign / "store.json").read_text())
    meta["source"] = {"made": "by hand"}
    (foreign / "store.json").write_text(json.dumps(meta))
    s = convert("ani1x", second, out, progress=False, output_format="packed", only=["wb97x_dz"], overwrite=True)
    assert s.removed == ["wb97x_dz.db"] and s.kept == ["mine.spkstore"]
    assert listing(out) == ["ani.spkstore", MANIFEST_NAME, "mine.spkstore"]
    store = PackedStore(out / "ani.spkstore")
    assert list(store.label_sets) == ["wb97x_dz"] and not np.array_equal(store.energy("wb97x_dz"), before)
    assert list(json.loads((out / MANIFEST_NAME).read_text())["files"]) == ["ani.spkstore"]


def test_cli_format_packed(tmp_path, capsys):
    src = write_ani1x(tmp_path / "ani.h5", edit=_broken)
    out = tmp_path / "o"
    db = convert("ani1x", src, tmp_path / "db", progress=False, max_force=1.0)
    n = db.levels["wb97x_dz"].written
    assert 0 < n < 28 and db.levels["wb97x_dz"].skipped["force above --max-force 1 eV/Ang"] > 0
    args = ["convert", "ani1x", str(src), str(out), "--format", "packed", "--max-force", "1", "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"wB97X/dz: {n} frames -> {out / 'ani.spkstore'} (label set wb97x_dz)" in text
    assert f"skipped {db.levels['wb97x_dz'].skipped['force above --max-force 1 eV/Ang']}: force above --max-force" in text
    assert f"skipped 1 structures: {NO_LABEL_AT_ANY_LEVEL}" in text
    entry = json.loads((out / MANIFEST_NAME).read_text())["files"]["ani.spkstore"]
    assert entry["command"] == f"spkmeta convert ani1x {src} {out} --max-force 1.0 --format packed"
    assert len(PackedStore(out / "ani.spkstore").labelled("wb97x_dz")) == n
    assert main(args) == 2  # exists: refused, named
    assert "ani.spkstore already exists; pass --overwrite to replace" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", "ani1x", str(src), str(out), "--format", "sqlite"])
    assert "invalid choice: 'sqlite'" in capsys.readouterr().err


def test_anidataset_groups_of_several_formulas(tmp_path):
    """torchani's by_num_atoms groups mix formulas: each conformer keeps its own species."""
    import torch
    from torchani.datasets import ANIDataset

    rng = np.random.default_rng(0)
    path = tmp_path / "ds.h5"
    ds = ANIDataset(str(path), grouping="by_num_atoms")
    species = np.array([[6, 1, 1, 1, 1], [7, 1, 1, 1, 1], [6, 1, 1, 1, 1]])
    ds.append_conformers("005", {
        "species": torch.tensor(species), "coordinates": torch.tensor(rng.normal(0, 1, (3, 5, 3)).astype(np.float32)),
        "energies": torch.tensor([-40.1, -56.2, -40.3], dtype=torch.float64),
        "forces": torch.tensor(rng.normal(0, 0.01, (3, 5, 3)).astype(np.float32)),
    })
    db, packed, store = both_format("anidataset", path, tmp_path, level="wB97X/6-31g*")
    assert_same_counts(db, packed)
    assert [tuple(store.frame(i)["numbers"]) for i in range(3)] == [tuple(z) for z in species]
    assert_same_frames(store, "wb97x_6-31gs", tmp_path / "db" / "wb97x_6-31gs.db")
