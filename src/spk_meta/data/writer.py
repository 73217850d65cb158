"""Write frames (ASE ``Atoms`` with energies and forces) into a SchNetPack ASE database.

One reusable writer: the embedded dataset, the converters and users' own extxyz files
all go through :func:`write_database`, so every task database carries the same
metadata (units, level of theory, source) and passes the same checks.
"""

import os
import re
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Union

import ase.io
import numpy as np
from ase import Atoms
from ase.db import connect
from tqdm.auto import tqdm

from spk_meta.data.level_of_theory import METADATA_KEY, LevelOfTheory
from spk_meta.utils.atomic import AllOrNothing

#: SchNetPack's property keys (``schnetpack.properties.energy``/``forces``; a test checks
#: they agree), spelled out so that writing databases does not import torch.
ENERGY, FORCES = "energy", "forces"

DEFAULT_UNITS = {ENERGY: "eV", FORCES: "eV/Ang"}

#: ``.NAME.PID-XXXXXXXX.tmp.db`` (and SQLite's side files): a database being written by
#: process PID; the name ``utils.atomic_path`` gives too, so older leftovers match.
TEMPORARY_NAME = re.compile(r"^\.(?P<stem>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp\.db(?:-journal|-wal|-shm)?$")


class DatabaseWriteError(ValueError):
    """A frame cannot go into a task database; the message names the source and frame."""


