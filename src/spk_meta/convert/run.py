"""``convert()``: a source layout -> one SchNetPack database per level of theory, or one
packed task store (:mod:`spk_meta.data.store`) per source holding every level as a label set."""

import contextlib
import numbers
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Type

import numpy as np
from ase.data import chemical_symbols
from tqdm.auto import tqdm

from spk_meta.convert.ani import ANI1xReader, ANIDatasetReader
from spk_meta.convert.ase_files import ASEReader
from spk_meta.convert.base import ConversionError, PathLike, Reader, SourceFrame
from spk_meta.convert.outdir import OutputFolder, check_outdir
from spk_meta.convert.outliers import EnergyOutliers, OutlierReport
from spk_meta.convert.packed import label_sets, usable, write_packed
from spk_meta.convert.qm7x import QM7XReader
from spk_meta.convert.rmd17 import RMD17Reader
from spk_meta.convert.spice import SpiceReader
from spk_meta.convert.transition1x import Transition1xReader
from spk_meta.data.store import STORE_SUFFIX, StoreError, StoreWriter, file_identity
from spk_meta.data.writer import DatabaseWriter
from spk_meta.utils.elements import atomic_numbers_of

READERS: Dict[str, Type[Reader]] = {
    r.name: r for r in (ANI1xReader, ANIDatasetReader, QM7XReader, Transition1xReader, RMD17Reader, SpiceReader, ASEReader)
}

#: what ``convert(..., output_format=...)`` writes: ``db`` (one SchNetPack ASE database per
#: level) or ``packed`` (one packed store per source, a label set per level)
OUTPUT_FORMATS = ("db", "packed")


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
    #: the label set in the packed store (``None``: ``database`` is a per-level database)
    label_set: Optional[str] = None

    def lines(self) -> List[str]:
        where = f"{self.database} (label set {self.label_set})" if self.database and self.label_set else self.database
        out = [f"{self.level}: {self.written} frames -> {where or 'nothing written'}"]
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
    try:
        return set(atomic_numbers_of(elements))
    except ValueError as err:
        raise ConversionError(f"--elements: {err}") from None


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


def _energy_windows(reader: Reader, keys: Sequence[str], cut: float) -> Dict[str, tuple]:
    """First pass for the energy cut: median energy per atom of each level +- ``cut``
    (over every finite energy of the source, before subsets and filters)."""
    per_atom: Dict[str, list] = {k: [] for k in keys}
    for group in reader.groups():
        for k, (e, _) in group.labels.items():
            if k in per_atom:
                e = np.asarray(e, dtype=np.float64)
                per_atom[k].append(e[np.isfinite(e)] / len(group.numbers))
    windows = {}
    for k, parts in per_atom.items():
        values = np.concatenate(parts) if parts else np.empty(0)
        if len(values):
            median = float(np.median(values))
            windows[k] = (median - cut, median + cut)
    return windows


