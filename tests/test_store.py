"""The packed task store: round trip against ASE frames, label sets with gaps, atomicity,
damage detection, and pickling without copying the arrays."""

import json
import os
import pickle

import ase.io
import numpy as np
import pytest

from spk_meta.data.store import (
    LabelSet,
    PackedStore,
    StoreError,
    StoreWriter,
    file_identity,
    remove_stale_temporaries,
)


@pytest.fixture(scope="module")
def frames(ethanol):
    return ase.io.read(ethanol["pretrain_wb97x_631gs_300K"].extxyz, ":20")


def _write(path, frames, **kw):
    with StoreWriter(path, [LabelSet("wb97x", "wB97X/6-31g*")], **kw) as w:
        for i, a in enumerate(frames):
            w.add_frame(a.numbers, a.positions, {"wb97x": (a.get_potential_energy(), a.get_forces())}, source_index=i)
    return path


def test_round_trip_equals_the_ase_frames(tmp_path, frames):
    store = PackedStore(_write(tmp_path / "e.spkstore", frames))
    assert len(store) == len(frames)
    assert store.elements() == (1, 6, 8)
    assert np.array_equal(store.n_atoms(), [len(a) for a in frames])
    for i in (0, 7, len(frames) - 1):
        f = store.frame(i, "wb97x")
        assert np.array_equal(f["numbers"], frames[i].numbers)
        assert np.array_equal(f["positions"], frames[i].positions)
        assert f["energy"] == frames[i].get_potential_energy()
        assert np.array_equal(f["forces"], frames[i].get_forces())
        assert f["source_index"] == i
    # the headers we rewrite are plain .npy: numpy reads the files without memory maps too
    assert np.array_equal(np.load(store.path / "positions.npy"), np.concatenate([a.positions for a in frames]))


def test_conformer_batches_and_label_sets_with_gaps(tmp_path, frames):
    """ANI-1x layout: several label sets on the same geometries, one of them energy-only and
    partly missing; ``labelled`` keeps exactly the frames with finite labels."""
    numbers = frames[0].numbers
    pos = np.stack([a.positions for a in frames[:6]])
    e = np.array([a.get_potential_energy() for a in frames[:6]])
    f = np.stack([a.get_forces() for a in frames[:6]])
    e_cc = e - 1.0
    e_cc[[1, 4]] = np.nan
    f[3, 2, 1] = np.nan
    sets = [LabelSet("dft", "wB97X/6-31g*"), LabelSet("cc", "CCSD(T)/CBS", has_forces=False, forces_unit=None)]
    with StoreWriter(tmp_path / "s.spkstore", sets) as w:
        w.add_conformers(numbers, pos[:4], {"dft": (e[:4], f[:4]), "cc": (e_cc[:4], None)})
        w.add_conformers(numbers, pos[4:], {"dft": (e[4:], f[4:])})  # no cc labels: NaN
    store = PackedStore(tmp_path / "s.spkstore")
    assert np.array_equal(store.labelled("dft"), [0, 1, 2, 4, 5])
    assert np.array_equal(store.labelled("cc"), [0, 2, 3])
    assert np.array_equal(store.labelled("dft", chunk=2), [0, 1, 2, 4, 5])
    assert store.forces("cc") is None
    assert store.label_sets["cc"].level_of_theory == "CCSD(T)/CBS"
    with pytest.raises(KeyError, match="no label set 'mp2'.*dft, cc"):
        store.energy("mp2")


def test_an_interrupted_writer_leaves_nothing(tmp_path, frames):
    out = tmp_path / "x.spkstore"
    with pytest.raises(RuntimeError, match="boom"):
        with StoreWriter(out, [LabelSet("wb97x")]) as w:
            w.add_frame(frames[0].numbers, frames[0].positions, {"wb97x": (0.0, frames[0].get_forces())})
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_existing_store_is_not_replaced_without_overwrite(tmp_path, frames):
    out = _write(tmp_path / "e.spkstore", frames[:3])
    with pytest.raises(FileExistsError, match="already exists"):
        _write(out, frames[:5])
    _write(out, frames[:5], overwrite=True)
    assert len(PackedStore(out)) == 5
    assert sorted(os.listdir(tmp_path)) == ["e.spkstore"]


def test_bad_input_is_refused_before_anything_is_appended(tmp_path, frames):
    a = frames[0]
    with StoreWriter(tmp_path / "e.spkstore", [LabelSet("wb97x")]) as w:
        with pytest.raises(StoreError, match="forces of shape"):
            w.add_frame(a.numbers, a.positions, {"wb97x": (1.0, a.get_forces()[:-1])})
        with pytest.raises(StoreError, match="unknown label sets"):
            w.add_frame(a.numbers, a.positions, {"mp2": (1.0, None)})
        with pytest.raises(StoreError, match="do not match"):
            w.add_frame(a.numbers[:-1], a.positions, {"wb97x": (1.0, None)})
        w.add_frame(a.numbers, a.positions, {"wb97x": (1.0, a.get_forces())})
    assert len(PackedStore(tmp_path / "e.spkstore")) == 1


