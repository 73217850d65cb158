"""Energies far outside their level's distribution: found after conversion, reported.

A broken calculation (10^6 Hartree, an energy in the wrong unit) is a finite number and
passes every per-frame check. :class:`EnergyOutliers` keeps, for each written frame, its
energy and an id of its composition (12 bytes per frame and level; the converter stays
streaming), then fits one energy per element robustly (medians per composition, refitted
without the compositions that lie far off) and flags frames whose residual per atom lies
more than :attr:`EnergyOutliers.n_sigma` robust standard deviations (1.4826 MAD) from the
median residual, and at least :attr:`EnergyOutliers.floor` eV/atom. This is a report, not
a filter: ``--energy-cut`` drops frames, and the report suggests a value when one separates
the flagged frames from the rest.
"""

from array import array
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np


@dataclass
class OutlierReport:
    """Frames of one level whose energy lies far outside the level's distribution.

    Attributes:
        count: number of flagged frames.
        threshold: eV/atom: the flagged frames' residual per atom (after the per-element
            fit) is further than this from the median residual.
        first_row: row id (1-based, as ``ase db`` shows it) of the first flagged frame in
            the output database.
        most_extreme: the flagged energy furthest from its fit (eV).
        energy_cut: an ``--energy-cut`` value (eV/atom, distance from the level's median
            energy per atom) that drops every flagged frame and no other, or ``None``
            when the energies per atom overlap.
    """

    count: int
    threshold: float
    first_row: int
    most_extreme: float
    energy_cut: Optional[float]
    #: where the first flagged frame is, when not a database row (a packed store's frame)
    first_at: Optional[str] = None

    def line(self, database_name: str) -> str:
        hint = (
            f"--energy-cut {self.energy_cut:g} drops them and keeps every other frame"
            if self.energy_cut is not None
            else "--energy-cut drops frames by energy per atom (here it would not separate them from the rest)"
        )
        return (
            f"  warning: {self.count} energies lie far outside this level's distribution "
            f"(per atom, after a per-element fit, more than {self.threshold:.3g} eV/atom from the median; "
            f"first at {self.first_at or f'row {self.first_row} of {database_name}'}, most extreme {self.most_extreme:.6g} eV): "
            f"check the source; {hint}"
        )


class EnergyOutliers:
    """Collects ``(composition, energy)`` of written frames; :meth:`report` flags outliers.

    Args:
        n_sigma: flag residuals further than this many robust standard deviations.
        floor: eV/atom; never flag residuals closer than this (levels with tiny spread).
        min_frames: below this many frames no statistic is attempted.
    """

    def __init__(self, n_sigma: float = 20.0, floor: float = 0.1, min_frames: int = 10):
        self.n_sigma = n_sigma
        self.floor = floor
        self.min_frames = min_frames
        self._ids: Dict[bytes, int] = {}
        self._compositions = []  # per-element counts (np.bincount of the atomic numbers)
        self._frame_ids = array("i")
        self._energies = array("d")

    def __len__(self) -> int:
        return len(self._energies)

    def add(self, numbers: np.ndarray, energy: float) -> None:
        """Record one written frame: atomic numbers ``(n_atoms,)``, energy in eV."""
        self._frame_ids.append(self._composition_id(numbers))
        self._energies.append(float(energy))

    def add_group(self, numbers: np.ndarray, energies: np.ndarray) -> None:
        """Record written frames of one composition: atomic numbers ``(n_atoms,)``,
        energies in eV ``(n_frames,)`` (same as :meth:`add` per frame, without the loop)."""
        energies = np.asarray(energies, dtype=np.float64).reshape(-1)
        if len(energies):
            self._frame_ids.frombytes(np.full(len(energies), self._composition_id(numbers), dtype=np.int32).tobytes())
            self._energies.frombytes(energies.tobytes())

    def _composition_id(self, numbers: np.ndarray) -> int:
        counts = np.bincount(np.asarray(numbers, dtype=np.int64))
        key = counts.tobytes()
        cid = self._ids.get(key)
        if cid is None:
            cid = self._ids[key] = len(self._compositions)
            self._compositions.append(counts)
        return cid

    def report(self) -> Optional[OutlierReport]:
        """The flagged frames, or ``None`` when there are none (or too few frames)."""
        n = len(self._energies)
        if n < self.min_frames:
            return None
        width = max(len(c) for c in self._compositions)
        comp = np.zeros((len(self._compositions), width))
        for i, c in enumerate(self._compositions):
            comp[i, : len(c)] = c
        comp = comp[:, comp.any(axis=0)]  # elements present, shape (n_compositions, n_elements)
        ids = np.frombuffer(self._frame_ids, dtype=np.int32)
        energy = np.frombuffer(self._energies, dtype=np.float64)
        n_atoms = comp.sum(axis=1)
        per_comp = np.bincount(ids, minlength=len(comp))
        median = _group_medians(ids, energy, per_comp)

        # start without compositions whose median energy per atom is absurd for this level
        e_atom = median / n_atoms
        keep = np.abs(e_atom - np.median(e_atom)) <= 50 * _robust_sigma(energy / n_atoms[ids]) + self.floor
        if not keep.any():
            keep[:] = True
        for _ in range(5):  # refit without the compositions that lie far off
            w = np.sqrt(per_comp[keep])
            fit, *_ = np.linalg.lstsq(comp[keep] * w[:, None], median[keep] * w, rcond=None)
            residual = (energy - comp[ids] @ fit) / n_atoms[ids]  # eV/atom, shape (n_frames,)
            keep_frames = np.ones(n, dtype=bool)
            if (~keep).any():
                keep_frames = keep[ids]
            center = np.median(residual[keep_frames])
            threshold = max(self.n_sigma * _robust_sigma(residual[keep_frames]), self.floor)
            comp_residual = (median - comp @ fit) / n_atoms
            new_keep = np.abs(comp_residual - center) <= threshold
            if not new_keep.any() or (new_keep == keep).all():
                break
            keep = new_keep
        flagged = np.abs(residual - center) > threshold
        if not flagged.any():
            return None
        worst = int(np.argmax(np.abs(residual - center)))
        return OutlierReport(
            count=int(flagged.sum()),
            threshold=float(threshold),
            first_row=int(np.argmax(flagged)) + 1,
            most_extreme=float(energy[worst]),
            energy_cut=_separating_cut(energy / n_atoms[ids], flagged),
        )


def _robust_sigma(x: np.ndarray) -> float:
    """1.4826 x the median absolute deviation: the standard deviation for normal data."""
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) else 0.0


def _group_medians(ids: np.ndarray, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Median of ``values`` per group id (every id in ``range(len(counts))`` occurs)."""
    order = np.lexsort((values, ids))
    ordered = values[order]
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return 0.5 * (ordered[start + (counts - 1) // 2] + ordered[start + counts // 2])


def _separating_cut(e_atom: np.ndarray, flagged: np.ndarray) -> Optional[float]:
    """An ``--energy-cut`` (distance from the median energy per atom) between the kept
    frames and the flagged ones, or ``None`` if no value separates them."""
    distance = np.abs(e_atom - np.median(e_atom))
    inner, outer = distance[~flagged].max(initial=0.0), distance[flagged].min()
    if not inner < outer:
        return None
    cut = 2 * inner if 0 < 2 * inner < outer else 0.5 * (inner + outer)
    rounded = float(f"{cut:.3g}")
    return rounded if inner < rounded < outer else float(cut)
