"""``convert()``: a source layout -> one SchNetPack database per level of theory."""

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Type

import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from tqdm.auto import tqdm

from spk_meta.convert.ani import ANI1xReader, ANIDatasetReader
from spk_meta.convert.ase_files import ASEReader
from spk_meta.convert.base import ConversionError, PathLike, Reader, SourceFrame
from spk_meta.convert.qm7x import QM7XReader
from spk_meta.convert.rmd17 import RMD17Reader
from spk_meta.convert.spice import SpiceReader
from spk_meta.convert.transition1x import Transition1xReader
from spk_meta.data.writer import DatabaseWriter

READERS: Dict[str, Type[Reader]] = {
    r.name: r for r in (ANI1xReader, ANIDatasetReader, QM7XReader, Transition1xReader, RMD17Reader, SpiceReader, ASEReader)
}


@dataclass
class LevelSummary:
    """What one output database received."""

    level: str
    database: Optional[Path]
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    elements: Set[int] = field(default_factory=set)
    energy_min: float = np.inf
    energy_max: float = -np.inf
    has_forces: bool = True

    def lines(self) -> List[str]:
        out = [f"{self.level}: {self.written} frames -> {self.database or 'nothing written'}"]
        if self.written:
            out.append(
                f"  elements {' '.join(chemical_symbols[z] for z in sorted(self.elements))}; "
                f"energy {self.energy_min:.6g} .. {self.energy_max:.6g} eV"
                + ("; forces eV/Ang" if self.has_forces else "; energies only")
            )
        for reason, n in sorted(self.skipped.items()):
            out.append(f"  skipped {n}: {reason}")
        return out


@dataclass
class ConversionSummary:
    source: Path
    format: str
    frames_read: int
    levels: Dict[str, LevelSummary]
    skipped: Counter

    def __str__(self) -> str:
        lines = [f"{self.format}: {self.source}: {self.frames_read} structures read"]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {n} structures: {reason}")
        for s in self.levels.values():
            lines += s.lines()
        lines.append("units: Ang, eV, eV/Ang")
        return "\n".join(lines)


def parse_elements(elements: Optional[Iterable]) -> Optional[Set[int]]:
    """``["H", "C", 7]`` or ``"H,C,N,O"`` -> atomic numbers; unknown symbols are named."""
    if elements is None:
        return None
    if isinstance(elements, str):
        elements = [e for e in elements.split(",") if e.strip()]
    out = set()
    for e in elements:
        if isinstance(e, (int, np.integer)):
            out.add(int(e))
        elif str(e).strip() in atomic_numbers:
            out.add(atomic_numbers[str(e).strip()])
        else:
            raise ConversionError(f"--elements: unknown element '{e}'")
    return out


def _max_force(forces: np.ndarray) -> float:
    return float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0


def _energy_windows(reader: Reader, keys: Sequence[str], cut: float) -> Dict[str, tuple]:
    """First pass for the energy cut: median energy per atom of each level +- ``cut``."""
    per_atom: Dict[str, list] = {k: [] for k in keys}
    for frame in reader.frames():
        for k, (e, _) in frame.labels.items():
            if k in per_atom and np.isfinite(e):
                per_atom[k].append(e / len(frame.numbers))
    return {k: (float(np.median(v)) - cut, float(np.median(v)) + cut) for k, v in per_atom.items() if v}


