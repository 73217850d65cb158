"""Which on-disk format for the packed task store: measured side by side.

Synthetic ANI-1x-like frames (8-20 C/H/N/O atoms, energies and forces; conformers of one
composition come in groups as in ANI-1x's HDF5 layout) are written to

* ``npy``  - spk-meta's packed store (:mod:`spk_meta.data.store`: memory-mapped ``.npy``),
* ``hdf5`` - the same arrays as chunked, resizable h5py datasets (as MACE's preprocessed
  data), read with one open file handle,
* ``lmdb`` - fairchem's ASE-LMDB backend (``ase-db-backends``), if installed,
* ``sqlite`` - SchNetPack's ASE database (today's format), on a tenth of the frames,

then ``--reads`` random frames (numbers, positions, energy, forces) are read from each in a
shuffled order, as a training loader does. Printed: write frames/s, random-read frames/s,
size on disk. The last line is

    ratio read npy/hdf5: X.X

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/store_format.py [--frames 200000] [--reads 20000]
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from spk_meta.data.store import LabelSet, PackedStore, StoreWriter

ELEMENTS = np.array([1, 6, 7, 8])


def synthetic_groups(n_frames: int, seed: int = 0, group: int = 50):
    """Yield ``(numbers, positions (c, n, 3), energy (c,), forces (c, n, 3))`` groups."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_frames:
        n = int(rng.integers(8, 21))
        c = min(group, n_frames - done)
        numbers = rng.choice(ELEMENTS, size=n, p=[0.5, 0.3, 0.1, 0.1])
        pos = rng.normal(scale=1.5, size=(c, n, 3))
        yield numbers, pos, rng.normal(size=c) - 1000.0, rng.normal(size=(c, n, 3))
        done += c


def dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_npy(path: Path, n: int) -> None:
    with StoreWriter(path, [LabelSet("dft")]) as w:
        for numbers, pos, e, f in synthetic_groups(n):
            w.add_conformers(numbers, pos, {"dft": (e, f)})


def read_npy(path: Path, order: np.ndarray) -> None:
    store = PackedStore(path)
    energy, forces = store.energy("dft"), store.forces("dft")
    for i in order:
        s = store.atoms_slice(i)
        np.array(store.numbers_all[s]), np.array(store.positions_all[s]), float(energy[i]), np.array(forces[s])


def write_hdf5(path: Path, n: int) -> None:
    import h5py

    with h5py.File(path, "w") as h:
        ds = {
            "offsets": h.create_dataset("offsets", (1,), maxshape=(None,), dtype="i8", chunks=(65536,)),
            "numbers": h.create_dataset("numbers", (0,), maxshape=(None,), dtype="u1", chunks=(65536,)),
            "positions": h.create_dataset("positions", (0, 3), maxshape=(None, 3), dtype="f8", chunks=(16384, 3)),
            "energy": h.create_dataset("energy", (0,), maxshape=(None,), dtype="f8", chunks=(65536,)),
            "forces": h.create_dataset("forces", (0, 3), maxshape=(None, 3), dtype="f8", chunks=(16384, 3)),
        }
        atoms = 0
        for numbers, pos, e, f in synthetic_groups(n):
            c, k = pos.shape[:2]
            offs = atoms + k * np.arange(1, c + 1)
            for name, values in (
                ("offsets", offs),
                ("numbers", np.tile(numbers, c)),
                ("positions", pos.reshape(-1, 3)),
                ("energy", e),
                ("forces", f.reshape(-1, 3)),
            ):
                d = ds[name]
                old = d.shape[0]
                d.resize(old + len(values), axis=0)
                d[old:] = values
            atoms += c * k


def read_hdf5(path: Path, order: np.ndarray) -> None:
    import h5py

    with h5py.File(path, "r") as h:
        offsets = h["offsets"][:]  # index-sized, read whole as the store does
        numbers, positions, energy, forces = h["numbers"], h["positions"], h["energy"], h["forces"]
        for i in order:
            a, b = offsets[i], offsets[i + 1]
            numbers[a:b], positions[a:b], float(energy[i]), forces[a:b]


def _ase_frames(n: int):
    from ase import Atoms

    for numbers, pos, e, f in synthetic_groups(n):
        for j in range(pos.shape[0]):
            yield Atoms(numbers=numbers, positions=pos[j]), float(e[j]), f[j]


def write_ase(path: Path, n: int, kind: str) -> None:
    from ase.db import connect

    with connect(str(path), type=kind, use_lock_file=False) as db:
        for atoms, e, f in _ase_frames(n):
            db.write(atoms, data={"energy": np.array([e]), "forces": f})


def read_ase(path: Path, order: np.ndarray, kind: str) -> None:
    from ase.db import connect

    with connect(str(path), type=kind, use_lock_file=False) as db:
        for i in order:
            row = db.get(int(i) + 1)
            row.numbers, row.positions, row.data["energy"], row.data["forces"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--reads", type=int, default=20_000)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="spkmeta-store-bench-"))
    rows = []
    try:
        import ase_db_backends  # noqa: F401

        have_lmdb = True
    except ImportError:
        have_lmdb = False
    formats = [
        ("npy", tmp / "s.spkstore", args.frames, write_npy, read_npy),
        ("hdf5", tmp / "s.h5", args.frames, write_hdf5, read_hdf5),
    ]
    if have_lmdb:
        formats.append(("lmdb", tmp / "s.aselmdb", args.frames // 10,
                        lambda p, n: write_ase(p, n, "aselmdb"), lambda p, o: read_ase(p, o, "aselmdb")))
    formats.append(("sqlite", tmp / "s.db", args.frames // 10,
                    lambda p, n: write_ase(p, n, "db"), lambda p, o: read_ase(p, o, "db")))
    rng = np.random.default_rng(1)
    results = {}
    try:
        for name, path, n, write, read in formats:
            t0 = time.perf_counter()
            write(path, n)
            t_write = time.perf_counter() - t0
            order = rng.permutation(n)[: min(args.reads, n)]
            os.sync()
            t0 = time.perf_counter()
            read(path, order)
            t_read = time.perf_counter() - t0
            results[name] = len(order) / t_read
            rows.append((name, n, n / t_write, len(order) / t_read, dir_size(path) / n))
            print(f"{name:7s} {n:>9d} frames  write {n / t_write:>10.0f} frames/s  "
                  f"random read {len(order) / t_read:>9.0f} frames/s  {dir_size(path) / n:7.0f} B/frame", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not have_lmdb:
        print("lmdb: skipped (pip install ase-db-backends to include fairchem's ASE-LMDB backend)")
    print(f"ratio read npy/hdf5: {results['npy'] / results['hdf5']:.1f}")


if __name__ == "__main__":
    main()
