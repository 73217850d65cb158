"""Rigid scans for judging potential-energy surfaces: torsions and bond dissociation.

Geometry only moves the atoms the scan is about (no relaxation), so differences between
models are differences in their surfaces. Energies come from any ASE calculator.
"""

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
from ase import Atoms
from ase.neighborlist import build_neighbor_list, natural_cutoffs

from spk_meta.evaluate.metrics import roughness, spurious_barriers


def bonded_side(atoms: Atoms, a: int, b: int) -> List[int]:
    """Atoms on ``b``'s side of the bond ``a``-``b`` (covalent-radius bond graph).

    Raises:
        ValueError: ``a`` and ``b`` are not bonded, or the bond is in a ring (both sides
            stay connected, so rotating one side would distort the molecule).
    """
    nl = build_neighbor_list(atoms, cutoffs=natural_cutoffs(atoms), self_interaction=False, bothways=True)
    if b not in nl.get_neighbors(a)[0]:
        raise ValueError(f"atoms {a} and {b} are not bonded")
    side, stack = {b}, [b]
    while stack:
        i = stack.pop()
        for j in nl.get_neighbors(i)[0]:
            if (i, j) in ((b, a), (a, b)):
                continue
            if j == a:
                raise ValueError(f"bond {a}-{b} is in a ring: no rigid side to rotate")
            if j not in side:
                side.add(int(j))
                stack.append(int(j))
    return sorted(side)


@dataclass
class Scan:
    """A scanned coordinate, the energies along it (eV) and their smoothness."""

    coordinate: np.ndarray
    energies: np.ndarray
    frames: List[Atoms]

    @property
    def roughness(self) -> float:
        return roughness(self.energies)


def torsion_scan(atoms: Atoms, dihedral: Sequence[int], angles: Sequence[float], calc=None) -> Scan:
    """Set the dihedral ``(i, j, k, l)`` to each angle (degrees), rotating the ``l`` side
    of the ``j``-``k`` bond rigidly; energies with ``calc`` (skipped if ``None``)."""
    i, j, k, l = (int(x) for x in dihedral)
    mask = np.zeros(len(atoms), dtype=bool)
    mask[bonded_side(atoms, j, k)] = True
    frames, energies = [], []
    for angle in angles:
        a = atoms.copy()
        a.set_dihedral(i, j, k, l, float(angle), mask=mask)
        frames.append(a)
        if calc is not None:
            a.calc = calc
            energies.append(a.get_potential_energy())
    return Scan(np.asarray(angles, float), np.asarray(energies, float), frames)


def bond_scan(atoms: Atoms, bond: Sequence[int], distances: Sequence[float], calc=None,
              move_fragment: bool = True) -> Scan:
    """Pull atom ``b`` of ``bond=(a, b)`` away from ``a`` along the bond to each distance
    (Ang); with ``move_fragment`` its whole side of the bond moves rigidly with it."""
    a, b = (int(x) for x in bond)
    moving = bonded_side(atoms, a, b) if move_fragment else [b]
    frames, energies = [], []
    for d in distances:
        x = atoms.copy()
        x.set_distance(a, b, float(d), fix=0, indices=moving)
        frames.append(x)
        if calc is not None:
            x.calc = calc
            energies.append(x.get_potential_energy())
    return Scan(np.asarray(distances, float), np.asarray(energies, float), frames)


def dissociation_report(scan: Scan, tolerance: float = 1e-3) -> dict:
    """Smoothness of a bond scan: roughness, spurious barriers, well depth (eV)."""
    e = scan.energies
    return {
        "roughness": scan.roughness,
        "spurious_barriers": spurious_barriers(scan.coordinate, e, tolerance),
        "well_depth": float(e[-1] - e.min()),
        "minimum_at": float(scan.coordinate[int(np.argmin(e))]),
    }
