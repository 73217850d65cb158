"""Packed task store: frames of one source on disk as memory-mapped NumPy arrays.

A store is a folder of ``.npy`` files (NumPy's own format, read with
``np.load(mmap_mode="r")``: random access without reading the file, shared page cache
between DataLoader workers) plus ``store.json``. Geometries are stored once; each *label
set* (one level of theory, e.g. ANI-1x's wB97X/6-31G* and CCSD(T)/CBS on the same
conformers) has its own energy (and optionally forces) arrays, NaN where a frame has no
label at that level. Layout, format version 1::

    NAME.spkstore/
      store.json                  format, version, sizes, units, label sets, source
      offsets.npy                 int64   (n_frames + 1,)  atom offsets of each frame
      numbers.npy                 uint8   (n_atoms,)       atomic numbers
      positions.npy               float64 (n_atoms, 3)     [distance unit]
      cell.npy                    float64 (n_frames, 3, 3) [distance unit]
      pbc.npy                     bool    (n_frames, 3)
      source_index.npy            int64   (n_frames,)      frame/row index in the source
      labels/<label set>/energy.npy   float64 (n_frames,)   [energy unit]
      labels/<label set>/forces.npy   float64 (n_atoms, 3)  [forces unit], optional

:class:`StoreWriter` streams frames in (one frame or a batch of conformers of one
composition at a time) into a temporary folder next to the final name and renames it into
place only when everything is written, so a store under its final name is always complete.
:class:`PackedStore` opens one and checks it (format, version, every array's shape against
``store.json``), naming the file and what is wrong. Only index-sized arrays are ever read
whole; a frame is read when it is asked for.
"""

import json
import os
import re
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from spk_meta.data.writer import stale_temporaries
from spk_meta.utils.atomic import AllOrNothing

PathLike = Union[str, Path]

STORE_FORMAT = "spk-meta packed task store"
STORE_VERSION = 1
STORE_SUFFIX = ".spkstore"
META_FILE = "store.json"

#: Fixed size of every ``.npy`` header we write (NEP 1: magic, version, uint16 length, a
#: Python-literal dict padded with spaces to a multiple of 64 bytes). Fixed, so the header
#: can be rewritten with the final shape after the data were streamed behind it.
_NPY_HEADER_BYTES = 128

#: Frame-level arrays: name -> (dtype, trailing shape); the leading length is n_frames
#: (offsets: n_frames + 1) or n_atoms.
_FRAME_ARRAYS = {
    "cell": (np.float64, (3, 3)),
    "pbc": (np.bool_, (3,)),
    "source_index": (np.int64, ()),
}
_ATOM_ARRAYS = {
    "numbers": (np.uint8, ()),
    "positions": (np.float64, (3,)),
}


