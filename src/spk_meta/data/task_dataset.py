"""Tasks: one level of theory each, read lazily from a :mod:`packed store <spk_meta.data.store>`.

A task is either a SchNetPack ASE database (packed once on first use into the spk-meta
cache by :func:`~spk_meta.data.pack.pack_ase_database`, then reused) or one label set of a
packed store written by ``spkmeta convert --format packed``. Either way a :class:`TaskData`
keeps only index-sized arrays in memory (the kept frames, their atom counts and the
per-frame energy reference, 8 bytes each per frame) and reads a frame's atoms, positions
and forces from the store's memory maps when that sample is asked for, so memory and
start-up do not grow with the frames' size and DataLoader workers share the page cache.

How a task is given (``TaskDataset``/``TaskDataModule`` ``tasks``, or ``data.tasks`` in a
Hydra override)::

    wb97x: /data/wb97x.db                        # an ASE database
    wb97x: /data/ani1x.spkstore@wb97x_6-31gs     # store @ label set (Hydra-safe spelling)
    wb97x: {path: /data/ani1x.spkstore, labels: wb97x_6-31gs}
    wb97x: /data/qm9.spkstore                    # a store with one label set

A sample is SchNetPack's flat ``inputs`` dict (``schnetpack.properties``), converted to
the run's units, with the task's energy reference subtracted and the task index attached
under :data:`spk_meta.properties.task`. :class:`TaskDataset` is the mapping ``task name ->
TaskData`` the data module splits and serves. :class:`TaskSubset` is one split of one task
with its SchNetPack transforms, caching the transformed samples of small tasks when the
transforms are deterministic (neighbour lists, casts, centring).
"""

import hashlib
import json
import mmap
import os
import warnings
from collections.abc import Mapping as MappingABC
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from ase.data import chemical_symbols
from schnetpack import properties as structure
from schnetpack import transform as spk_transform
from schnetpack.units import convert_units

from spk_meta import properties
from spk_meta.data.atomrefs import AtomicEnergies
from spk_meta.data.errors import TaskDataError
from spk_meta.data.level_of_theory import METADATA_KEY, LevelOfTheory, level_slug
from spk_meta.data.pack import LABELS as PACKED_DB_LABELS
from spk_meta.data.pack import pack_ase_database, read_database_metadata
from spk_meta.data.splits import DatabaseIdentity
from spk_meta.data.store import META_FILE, PackedStore, StoreError

PathLike = Union[str, Path]

#: SchNetPack transforms whose output depends only on the structure: safe to cache.
DETERMINISTIC_TRANSFORMS = (
    spk_transform.ASENeighborList,
    spk_transform.MatScipyNeighborList,
    spk_transform.TorchNeighborList,
    spk_transform.VesinNeighborList,
    spk_transform.FilterNeighbors,
    spk_transform.CollectAtomTriples,
    spk_transform.CountNeighbors,
    spk_transform.CastTo32,
    spk_transform.CastTo64,
    spk_transform.CastMap,
    spk_transform.SubtractCenterOfMass,
    spk_transform.SubtractCenterOfGeometry,
    spk_transform.WrapPositions,
)

NAN_POLICIES = ("fail", "skip")

#: Tasks with more frames than this are "large": their transformed samples are not cached
#: (a neighbour list costs ~10 KB a sample) and the data module gives them DataLoader
#: workers by default.
LARGE_TASK_FRAMES = 50_000

#: Frames read per chunk when a task scans its store (elements, E0 fit, references).
SCAN_CHUNK_FRAMES = 1 << 16

#: Separates a store from its label set in a task given as one string (``@`` survives
#: Hydra's override grammar unquoted; ``#`` does not).
LABEL_SEPARATOR = "@"


