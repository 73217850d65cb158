"""Per-element atomic reference energies (E0) by linear least squares.

Each level of theory gets its own fit on its training split; subtracting it leaves the
part of the energy a network has to learn ("linear scaling" in the seed paper). With a
single composition (one molecule, as in the embedded ethanol data) the composition matrix
has rank 1 and the fit is underdetermined: we return the minimum-norm solution, which
reproduces the mean energy exactly (sum_i E0[Z_i] = mean E for that composition) and
spreads it over the elements in proportion to their counts.

The fitted references of a run are saved as ``energy_references.json`` (one entry per
task, :func:`save_energy_references`) and read back with :func:`load_energy_references`.
They are refitted on every start from the task's (checked) training split, so the file
always describes the run that wrote it last.
"""

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from ase.data import chemical_symbols

from spk_meta.utils import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AtomicEnergies:
    """Fitted atomic energies of one level of theory.

    Attributes:
        elements: atomic numbers, ascending.
        values: E0 per element, same order, in the energy unit of the fit (eV by default).
        rank: rank of the composition matrix; ``rank < len(elements)`` means the data
            could not separate the elements and ``values`` is the minimum-norm solution.
        residual_rms: RMS of ``E - sum_i E0[Z_i]`` over the fitted frames.
    """

    elements: Tuple[int, ...]
    values: np.ndarray
    rank: int
    residual_rms: float

    @property
    def rank_deficient(self) -> bool:
        return self.rank < len(self.elements)

    def as_dict(self) -> Dict[int, float]:
        return {z: float(v) for z, v in zip(self.elements, self.values)}

    def energy(self, numbers: Sequence[int]) -> float:
        """Sum of E0 over the atoms of one structure; KeyError names an unfitted element."""
        table = self.as_dict()
        try:
            return float(sum(table[int(z)] for z in numbers))
        except KeyError as err:
            z = int(err.args[0])
            raise KeyError(
                f"no atomic energy for {chemical_symbols[z]} (Z={z}); fitted elements: "
                + ", ".join(chemical_symbols[e] for e in self.elements)
            ) from None

    def to_atomref(self, max_z: int = 100) -> np.ndarray:
        """Array indexed by atomic number, shape ``(max_z,)``, as SchNetPack's atomrefs."""
        ref = np.zeros(max_z)
        for z, v in zip(self.elements, self.values):
            ref[z] = v
        return ref


def composition_matrix(numbers: Iterable[Sequence[int]], elements: Sequence[int]) -> np.ndarray:
    """Element counts per structure, shape ``(n_structures, len(elements))``."""
    column = {int(z): k for k, z in enumerate(elements)}
    rows = []
    for i, zs in enumerate(numbers):
        counts = np.zeros(len(elements))
        for z in zs:
            if int(z) not in column:
                raise ValueError(f"structure {i} contains {chemical_symbols[int(z)]}, not in the fitted elements")
            counts[column[int(z)]] += 1
        rows.append(counts)
    return np.asarray(rows).reshape(-1, len(elements))


def fit_atomic_energies(
    numbers: Sequence[Sequence[int]],
    energies: Sequence[float],
    elements: Optional[Sequence[int]] = None,
) -> AtomicEnergies:
    """Least-squares E0 with ``sum_i E0[Z_i] ~= E`` over the given structures.

    Args:
        numbers: atomic numbers of each structure (a list of arrays of varying length).
        energies: total energy of each structure, shape ``(n_structures,)``.
        elements: atomic numbers to fit; default: all that occur.

    Returns:
        :class:`AtomicEnergies` (minimum-norm solution if the compositions do not
        determine every element).
    """
    numbers = [np.asarray(z, dtype=int) for z in numbers]
    energies = np.asarray(energies, dtype=np.float64).reshape(-1)
    if len(numbers) != len(energies):
        raise ValueError(f"{len(numbers)} structures but {len(energies)} energies")
    if len(energies) == 0:
        raise ValueError("cannot fit atomic energies on zero structures")
    if not np.isfinite(energies).all():
        raise ValueError("energies contain NaN or inf")
    if elements is None:
        elements = sorted({int(z) for zs in numbers for z in zs})
    elements = tuple(sorted(int(z) for z in elements))
    return fit_atomic_energies_from_counts(composition_matrix(numbers, elements), energies, elements)


