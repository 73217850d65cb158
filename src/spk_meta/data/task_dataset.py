"""Tasks: one SchNetPack ASE database per level of theory, read once and served from memory.

A :class:`TaskData` holds every frame of one task database in packed arrays (converted to
one unit system on load) and hands out SchNetPack samples (the flat ``inputs`` dict of
``schnetpack.properties``) with the task's energy reference subtracted and the task index
attached under :data:`spk_meta.properties.task`. A :class:`TaskDataset` is the mapping
``task name -> TaskData`` the data module splits and serves. :class:`TaskSubset` is one
split of one task with its SchNetPack transforms, caching the transformed samples when the
transforms are deterministic (neighbour lists, casts, centring), so each neighbour list is
built once per run instead of once per epoch.
"""

import os
import sqlite3
import warnings
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from ase.data import chemical_symbols
from ase.db import connect
from schnetpack import properties as structure
from schnetpack import transform as spk_transform
from schnetpack.data import ASEAtomsData
from schnetpack.units import convert_units
from tqdm.auto import tqdm

from spk_meta import properties
from spk_meta.data.atomrefs import AtomicEnergies
from spk_meta.data.errors import TaskDataError
from spk_meta.data.level_of_theory import METADATA_KEY, LevelOfTheory, level_slug
from spk_meta.data.splits import DatabaseIdentity, fingerprint_arrays

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
_SQLITE_MAGIC = b"SQLite format 3\x00"


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


def _unit_factor(path: Path, what: str, source: str, target: str) -> float:
    try:
        return float(convert_units(source, target))
    except Exception:  # schnetpack raises AttributeError/KeyError for unknown unit names
        raise TaskDataError(
            f"{path}: cannot convert {what} from unit '{source}' to '{target}' "
            "(unknown or incompatible unit)"
        ) from None


def _open_metadata(path: Path) -> dict:
    if not path.exists():
        raise TaskDataError(f"{path}: no such task database")
    if not path.is_file():
        raise TaskDataError(f"{path}: not a file (a task is one ASE database file)")
    with open(path, "rb") as fh:
        head = fh.read(len(_SQLITE_MAGIC))
    if head != _SQLITE_MAGIC:
        raise TaskDataError(f"{path}: not an ASE database (not an SQLite file)")
    try:
        with connect(str(path), type="db", use_lock_file=False) as conn:
            return dict(conn.metadata)
    except (sqlite3.DatabaseError, KeyError, ValueError) as err:
        raise TaskDataError(f"{path}: not a readable ASE database ({err})") from None


def task_name_from_database(path: PathLike) -> str:
    """Default task name: the slug of the database's level of theory, else the file stem."""
    path = Path(path)
    md = _open_metadata(path)
    level = md.get(METADATA_KEY)
    if isinstance(level, dict) and level.get("name"):
        return level_slug(level["name"])
    return level_slug(path.stem)


@dataclass
class _Frames:
    """All kept frames of one database, packed (target units)."""

    db_index: np.ndarray  # (n_frames,) row index in the database (row id - 1)
    offsets: np.ndarray  # (n_frames + 1,) atom offsets into the per-atom arrays
    numbers: np.ndarray  # (n_atoms_total,)
    positions: np.ndarray  # (n_atoms_total, 3)
    cell: np.ndarray  # (n_frames, 3, 3)
    pbc: np.ndarray  # (n_frames, 3)
    energy: np.ndarray  # (n_frames,)
    forces: Optional[np.ndarray]  # (n_atoms_total, 3) or None
    n_skipped: int
    skipped_rows: List[int]
    fingerprint: str  # of the kept frames as stored (database units)


