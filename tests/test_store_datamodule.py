"""TaskDataModule served from the packed store (#11): the same data as the ASE databases
read directly, lazily, with workers, and streams that never materialise a big task's order."""

import pickle
import shutil
import tracemalloc

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.db import connect
from schnetpack import transform as T

from spk_meta.data import TaskData, TaskDataError, TaskDataset, TaskBatchStream, write_database
from spk_meta.data import datamodule as datamodule_module
from spk_meta.data import sampling as sampling_module
from spk_meta.data import task_dataset as task_dataset_module
from spk_meta.data.atomrefs import composition_matrix
from spk_meta.data.sampling import PseudoRandomPermutation
from spk_meta.data.store import LabelSet, StoreWriter
from test_task_data import make_dm as task_data_module

PRETRAIN = {
    "wb97x_6-31gs": "pretrain_wb97x_631gs_300K",
    "b3lyp_def2-svp": "pretrain_b3lyp_def2svp_600K",
    "hf_def2-svp": "pretrain_hf_def2svp_900K",
}


def make_dm(tasks, **kw):
    """test_task_data's data module, in float64 (compared with values read in float64)."""
    kw.setdefault("transforms", [T.MatScipyNeighborList(5.2), T.CastTo64()])
    return task_data_module(tasks, **kw)


def read_rows(db):
    """Every row of an ASE database, read with ase.db (the independent reference)."""
    with connect(str(db), use_lock_file=False) as conn:
        return [(r.numbers, r.positions, float(r.data["energy"][0]), np.asarray(r.data["forces"])) for r in conn.select()]


def write_store(path, frames, gaps=()):
    """The frames as a store with label sets 'a' (all) and 'b' (NaN at ``gaps``)."""
    with StoreWriter(path, [LabelSet("a", "MP2/6-31g*"), LabelSet("b", "CCSD(T)/CBS", has_forces=False)]) as w:
        for i, atoms in enumerate(frames):
            e = atoms.get_potential_energy()
            w.add_frame(atoms.numbers, atoms.positions,
                        {"a": (e, atoms.get_forces()), "b": (np.nan if i in gaps else e + 1.0, None)})
    return path


# -- the same results as reading the databases -------------------------------------------------


def test_embedded_tasks_equal_the_databases_read_directly(ethanol, in_tmp):
    """Splits, E0, every served sample and the stream's batches against values computed
    here from ase.db, numpy's RNG and a numpy least-squares fit."""
    tasks = {name: ethanol[stem].db for name, stem in PRETRAIN.items()}
    dm = make_dm(tasks, split_seed=3, stream_seed=11, transforms=[])
    rng = np.random.default_rng(3)
    for i, (name, db) in enumerate(tasks.items()):
        rows = read_rows(db)
        perm = rng.permutation(len(rows))
        expected = {"train": np.sort(perm[:120]), "val": np.sort(perm[120:150]), "test": np.sort(perm[150:200])}
        for s in ("train", "val", "test"):
            np.testing.assert_array_equal(dm.dataset[name].db_index[dm.splits[name][s]], expected[s])
        train = expected["train"]
        elements = sorted({int(z) for r in rows for z in r[0]})
        A = np.array([[np.sum(rows[j][0] == z) for z in elements] for j in train], dtype=float)
        e0, *_ = np.linalg.lstsq(A, np.array([rows[j][2] for j in train]), rcond=None)
        np.testing.assert_allclose(dm.energy_references[name].values, e0, rtol=0, atol=1e-9)
        table = dict(zip(elements, e0))
        sub = dm.subsets[name]["train"]
        for k in range(len(sub)):
            numbers, positions, energy, forces = rows[train[k]]
            sample = sub[k]
            assert int(sample["_idx"]) == train[k] and int(sample["_task"]) == i
            np.testing.assert_array_equal(sample["_atomic_numbers"].numpy(), numbers)
            np.testing.assert_array_equal(sample["_positions"].numpy(), positions)
            np.testing.assert_array_equal(sample["forces"].numpy(), forces)
            assert float(sample["energy"]) == pytest.approx(energy - sum(table[int(z)] for z in numbers), abs=1e-9)
        # the stream: torch.randperm(120) with seed stream_seed + task index, cut in batches
        order = torch.randperm(120, generator=torch.Generator().manual_seed(11 + i)).tolist()
        got = [dm.next_batch(name)["_idx"].tolist() for _ in range(15)]
        assert got == [train[order[b * 8 : b * 8 + 8]].tolist() for b in range(15)]


