"""What every converter reader provides, and the HDF5 helpers they share.

A reader turns one published dataset layout into :class:`SourceFrame` objects in one
unit system (Ang, eV, eV/Ang), each carrying the labels of every level of theory the
source has for that structure. :func:`spk_meta.convert.convert` does the rest (filters,
subsets, one database per level, the summary), so readers stay small.

Readers of conformer-group layouts (ANI-1x, Transition1x, SPICE) also yield whole groups
(:class:`SourceGroup`: one composition, ``n_conf`` conformers as arrays) from
:meth:`Reader.groups`, which the packed writer consumes without per-frame Python work; their
``frames()`` is built from ``groups()`` (:func:`split_groups`), so both paths read the
same numbers. Other readers get ``groups()`` from their frames (:func:`group_frames`).
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from spk_meta.data.level_of_theory import LevelOfTheory

PathLike = Union[str, Path]


class ConversionError(ValueError):
    """The input cannot be converted; the message names the file, group or key at fault."""


@dataclass(frozen=True)
class LevelSpec:
    """One level of theory found in a source: its name and whether it has forces."""

    level: LevelOfTheory
    has_forces: bool


@dataclass
class SourceFrame:
    """One structure and its labels per level key (``None`` forces: energy only).

    Attributes:
        numbers: atomic numbers, shape ``(n_atoms,)``.
        positions: Ang, shape ``(n_atoms, 3)``.
        labels: ``{level key: (energy in eV, forces in eV/Ang of shape (n_atoms, 3) or None)}``;
            a NaN energy or NaN forces mark a missing value (skipped for that level only).
        where: names the frame in messages (file, group, index).
    """

    numbers: np.ndarray
    positions: np.ndarray
    labels: Dict[str, Tuple[float, Optional[np.ndarray]]]
    where: str = ""
    cell: Optional[np.ndarray] = None
    pbc: Optional[np.ndarray] = None


@dataclass
class SourceGroup:
    """Consecutive structures of one composition (the ANI-1x/HDF5 conformer layout).

    Attributes:
        numbers: atomic numbers, shape ``(n_atoms,)``.
        positions: Ang, shape ``(n_conf, n_atoms, 3)``.
        labels: ``{level key: (energies in eV (n_conf,), forces in eV/Ang
            (n_conf, n_atoms, 3) or None)}``; a level the group lacks is left out. NaN marks
            a missing value, as in :class:`SourceFrame`.
        where: names the group in messages; frame ``i`` is ``f"{where}[{i}]"``.
        cell: Ang, ``(n_conf, 3, 3)`` or None; pbc: ``(n_conf, 3)`` or None.
    """

    numbers: np.ndarray
    positions: np.ndarray
    labels: Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]]
    where: str = ""
    cell: Optional[np.ndarray] = None
    pbc: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.positions.shape[0])


def split_groups(groups: Iterable[SourceGroup]) -> Iterator[SourceFrame]:
    """The frames of ``groups``, in order (``frames()`` of readers that define ``groups()``)."""
    for g in groups:
        for i in range(len(g)):
            yield SourceFrame(
                numbers=g.numbers,
                positions=g.positions[i],
                labels={k: (float(e[i]), None if fo is None else fo[i]) for k, (e, fo) in g.labels.items()},
                where=f"{g.where}[{i}]",
                cell=None if g.cell is None else g.cell[i],
                pbc=None if g.pbc is None else g.pbc[i],
            )


def group_frames(frames: Iterable[SourceFrame], max_size: int = 1024) -> Iterator[SourceGroup]:
    """Consecutive frames of the same composition and label layout as groups of at most
    ``max_size`` (``groups()`` of readers that only define ``frames()``)."""
    batch: List[SourceFrame] = []

    def layout(fr: SourceFrame):
        return (fr.numbers.tobytes(), tuple((k, f is None) for k, (_, f) in fr.labels.items()),
                fr.cell is None, fr.pbc is None)

    def flush() -> SourceGroup:
        first = batch[0]
        return SourceGroup(
            numbers=np.asarray(first.numbers),
            positions=np.stack([np.asarray(fr.positions, dtype=np.float64) for fr in batch]),
            labels={
                k: (np.array([fr.labels[k][0] for fr in batch], dtype=np.float64),
                    None if f is None else np.stack([fr.labels[k][1] for fr in batch]))
                for k, (_, f) in first.labels.items()
            },
            where=first.where,
            cell=None if first.cell is None else np.stack([np.asarray(fr.cell, dtype=np.float64).reshape(3, 3) for fr in batch]),
            pbc=None if first.pbc is None else np.stack([np.asarray(fr.pbc, dtype=bool).reshape(3) for fr in batch]),
        )

    current = None
    for fr in frames:
        key = layout(fr)
        if batch and (key != current or len(batch) >= max_size):
            yield flush()
            batch = []
        batch.append(fr)
        current = key
    if batch:
        yield flush()


class Reader(ABC):
    """A published dataset layout. Subclasses set ``name`` and ``description``."""

    name: str = ""
    description: str = ""
    #: True if the layout does not record its level of theory (``--level`` required)
    needs_level: bool = False

    def __init__(self, path: PathLike, level: Optional[str] = None, only: Optional[List[str]] = None):
        self.path = Path(path)
        if not self.path.exists():
            raise ConversionError(f"{self.path}: no such file or directory")
        self.level_name = level
        self.only = list(only) if only else None
        self._levels: Optional[Dict[str, LevelSpec]] = None
        if self.needs_level and not level:
            raise ConversionError(
                f"{self.path}: the {self.name} layout does not record its level of theory; "
                "pass --level METHOD/BASIS"
            )

    def levels(self) -> Dict[str, LevelSpec]:
        """The levels this source holds, by the key ``SourceFrame.labels`` uses
        (found once per reader: ``frames()`` and ``convert()`` both need them)."""
        if self._levels is None:
            self._levels = self._find_levels()
        return self._levels

    @abstractmethod
    def _find_levels(self) -> Dict[str, LevelSpec]:
        """Scan the source's metadata for its levels (see :meth:`levels`)."""

    @abstractmethod
    def count(self) -> int:
        """Number of structures ``frames()`` yields (cheap: from shapes, not data)."""

    @abstractmethod
    def frames(self) -> Iterator[SourceFrame]:
        """Stream the structures, one group or file in memory at a time."""

    def groups(self) -> Iterator[SourceGroup]:
        """Stream the structures as :class:`SourceGroup` s, in the order of ``frames()``.

        Conformer-group layouts override this (and build ``frames()`` on it); the default
        groups consecutive frames of one composition.
        """
        return group_frames(self.frames())

    def _select(self, found: Dict[str, LevelSpec]) -> Dict[str, LevelSpec]:
        if not found:
            raise ConversionError(f"{self.path}: no energies found for the {self.name} layout")
        if self.only is None:
            return found
        unknown = [k for k in self.only if k not in found]
        if unknown:
            raise ConversionError(
                f"{self.path}: no level {', '.join(unknown)} (it has: {', '.join(found)})"
            )
        return {k: v for k, v in found.items() if k in self.only}