class TaskData(torch.utils.data.Dataset):
    """Every frame of one task database, in memory, as SchNetPack samples.

    Args:
        name: the task name (a level-of-theory slug by convention).
        path: the SchNetPack ``ASEAtomsData`` database.
        index: position of the task in its :class:`TaskDataset`; attached to every sample.
        energy_key: energy property in the database (required).
        forces_key: forces property; a task without it is energy-only.
        distance_unit: unit positions are converted to (``Ang``).
        energy_unit: unit energies are converted to (``eV``).
        forces_unit: unit forces are converted to (default ``energy_unit/distance_unit``).
        nan_policy: ``"fail"`` (default) raises on a NaN/inf label; ``"skip"`` drops the
            frame and warns with the count.
        progress: show a progress bar while reading (default: for 10 000+ frames).

    Attributes:
        spk_dataset: the wrapped ``schnetpack.data.ASEAtomsData``.
        level_of_theory: :class:`LevelOfTheory` from the metadata, or ``None``.
        units: ``{energy_key: energy_unit, forces_key: ...}`` after conversion.
        source_units: the units stored in the database.
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
    ):
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        self.name = name
        self.path = resolve_task_path(path)
        self.index = int(index)
        self.energy_key = energy_key
        md = _open_metadata(self.path)
        unit_dict = md.get("_property_unit_dict")
        if not isinstance(unit_dict, dict) or "_distance_unit" not in md:
            raise TaskDataError(
                f"{self.path}: the database has no units (metadata '_property_unit_dict' and "
                "'_distance_unit'); write it with spk_meta.data.write_database or spkconvert"
            )
        if energy_key not in unit_dict:
            raise TaskDataError(
                f"{self.path}: no '{energy_key}' property (the database has: "
                f"{', '.join(unit_dict) or 'none'}); every task needs energies"
            )
        self.has_forces = forces_key is not None and forces_key in unit_dict
        self.forces_key = forces_key if self.has_forces else None
        self.source_units = {k: unit_dict[k] for k in (energy_key, self.forces_key) if k}
        self.source_units["_distance_unit"] = md["_distance_unit"]
        self.distance_unit = distance_unit
        self.units = {energy_key: energy_unit}
        if self.has_forces:
            self.units[forces_key] = forces_unit or f"{energy_unit}/{distance_unit}"
        level = md.get(METADATA_KEY)
        self.level_of_theory = (
            LevelOfTheory.from_metadata(level) if isinstance(level, dict) and "name" in level else None
        )
        self.metadata = md
        self.spk_dataset = ASEAtomsData(
            str(self.path),
            load_properties=list(self.units),
            property_units=dict(self.units),
            distance_unit=distance_unit,
        )
        self._frames = self._read(nan_policy, progress)
        self.elements = tuple(sorted({int(z) for z in np.unique(self._frames.numbers)}))
        self.reference: Optional[AtomicEnergies] = None
        self._reference_energy = np.zeros(len(self._frames.energy))

    # -- reading -------------------------------------------------------------------------

    def _read(self, nan_policy: str, progress: Optional[bool]) -> _Frames:
        f_dist = _unit_factor(self.path, "positions", self.source_units["_distance_unit"], self.distance_unit)
        e_unit = self.units[self.energy_key]
        f_energy = _unit_factor(self.path, self.energy_key, self.source_units[self.energy_key], e_unit)
        f_forces = (
            _unit_factor(self.path, self.forces_key, self.source_units[self.forces_key], self.units[self.forces_key])
            if self.has_forces
            else None
        )
        db_index, n_atoms, numbers, positions, cells, pbcs, energies, forces = ([] for _ in range(8))
        skipped: List[int] = []
        with connect(str(self.path), use_lock_file=False) as conn:
            total = conn.count()
            if total == 0:
                raise TaskDataError(f"{self.path}: the database holds no frames")
            show = progress if progress is not None else total >= 10_000
            rows = tqdm(conn.select(), total=total, desc=f"reading {self.name}", unit="frame", disable=not show)
            for row in rows:
                where = f"{self.path}: row {row.id}"
                data = row.data
                if self.energy_key not in data:
                    raise TaskDataError(f"{where}: no '{self.energy_key}' value")
                energy = np.asarray(data[self.energy_key], dtype=np.float64).reshape(-1)
                if energy.size != 1:
                    raise TaskDataError(f"{where}: '{self.energy_key}' must be one number, got shape {energy.shape}")
                n = len(row.numbers)
                force = None
                if self.has_forces:
                    if self.forces_key not in data:
                        raise TaskDataError(f"{where}: no '{self.forces_key}' value")
                    force = np.asarray(data[self.forces_key], dtype=np.float64)
                    if force.shape != (n, 3):
                        raise TaskDataError(
                            f"{where}: '{self.forces_key}' must have shape ({n}, 3), got {force.shape}"
                        )
                finite = np.isfinite(energy).all() and (force is None or np.isfinite(force).all())
                if not finite:
                    if nan_policy == "fail":
                        raise TaskDataError(
                            f"{where}: NaN or inf in the labels (use nan_policy='skip' to drop such frames)"
                        )
                    skipped.append(row.id)
                    continue
                db_index.append(row.id - 1)
                n_atoms.append(n)
                numbers.append(np.asarray(row.numbers, dtype=np.int64))
                positions.append(np.asarray(row.positions, dtype=np.float64))
                cells.append(np.asarray(row.cell, dtype=np.float64).reshape(3, 3))
                pbcs.append(np.asarray(row.pbc, dtype=bool))
                energies.append(energy[0])
                if force is not None:
                    forces.append(force)
        if skipped:
            warnings.warn(
                f"{self.path}: skipped {len(skipped)} of {total} frames with NaN/inf labels "
                f"(rows {skipped[:10]}{' ...' if len(skipped) > 10 else ''})",
                stacklevel=3,
            )
        if not energies:
            raise TaskDataError(f"{self.path}: no frame with finite labels")
        db_index = np.asarray(db_index, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)
        numbers, positions, energies = np.concatenate(numbers), np.concatenate(positions), np.asarray(energies)
        return _Frames(
            db_index=db_index,
            offsets=offsets,
            numbers=numbers,
            positions=positions * f_dist,
            cell=np.stack(cells) * f_dist,
            pbc=np.stack(pbcs),
            energy=energies * f_energy,
            forces=np.concatenate(forces) * f_forces if self.has_forces else None,
            n_skipped=len(skipped),
            skipped_rows=skipped,
            fingerprint=fingerprint_arrays(db_index, offsets, numbers, positions, energies),
        )

    # -- access --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._frames.energy)

    @property
    def n_skipped(self) -> int:
        """Frames dropped for NaN/inf labels (``nan_policy="skip"``)."""
        return self._frames.n_skipped

    def identity(self) -> DatabaseIdentity:
        """What a saved split of this task is checked against: the database, the number
        of frames served and a fingerprint of their rows, atoms, positions and energies."""
        return DatabaseIdentity(path=str(self.path), n_frames=len(self), fingerprint=self._frames.fingerprint)

    @property
    def db_index(self) -> np.ndarray:
        """Database row index (row id - 1) of each frame, shape ``(len(self),)``."""
        return self._frames.db_index

    @property
    def energies(self) -> np.ndarray:
        """Total energies in the target unit, before the reference is subtracted, ``(len(self),)``."""
        return self._frames.energy

    @property
    def reference_energies(self) -> np.ndarray:
        """``sum_i E0[Z_i]`` subtracted from each served energy, ``(len(self),)`` (zeros
        without a reference)."""
        return self._reference_energy

    def numbers(self, i: int) -> np.ndarray:
        """Atomic numbers of frame ``i``, shape ``(n_atoms,)``."""
        f = self._frames
        return f.numbers[f.offsets[i] : f.offsets[i + 1]]

    def n_atoms(self) -> np.ndarray:
        """Number of atoms per frame, shape ``(len(self),)``."""
        return np.diff(self._frames.offsets)

    def set_reference(self, reference: Optional[AtomicEnergies]) -> None:
        """Subtract ``sum_i E0[Z_i]`` of ``reference`` from every energy served (None: nothing)."""
        self.reference = reference
        if reference is None:
            self._reference_energy = np.zeros(len(self))
            return
        table = np.zeros(max(max(self.elements), max(reference.elements)) + 1)
        missing = set(self.elements) - set(reference.elements)
        if missing:
            raise TaskDataError(
                f"task '{self.name}' ({self.path}): the energy reference has no value for "
                + ", ".join(chemical_symbols[z] for z in sorted(missing))
            )
        for z, v in zip(reference.elements, reference.values):
            table[z] = v
        f = self._frames
        per_atom = table[f.numbers]
        self._reference_energy = np.add.reduceat(per_atom, f.offsets[:-1]) if len(f.numbers) else np.zeros(0)

    def atomrefs(self, zmax: int = 100) -> Dict[str, torch.Tensor]:
        """SchNetPack's atomref table of the subtracted reference: ``{energy_key: (zmax,)}``."""
        if self.reference is None:
            return {self.energy_key: torch.zeros(zmax, dtype=torch.float64)}
        return {self.energy_key: torch.from_numpy(self.reference.to_atomref(zmax))}

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        f = self._frames
        a, b = int(f.offsets[i]), int(f.offsets[i + 1])
        sample = {
            structure.idx: torch.tensor([f.db_index[i]]),
            self.energy_key: torch.tensor([f.energy[i] - self._reference_energy[i]]),
        }
        if f.forces is not None:
            sample[self.forces_key] = torch.tensor(f.forces[a:b])
        sample[structure.n_atoms] = torch.tensor([b - a])
        sample[structure.Z] = torch.tensor(f.numbers[a:b])
        sample[structure.position] = torch.tensor(f.positions[a:b])
        sample[structure.cell] = torch.tensor(f.cell[i][None])
        sample[structure.pbc] = torch.tensor(f.pbc[i])
        sample[properties.task] = torch.tensor([self.index])
        return sample

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
            transforms are deterministic (:func:`transforms_are_deterministic`).
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
        self.cache_enabled = transforms_are_deterministic(self.transforms) if cache is None else bool(cache)
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
        tasks: mapping ``name -> database path``, or a sequence of paths (each named by
            the slug of its level of theory, else of its file name). Relative paths are
            resolved against ``base_dir``.
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
        for i, (name, path) in enumerate(named):
            self._tasks[name] = TaskData(
                name,
                path,
                index=i,
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
            given = [(str(k), str(v)) for k, v in tasks.items()]
        else:
            given = [(None, str(p)) for p in tasks]
        named = []
        for name, path in given:
            resolved = resolve_task_path(path, base_dir)
            if not resolved.exists():
                where = "" if Path(path).expanduser() == resolved else f" (resolved to {resolved})"
                raise TaskDataError(f"{path}{where}: no such task database")
            named.append((task_name_from_database(resolved) if name is None else name, resolved))
        if not named:
            raise TaskDataError("no tasks given: pass a mapping of task names to database paths")
        seen: Dict[str, Path] = {}
        for name, path in named:
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