def start_directory() -> Path:
    """The directory the user started in: Hydra's original working directory inside a
    Hydra app (``spktrain`` changes into the run directory), else the current one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.cwd)
    except Exception:  # no Hydra, or a config without runtime information
        pass
    return Path(os.getcwd())


def resolve_task_path(path: PathLike, base: Optional[PathLike] = None) -> Path:
    """``path`` made absolute against ``base`` (default: :func:`start_directory`), ``~`` expanded."""
    path = Path(str(path)).expanduser()
    return path if path.is_absolute() else Path(base if base is not None else start_directory()) / path


def parse_task_source(value, base: Optional[PathLike] = None) -> Tuple[Path, Optional[str]]:
    """``(absolute path, label set or None)`` of one task as given in ``tasks``.

    Accepts a path (ASE database or store), ``"STORE@LABELS"`` or a mapping
    ``{path: STORE, labels: LABELS}``.

    Raises:
        TaskDataError: a mapping without ``path`` or with other keys.
    """
    if isinstance(value, MappingABC) or hasattr(value, "items"):
        given = dict(value.items())
        unknown = set(given) - {"path", "labels"}
        if "path" not in given or unknown:
            raise TaskDataError(
                f"a task given as a mapping needs 'path' (and optionally 'labels'), got keys {sorted(given)}"
            )
        labels = given.get("labels")
        return resolve_task_path(given["path"], base), (str(labels) if labels is not None else None)
    text = str(value)
    path = resolve_task_path(text, base)
    if not path.exists() and LABEL_SEPARATOR in text:
        store, labels = text.rsplit(LABEL_SEPARATOR, 1)
        return resolve_task_path(store, base), labels
    return path, None


def _unit_factor(path: Path, what: str, source: str, target: str) -> float:
    try:
        return float(convert_units(source, target))
    except Exception:  # schnetpack raises AttributeError/KeyError for unknown unit names
        raise TaskDataError(
            f"{path}: cannot convert {what} from unit '{source}' to '{target}' "
            "(unknown or incompatible unit)"
        ) from None


def _is_store(path: Path) -> bool:
    return path.is_dir()


def _check_database_file(path: Path) -> None:
    if not path.exists():
        raise TaskDataError(f"{path}: no such task database")
    if not path.is_file():
        raise TaskDataError(f"{path}: not a file (a task is one ASE database file or a packed store folder)")


def _open_metadata(path: Path) -> dict:
    _check_database_file(path)
    try:
        return read_database_metadata(path)
    except StoreError as err:
        raise TaskDataError(str(err)) from None


def _parse_level(name: Optional[str]) -> Optional[LevelOfTheory]:
    """A store label set's level of theory (``None`` if absent or not METHOD/BASIS)."""
    if not name:
        return None
    try:
        return LevelOfTheory.parse(name)
    except ValueError:
        return None


def _open_store(path: Path) -> PackedStore:
    try:
        return PackedStore(path)
    except StoreError as err:
        raise TaskDataError(str(err)) from None


def _store_label_set(store: PackedStore, labels: Optional[str]) -> str:
    if labels is None:
        if len(store.label_sets) != 1:
            raise TaskDataError(
                f"{store.path}: the store has label sets {', '.join(store.label_sets)}; pick one "
                f"('{store.path.name}{LABEL_SEPARATOR}LABELS' or {{path: ..., labels: LABELS}})"
            )
        return next(iter(store.label_sets))
    if labels not in store.label_sets:
        raise TaskDataError(f"{store.path}: no label set '{labels}'; it has: {', '.join(store.label_sets)}")
    return labels


def task_name_from_database(path: PathLike, labels: Optional[str] = None) -> str:
    """Default task name: the slug of the level of theory (database metadata, or the
    store's label set), else the file stem or the label set's name."""
    path = Path(path)
    if _is_store(path):
        store = _open_store(path)
        ls = store.label_sets[_store_label_set(store, labels)]
        return level_slug(ls.level_of_theory) if ls.level_of_theory else level_slug(ls.name)
    md = _open_metadata(path)
    level = md.get(METADATA_KEY)
    if isinstance(level, dict) and level.get("name"):
        return level_slug(level["name"])
    return level_slug(path.stem)


def release_pages(*arrays) -> None:
    """Unmap the pages a scan touched in memory-mapped arrays (``MADV_DONTNEED``): they
    stay in the page cache, but no longer count as this process's resident memory, so a
    full pass over a store at start-up (NaN check, elements, E0) leaves RSS as it was."""
    for arr in arrays:
        mm = getattr(arr, "_mmap", None)
        if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # closed, or not supported here: only RSS is lost
                pass