def test_damaged_stores_are_named(tmp_path, frames):
    out = _write(tmp_path / "e.spkstore", frames[:5])
    meta = json.loads((out / "store.json").read_text())

    (out / "store.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(StoreError, match="version 99"):
        PackedStore(out)

    (out / "store.json").write_text(json.dumps({**meta, "n_frames": 6}))
    with pytest.raises(StoreError, match=r"offsets.npy: shape \(6,\)"):
        PackedStore(out)

    (out / "store.json").write_text(json.dumps(meta))
    data = (out / "labels" / "wb97x" / "forces.npy").read_bytes()
    (out / "labels" / "wb97x" / "forces.npy").write_bytes(data[:-100])
    with pytest.raises(StoreError, match="forces.npy"):
        PackedStore(out)

    (out / "store.json").unlink()
    with pytest.raises(StoreError, match="interrupted"):
        PackedStore(out)
    with pytest.raises(StoreError, match="no such packed store"):
        PackedStore(tmp_path / "nope.spkstore")


def test_pickling_keeps_only_the_path(tmp_path, frames):
    store = PackedStore(_write(tmp_path / "e.spkstore", frames))
    blob = pickle.dumps(store)
    assert len(blob) < 1000  # the arrays are not copied into the pickle
    again = pickle.loads(blob)
    assert np.array_equal(again.frame(3)["positions"], store.frame(3)["positions"])


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = tmp_path / ".e.spkstore.999999999-abcdef12.tmp"
    alive = tmp_path / f".f.spkstore.{os.getpid()}-abcdef12.tmp"
    dead.mkdir()
    alive.mkdir()
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert not dead.exists() and alive.exists()


def test_file_identity_changes_with_content(tmp_path):
    p = tmp_path / "a.db"
    p.write_bytes(b"1")
    first = file_identity(p)
    p.write_bytes(b"12")
    assert file_identity(p) != first and file_identity(p)["size"] == 2


# -- packing a SchNetPack ASE database -----------------------------------------------------


def test_packing_an_ase_database_matches_reading_it(tmp_path, tiny_db):
    from ase.db import connect

    from spk_meta.data.pack import LABELS, pack_ase_database

    store = pack_ase_database(tiny_db, cache=tmp_path)
    with connect(str(tiny_db), use_lock_file=False) as conn:
        rows = list(conn.select())
    assert len(store) == len(rows) == 40
    for i in (0, 17, 39):
        f = store.frame(i, LABELS)
        assert np.array_equal(f["positions"], rows[i].positions)
        assert f["energy"] == float(rows[i].data["energy"][0])
        assert np.array_equal(f["forces"], rows[i].data["forces"])
        assert f["source_index"] == rows[i].id - 1
    assert store.label_sets[LABELS].level_of_theory == "MP2/6-31g*"
    assert store.label_sets[LABELS].energy_unit == "eV"


def test_a_packed_database_is_reused_until_the_database_changes(tmp_path, tiny_db):
    import shutil

    from spk_meta.data.pack import pack_ase_database

    db = tmp_path / "copy.db"
    shutil.copy(tiny_db, db)
    first = pack_ase_database(db, cache=tmp_path / "cache")
    stamp = (first.path / "store.json").stat().st_mtime_ns
    again = pack_ase_database(db, cache=tmp_path / "cache")
    assert again.path == first.path and (again.path / "store.json").stat().st_mtime_ns == stamp

    from ase.db import connect

    with connect(str(db), use_lock_file=False) as conn:  # the user edits the database
        conn.delete([1, 2])
    changed = pack_ase_database(db, cache=tmp_path / "cache")
    assert changed.path != first.path and len(changed) == 38
    energy_only = pack_ase_database(db, forces_key=None, cache=tmp_path / "cache")
    assert energy_only.forces("labels") is None and energy_only.path != changed.path


def test_a_store_moved_aside_by_a_killed_overwrite_is_put_back(tmp_path, frames):
    """An overwrite moves the old store aside, then renames the new one in; a writer killed
    between the two left the old store hidden and nothing under its name."""
    kept = _write(tmp_path / "a.spkstore", frames[:3])
    aside = tmp_path / ".a.spkstore.999999999-abcdef12.old"  # its writer (pid) is dead
    os.replace(kept, aside)
    replaced = _write(tmp_path / "b.spkstore", frames[:2])
    stale = tmp_path / ".b.spkstore.999999999-12345678.old"  # the new b is in place already
    _write(stale, frames[:1])
    live = tmp_path / f".c.spkstore.{os.getpid()}-abcdef12.old"  # a live writer's: left alone
    live.mkdir()
    with pytest.warns(UserWarning, match=r"a.spkstore: a writer replacing this store was killed"):
        assert remove_stale_temporaries(tmp_path) == [stale]
    assert len(PackedStore(tmp_path / "a.spkstore")) == 3 and not aside.exists()
    assert len(PackedStore(replaced)) == 2 and not stale.exists() and live.exists()


def test_processes_that_find_a_cache_entry_missing_pack_it_once(tiny_db, tmp_path, monkeypatch):
    """Two DDP ranks used to pack the same database at once and race to rename their copies
    onto one folder (OSError: Directory not empty). The second packer now waits for the
    first one's lock and then reuses its copy instead of packing again."""
    import threading

    import spk_meta.data.pack as pack_module
    from spk_meta.utils.atomic import exclusive_lock

    out = pack_module.packed_path(tiny_db, "energy", "forces", cache=tmp_path)
    calls = []
    real_pack = pack_module._pack
    monkeypatch.setattr(pack_module, "_pack", lambda *a: (calls.append(a[-2]), real_pack(*a)))
    result = {}
    with exclusive_lock(out.parent / f".{out.name}.lock"):  # "rank 0" is packing
        waiter = threading.Thread(target=lambda: result.update(store=pack_module.pack_ase_database(tiny_db,
                                                                                                   cache=tmp_path)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not out.exists()  # "rank 1" waits instead of packing beside it
        md = pack_module.read_database_metadata(tiny_db)
        real_pack(tiny_db, md, md["_property_unit_dict"], "energy", "forces", True, out, False)
    waiter.join(timeout=60)
    assert not waiter.is_alive() and calls == []  # it reused the copy packed while it waited
    assert result["store"].path == out and len(result["store"]) == 40
