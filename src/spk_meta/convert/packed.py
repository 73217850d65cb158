"""The packed output of ``spkmeta convert --format packed``: one store per source.

:func:`write_packed` streams a reader's :class:`~spk_meta.convert.base.SourceGroup` s (one
composition, ``n_conf`` conformers as arrays) into one
:class:`~spk_meta.data.store.StoreWriter`: positions once, one label set per level of
theory (named by the level's slug). Filters run vectorised per group and per level in
:func:`usable`, which the per-level database path also applies (to groups of one frame),
so both outputs hold the same frames per level and count skips alike:

* a structure whose label at one level is unusable (NaN/inf energy, missing/non-finite
  forces, ``--max-force``, ``--energy-cut``) is stored with NaN labels at that level (the
  data module keeps only labelled frames per task) and counted for that level;
* a structure with no usable label at any kept level is left out (counted once, as
  :data:`NO_LABEL_AT_ANY_LEVEL`).

Nothing here loops over frames in Python, which is what makes the packed path fast.
"""

from collections import Counter
from typing import Dict, Iterable, Optional, Set, Tuple

import numpy as np
from ase.data import chemical_symbols

from spk_meta.convert.base import LevelSpec, SourceGroup
from spk_meta.convert.outliers import EnergyOutliers
from spk_meta.data.store import LabelSet, StoreWriter

#: a structure the packed store leaves out: no kept level has a usable label for it
NO_LABEL_AT_ANY_LEVEL = "no usable label at any level (every level skipped it)"


def usable(summary_skipped: Counter, spec: LevelSpec, energy: np.ndarray, forces: Optional[np.ndarray],
           n_atoms: int, max_force: Optional[float], window: Optional[Tuple[float, float]]) -> np.ndarray:
    """Which of a group's frames have a usable label at one level, ``(n_conf,)`` bool.

    Each unusable frame is counted in ``summary_skipped`` under the first reason it fails
    (the rule set of both output formats).

    Args:
        energy: eV, ``(n_conf,)``; forces: eV/Ang, ``(n_conf, n_atoms, 3)`` or ``None``.
        window: ``(lo, hi)`` eV/atom of ``--energy-cut``, or ``None``.
    """
    left = np.ones(len(energy), dtype=bool)

    def drop(mask: np.ndarray, reason: str) -> None:
        nonlocal left
        hit = left & mask
        n = int(hit.sum())
        if n:
            summary_skipped[reason] += n
            left &= ~hit

    drop(np.isnan(energy), "no energy (NaN)")
    drop(~np.isfinite(energy), "non-finite energy (inf)")
    if spec.has_forces:
        if forces is None:
            drop(np.ones_like(left), "no forces")
        else:
            flat = forces.reshape(len(energy), -1)
            drop(np.isnan(flat).any(axis=1), "forces NaN")
            drop(~np.isfinite(flat).all(axis=1), "non-finite forces (inf)")
            if max_force is not None and left.any() and n_atoms:
                with np.errstate(invalid="ignore"):
                    largest = np.sqrt((forces**2).sum(axis=2)).max(axis=1)
                drop(largest > max_force, f"force above --max-force {max_force:g} eV/Ang")
    if window is not None and left.any():
        lo, hi = window
        with np.errstate(invalid="ignore"):
            per_atom = energy / n_atoms
        drop(~((lo <= per_atom) & (per_atom <= hi)), "energy per atom outside --energy-cut of the median")
    return left


