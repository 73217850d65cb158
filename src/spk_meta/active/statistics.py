"""Committee statistics: the mean of the members' predictions and their disagreement.

The spread is the sample standard deviation over the M members (Bessel's correction,
``ddof = 1``), as torchani's ``energies_qbcs`` and ``force_qbc`` compute it for the ANI-1x
active-learning criterion (Smith et al., J. Chem. Phys. 148, 241733 (2018)), so that a
``--threshold`` on rho means the same as in the ANI literature.
"""

from typing import Tuple

import numpy as np

#: Bessel's correction: the committee spread is the sample standard deviation over members.
DDOF = 1


def committee_mean_std(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation over the members (axis 0).

    Args:
        values: ``(M, ...)`` predictions of M >= 2 members (any unit).

    Returns:
        ``(mean, std)``, each of shape ``values.shape[1:]``, in the unit of ``values``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] < 2:
        raise ValueError(f"a committee needs at least two members, got {values.shape[0]}")
    return values.mean(axis=0), values.std(axis=0, ddof=DDOF)


def energy_rho(energy_std: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """ANI's rho = sigma_E / sqrt(N_atoms) per frame.

    Args:
        energy_std: ``(n_frames,)`` committee spread of the energy (eV).
        n_atoms: ``(n_frames,)`` atoms per frame.

    Returns:
        ``(n_frames,)`` rho in eV / sqrt(atom).
    """
    return np.asarray(energy_std, dtype=np.float64) / np.sqrt(np.asarray(n_atoms, dtype=np.float64))


def max_force_spread(forces_std: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """The largest per-atom force spread in each frame.

    An atom's spread is the length of its per-component committee spread,
    ``sqrt(sigma_x^2 + sigma_y^2 + sigma_z^2)``; a frame's is the largest over its atoms.

    Args:
        forces_std: ``(n_atoms_total, 3)`` committee spread of each force component (eV/Ang),
            frames one after another.
        n_atoms: ``(n_frames,)`` atoms per frame (each >= 1), summing to ``n_atoms_total``.

    Returns:
        ``(n_frames,)`` in eV/Ang.
    """
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    per_atom = np.sqrt((np.asarray(forces_std, dtype=np.float64) ** 2).sum(axis=1))  # (n_atoms_total,)
    if per_atom.shape[0] != n_atoms.sum():
        raise ValueError(f"{per_atom.shape[0]} atoms of forces for frames of {int(n_atoms.sum())} atoms")
    starts = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    return np.maximum.reduceat(per_atom, starts)
