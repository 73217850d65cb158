"""Per-element atomic reference energies (E0) by linear least squares.

Each level of theory gets its own fit on its training split; subtracting it leaves the
part of the energy a network has to learn ("linear scaling" in the seed paper). With a
single composition (one molecule, as in the embedded ethanol data) the composition matrix
has rank 1 and the fit is underdetermined: we return the minimum-norm solution, which
reproduces the mean energy exactly (sum_i E0[Z_i] = mean E for that composition) and
spreads it over the elements in proportion to their counts.
"""

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
from ase.data import chemical_symbols


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
    A = composition_matrix(numbers, elements)
    values, _, rank, _ = np.linalg.lstsq(A, energies, rcond=None)
    residual = energies - A @ values
    return AtomicEnergies(
        elements=elements,
        values=values,
        rank=int(rank),
        residual_rms=float(np.sqrt(np.mean(residual**2))),
    )