def _subset(total: int, max_frames: Optional[int], seed: Optional[int]) -> Optional[np.ndarray]:
    """Indices of the structures ``--max-frames`` (with ``--seed``) keeps, or ``None``: all."""
    if max_frames is None or max_frames >= total:
        return None
    if seed is None:
        return np.arange(max_frames)
    return np.random.default_rng(seed).choice(total, size=max_frames, replace=False)


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
    output_format: str = "db",
    **reader_options,
) -> ConversionSummary:
    """Convert ``source`` (layout ``format``) into ``OUTDIR/<level slug>.db`` databases,
    or (``output_format="packed"``) into one packed store ``OUTDIR/<source stem>.spkstore``.

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
        output_format: ``db`` (one SchNetPack ASE database per level) or ``packed`` (one
            :class:`~spk_meta.data.store.PackedStore` for the source: positions stored
            once, one label set per level named by its slug, NaN where a structure has no
            usable label at that level; a structure without a usable label at every kept
            level is left out). Same filters, counts and folder semantics; the packed path
            reads whole conformer groups and filters them vectorised.

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
    if output_format not in OUTPUT_FORMATS:
        raise ConversionError(f"unknown output format '{output_format}'; choose one of: {', '.join(OUTPUT_FORMATS)}")
    outdir = check_outdir(outdir)
    reader = READERS[format](source, level=level, only=only, **reader_options)
    specs = reader.levels()
    keep_elements = parse_elements(elements)
    if output_format == "packed":
        targets = {None: outdir / f"{Path(source).stem}{STORE_SUFFIX}"}
    else:
        targets = {k: outdir / f"{spec.level.slug}.db" for k, spec in specs.items()}
    options = {
        "level": level, "only": list(only) if only else None,
        "elements": sorted(chemical_symbols[z] for z in keep_elements) if keep_elements else None,
        "max_frames": max_frames, "seed": seed, "max_force": max_force, "energy_cut": energy_cut,
        "overwrite": overwrite, **{k: str(v) for k, v in reader_options.items()},
    }
    with OutputFolder(outdir) as folder:
        if output_format == "packed":
            levels, skipped, n_read, written = _convert_packed_locked(
                reader, specs, targets[None], format, source, keep_elements, max_frames, seed, max_force,
                energy_cut, overwrite, progress, options, command,
            )
            return _finish(folder, source, format, options, command, output_format, levels, skipped, n_read,
                           written, overwrite)
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
        return _finish(folder, source, format, options, command, output_format, levels, skipped, n_read,
                       written, overwrite)


def _finish(folder, source, format, options, command, output_format, levels, skipped, n_read, written, overwrite):
    """Manifest and clean-up after a successful conversion -> the summary."""
    run = {
        "command": command, "source": str(Path(source).absolute()), "format": format,
        "output_format": output_format, "options": options,
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
    subset = _subset(total, max_frames, seed)
    selected: Optional[Set[int]] = None if subset is None else set(subset.tolist())
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


def _convert_packed_locked(
    reader, specs, target, format, source, keep_elements, max_frames, seed, max_force, energy_cut,
    overwrite, progress, options, command,
):
    """The packed conversion, with OUTDIR locked: -> (level summaries, skipped, frames read,
    manifest entry)."""
    if target.exists() and not overwrite:
        raise ConversionError(f"{target} already exists; pass --overwrite to replace")
    total = reader.count()
    subset = _subset(total, max_frames, seed)
    windows = _energy_windows(reader, list(specs), energy_cut) if energy_cut is not None else {}
    summaries = {
        k: LevelSummary(spec.level.name, None, has_forces=spec.has_forces, label_set=spec.level.slug)
        for k, spec in specs.items()
    }
    skipped: Counter = Counter()
    src = Path(source).absolute()
    provenance = {
        "written_by": "spkmeta convert",
        "converted_from": format,
        "source": file_identity(src) if src.is_file() else {"path": str(src)},
        "levels": {spec.level.slug: {"level_key": k, **spec.level.to_metadata()} for k, spec in specs.items()},
        "options": options,
        "command": command,
        "spk_meta_version": _version(),
    }
    with StoreWriter(target, label_sets(specs), distance_unit="Ang", source=provenance, overwrite=overwrite) as w:
        bar = tqdm(total=total, desc=f"converting {Path(source).name}", unit="frame", disable=not progress)
        try:
            n_read, outliers, rows = write_packed(
                reader.groups(), w, specs, summaries, skipped, subset, total, keep_elements, max_force, windows, bar,
            )
        except StoreError as err:  # e.g. atomic numbers the store cannot hold
            raise ConversionError(f"{source}: {err}") from None
        finally:
            bar.close()
        if w.n_frames == 0:
            w.abort()  # like an empty database: nothing written
    n_frames = w.n_frames
    if n_frames == 0:
        return summaries, skipped, n_read, {}
    for k, s in summaries.items():
        if s.written:
            s.database = target
            s.outliers = outliers[k].report()
            if s.outliers is not None:
                s.outliers.first_at = (
                    f"frame {int(rows[k][s.outliers.first_row - 1])} of {target.name} (label set {s.label_set})"
                )
    entry = {
        "kind": "packed store", "frames": n_frames,
        "label_sets": {
            s.label_set: {
                "level": s.level, "level_key": k, "frames": s.written, "has_forces": s.has_forces,
                "elements": [chemical_symbols[z] for z in sorted(s.elements)],
                "energy_range_eV": [s.energy_min, s.energy_max] if s.written else None,
                "energy_outliers": s.outliers.count if s.outliers else 0,
            }
            for k, s in summaries.items()
        },
        "skipped_structures": dict(skipped),
        "source": str(src), "format": format, "options": options,
        "command": command, "spk_meta_version": _version(),
    }
    return summaries, skipped, n_read, {target.name: entry}


def _write_levels(frame: SourceFrame, specs, writers, summaries, max_force, windows, outliers) -> None:
    """One frame into each level's database, through the packed path's filters
    (:func:`spk_meta.convert.packed.usable` on a group of one), so both outputs keep and
    count the same frames."""
    for k, (energy, forces) in frame.labels.items():
        if k not in specs:
            continue
        s = summaries[k]
        group_forces = None if forces is None else np.asarray(forces)[None]
        keep = usable(s.skipped, specs[k], np.array([energy], dtype=np.float64), group_forces,
                      len(frame.numbers), max_force, windows.get(k))
        if not keep[0]:
            continue
        writers[k].add(frame.numbers, frame.positions, energy, forces if specs[k].has_forces else None,
                       cell=frame.cell, pbc=frame.pbc)
        outliers[k].add(frame.numbers, energy)
        s.written += 1
        s.elements.update(int(z) for z in frame.numbers)
        s.energy_min, s.energy_max = min(s.energy_min, energy), max(s.energy_max, energy)