def fit_atomic_energies_from_counts(
    counts: np.ndarray, energies: Sequence[float], elements: Sequence[int]
) -> AtomicEnergies:
    """:func:`fit_atomic_energies` on a composition matrix already counted.

    Args:
        counts: element counts per structure, ``(n_structures, len(elements))`` (e.g.
            accumulated chunk by chunk from a store, :meth:`TaskData.element_counts`).
        energies: total energy of each structure, ``(n_structures,)``.
        elements: the atomic numbers of the columns, ascending.
    """
    A = np.asarray(counts, dtype=np.float64)
    energies = np.asarray(energies, dtype=np.float64).reshape(-1)
    elements = tuple(int(z) for z in elements)
    if A.ndim != 2 or A.shape != (len(energies), len(elements)):
        raise ValueError(f"counts of shape {A.shape} for {len(energies)} structures and {len(elements)} elements")
    if len(energies) == 0:
        raise ValueError("cannot fit atomic energies on zero structures")
    if not np.isfinite(energies).all():
        raise ValueError("energies contain NaN or inf")
    values, _, rank, _ = np.linalg.lstsq(A, energies, rcond=None)
    residual = energies - A @ values
    return AtomicEnergies(
        elements=elements,
        values=values,
        rank=int(rank),
        residual_rms=float(np.sqrt(np.mean(residual**2))),
    )


def fit_split_reference(
    numbers: Sequence[Sequence[int]],
    energies: Sequence[float],
    elements: Sequence[int],
    where: str,
) -> AtomicEnergies:
    """E0 of one task on its training split, over all of the task's ``elements``.

    An element that occurs only outside the training split gets a zero column, hence
    E0 = 0 in the minimum-norm solution; that is warned about, naming ``where`` (e.g.
    ``"task 'pbe' (/data/pbe.db)"``). A rank-deficient fit is logged (INFO).

    Args:
        numbers: atomic numbers of each training frame.
        energies: total energy of each training frame, shape ``(n_train,)``.
        elements: every atomic number of the task (also those outside the split).
        where: names the task in messages.
    """
    elements = tuple(sorted(int(z) for z in elements))
    return fit_split_reference_counts(composition_matrix(numbers, elements), energies, elements, where)


def fit_split_reference_counts(
    counts: np.ndarray, energies: Sequence[float], elements: Sequence[int], where: str
) -> AtomicEnergies:
    """:func:`fit_split_reference` on a composition matrix ``(n_train, len(elements))``
    counted chunk by chunk (no per-frame Python objects); same warnings and result."""
    counts = np.asarray(counts, dtype=np.float64)
    elements = tuple(int(z) for z in elements)
    present = counts.sum(axis=0) > 0 if counts.size else np.zeros(len(elements), dtype=bool)
    unseen = {z for z, p in zip(elements, present) if not p}
    if unseen:
        warnings.warn(
            f"{where}: "
            + ", ".join(chemical_symbols[z] for z in sorted(unseen))
            + " occur(s) only outside the training split; their E0 is set to 0",
            stacklevel=3,
        )
    ref = fit_atomic_energies_from_counts(counts, energies, elements)
    if ref.rank_deficient:
        log.info(
            "%s: %d compositions cannot separate %d elements; E0 is the minimum-norm fit "
            "(exact for the mean energy of each composition)",
            where, ref.rank, len(ref.elements),
        )
    return ref


def energy_references_as_dict(
    references: Mapping[str, AtomicEnergies],
    unit: str,
    info: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Dict[str, Dict[str, Any]]:
    """JSON-ready ``{task: {elements, symbols, values, unit, rank, ...}}``.

    Args:
        references: fitted E0 per task.
        unit: the energy unit of the values.
        info: extra entries per task (e.g. ``level_of_theory``, ``database``), written first.
    """
    out = {}
    for name, ref in references.items():
        out[name] = {
            **dict((info or {}).get(name, {})),
            "unit": unit,
            "elements": [int(z) for z in ref.elements],
            "symbols": [chemical_symbols[z] for z in ref.elements],
            "values": [float(v) for v in ref.values],
            "rank": int(ref.rank),
            "rank_deficient": bool(ref.rank_deficient),
            "residual_rms": float(ref.residual_rms),
        }
    return out


def save_energy_references(
    path: Union[str, Path],
    references: Mapping[str, AtomicEnergies],
    unit: str,
    info: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Path:
    """Write :func:`energy_references_as_dict` as JSON, atomically (temporary name, rename)."""
    path = Path(path)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(energy_references_as_dict(references, unit, info), indent=1))
    return path


def load_energy_references(path: Union[str, Path]) -> Dict[str, Tuple[AtomicEnergies, str]]:
    """The references saved by :func:`save_energy_references`: ``{task: (E0, unit)}``.

    Raises:
        ValueError: the file is not such a JSON file (the message names it and the task).
    """
    path = Path(path)
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not an energy reference file ({err})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: not an energy reference file (expected an object keyed by task)")
    out = {}
    for name, entry in saved.items():
        try:
            ref = AtomicEnergies(
                elements=tuple(int(z) for z in entry["elements"]),
                values=np.asarray(entry["values"], dtype=np.float64),
                rank=int(entry["rank"]),
                residual_rms=float(entry["residual_rms"]),
            )
            unit = str(entry["unit"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: task '{name}': malformed entry ({type(err).__name__}: {err})") from None
        if len(ref.values) != len(ref.elements):
            raise ValueError(f"{path}: task '{name}': {len(ref.elements)} elements but {len(ref.values)} values")
        out[name] = (ref, unit)
    return out
