"""``convert()``: a source layout -> one SchNetPack database per level of theory."""

import contextlib
import numbers
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Type

import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from tqdm.auto import tqdm

from spk_meta.convert.ani import ANI1xReader, ANIDatasetReader
from spk_meta.convert.ase_files import ASEReader
from spk_meta.convert.base import ConversionError, PathLike, Reader, SourceFrame
from spk_meta.convert.outdir import OutputFolder, check_outdir
from spk_meta.convert.outliers import EnergyOutliers, OutlierReport
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
    #: energies far outside the level's distribution (written, but worth a look)
    outliers: Optional[OutlierReport] = None

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
        if self.outliers is not None:
            out.append(self.outliers.line(Path(self.database).name if self.database else self.level))
        return out


@dataclass
class ConversionSummary:
    source: Path
    format: str
    frames_read: int
    levels: Dict[str, LevelSummary]
    skipped: Counter
    #: ``OUTDIR/convert_manifest.json``, listing every database in the folder
    manifest: Optional[Path] = None
    #: databases of earlier conversions removed (``overwrite``: the folder holds this run's)
    removed: List[str] = field(default_factory=list)
    #: temporary files of killed conversions removed
    removed_temporaries: List[str] = field(default_factory=list)
    #: ``.db`` files in OUTDIR that spk-meta did not write, left alone (``overwrite``)
    kept: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.format}: {self.source}: {self.frames_read} structures read"]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {n} structures: {reason}")
        for s in self.levels.values():
            lines += s.lines()
        if self.removed_temporaries:
            lines.append(f"removed temporary files of an interrupted conversion: {', '.join(self.removed_temporaries)}")
        if self.removed:
            lines.append(f"removed (earlier output this run did not write, --overwrite): {', '.join(self.removed)}")
        if self.kept:
            lines.append(f"kept (not written by spkmeta convert; remove by hand if unwanted): {', '.join(self.kept)}")
        if self.manifest is not None:
            lines.append(f"manifest: {self.manifest}")
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


def _check_count(name: str, value: Any, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConversionError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ConversionError(f"{name} must be a positive number, got {value!r}")


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
    command: Optional[str] = None,
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
        overwrite: make OUTDIR hold exactly this run's databases: existing ones of the
            same name are replaced and earlier converted databases this run did not write
            are removed (see :mod:`spk_meta.convert.outdir`); otherwise existing databases
            are refused before anything is written, and never replaced at the final rename.
        command: the command line, recorded in the manifest.

    Returns:
        a :class:`ConversionSummary` (``str()`` gives the report ``spkmeta convert`` prints).
        A structure without a value for one level (NaN or inf) is skipped for that level
        only. Databases appear only when the whole conversion succeeded; then
        ``OUTDIR/convert_manifest.json`` lists them. One conversion at a time writes into
        OUTDIR (a second one fails at once, naming the first one's pid).
    """
    _check_count("max_frames", max_frames, 1)
    _check_count("seed", seed, 0)
    _check_count("chunk_size", chunk_size, 1)
    _check_positive("max_force", max_force)
    _check_positive("energy_cut", energy_cut)
    if format not in READERS:
        raise ConversionError(f"unknown format '{format}'; choose one of: {', '.join(READERS)}")
    outdir = check_outdir(outdir)
    reader = READERS[format](source, level=level, only=only, **reader_options)
    specs = reader.levels()
    keep_elements = parse_elements(elements)
    targets = {k: outdir / f"{spec.level.slug}.db" for k, spec in specs.items()}
    options = {
        "level": level, "only": list(only) if only else None,
        "elements": sorted(chemical_symbols[z] for z in keep_elements) if keep_elements else None,
        "max_frames": max_frames, "seed": seed, "max_force": max_force, "energy_cut": energy_cut,
        "overwrite": overwrite, **{k: str(v) for k, v in reader_options.items()},
    }
    with OutputFolder(outdir) as folder:
        levels, skipped, n_read = _convert_locked(
            reader, specs, targets, format, source, keep_elements, max_frames, seed, max_force,
            energy_cut, overwrite, progress, chunk_size,
        )
        written = {
            Path(s.database).name: {
                "level": s.level, "level_key": k, "frames": s.written, "has_forces": s.has_forces,
                "elements": [chemical_symbols[z] for z in sorted(s.elements)],
                "energy_range_eV": [s.energy_min, s.energy_max],
                "energy_outliers": s.outliers.count if s.outliers else 0,
                "source": str(Path(source).absolute()), "format": format, "options": options,
                "command": command, "spk_meta_version": _version(),
            }
            for k, s in levels.items() if s.database is not None
        }
        run = {
            "command": command, "source": str(Path(source).absolute()), "format": format, "options": options,
            "written": sorted(written),
            "nothing_written": [s.level for s in levels.values() if s.database is None],
        }
        removed, kept = folder.commit(written, overwrite, run)
        return ConversionSummary(
            Path(source), format, n_read, levels, skipped, manifest=folder.manifest_path,
            removed=removed, removed_temporaries=folder.removed_temporaries, kept=kept,
        )


def _version() -> str:
    from spk_meta import __version__

    return __version__


def _convert_locked(
    reader, specs, targets, format, source, keep_elements, max_frames, seed, max_force, energy_cut,
    overwrite, progress, chunk_size,
):
    """The conversion proper, with OUTDIR locked: -> (level summaries, skipped, frames read)."""
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
    outliers = {k: EnergyOutliers() for k in specs}
    skipped: Counter = Counter()
    n_read = 0
    placed: List[Path] = []
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
            _write_levels(frame, specs, writers, summaries, max_force, windows, outliers)
        bar.close()
        try:
            for k, w in writers.items():
                # close inside the stack: an exception above aborts every database instead
                summaries[k].database = w.close()
                if summaries[k].database is not None:
                    placed.append(summaries[k].database)
        except BaseException:
            if not overwrite:  # all or nothing: these names were free, so they are ours
                for p in placed:
                    p.unlink(missing_ok=True)
            raise
    for k, s in summaries.items():
        if s.database is not None:
            s.outliers = outliers[k].report()
    return summaries, skipped, n_read


def _write_levels(frame: SourceFrame, specs, writers, summaries, max_force, windows, outliers) -> None:
    for k, (energy, forces) in frame.labels.items():
        if k not in specs:
            continue
        s = summaries[k]
        if np.isnan(energy):
            s.skipped["no energy (NaN)"] += 1
            continue
        if not np.isfinite(energy):
            s.skipped["non-finite energy (inf)"] += 1
            continue
        if specs[k].has_forces:
            if forces is None:
                s.skipped["no forces"] += 1
                continue
            if not np.isfinite(forces).all():
                s.skipped["forces NaN" if np.isnan(forces).any() else "non-finite forces (inf)"] += 1
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
        outliers[k].add(frame.numbers, energy)
        s.written += 1
        s.elements.update(int(z) for z in frame.numbers)
        s.energy_min, s.energy_max = min(s.energy_min, energy), max(s.energy_max, energy)