def test_a_store_label_set_serves_what_the_database_serves(ethanol, tmp_path, in_tmp):
    frames = ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, ":12")
    db = write_database(frames, tmp_path / "mp2.db", "MP2/6-31g*")
    store = write_store(tmp_path / "mp2.spkstore", frames, gaps={4})
    ds = TaskDataset({"db": db, "at": f"{store}@a", "mapping": {"path": str(store), "labels": "a"}})
    assert len(ds["at"]) == len(ds["db"]) == 12
    for i in range(12):
        a, b, c = ds["db"][i], ds["at"][i], ds["mapping"][i]
        for key in ("energy", "forces", "_positions", "_atomic_numbers", "_cell", "_pbc"):
            np.testing.assert_array_equal(b[key].numpy(), a[key].numpy(), err_msg=key)
            np.testing.assert_array_equal(c[key].numpy(), a[key].numpy(), err_msg=key)
    # a label set named by its level; NaN in it: named, or skipped with the frame number
    with pytest.raises(TaskDataError, match=r"mp2\.spkstore: frame 4: NaN or inf .* in label set 'b'"):
        TaskDataset([f"{store}@b"])
    with pytest.warns(UserWarning, match=r"skipped 1 of 12 frames .*frames \[4\]"):
        ds = TaskDataset([f"{store}@b"], nan_policy="skip")
    assert ds.names == ["ccsd-t_cbs"] and 4 not in ds["ccsd-t_cbs"].db_index.tolist()
    assert not ds["ccsd-t_cbs"].has_forces and float(ds["ccsd-t_cbs"].energies[0]) == pytest.approx(
        frames[0].get_potential_energy() + 1.0)
    with pytest.raises(TaskDataError, match=r"mp2\.spkstore: the store has label sets a, b; pick one"):
        TaskDataset({"x": store})
    with pytest.raises(TaskDataError, match=r"mp2\.spkstore: no label set 'c'; it has: a, b"):
        TaskDataset({"x": f"{store}@c"})


def test_hydra_override_spelling_of_a_store_task(ethanol, tmp_path, in_tmp):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    frames = ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, ":6")
    write_store(tmp_path / "lv.spkstore", frames)
    override = "+data.tasks={mp2: lv.spkstore@a, cc: {path: lv.spkstore, labels: b}}"
    tasks = OverridesParser.create().parse_overrides([override])[0].value()
    ds = TaskDataset(tasks, base_dir=tmp_path)
    assert ds.sizes() == {"mp2": 6, "cc": 6} and ds["mp2"].has_forces and not ds["cc"].has_forces


# -- memory and identity ---------------------------------------------------------------------


def test_only_index_sized_arrays_are_resident(ethanol, in_tmp):
    data = TaskData("t", ethanol["pretrain_wb97x_631gs_300K"].db)
    data.set_reference(None)
    resident = sum(v.nbytes for v in vars(data).values() if type(v) is np.ndarray)
    assert resident <= 3 * 8 * len(data)  # frames, atom counts, reference: not 9 atoms x 3 x 8 x 2
    clone = pickle.loads(pickle.dumps(data))  # what a spawned worker gets: no frame data
    assert len(pickle.dumps(data)) < 8 * 9 * 3 * len(data)
    np.testing.assert_array_equal(clone[5]["_positions"], data[5]["_positions"])


def test_identity_reads_no_frames_and_follows_content(ethanol, tmp_path, in_tmp):
    frames = ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, ":8")
    store = write_store(tmp_path / "s.spkstore", frames)
    data = TaskData("t", store, labels="a")
    reads = []

    class Counting(np.ndarray):  # positions whose reads are counted
        def __getitem__(self, key):
            reads.append(key)
            return np.asarray(self).__getitem__(key)

    data.store.numbers_all = data.store._forces = None  # identity must not read atoms or forces
    data.store.positions_all = data.store.positions_all.view(Counting)
    ident = data.identity()
    assert 0 < len(reads) <= 64  # a fixed sample of frames, whatever the size
    copy = shutil.copytree(store, tmp_path / "copy.spkstore")
    assert TaskData("t", copy, labels="a").identity().fingerprint == ident.fingerprint
    assert TaskData("t", store, labels="b").identity().fingerprint != ident.fingerprint
    write_store(tmp_path / "other.spkstore", frames[::-1])
    assert TaskData("t", tmp_path / "other.spkstore", labels="a").identity().fingerprint != ident.fingerprint