def open_hdf5(path: Path):
    """Open ``path`` read-only with h5py; a clear error for missing or corrupted files."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ConversionError(f"{path}: not a readable HDF5 file ({err})") from None


def dataset(group, key: str, path: Path, shape: Optional[tuple] = None) -> np.ndarray:
    """``group[key]`` as an array; errors name the file, group and key (and shapes)."""
    if key not in group:
        raise ConversionError(f"{path}: group '{group.name}' has no '{key}'")
    value = np.asarray(group[key][()])
    if shape is not None and value.shape != shape:
        raise ConversionError(
            f"{path}: '{group.name}/{key}' has shape {value.shape}, expected {shape}"
        )
    return value


def hdf5_files(path: Path, suffixes=(".h5", ".hdf5")) -> List[Path]:
    """``path`` itself, or the HDF5 files in a directory (sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in suffixes)
        if not files:
            raise ConversionError(f"{path}: no {'/'.join(suffixes)} files in this directory")
        return files
    return [path]


def conformers(group, numbers_key: str, positions_key: str, path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """One group of conformers of one molecule: atomic numbers ``(n_atoms,)`` and
    positions ``(n_conformers, n_atoms, 3)`` (in the file's unit), shapes checked."""
    numbers = dataset(group, numbers_key, path).astype(int).reshape(-1)
    pos = dataset(group, positions_key, path)
    if pos.ndim != 3 or pos.shape[1:] != (len(numbers), 3):
        raise ConversionError(
            f"{path}: '{group.name}/{positions_key}' has shape {pos.shape}, "
            f"expected (n_conformers, {len(numbers)}, 3)"
        )
    return numbers, pos