def write_packed(
    groups: Iterable[SourceGroup],
    writer: StoreWriter,
    specs: Dict[str, LevelSpec],
    summaries: Dict,
    skipped: Counter,
    subset: Optional[np.ndarray],
    total: int,
    keep_elements: Optional[Set[int]],
    max_force: Optional[float],
    windows: Dict[str, Tuple[float, float]],
    bar=None,
) -> Tuple[int, Dict[str, EnergyOutliers], Dict[str, np.ndarray]]:
    """Stream ``groups`` into ``writer`` (label set = ``specs[k].level.slug``).

    Args:
        subset: indices (into the source's frame order) of the structures to read, or
            ``None`` for all; ``total``: the source's frame count (``reader.count()``).
        summaries: ``{level key: LevelSummary}``, updated (written, skipped, elements, range).
        skipped: structure-level skip reasons, updated.
        bar: a tqdm bar advanced by the frames read, or ``None``.

    Returns:
        frames read, the outlier collectors per level, and per level the store index of
        each frame written at that level (to name the first outlier's frame).
    """
    chosen = None
    remaining = None
    if subset is not None:
        chosen = np.zeros(total, dtype=bool)
        chosen[subset] = True
        remaining = len(subset)
    outliers = {k: EnergyOutliers() for k in specs}
    store_rows: Dict[str, list] = {k: [] for k in specs}
    n_read = 0
    start = 0
    for group in groups:
        n_conf = len(group)
        index = np.arange(start, start + n_conf)
        start += n_conf
        if bar is not None:
            bar.update(n_conf)
        if chosen is not None:
            if remaining <= 0:
                break  # the subset is complete
            take = chosen[index[index < total]]
            take = np.concatenate([take, np.zeros(n_conf - len(take), dtype=bool)])
            if not take.any():
                continue
            remaining -= int(take.sum())
        else:
            take = None
        n = n_conf if take is None else int(take.sum())
        n_read += n
        numbers = np.asarray(group.numbers)
        if keep_elements is not None:
            extra = set(np.unique(numbers).tolist()) - keep_elements
            if extra:
                skipped["element(s) " + " ".join(chemical_symbols[z] for z in sorted(extra)) + " not in --elements"] += n
                continue

        def pick(a):
            return None if a is None else (np.asarray(a) if take is None else np.asarray(a)[take])

        n_atoms = len(numbers)
        labels, ok_per_level = {}, {}
        any_ok = np.zeros(n, dtype=bool)
        for k, spec in specs.items():
            if k not in group.labels:
                continue
            energy, forces = group.labels[k]
            energy = pick(energy).astype(np.float64, copy=False)
            forces = pick(forces) if spec.has_forces else None
            ok = usable(summaries[k].skipped, spec, energy, forces, n_atoms, max_force, windows.get(k))
            any_ok |= ok
            ok_per_level[k] = ok
            labels[k] = (energy, forces)
        dropped = int((~any_ok).sum())
        if dropped:
            skipped[NO_LABEL_AT_ANY_LEVEL] += dropped
        if not any_ok.any():
            continue
        first_row = writer.n_frames
        out_labels = {}
        for k, (energy, forces) in labels.items():
            ok = ok_per_level[k][any_ok]
            energy = np.where(ok, energy[any_ok], np.nan)
            if forces is not None:
                forces = np.array(forces[any_ok], dtype=np.float64)
                forces[~ok] = np.nan
            out_labels[specs[k].level.slug] = (energy, forces)
            if ok.any():
                s = summaries[k]
                good = energy[ok]
                s.written += int(ok.sum())
                s.elements.update(np.unique(numbers).tolist())
                s.energy_min = min(s.energy_min, float(good.min()))
                s.energy_max = max(s.energy_max, float(good.max()))
                outliers[k].add_group(numbers, good)
                store_rows[k].append(first_row + np.flatnonzero(ok))
        writer.add_conformers(
            numbers, pick(group.positions)[any_ok], out_labels,
            source_index=(index if take is None else index[take])[any_ok],
            cell=None if group.cell is None else pick(group.cell)[any_ok],
            pbc=None if group.pbc is None else pick(group.pbc)[any_ok],
        )
    rows = {k: np.concatenate(v) if v else np.empty(0, dtype=np.int64) for k, v in store_rows.items()}
    return n_read, outliers, rows


def label_sets(specs: Dict[str, LevelSpec]):
    """The store's label sets: one per level, named by its slug."""
    return [LabelSet(spec.level.slug, spec.level.name, has_forces=spec.has_forces) for spec in specs.values()]