#: Samples read between two :func:`release_pages` of a task's memory maps. A random read
#: maps ~100 KB of store pages into the process (the kernel maps cached pages around each
#: fault); released every 256 samples, those stay in the page cache but no longer add up
#: to the whole store in the resident memory of a long epoch (measured: 1M-frame store,
#: +400 MB file-backed RSS after 7 680 samples without it).
RELEASE_EVERY = 256


def _scan(store: PackedStore, frames: np.ndarray, chunk: Optional[int] = None) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The atomic numbers of ``frames`` (ascending store frames), chunk by chunk.

    Yields ``(positions in frames (m,), numbers (n_atoms,) int64, frame of each atom (n_atoms,))``
    with the frame given as a position in the chunk (``0..m-1``); only the atoms of the
    requested frames, read from contiguous slices of ``numbers.npy``.
    """
    offsets = store.offsets
    chunk = int(chunk or SCAN_CHUNK_FRAMES)
    for a in range(0, len(frames), chunk):
        sel = frames[a : a + chunk]
        lo, hi = int(sel[0]), int(sel[-1]) + 1
        start = np.asarray(offsets[lo : hi + 1])
        block = np.asarray(store.numbers_all[start[0] : start[-1]], dtype=np.int64)
        n_atoms = start[sel - lo + 1] - start[sel - lo]
        atom_start = np.repeat(start[sel - lo] - start[0], n_atoms)
        within = np.arange(int(n_atoms.sum())) - np.repeat(np.cumsum(n_atoms) - n_atoms, n_atoms)
        owner = np.repeat(np.arange(len(sel)), n_atoms)
        yield np.arange(a, a + len(sel)), block[atom_start + within], owner


class TaskData(torch.utils.data.Dataset):
    """One task's frames, read lazily from a packed store, as SchNetPack samples.

    Args:
        name: the task name (a level-of-theory slug by convention).
        path: a SchNetPack ``ASEAtomsData`` database (packed on first use into the cache,
            ``$SPKMETA_CACHE``) or a packed store folder.
        index: position of the task in its :class:`TaskDataset`; attached to every sample.
        energy_key: energy property (required) of a database; the name served for a store.
        forces_key: forces property; a task without it is energy-only.
        distance_unit: unit positions are converted to (``Ang``).
        energy_unit: unit energies are converted to (``eV``).
        forces_unit: unit forces are converted to (default ``energy_unit/distance_unit``).
        nan_policy: ``"fail"`` (default) raises on a missing/NaN/inf label; ``"skip"`` drops
            the frame and warns with the count.
        progress: progress bar while packing a database (default: for 10 000+ rows).
        labels: the store's label set (``None``: its only one; ignored for a database).
        cache: where databases are packed (default: the spk-meta cache).

    Attributes:
        store: the :class:`~spk_meta.data.store.PackedStore` the frames come from.
        label_set: its label set served.
        level_of_theory: :class:`LevelOfTheory` from the metadata, or ``None``.
        units: ``{energy_key: energy_unit, forces_key: ...}`` after conversion.
        source_units: the units stored.
        has_forces: whether the task has forces.
        elements: atomic numbers present, ascending.
        reference: the :class:`AtomicEnergies` subtracted from every energy, or ``None``.
    """

    def __init__(
        self,
        name: str,
        path: PathLike,
        index: int = 0,
        energy_key: str = structure.energy,
        forces_key: Optional[str] = structure.forces,
        distance_unit: str = "Ang",
        energy_unit: str = "eV",
        nan_policy: str = "fail",
        progress: Optional[bool] = None,
        forces_unit: Optional[str] = None,
        labels: Optional[str] = None,
        cache: Optional[PathLike] = None,
    ):
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        self.name = name
        self.path = resolve_task_path(path)
        self.index = int(index)
        self.energy_key = energy_key
        if _is_store(self.path):
            self.is_database = False
            self.store = _open_store(self.path)
            self.label_set = _store_label_set(self.store, labels)
            ls = self.store.label_sets[self.label_set]
            self.metadata = dict(self.store.source) if isinstance(self.store.source, dict) else {}
            level = ls.level_of_theory
            self.level_of_theory = _parse_level(level)
        else:
            self.is_database = True
            _check_database_file(self.path)
            try:
                self.store = pack_ase_database(self.path, energy_key, forces_key, cache=cache, progress=progress)
            except StoreError as err:
                raise TaskDataError(str(err)) from None
            md = dict(self.store.source.get("metadata", {}))  # read once, when it was packed
            self.metadata = md
            self.label_set = PACKED_DB_LABELS
            ls = self.store.label_sets[self.label_set]
            level = md.get(METADATA_KEY)
            self.level_of_theory = (
                LevelOfTheory.from_metadata(level) if isinstance(level, dict) and "name" in level else None
            )
        self.has_forces = forces_key is not None and ls.has_forces
        self.forces_key = forces_key if self.has_forces else None
        self.source_units = {energy_key: ls.energy_unit, "_distance_unit": self.store.distance_unit}
        if self.has_forces:
            self.source_units[forces_key] = ls.forces_unit
        self.distance_unit = distance_unit
        self.units = {energy_key: energy_unit}
        if self.has_forces:
            self.units[forces_key] = forces_unit or f"{energy_unit}/{distance_unit}"
        self._f_dist = _unit_factor(self.path, "positions", self.store.distance_unit, distance_unit)
        self._f_energy = _unit_factor(self.path, energy_key, ls.energy_unit, energy_unit)
        self._f_forces = (
            _unit_factor(self.path, forces_key, ls.forces_unit, self.units[forces_key]) if self.has_forces else None
        )
        self._energy_mm = self.store.energy(self.label_set)
        self._forces_mm = self.store.forces(self.label_set) if self.has_forces else None
        self._select(nan_policy)
        self._reads = 0
        self.reference: Optional[AtomicEnergies] = None
        self._reference_energy = np.zeros(len(self._frames))

    # -- reading -------------------------------------------------------------------------

    def _select(self, nan_policy: str) -> None:
        """The frames served (finite labels), their atom counts and elements (index-sized)."""
        store = self.store
        if store.n_frames == 0:
            raise TaskDataError(f"{self.path}: the {'database' if self.is_database else 'store'} holds no frames")
        if self.has_forces:
            kept = store.labelled(self.label_set)
        else:  # an energy-only task ignores the forces the store may hold
            kept = np.flatnonzero(np.isfinite(np.asarray(self._energy_mm)))
        n_bad = store.n_frames - len(kept)
        unit = "rows" if self.is_database else "frames"
        if n_bad:
            bad = np.setdiff1d(np.arange(store.n_frames), kept)[:10]
            shown = (np.asarray(store.source_index[bad]) + 1).tolist() if self.is_database else bad.tolist()
            if nan_policy == "fail":
                what = f"row {shown[0]}" if self.is_database else f"frame {shown[0]}"
                raise TaskDataError(
                    f"{self.path}: {what}: NaN or inf in the labels (or none)"
                    f"{'' if self.is_database else f' in label set {self.label_set!r}'}"
                    f" ({n_bad} such frames; use nan_policy='skip' to drop them)"
                )
            warnings.warn(
                f"{self.path}: skipped {n_bad} of {store.n_frames} frames with NaN/inf labels "
                f"({unit} {shown}{' ...' if n_bad > 10 else ''})",
                stacklevel=4,
            )
        if len(kept) == 0:
            raise TaskDataError(f"{self.path}: no frame with finite labels")
        self._frames = kept.astype(np.int64)
        self.n_skipped = int(n_bad)
        offsets = np.asarray(store.offsets)
        self._n_atoms = offsets[kept + 1] - offsets[kept]
        seen = np.zeros(256, dtype=bool)
        for _, numbers, _ in _scan(store, self._frames):
            seen[np.unique(numbers)] = True
        self.elements = tuple(int(z) for z in np.flatnonzero(seen))
        release_pages(store.numbers_all, self._energy_mm, self._forces_mm, store.offsets)

    # -- access --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._frames)

    def identity(self) -> DatabaseIdentity:
        """What a saved split of this task is checked against, without reading frames:
        the path, the number of frames served and a fingerprint of the store's content
        (a database's content digest, taken when it was packed; for a store, index-sized
        reads only, see :meth:`_store_digest`), its label set and the rows served."""
        if self.is_database:
            content = str(self.store.source.get("content_sha256", ""))
        else:
            content = self._store_digest()
        h = hashlib.sha256()
        h.update(json.dumps({"content": content, "labels": self.label_set}, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.db_index).tobytes())
        return DatabaseIdentity(path=str(self.path), n_frames=len(self), fingerprint="v2:" + h.hexdigest())

    def _store_digest(self, n_sampled: int = 64) -> str:
        """Digest of a store's content from index-sized reads: ``store.json`` (source,
        sizes, units), the atom offsets, this label set's energies, and the positions of
        ``n_sampled`` evenly spaced frames."""
        store = self.store
        h = hashlib.sha256((store.path / META_FILE).read_bytes())
        h.update(np.ascontiguousarray(store.offsets).tobytes())
        h.update(np.ascontiguousarray(self._energy_mm).tobytes())
        for f in np.unique(np.linspace(0, store.n_frames - 1, n_sampled).astype(np.int64)):
            h.update(np.ascontiguousarray(store.positions_all[store.atoms_slice(int(f))]).tobytes())
        release_pages(store.offsets, self._energy_mm)
        return h.hexdigest()

    @property
    def store_index(self) -> np.ndarray:
        """Store frame of each served frame, ascending, shape ``(len(self),)``."""
        return self._frames

    @property
    def db_index(self) -> np.ndarray:
        """Row of each frame as saved in split files, shape ``(len(self),)``: the database
        row (row id - 1) for a database, the store frame for a store."""
        if self.is_database:
            return np.asarray(self.store.source_index[self._frames])
        return self._frames

    @property
    def energies(self) -> np.ndarray:
        """Total energies in the target unit, before the reference is subtracted,
        ``(len(self),)`` (read from the store on each call)."""
        energies = np.asarray(self._energy_mm[self._frames]) * self._f_energy
        release_pages(self._energy_mm)
        return energies

    @property
    def reference_energies(self) -> np.ndarray:
        """``sum_i E0[Z_i]`` subtracted from each served energy, ``(len(self),)`` (zeros
        without a reference)."""
        return self._reference_energy

    def numbers(self, i: int) -> np.ndarray:
        """Atomic numbers of frame ``i``, shape ``(n_atoms,)``."""
        s = self.store.atoms_slice(int(self._frames[i]))
        return np.asarray(self.store.numbers_all[s], dtype=np.int64)

    def n_atoms(self) -> np.ndarray:
        """Number of atoms per frame, shape ``(len(self),)``."""
        return self._n_atoms

    def element_counts(self, positions: np.ndarray, elements: Sequence[int]) -> np.ndarray:
        """Composition matrix of the frames at ``positions`` (ascending), read in chunks:
        ``(len(positions), len(elements))`` float64 counts of each element.

        Raises:
            TaskDataError: a frame holds an element not in ``elements``.
        """
        positions = np.asarray(positions, dtype=np.int64)
        column = np.full(256, -1, dtype=np.int64)
        column[np.asarray(elements, dtype=np.int64)] = np.arange(len(elements))
        out = np.zeros((len(positions), len(elements)))
        if len(positions) and np.any(np.diff(positions) < 0):
            raise ValueError("positions must be ascending")
        for rows, numbers, owner in _scan(self.store, self._frames[positions]):
            col = column[numbers]
            if (col < 0).any():
                z = int(numbers[col < 0][0])
                raise TaskDataError(f"task '{self.name}' ({self.path}): {chemical_symbols[z]} not in the fitted elements")
            out[rows] = np.bincount(owner * len(elements) + col, minlength=len(rows) * len(elements)).reshape(
                len(rows), len(elements)
            )
        release_pages(self.store.numbers_all)
        return out

    def set_reference(self, reference: Optional[AtomicEnergies]) -> None:
        """Subtract ``sum_i E0[Z_i]`` of ``reference`` from every energy served (None: nothing)."""
        self.reference = reference
        if reference is None:
            self._reference_energy = np.zeros(len(self))
            return
        missing = set(self.elements) - set(reference.elements)
        if missing:
            raise TaskDataError(
                f"task '{self.name}' ({self.path}): the energy reference has no value for "
                + ", ".join(chemical_symbols[z] for z in sorted(missing))
            )
        table = np.zeros(256)
        for z, v in zip(reference.elements, reference.values):
            table[z] = v
        out = np.empty(len(self))
        for rows, numbers, owner in _scan(self.store, self._frames):
            per_atom = table[numbers]
            starts = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(rows)))[:-1]])
            out[rows] = np.add.reduceat(per_atom, starts)
        release_pages(self.store.numbers_all)
        self._reference_energy = out

    def atomrefs(self, zmax: int = 100) -> Dict[str, torch.Tensor]:
        """SchNetPack's atomref table of the subtracted reference: ``{energy_key: (zmax,)}``."""
        if self.reference is None:
            return {self.energy_key: torch.zeros(zmax, dtype=torch.float64)}
        return {self.energy_key: torch.from_numpy(self.reference.to_atomref(zmax))}

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        self._reads += 1
        if self._reads % RELEASE_EVERY == 0:
            release_pages(*self._per_atom_maps())
        f = int(self._frames[i])
        store = self.store
        a, b = int(store.offsets[f]), int(store.offsets[f + 1])
        sample = {
            structure.idx: torch.tensor([int(store.source_index[f]) if self.is_database else f]),
            self.energy_key: torch.tensor([float(self._energy_mm[f]) * self._f_energy - self._reference_energy[i]]),
        }
        if self._forces_mm is not None:
            sample[self.forces_key] = torch.from_numpy(np.asarray(self._forces_mm[a:b]) * self._f_forces)
        sample[structure.n_atoms] = torch.tensor([b - a])
        sample[structure.Z] = torch.from_numpy(np.asarray(store.numbers_all[a:b], dtype=np.int64))
        sample[structure.position] = torch.from_numpy(np.asarray(store.positions_all[a:b]) * self._f_dist)
        sample[structure.cell] = torch.from_numpy(np.asarray(store.cell[f])[None] * self._f_dist)
        sample[structure.pbc] = torch.from_numpy(np.array(store.pbc[f]))
        sample[properties.task] = torch.tensor([self.index])
        return sample

    def _per_atom_maps(self) -> tuple:
        """Every memory map a sample reads from (per-atom and per-frame arrays)."""
        store = self.store
        return (store.numbers_all, store.positions_all, self._forces_mm, store.cell, store.pbc,
                store.offsets, store.source_index, self._energy_mm)

    def __getstate__(self) -> dict:
        # memory maps would be pickled with their data: a worker re-opens the store instead
        state = dict(self.__dict__)
        state["_energy_mm"] = state["_forces_mm"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._energy_mm = self.store.energy(self.label_set)
        self._forces_mm = self.store.forces(self.label_set) if self.has_forces else None

    def __repr__(self) -> str:
        level = self.level_of_theory.name if self.level_of_theory else "unknown level"
        kind = "energy+forces" if self.has_forces else "energy only"
        return f"TaskData({self.name!r}: {len(self)} frames, {level}, {kind}, {self.path})"


def transforms_are_deterministic(transforms: Sequence[torch.nn.Module]) -> bool:
    """True if every transform is one of :data:`DETERMINISTIC_TRANSFORMS` (safe to cache)."""
    return all(isinstance(t, DETERMINISTIC_TRANSFORMS) for t in transforms)


class TaskSubset(torch.utils.data.Dataset):
    """One split (train/val/test) of one task, with its SchNetPack transforms.

    Args:
        data: the task.
        indices: positions in ``data`` (not database rows), shape ``(n,)``.
        transforms: SchNetPack transforms applied to each sample, in order.
        cache: keep transformed samples in memory. ``None``: cache exactly when all
            transforms are deterministic (:func:`transforms_are_deterministic`) and the
            task has at most :data:`LARGE_TASK_FRAMES` frames (a large task's samples
            would fill memory; its neighbour lists are built in DataLoader workers).
    """

    def __init__(
        self,
        data: TaskData,
        indices: Sequence[int],
        transforms: Optional[Sequence[torch.nn.Module]] = None,
        cache: Optional[bool] = None,
    ):
        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transforms = list(transforms or [])
        if cache is None:
            cache = transforms_are_deterministic(self.transforms) and len(data) <= LARGE_TASK_FRAMES
        self.cache_enabled = bool(cache)
        self._cache: Dict[int, Dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> Dict[str, torch.Tensor]:
        if self.cache_enabled and j in self._cache:
            return self._cache[j]
        sample = self.data[int(self.indices[j])]
        for t in self.transforms:
            sample = t(sample)
        if self.cache_enabled:
            self._cache[j] = sample
        return sample

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def atomrefs(self) -> Dict[str, torch.Tensor]:
        """The task's subtracted reference as SchNetPack atomrefs (zeros if none)."""
        return self.data.atomrefs()

    @property
    def name(self) -> str:
        return self.data.name


class TaskDataset(MappingABC):
    """Tasks by name: ``TaskDataset({"wb97x_6-31gs": "wb97x.db", ...})``.

    Args:
        tasks: mapping ``name -> task`` or a sequence of tasks (each named by the slug of
            its level of theory, else of its file name); a task is a database path, a
            store path, ``"STORE@LABELS"`` or ``{path: STORE, labels: LABELS}`` (see the
            module docstring). Relative paths are resolved against ``base_dir``.
        energy_key, forces_key, distance_unit, energy_unit, forces_unit, nan_policy, progress: see
            :class:`TaskData`; shared by all tasks, so every task ends in one unit system.
        base_dir: where relative paths start; ``None``: :func:`start_directory` (where
            ``spktrain`` was started, not its run directory).

    Raises:
        TaskDataError: a database is unusable, or two tasks get the same name.
    """

    def __init__(
        self,
        tasks: Union[Mapping[str, PathLike], Sequence[PathLike]],
        energy_key: str = structure.energy,
        forces_key: Optional[str] = structure.forces,
        distance_unit: str = "Ang",
        energy_unit: str = "eV",
        nan_policy: str = "fail",
        progress: Optional[bool] = None,
        forces_unit: Optional[str] = None,
        base_dir: Optional[PathLike] = None,
    ):
        named = self._name_tasks(tasks, base_dir)
        self._tasks: Dict[str, TaskData] = {}
        for i, (name, path, labels) in enumerate(named):
            self._tasks[name] = TaskData(
                name,
                path,
                index=i,
                labels=labels,
                energy_key=energy_key,
                forces_key=forces_key,
                distance_unit=distance_unit,
                energy_unit=energy_unit,
                forces_unit=forces_unit,
                nan_policy=nan_policy,
                progress=progress,
            )

    @staticmethod
    def _name_tasks(tasks, base_dir: Optional[PathLike] = None) -> List[tuple]:
        if isinstance(tasks, (str, Path)):
            tasks = [tasks]
        if isinstance(tasks, MappingABC) or hasattr(tasks, "items"):
            given = [(str(k), v) for k, v in tasks.items()]
        else:
            given = [(None, p) for p in tasks]
        named = []
        for name, value in given:
            resolved, labels = parse_task_source(value, base_dir)
            if not resolved.exists():
                text = str(value.get("path") if hasattr(value, "get") else value)
                where = "" if Path(text).expanduser() == resolved else f" (resolved to {resolved})"
                raise TaskDataError(f"{text}{where}: no such task database")
            if name is None:
                name = task_name_from_database(resolved, labels)
            named.append((name, resolved, labels))
        if not named:
            raise TaskDataError("no tasks given: pass a mapping of task names to database paths")
        seen: Dict[str, Path] = {}
        for name, path, _ in named:
            if not name or name != name.strip():
                raise TaskDataError(f"{path}: invalid task name {name!r}")
            if name in seen:
                raise TaskDataError(
                    f"two tasks named '{name}': {seen[name]} and {path}; name them explicitly "
                    "(tasks: {name: path})"
                )
            seen[name] = path
        return named

    def __getitem__(self, name: str) -> TaskData:
        try:
            return self._tasks[name]
        except KeyError:
            raise KeyError(f"no task '{name}'; tasks: {', '.join(self._tasks)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def names(self) -> List[str]:
        return list(self._tasks)

    def sizes(self) -> Dict[str, int]:
        return {name: len(t) for name, t in self._tasks.items()}

    def elements(self) -> Dict[str, tuple]:
        return {name: t.elements for name, t in self._tasks.items()}

    def __repr__(self) -> str:
        return "TaskDataset(\n" + "\n".join(f"  {t!r}" for t in self._tasks.values()) + "\n)"