def temporary_path(database: Path) -> Path:
    """Where a database is written until it is complete: hidden, next to ``database``
    (so the final rename stays on one file system), named after this process."""
    return database.with_name(f".{database.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{database.suffix}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running (this one, or any we cannot rule out)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a pid we cannot check): leave its files alone
    return True


def stale_temporaries(folder: Union[str, Path], pattern: "re.Pattern") -> List[Path]:
    """Entries of ``folder`` whose name matches ``pattern`` (with a ``pid`` group) and whose
    writing process no longer runs (killed); a live writer's entry is never listed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        m = pattern.match(p.name)
        if m and not pid_alive(int(m["pid"])):
            out.append(p)
    return out


def stale_temporary_files(folder: Union[str, Path]) -> List[Path]:
    """Temporary databases in ``folder`` left by writers that no longer run (killed).

    Only names of the form :data:`TEMPORARY_NAME` count, and only when their process id
    is not alive: a live writer's file (or one of a reused pid) is never listed.
    """
    return [p for p in stale_temporaries(folder, TEMPORARY_NAME) if p.is_file()]


def _place(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``final``; without ``overwrite`` never replace a file
    that appeared meanwhile (a hard link fails if ``final`` exists: atomic no-replace)."""
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise FileExistsError(
            f"{final} appeared while this database was being written (another process?); "
            "it was not replaced and this copy is discarded"
        ) from None
    except OSError:  # a file system without hard links: check, then rename
        if final.exists():
            raise FileExistsError(
                f"{final} appeared while this database was being written (another process?); "
                "it was not replaced and this copy is discarded"
            ) from None
        os.replace(tmp, final)
        return
    tmp.unlink()


def _label(atoms: Atoms, key: str, per_atom: bool) -> Optional[np.ndarray]:
    """A label from the calculator results (extxyz puts energy/forces there) or info/arrays."""
    results = getattr(atoms.calc, "results", None) or {}
    if key in results:
        value = results[key]
    elif per_atom and key in atoms.arrays:
        value = atoms.arrays[key]
    elif not per_atom and key in atoms.info:
        value = atoms.info[key]
    else:
        return None
    return np.asarray(value, dtype=np.float64)


def _frame_properties(
    atoms: Atoms, index: int, source: str, energy_key: str, forces_key: Optional[str]
) -> Dict[str, np.ndarray]:
    where = f"{source}: frame {index}"
    energy = _label(atoms, energy_key, per_atom=False)
    if energy is None:
        raise DatabaseWriteError(f"{where}: no energy (looked for '{energy_key}')")
    if energy.size != 1:
        raise DatabaseWriteError(f"{where}: energy must be one number, got shape {energy.shape}")
    if not np.isfinite(energy).all():
        raise DatabaseWriteError(f"{where}: energy is not finite ({energy.item()})")
    props = {ENERGY: energy.reshape(1)}
    if forces_key is not None:
        forces = _label(atoms, forces_key, per_atom=True)
        if forces is None:
            raise DatabaseWriteError(f"{where}: no forces (looked for '{forces_key}')")
        if forces.shape != (len(atoms), 3):
            raise DatabaseWriteError(
                f"{where}: forces must have shape ({len(atoms)}, 3), got {forces.shape}"
            )
        if not np.isfinite(forces).all():
            raise DatabaseWriteError(f"{where}: forces contain NaN or inf")
        props[FORCES] = forces
    return props


class DatabaseWriter(AllOrNothing):
    """Stream frames into a new SchNetPack ASE database, renamed into place on ``close()``.

    The building block of :func:`write_database` and of the converters, which fill one
    database per level of theory from a single pass over their source. Frames are
    committed every ``chunk_size`` frames; until ``close()`` everything lives in a
    temporary file next to ``database``, which ``abort()`` (or an exception inside a
    ``with`` block) removes, so no half-written database ever carries the final name.
    Without ``overwrite`` the final name is checked twice: at construction and at the
    rename, which never replaces a file another process put there in the meantime.
    A killed writer leaves its temporary file (see :func:`stale_temporary_files`).

    Args:
        database: output path ending in ``.db``.
        level_of_theory: ``"METHOD/BASIS"`` or a :class:`LevelOfTheory` (metadata key
            ``"level_of_theory"``).
        source: stored as ``metadata["source"]`` and used in error messages.
        has_forces: whether every frame carries forces.
        units: units of the labels as given (default eV and eV/Ang); SchNetPack converts
            on load.
        metadata: extra JSON-serialisable metadata.
        overwrite: replace an existing database; otherwise ``FileExistsError`` before
            anything is written, or at ``close()`` if the file appeared meanwhile.
        chunk_size: frames per SQLite transaction.
    """

    def __init__(
        self,
        database: Union[str, Path],
        level_of_theory: Union[str, LevelOfTheory],
        *,
        source: str = "<frames>",
        has_forces: bool = True,
        units: Optional[Dict[str, str]] = None,
        metadata: Optional[Dict[str, Any]] = None,
        overwrite: bool = False,
        chunk_size: int = 1000,
    ):
        self.database = Path(database)
        if self.database.suffix != ".db":
            raise DatabaseWriteError(f"{self.database}: a SchNetPack ASE database must end in '.db'")
        if isinstance(level_of_theory, str):
            level_of_theory = LevelOfTheory.parse(level_of_theory)
        self.level_of_theory = level_of_theory
        self.source = source
        self.has_forces = has_forces
        self.chunk_size = int(chunk_size)
        units = dict(units or DEFAULT_UNITS)
        if not has_forces:
            units.pop(FORCES, None)
        self.units = units
        self.n_frames = 0
        self.elements: set = set()
        self.energy_range = [np.inf, -np.inf]
        self.overwrite = overwrite
        self.database = self.database.absolute()
        if self.database.exists() and not overwrite:
            raise FileExistsError(f"{self.database} already exists (pass overwrite=True to replace it)")
        self.database.parent.mkdir(parents=True, exist_ok=True)
        self._tmp: Optional[Path] = temporary_path(self.database)
        self._conn = None
        try:
            from schnetpack.data import ASEAtomsData  # torch: only when a database is created

            ASEAtomsData.create(str(self._tmp), distance_unit="Ang", property_unit_dict=units)
            with connect(str(self._tmp), use_lock_file=False) as conn:
                conn.metadata = {
                    **conn.metadata,
                    **(metadata or {}),
                    METADATA_KEY: level_of_theory.to_metadata(),
                    "source": source,
                }
        except BaseException:
            self.abort()
            raise

    def add(
        self,
        numbers: np.ndarray,
        positions: np.ndarray,
        energy: float,
        forces: Optional[np.ndarray] = None,
        cell: Optional[np.ndarray] = None,
        pbc: Optional[np.ndarray] = None,
    ) -> None:
        """Append one frame (Ang, and the label units given at construction)."""
        if self._conn is None:
            self._conn = connect(str(self._tmp), use_lock_file=False)
            self._conn.__enter__()
        data = {ENERGY: np.asarray([energy], dtype=np.float64)}
        if self.has_forces:
            data[FORCES] = np.asarray(forces, dtype=np.float64)
        atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=False if pbc is None else pbc)
        self._conn.write(atoms, data=data)
        self.n_frames += 1
        self.elements.update(int(z) for z in numbers)
        self.energy_range = [min(self.energy_range[0], energy), max(self.energy_range[1], energy)]
        if self.n_frames % self.chunk_size == 0:
            self._commit()

    def _commit(self) -> None:
        if self._conn is not None:
            self._conn.__exit__(None, None, None)
            self._conn = None

    def close(self) -> Optional[Path]:
        """Finish: write ``n_frames`` and ``elements`` and rename into place.

        Returns the absolute path, or ``None`` (and nothing written) if no frame was added.
        """
        self._commit()
        if self._tmp is None:
            return None
        if self.n_frames == 0:
            self.abort()
            return None
        with connect(str(self._tmp), use_lock_file=False) as conn:
            md = conn.metadata
            md["n_frames"] = self.n_frames
            md["elements"] = sorted(self.elements)
            conn.metadata = md
        try:
            _place(self._tmp, self.database, self.overwrite)
        except BaseException:
            self.abort()
            raise
        self._tmp = None
        return self.database

    def abort(self) -> None:
        """Drop everything written so far."""
        if self._conn is not None:
            try:
                self._conn.__exit__(None, None, None)
            finally:
                self._conn = None
        if self._tmp is not None:
            for p in (self._tmp, self._tmp.with_name(self._tmp.name + "-journal")):
                p.unlink(missing_ok=True)
            self._tmp = None