def test_chunked_element_counts_equal_the_composition_matrix(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    frames = []
    for i in range(23):
        atoms = molecule(["H2O", "CH4", "NH3", "C2H6", "CH3OH"][i % 5])
        atoms.info["energy"] = -float(i)
        atoms.arrays["forces"] = rng.normal(size=(len(atoms), 3))
        frames.append(atoms)
    data = TaskData("t", write_database(frames, tmp_path / "m.db", "PBE/def2-svp"))
    monkeypatch.setattr(task_dataset_module, "SCAN_CHUNK_FRAMES", 4)
    positions = np.array([0, 2, 3, 7, 8, 9, 15, 21, 22])
    expected = composition_matrix([frames[p].numbers for p in positions], data.elements)
    np.testing.assert_array_equal(data.element_counts(positions, data.elements), expected)
    with pytest.raises(TaskDataError, match=r"task 't' .*N not in the fitted elements"):
        data.element_counts(positions, (1, 6, 8))


# -- workers and large tasks -----------------------------------------------------------------


def test_workers_serve_the_same_stream_and_resume_exactly(tiny_db, in_tmp):
    kw = dict(num_train=24, num_val=8, num_test=8, split_seed=0, stream_seed=2, batch_size=5)
    plain = make_dm({"mp2": tiny_db}, num_workers=0, **kw)
    assert plain.num_workers == 0  # a small task: no workers by default
    workers = make_dm({"mp2": tiny_db}, num_workers=2, split_file="w.npz", **kw)
    expected = [plain.next_batch("mp2") for _ in range(9)]
    got = [workers.next_batch("mp2") for _ in range(4)]
    state = workers.state_dict()  # workers have prefetched beyond batch 4
    got += [workers.next_batch("mp2") for _ in range(5)]
    for a, b in zip(expected, got):
        assert a["_idx"].tolist() == b["_idx"].tolist()
        torch.testing.assert_close(a["_idx_j"], b["_idx_j"])
    resumed = make_dm({"mp2": tiny_db}, num_workers=0, split_file="w.npz", **kw)
    resumed.load_state_dict(state)
    assert [resumed.next_batch("mp2")["_idx"].tolist() for _ in range(5)] == [b["_idx"].tolist() for b in expected[4:]]


def test_large_tasks_get_workers_and_no_sample_cache(tiny_db, in_tmp, monkeypatch):
    monkeypatch.setattr(datamodule_module, "LARGE_TASK_FRAMES", 30)
    monkeypatch.setattr(task_dataset_module, "LARGE_TASK_FRAMES", 30)
    dm = make_dm({"mp2": tiny_db}, num_train=24, num_val=8, num_test=8)
    assert dm.num_workers == 2 and dm.num_val_workers == 2
    assert not dm.subsets["mp2"]["train"].cache_enabled
    assert make_dm({"mp2": tiny_db}, num_train=24, num_val=8, num_test=8, num_workers=0).num_workers == 0


def test_pseudo_random_permutation_is_a_permutation():
    for n in (1, 2, 3, 17, 1000, 4097):
        p = PseudoRandomPermutation(n, [1, 2, 3, 4])
        np.testing.assert_array_equal(np.sort(p[0:n]), np.arange(n))
        np.testing.assert_array_equal(p[np.arange(n)][5:9], p[5:9])
    a, b = PseudoRandomPermutation(1000, [1, 2, 3, 4])[:], PseudoRandomPermutation(1000, [5, 6, 7, 8])[:]
    assert (a != b).mean() > 0.9 and abs(np.corrcoef(np.arange(1000), a)[0, 1]) < 0.1


class _Range:
    """A dataset of ``n`` frames whose samples are their index (no data behind it)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def test_a_5m_frame_stream_mixes_with_a_5k_one_without_materialising_its_order():
    big = TaskBatchStream(_Range(5_000_000), 32, seed=0, collate_fn=list)
    small = TaskBatchStream(_Range(5_000), 32, seed=1, collate_fn=list)
    tracemalloc.start()
    seen = [next(big) for _ in range(50)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000  # a materialised order would be 40 MB (int64), 200 MB as a list
    flat = np.concatenate(seen)
    assert len(np.unique(flat)) == len(flat) and flat.max() < 5_000_000 and flat.min() >= 0
    state = big.state_dict()
    assert len(pickle.dumps(state)) < 100_000
    again = TaskBatchStream(_Range(5_000_000), 32, seed=99, collate_fn=list)
    again.load_state_dict(state)
    assert [next(again) for _ in range(5)] == [next(big) for _ in range(5)]
    for _ in range(200):  # the small task's passes: each frame once per pass
        next(small)
    assert small.passes == 1


def test_a_large_stream_pass_covers_the_split_once(monkeypatch):
    monkeypatch.setattr(sampling_module, "MATERIALISED_ORDER_MAX", 10)
    stream = TaskBatchStream(_Range(101), 8, seed=0, collate_fn=list)
    first = sum((next(stream) for _ in range(13)), [])
    second = sum((next(stream) for _ in range(13)), [])
    assert sorted(first) == sorted(second) == list(range(101)) and first != second
    assert isinstance(stream._order, PseudoRandomPermutation) and stream.passes == 1


def _store_rss_kb(folder) -> int:
    """Resident KB of this process's mappings of files under ``folder`` (/proc/self/smaps)."""
    total, current = 0, ""
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                current = head[-1] if len(head) >= 6 else ""
            elif line.startswith("Rss:") and current.startswith(str(folder)):
                total += int(head[1])
    return total


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MADV_DONTNEED"), reason="needs madvise")
def test_store_pages_read_by_samples_do_not_accumulate(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    path = tmp_path / "big.spkstore"
    with StoreWriter(path, [LabelSet("a")]) as w:
        for _ in range(200):  # 40 000 frames of 12 atoms: 23 MB of positions and forces
            w.add_conformers(np.array([6, 6, 8, 1, 1, 1, 1, 1, 1, 7, 1, 1]), rng.normal(size=(200, 12, 3)),
                             {"a": (rng.normal(size=200), rng.normal(size=(200, 12, 3)))})
    order = rng.permutation(40_000)[:3000]
    resident = {}
    for every in (10**9, 32):
        monkeypatch.setattr(task_dataset_module, "RELEASE_EVERY", every)
        data = TaskData("t", path)
        for i in order:
            data[int(i)]
        resident[every] = _store_rss_kb(path)
        del data
    assert resident[10**9] > 20_000  # without releasing: most of the 27 MB store is mapped in
    assert resident[32] < resident[10**9] / 3  # released every 32 samples: what the last ones read


def test_the_embedded_datasets_import_first():
    """spk_meta.datasets imports spk_meta.data, whose packing needs the cache folder of
    spk_meta.datasets: a fresh interpreter importing the datasets first must not loop."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import spk_meta.datasets.embedded"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_joint_epochs_cut_batches_lazily_and_as_before(monkeypatch):
    from spk_meta.data import TaskBatchSampler

    sizes, batch = [37, 5, 20], 8
    sampler = TaskBatchSampler(sizes, batch, seed=4)
    got = list(sampler)
    # the epoch as it was drawn before: every task's randperm, then a randperm of all batches
    g = torch.Generator().manual_seed(4)
    batches, offset = [], 0
    for n in sizes:
        perm = (torch.randperm(n, generator=g) + offset).tolist()
        batches += [perm[i : i + batch] for i in range(0, n, batch)]
        offset += n
    assert got == [batches[b] for b in torch.randperm(len(batches), generator=g).tolist()]
    assert list(TaskBatchSampler(sizes, batch, shuffle=False)) == [
        list(range(a, min(a + batch, hi))) for lo, hi in ((0, 37), (37, 42), (42, 62)) for a in range(lo, hi, batch)]
    # a 5M-frame task mixed with a 5k one: the first batches come without per-frame lists
    big = TaskBatchSampler([5_000_000, 5_000], 32, seed=0)
    tracemalloc.start()
    it = iter(big)
    first = [next(it) for _ in range(100)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000  # one int per batch (156 k batches); not 5 M frames
    assert all(len(set(np.asarray(b) >= 5_000_000)) == 1 for b in first)  # one task per batch


def test_a_converted_store_trains_like_the_converted_database(ethanol, tmp_path, in_tmp):
    """`spkmeta convert --format packed` output, named as the docs say (STORE@<level slug>),
    gives the data module the same split rows, E0 and samples as the `--format db` output."""
    from spk_meta.convert.run import convert

    source = ethanol["target_mp2_631gs_test_300K"].extxyz
    convert("ase", source, tmp_path / "db", level="MP2/6-31g*", max_frames=30, progress=False)
    convert("ase", source, tmp_path / "packed", level="MP2/6-31g*", max_frames=30, progress=False,
            output_format="packed")
    (store,) = (tmp_path / "packed").glob("*.spkstore")
    kw = dict(num_train=20, num_val=5, num_test=5, split_seed=1, transforms=[])
    db = make_dm({"mp2": tmp_path / "db" / "mp2_6-31gs.db"}, split_file="a.npz", **kw)
    packed = make_dm({"mp2": f"{store}@mp2_6-31gs"}, split_file="b.npz", **kw)
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(packed.dataset["mp2"].db_index[packed.splits["mp2"][s]],
                                      db.dataset["mp2"].db_index[db.splits["mp2"][s]])
    np.testing.assert_allclose(packed.energy_references["mp2"].values, db.energy_references["mp2"].values, atol=1e-9)
    for k in range(20):
        a, b = db.subsets["mp2"]["train"][k], packed.subsets["mp2"]["train"][k]
        for key in ("energy", "forces", "_positions", "_atomic_numbers"):
            np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=0, atol=1e-9, err_msg=key)
