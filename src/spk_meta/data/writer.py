"""Write frames (ASE ``Atoms`` with energies and forces) into a SchNetPack ASE database.

One reusable writer: the embedded dataset, the converters and users' own extxyz files
all go through :func:`write_database`, so every task database carries the same
metadata (units, level of theory, source) and passes the same checks.
"""

from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Union

import ase.io
import numpy as np
from ase import Atoms
from ase.db import connect
from schnetpack import properties as spk_props
from schnetpack.data import ASEAtomsData
from tqdm.auto import tqdm

from spk_meta.data.level_of_theory import METADATA_KEY, LevelOfTheory
from spk_meta.utils import atomic_path

DEFAULT_UNITS = {spk_props.energy: "eV", spk_props.forces: "eV/Ang"}


class DatabaseWriteError(ValueError):
    """A frame cannot go into a task database; the message names the source and frame."""


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
    props = {spk_props.energy: energy.reshape(1)}
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
        props[spk_props.forces] = forces
    return props


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
    database = Path(database)
    if database.suffix != ".db":
        raise DatabaseWriteError(f"{database}: a SchNetPack ASE database must end in '.db'")
    if isinstance(level_of_theory, str):
        level_of_theory = LevelOfTheory.parse(level_of_theory)
    units = dict(units or DEFAULT_UNITS)
    if forces_key is None:
        units.pop(spk_props.forces, None)

    with atomic_path(database, overwrite=overwrite) as tmp:
        ASEAtomsData.create(str(tmp), distance_unit="Ang", property_unit_dict=units)
        n_frames = 0
        elements: set = set()
        with connect(str(tmp), use_lock_file=False) as conn:
            conn.metadata = {
                **conn.metadata,
                **(metadata or {}),
                METADATA_KEY: level_of_theory.to_metadata(),
                "source": source,
            }
        bar = tqdm(frames, desc=f"writing {database.name}", unit="frame", disable=not progress)
        for chunk in _chunks(bar, chunk_size):
            with connect(str(tmp), use_lock_file=False) as conn:
                for atoms in chunk:
                    props = _frame_properties(atoms, n_frames, source, energy_key, forces_key)
                    bare = Atoms(
                        numbers=atoms.numbers,
                        positions=atoms.positions,
                        cell=atoms.cell,
                        pbc=atoms.pbc,
                    )
                    conn.write(bare, data=props)
                    elements.update(int(z) for z in atoms.numbers)
                    n_frames += 1
        if n_frames == 0:
            raise DatabaseWriteError(f"{source}: no frames to write")
        with connect(str(tmp), use_lock_file=False) as conn:
            md = conn.metadata
            md["n_frames"] = n_frames
            md["elements"] = sorted(elements)
            conn.metadata = md
    return database.absolute()


def _chunks(iterable: Iterable[Atoms], size: int) -> Iterator[list]:
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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