def write_database(
    frames: Iterable[Atoms],
    database: Union[str, Path],
    level_of_theory: Union[str, LevelOfTheory],
    *,
    source: str = "<frames>",
    energy_key: str = "energy",
    forces_key: Optional[str] = "forces",
    units: Optional[Dict[str, str]] = None,
    metadata: Optional[Dict[str, Any]] = None,
    overwrite: bool = False,
    chunk_size: int = 1000,
    progress: bool = False,
) -> Path:
    """Write ``frames`` into a new SchNetPack ``ASEAtomsData`` database, atomically.

    Args:
        frames: structures with an energy (scalar) and, unless ``forces_key`` is None,
            forces of shape ``(n_atoms, 3)``; read from the calculator results, else from
            ``atoms.info`` / ``atoms.arrays``. Streamed: any iterable works.
        database: output path ending in ``.db``.
        level_of_theory: ``"METHOD/BASIS"`` or a :class:`LevelOfTheory`; stored in the
            metadata under ``"level_of_theory"``.
        source: name used in error messages and stored as ``metadata["source"]``.
        units: units of the labels as given (default eV and eV/Ang); stored in SchNetPack's
            ``_property_unit_dict`` so ``ASEAtomsData`` converts on load.
        metadata: extra JSON-serialisable metadata.
        overwrite: replace an existing database.
        chunk_size: frames per SQLite transaction.
        progress: show a progress bar.

    Returns:
        the absolute path of the finished database. Nothing is left under that name if
        any frame is rejected.
    """
    with DatabaseWriter(
        database,
        level_of_theory,
        source=source,
        has_forces=forces_key is not None,
        units=units,
        metadata=metadata,
        overwrite=overwrite,
        chunk_size=chunk_size,
    ) as writer:
        bar = tqdm(frames, desc=f"writing {Path(database).name}", unit="frame", disable=not progress)
        for atoms in bar:
            props = _frame_properties(atoms, writer.n_frames, source, energy_key, forces_key)
            writer.add(
                atoms.numbers,
                atoms.positions,
                float(props[ENERGY][0]),
                props.get(FORCES),
                cell=atoms.cell.array,
                pbc=atoms.pbc,
            )
        if writer.n_frames == 0:
            raise DatabaseWriteError(f"{source}: no frames to write")
    return Path(database).absolute()


def extxyz_to_database(
    source: Union[str, Path],
    database: Union[str, Path],
    level_of_theory: Optional[Union[str, LevelOfTheory]] = None,
    **kwargs: Any,
) -> Path:
    """Convert an extxyz file (or any ASE-readable trajectory) into a task database.

    Args:
        source: the input file; read frame by frame with ``ase.io.iread``.
        database: output ``.db`` path.
        level_of_theory: the level of the labels. If omitted, every frame must carry the
            same ``level_of_theory`` entry in its info line.
        **kwargs: passed to :func:`write_database`.
    """
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")

    def frames() -> Iterator[Atoms]:
        for i, atoms in enumerate(ase.io.iread(str(source), index=":")):
            frame_level = atoms.info.get("level_of_theory")
            if frame_level is not None and expected is not None and frame_level != expected:
                raise DatabaseWriteError(
                    f"{source}: frame {i}: level_of_theory '{frame_level}' differs from "
                    f"'{expected}'; one database holds one level of theory"
                )
            yield atoms

    if level_of_theory is None:
        first = next(ase.io.iread(str(source), index=":"), None)
        found = None if first is None else first.info.get("level_of_theory")
        if found is None:
            raise DatabaseWriteError(
                f"{source}: no level of theory given and frame 0 has no 'level_of_theory' entry"
            )
        level_of_theory = str(found)
    expected = (
        level_of_theory.name if isinstance(level_of_theory, LevelOfTheory) else level_of_theory
    )
    return write_database(frames(), database, level_of_theory, source=source.name, **kwargs)