def convert(
    format: str,
    source: PathLike,
    outdir: PathLike,
    *,
    level: Optional[str] = None,
    only: Optional[Sequence[str]] = None,
    elements: Optional[Iterable] = None,
    max_frames: Optional[int] = None,
    seed: Optional[int] = None,
    max_force: Optional[float] = None,
    energy_cut: Optional[float] = None,
    overwrite: bool = False,
    progress: bool = True,
    chunk_size: int = 1000,
    **reader_options,
) -> ConversionSummary:
    """Convert ``source`` (layout ``format``) into ``OUTDIR/<level slug>.db`` databases.

    Args:
        format: one of :data:`READERS` (``ani1x``, ``anidataset``, ``qm7x``,
            ``transition1x``, ``rmd17``, ``spice``, ``ase``).
        source: the input file (or directory, where the layout ships several files).
        outdir: where the databases go (created if needed).
        level: the level-of-theory name (required where the layout does not record it).
        only: level keys to convert from a multi-level source (e.g. ``["wb97x_dz"]``).
        elements: keep only structures made of these elements (symbols or numbers).
        max_frames: at most this many structures: the first ones, or a random subset
            when ``seed`` is given.
        max_force: drop frames whose largest atomic force exceeds this (eV/Ang).
        energy_cut: drop frames whose energy per atom is further than this (eV/atom)
            from the median of their level (costs one extra pass over the source).
        overwrite: replace existing databases; otherwise existing ones are refused
            before anything is written.

    Returns:
        a :class:`ConversionSummary` (``str()`` gives the report ``spkmeta convert`` prints).
        A structure without a value for one level (NaN) is skipped for that level only.
        Databases appear only when the whole conversion succeeded.
    """
    if format not in READERS:
        raise ConversionError(f"unknown format '{format}'; choose one of: {', '.join(READERS)}")
    reader = READERS[format](source, level=level, only=only, **reader_options)
    specs = reader.levels()
    keep_elements = parse_elements(elements)
    outdir = Path(outdir)
    targets = {k: outdir / f"{spec.level.slug}.db" for k, spec in specs.items()}
    if not overwrite:
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing:
            raise ConversionError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    total = reader.count()
    selected: Optional[Set[int]] = None
    if max_frames is not None and max_frames < total:
        if seed is None:
            selected = set(range(max_frames))
        else:
            selected = set(np.random.default_rng(seed).choice(total, size=max_frames, replace=False).tolist())
    windows = _energy_windows(reader, list(specs), energy_cut) if energy_cut is not None else {}
    summaries = {k: LevelSummary(spec.level.name, None, has_forces=spec.has_forces) for k, spec in specs.items()}
    skipped: Counter = Counter()
    n_read = 0
    with contextlib.ExitStack() as stack:
        writers = {
            k: stack.enter_context(
                DatabaseWriter(
                    targets[k], spec.level, source=str(Path(source).name), has_forces=spec.has_forces,
                    metadata={"converted_from": format}, overwrite=overwrite, chunk_size=chunk_size,
                )
            )
            for k, spec in specs.items()
        }
        bar = tqdm(reader.frames(), total=total, desc=f"converting {Path(source).name}", unit="frame", disable=not progress)
        for i, frame in enumerate(bar):
            if selected is not None:
                if not selected:
                    break  # the subset is complete
                if i not in selected:
                    continue
                selected.discard(i)
            n_read += 1
            if keep_elements is not None:
                extra = set(int(z) for z in frame.numbers) - keep_elements
                if extra:
                    skipped["element(s) " + " ".join(chemical_symbols[z] for z in sorted(extra)) + " not in --elements"] += 1
                    continue
            _write_levels(frame, specs, writers, summaries, max_force, windows)
        bar.close()
        for k, w in writers.items():
            # close inside the stack: an exception above aborts every database instead
            summaries[k].database = w.close()
    return ConversionSummary(Path(source), format, n_read, summaries, skipped)


def _write_levels(frame: SourceFrame, specs, writers, summaries, max_force, windows) -> None:
    for k, (energy, forces) in frame.labels.items():
        if k not in specs:
            continue
        s = summaries[k]
        if not np.isfinite(energy):
            s.skipped["no energy (NaN)"] += 1
            continue
        if specs[k].has_forces:
            if forces is None:
                s.skipped["no forces"] += 1
                continue
            if not np.isfinite(forces).all():
                s.skipped["forces NaN"] += 1
                continue
            if max_force is not None and _max_force(forces) > max_force:
                s.skipped[f"force above --max-force {max_force:g} eV/Ang"] += 1
                continue
        if k in windows:
            lo, hi = windows[k]
            if not lo <= energy / len(frame.numbers) <= hi:
                s.skipped["energy per atom outside --energy-cut of the median"] += 1
                continue
        writers[k].add(frame.numbers, frame.positions, energy, forces if specs[k].has_forces else None,
                       cell=frame.cell, pbc=frame.pbc)
        s.written += 1
        s.elements.update(int(z) for z in frame.numbers)
        s.energy_min, s.energy_max = min(s.energy_min, energy), max(s.energy_max, energy)