class StoreError(ValueError):
    """A packed store cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class LabelSet:
    """One level of theory's labels in a store.

    Attributes:
        name: key of the label set (a level-of-theory slug by convention).
        level_of_theory: the level as written (``"wB97X/6-31g*"``), or ``None``.
        has_forces: whether ``forces.npy`` exists for this label set.
        energy_unit: unit of ``energy.npy``.
        forces_unit: unit of ``forces.npy`` (``None`` without forces).
    """

    name: str
    level_of_theory: Optional[str] = None
    has_forces: bool = True
    energy_unit: str = "eV"
    forces_unit: Optional[str] = "eV/Ang"

    def to_json(self) -> dict:
        return {
            "level_of_theory": self.level_of_theory,
            "has_forces": self.has_forces,
            "energy_unit": self.energy_unit,
            "forces_unit": self.forces_unit if self.has_forces else None,
        }

    @classmethod
    def from_json(cls, name: str, d: Mapping) -> "LabelSet":
        return cls(
            name=name,
            level_of_theory=d.get("level_of_theory"),
            has_forces=bool(d["has_forces"]),
            energy_unit=str(d["energy_unit"]),
            forces_unit=d.get("forces_unit"),
        )


def file_identity(path: PathLike) -> Dict[str, Union[str, int]]:
    """What identifies a source file's content cheaply: absolute path, size, mtime (ns)."""
    path = Path(path).absolute()
    st = path.stat()
    return {"path": str(path), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


# -- .npy files that grow ------------------------------------------------------------------


def _npy_header(dtype: np.dtype, shape: Tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` header of exactly :data:`_NPY_HEADER_BYTES` bytes."""
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    literal = repr({"descr": descr, "fortran_order": False, "shape": tuple(int(s) for s in shape)})
    body_len = _NPY_HEADER_BYTES - 10  # magic (6) + version (2) + length (2)
    body = literal.encode("latin1")
    if len(body) + 1 > body_len:
        raise StoreError(f"array shape {shape} too large for the store's .npy header")
    body = body + b" " * (body_len - len(body) - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + body


class _GrowingArray:
    """An ``.npy`` file appended to in chunks; the header gets the final length on close."""

    def __init__(self, path: Path, dtype, trailing: Tuple[int, ...]):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.trailing = tuple(trailing)
        self.length = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "wb")
        self._fh.write(_npy_header(self.dtype, (0, *self.trailing)))

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if values.shape[1:] != self.trailing:
            raise StoreError(
                f"{self.path.name}: expected rows of shape {self.trailing}, got {values.shape[1:]}"
            )
        self._fh.write(values.tobytes())
        self.length += values.shape[0]

    def close(self) -> None:
        self._fh.seek(0)
        self._fh.write(_npy_header(self.dtype, (self.length, *self.trailing)))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()


# -- writing ------------------------------------------------------------------------------


class StoreWriter(AllOrNothing):
    """Stream frames into a new packed store; complete under its final name or not at all.

    Use as a context manager::

        with StoreWriter(out, [LabelSet("wb97x_6-31gs", "wB97X/6-31g*")]) as w:
            w.add_conformers(numbers, positions, {"wb97x_6-31gs": (energies, forces)})

    Args:
        path: the store folder to create (conventionally ending in ``.spkstore``).
        label_sets: the label sets every added frame may carry.
        distance_unit: unit of positions and cells.
        source: free-form provenance written to ``store.json`` (e.g. :func:`file_identity`
            of the source file and the converter's options).
        overwrite: replace an existing store at ``path`` (only when the new one is complete).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false (checked before
            writing and again at the rename).
    """

    def __init__(
        self,
        path: PathLike,
        label_sets: Sequence[LabelSet],
        distance_unit: str = "Ang",
        source: Optional[Mapping] = None,
        overwrite: bool = False,
    ):
        self.path = Path(path).absolute()
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} already exists (overwrite to replace it)")
        names = [ls.name for ls in label_sets]
        if not names:
            raise StoreError(f"{self.path}: a store needs at least one label set")
        if len(set(names)) != len(names):
            raise StoreError(f"{self.path}: label set names repeat: {names}")
        for name in names:
            if not name or "/" in name or name.startswith("."):
                raise StoreError(f"{self.path}: invalid label set name {name!r}")
        self.label_sets = {ls.name: ls for ls in label_sets}
        self.distance_unit = distance_unit
        self.source = dict(source or {})
        self.overwrite = overwrite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        self._arrays: Dict[str, _GrowingArray] = {}
        self._n_frames = 0
        self._n_atoms = 0
        self._closed = False
        try:
            self.tmp.mkdir()
            self._offsets = _GrowingArray(self.tmp / "offsets.npy", np.int64, ())
            self._offsets.append(np.zeros(1, dtype=np.int64))
            for name, (dtype, trailing) in {**_FRAME_ARRAYS, **_ATOM_ARRAYS}.items():
                self._arrays[name] = _GrowingArray(self.tmp / f"{name}.npy", dtype, trailing)
            for ls in label_sets:
                folder = self.tmp / "labels" / ls.name
                self._arrays[f"{ls.name}/energy"] = _GrowingArray(folder / "energy.npy", np.float64, ())
                if ls.has_forces:
                    self._arrays[f"{ls.name}/forces"] = _GrowingArray(folder / "forces.npy", np.float64, (3,))
        except BaseException:
            self.abort()
            raise

    @property
    def n_frames(self) -> int:
        return self._n_frames

    def add_conformers(
        self,
        numbers: np.ndarray,
        positions: np.ndarray,
        labels: Mapping[str, Tuple[np.ndarray, Optional[np.ndarray]]],
        source_index: Optional[np.ndarray] = None,
        cell: Optional[np.ndarray] = None,
        pbc: Optional[np.ndarray] = None,
    ) -> None:
        """Append ``n_conf`` frames of one composition (the ANI-1x/HDF5 layout).

        Args:
            numbers: atomic numbers, ``(n_atoms,)``.
            positions: ``(n_conf, n_atoms, 3)`` [distance unit].
            labels: ``{label set: (energy (n_conf,), forces (n_conf, n_atoms, 3) or None)}``;
                a label set left out, or ``None`` forces of a set that has forces, is
                stored as NaN (no label at that level).
            source_index: ``(n_conf,)`` index of each frame in the source (default: running count).
            cell: ``(n_conf, 3, 3)`` or ``(3, 3)`` (default zeros); pbc: ``(3,)`` or ``(n_conf, 3)``.
        """
        numbers = np.asarray(numbers)
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim == 2:
            positions = positions[None]
        n_conf, n_atoms = positions.shape[0], numbers.shape[0]
        if positions.shape != (n_conf, n_atoms, 3):
            raise StoreError(
                f"{self.path}: positions of shape {positions.shape} do not match {n_atoms} atomic numbers"
            )
        if n_conf == 0:
            return
        if numbers.min() < 1 or numbers.max() > 118:
            raise StoreError(f"{self.path}: atomic numbers outside 1..118: {np.unique(numbers)}")
        unknown = set(labels) - set(self.label_sets)
        if unknown:
            raise StoreError(f"{self.path}: unknown label sets {sorted(unknown)}; declared: {list(self.label_sets)}")
        if source_index is None:
            source_index = np.arange(self._n_frames, self._n_frames + n_conf)
        source_index = np.asarray(source_index, dtype=np.int64).reshape(-1)
        if source_index.shape != (n_conf,):
            raise StoreError(f"{self.path}: source_index must have {n_conf} entries, got {source_index.shape}")
        cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
        cell = np.broadcast_to(cell, (n_conf, 3, 3))
        pbc = np.zeros(3, dtype=bool) if pbc is None else np.asarray(pbc, dtype=bool)
        pbc = np.broadcast_to(pbc, (n_conf, 3))
        checked = {}
        for name, ls in self.label_sets.items():
            energy, forces = labels.get(name, (None, None))
            energy = np.full(n_conf, np.nan) if energy is None else np.asarray(energy, dtype=np.float64).reshape(-1)
            if energy.shape != (n_conf,):
                raise StoreError(f"{self.path}: label set '{name}': {energy.shape[0]} energies for {n_conf} frames")
            if ls.has_forces:
                forces = (
                    np.full((n_conf, n_atoms, 3), np.nan)
                    if forces is None
                    else np.asarray(forces, dtype=np.float64)
                )
                if forces.shape != (n_conf, n_atoms, 3):
                    raise StoreError(
                        f"{self.path}: label set '{name}': forces of shape {forces.shape}, "
                        f"expected {(n_conf, n_atoms, 3)}"
                    )
            elif forces is not None:
                raise StoreError(f"{self.path}: label set '{name}' was declared without forces")
            checked[name] = (energy, forces)
        # every check passed: append (so a rejected call leaves the arrays consistent)
        self._arrays["numbers"].append(np.tile(numbers.astype(np.uint8), n_conf))
        self._arrays["positions"].append(positions.reshape(-1, 3))
        self._arrays["cell"].append(cell)
        self._arrays["pbc"].append(pbc)
        self._arrays["source_index"].append(source_index)
        self._offsets.append(self._n_atoms + n_atoms * np.arange(1, n_conf + 1, dtype=np.int64))
        for name, (energy, forces) in checked.items():
            self._arrays[f"{name}/energy"].append(energy)
            if forces is not None:
                self._arrays[f"{name}/forces"].append(forces.reshape(-1, 3))
        self._n_frames += n_conf
        self._n_atoms += n_conf * n_atoms

    def add_frame(
        self,
        numbers: np.ndarray,
        positions: np.ndarray,
        labels: Mapping[str, Tuple[float, Optional[np.ndarray]]],
        source_index: Optional[int] = None,
        cell: Optional[np.ndarray] = None,
        pbc: Optional[np.ndarray] = None,
    ) -> None:
        """Append one frame (``positions`` ``(n_atoms, 3)``, energies as numbers)."""
        self.add_conformers(
            numbers,
            np.asarray(positions, dtype=np.float64)[None],
            {
                k: (np.asarray([e], dtype=np.float64), None if f is None else np.asarray(f)[None])
                for k, (e, f) in labels.items()
            },
            source_index=None if source_index is None else [source_index],
            cell=cell,
            pbc=pbc,
        )

    def close(self) -> Path:
        """Finish every array, write ``store.json`` and rename the folder into place."""
        if self._closed:
            return self.path
        try:
            self._offsets.close()
            for arr in self._arrays.values():
                arr.close()
            meta = {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "n_frames": self._n_frames,
                "n_atoms": self._n_atoms,
                "distance_unit": self.distance_unit,
                "label_sets": {name: ls.to_json() for name, ls in self.label_sets.items()},
                "source": self.source,
            }
            with open(self.tmp / META_FILE, "w") as fh:
                json.dump(meta, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            if self.path.exists():
                if not self.overwrite:
                    raise FileExistsError(f"{self.path} appeared while it was being written; not replaced")
                # named like a temporary (pid): a kill between the two renames leaves it for
                # remove_stale_temporaries to put back
                old = self.path.with_name(f".{self.path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.old")
                os.replace(self.path, old)
                os.replace(self.tmp, self.path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, self.path)
            self._closed = True
            return self.path
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything written so far (nothing appears under the final name)."""
        for arr in list(self._arrays.values()) + ([self._offsets] if hasattr(self, "_offsets") else []):
            arr.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._closed = True


#: A store being written: ``.NAME.spkstore.PID-XXXXXXXX.tmp`` next to its final name.
TEMPORARY_STORE_NAME = re.compile(r"^\.(?P<name>.+" + re.escape(STORE_SUFFIX) + r")\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


#: A store being replaced (``overwrite``): ``.NAME.PID-XXXXXXXX.old``, moved aside just
#: before the new one is renamed in.
REPLACED_STORE_NAME = re.compile(r"^\.(?P<name>.+" + re.escape(STORE_SUFFIX) + r")\.(?P<pid>\d+)-[0-9a-f]{8}\.old$")


def remove_stale_temporaries(folder: PathLike) -> List[Path]:
    """Remove temporary store folders in ``folder`` whose writing process no longer runs.

    Temporary folders are named ``.NAME.PID-XXXXXXXX.tmp``; one whose PID is alive is left
    alone (another writer may be working). A store moved aside by a killed overwrite
    (``.NAME.PID-XXXXXXXX.old``) is renamed back to ``NAME`` when the writer died before the
    new store took that name (with a warning), else removed. Returns the removed paths.
    """
    removed = []
    for p in stale_temporaries(folder, TEMPORARY_STORE_NAME):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p in stale_temporaries(folder, REPLACED_STORE_NAME):
        final = p.with_name(REPLACED_STORE_NAME.match(p.name)["name"])
        if not p.is_dir():
            continue
        if final.exists():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        else:
            os.replace(p, final)
            warnings.warn(f"{final}: a writer replacing this store was killed after moving it aside to "
                          f"{p.name}; the old store is back under its name", stacklevel=2)
    return removed


# -- reading ------------------------------------------------------------------------------


class PackedStore:
    """A packed store opened read-only; arrays are memory maps, frames read on demand.

    Pickling keeps only the path (each DataLoader worker re-opens its own maps), so a
    store handed to worker processes is never copied into them.

    Args:
        path: the store folder.

    Raises:
        StoreError: not a store, another format version, a half-written store, or arrays
            whose lengths disagree with ``store.json`` (the message names the file).
    """

    def __init__(self, path: PathLike):
        self.path = Path(path).absolute()
        self._open()

    def _open(self) -> None:
        meta_path = self.path / META_FILE
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such packed store")
        if not self.path.is_dir():
            raise StoreError(f"{self.path}: a packed store is a folder, this is a file")
        if not meta_path.is_file():
            raise StoreError(
                f"{self.path}: no {META_FILE} - not a packed store, or one whose writing was "
                "interrupted; write it again"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise StoreError(f"{meta_path}: unreadable ({err})") from None
        if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
            raise StoreError(f"{meta_path}: not a {STORE_FORMAT}")
        if meta.get("version") != STORE_VERSION:
            raise StoreError(
                f"{meta_path}: store format version {meta.get('version')}, this spk-meta reads "
                f"version {STORE_VERSION}; convert the source again"
            )
        self.meta = meta
        self.n_frames = int(meta["n_frames"])
        self.n_atoms_total = int(meta["n_atoms"])
        self.distance_unit = str(meta["distance_unit"])
        self.label_sets = {k: LabelSet.from_json(k, v) for k, v in meta["label_sets"].items()}
        self.source = meta.get("source", {})
        self.offsets = self._load("offsets.npy", (self.n_frames + 1,), np.int64)
        self.numbers_all = self._load("numbers.npy", (self.n_atoms_total,), np.uint8)
        self.positions_all = self._load("positions.npy", (self.n_atoms_total, 3), np.float64)
        self.cell = self._load("cell.npy", (self.n_frames, 3, 3), np.float64)
        self.pbc = self._load("pbc.npy", (self.n_frames, 3), np.bool_)
        self.source_index = self._load("source_index.npy", (self.n_frames,), np.int64)
        self._energy = {}
        self._forces = {}
        for name, ls in self.label_sets.items():
            self._energy[name] = self._load(f"labels/{name}/energy.npy", (self.n_frames,), np.float64)
            if ls.has_forces:
                self._forces[name] = self._load(f"labels/{name}/forces.npy", (self.n_atoms_total, 3), np.float64)
        if self.n_frames and (self.offsets[0] != 0 or self.offsets[-1] != self.n_atoms_total):
            raise StoreError(
                f"{self.path / 'offsets.npy'}: atom offsets run from {self.offsets[0]} to "
                f"{self.offsets[-1]}, expected 0 to {self.n_atoms_total}"
            )

    def _load(self, rel: str, shape: Tuple[int, ...], dtype) -> np.ndarray:
        file = self.path / rel
        if not file.is_file():
            raise StoreError(f"{file}: missing from the packed store")
        try:
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise StoreError(f"{file}: not a readable .npy array ({err}); the store is damaged") from None
        if arr.shape != shape or arr.dtype != np.dtype(dtype):
            raise StoreError(
                f"{file}: shape {arr.shape} {arr.dtype}, but {META_FILE} says {shape} {np.dtype(dtype)}; "
                "the store is damaged or half-written"
            )
        return arr

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._open()

    def __len__(self) -> int:
        return self.n_frames

    def energy(self, label_set: str) -> np.ndarray:
        """Energies of one label set, ``(n_frames,)`` memory map (NaN: no label)."""
        try:
            return self._energy[label_set]
        except KeyError:
            raise KeyError(
                f"{self.path}: no label set '{label_set}'; it has: {', '.join(self.label_sets)}"
            ) from None

    def forces(self, label_set: str) -> Optional[np.ndarray]:
        """Forces of one label set, ``(n_atoms_total, 3)`` memory map, or ``None``."""
        self.energy(label_set)  # names the store's label sets if unknown
        return self._forces.get(label_set)

    def n_atoms(self) -> np.ndarray:
        """Atoms per frame, ``(n_frames,)`` (read whole: index-sized)."""
        return np.diff(np.asarray(self.offsets))

    def atoms_slice(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def elements(self, chunk: int = 1 << 24) -> Tuple[int, ...]:
        """Atomic numbers present, ascending (read in chunks)."""
        seen = np.zeros(256, dtype=bool)
        for a in range(0, self.n_atoms_total, chunk):
            seen[np.unique(self.numbers_all[a : a + chunk])] = True
        return tuple(int(z) for z in np.flatnonzero(seen))

    def frame(self, i: int, label_set: Optional[str] = None) -> Dict[str, np.ndarray]:
        """Frame ``i`` as plain arrays (copies): numbers, positions, cell, pbc, energy, forces."""
        if not -self.n_frames <= i < self.n_frames:
            raise IndexError(f"{self.path}: frame {i} out of range ({self.n_frames} frames)")
        i = i % self.n_frames
        s = self.atoms_slice(i)
        out = {
            "numbers": np.array(self.numbers_all[s], dtype=np.int64),
            "positions": np.array(self.positions_all[s]),
            "cell": np.array(self.cell[i]),
            "pbc": np.array(self.pbc[i]),
            "source_index": int(self.source_index[i]),
        }
        if label_set is not None:
            out["energy"] = float(self.energy(label_set)[i])
            f = self.forces(label_set)
            if f is not None:
                out["forces"] = np.array(f[s])
        return out

    def labelled(self, label_set: str, chunk: int = 1 << 20) -> np.ndarray:
        """Indices of frames with a finite energy (and finite forces, if the set has them).

        Read in chunks, so memory stays bounded for millions of frames.
        """
        energy = self.energy(label_set)
        forces = self.forces(label_set)
        keep = np.empty(self.n_frames, dtype=bool)
        for a in range(0, self.n_frames, chunk):
            b = min(a + chunk, self.n_frames)
            ok = np.isfinite(energy[a:b])
            if forces is not None:
                lo, hi = int(self.offsets[a]), int(self.offsets[b])
                bad_atom = ~np.isfinite(forces[lo:hi]).all(axis=1)
                if bad_atom.any():
                    frame_of_atom = np.searchsorted(self.offsets[a : b + 1], np.arange(lo, hi), side="right") - 1
                    bad = np.zeros(b - a, dtype=bool)
                    bad[frame_of_atom[bad_atom]] = True
                    ok &= ~bad
            keep[a:b] = ok
        return np.flatnonzero(keep)

    def __repr__(self) -> str:
        return f"PackedStore({self.path}: {self.n_frames} frames, label sets {list(self.label_sets)})"

