"""Select the frames a committee disagrees on most, streaming over a pool of millions.

:func:`select` scores every frame of a pool (a packed task store, or a SchNetPack ASE
database, read through its packed copy) by committee disagreement, batch by batch, keeping
only one float32 score per frame (and, when stratifying, one group key per frame); picks
frames with :mod:`spk_meta.active.ranking`; and writes them as a new task: a packed store
for a store pool, an ASE database for a database pool, complete under its final name or
not at all. The output's metadata (``store.json["source"]["selection"]`` or the
database's ``metadata["selection"]``) records the pool, the criterion and its settings,
the ensemble manifest's SHA-256 and, per selected frame, its index in the pool's source.

With ``label="METHOD/BASIS"`` the chosen frames are labelled anew with PySCF
(:mod:`spk_meta.active.label`) and the output holds only those labels: a database at
that level of theory, or a store with one label set named ``level_slug(METHOD/BASIS)``.
The level is checked against the pool's elements before any frame is scored; frames whose
single point fails are dropped and counted; the labels are kept in
``OUT.labels.partial.jsonl`` until the output is written, so a rerun continues them.

Criteria (scores, higher = more disagreement):

``rho``
    ANI's sigma_E / sqrt(N_atoms) (eV / sqrt(atom)); energies only, no autograd.
``force_spread``
    the largest per-atom force spread of the frame (eV/Ang); needs forces.
"""

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
from tqdm.auto import tqdm

from spk_meta.active.batch import atom_indices, read_store_batch
from spk_meta.active.ensemble import Ensemble, load_ensemble
from spk_meta.active.manifest import symbols
from spk_meta.active.ranking import Ranking, rank

PathLike = Union[str, Path]

CRITERIA = {"rho": "eV/sqrt(atom)", "force_spread": "eV/Ang"}
STRATIFY = ("none", "elements", "size")
SELECTION_FORMAT = "spk-meta selection"
SELECTION_VERSION = 1
#: Batches between two releases of the memory maps' pages from the resident set.
RELEASE_EVERY_BATCHES = 64


class SelectionError(ValueError):
    """Selection cannot start; the message names the option, file or element at fault."""


@dataclass
class Pool:
    """The frames to choose from.

    Attributes:
        path: as given (store folder or ``.db``).
        kind: ``"store"`` or ``"db"``.
        store: the packed store read (a database's packed copy).
        label_sets: label sets copied into the output.
        frames: store frames in the pool (ascending), or ``None`` for all.
    """

    path: Path
    kind: str
    store: object
    label_sets: List[str]
    frames: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.store) if self.frames is None else len(self.frames)

    def store_frames(self, a: int, b: int) -> np.ndarray:
        """Store frames of pool positions ``a .. b-1``."""
        return np.arange(a, b, dtype=np.int64) if self.frames is None else self.frames[a:b]

    def elements(self, chunk: int = 1 << 20) -> tuple:
        """Atomic numbers present in the pool's frames, ascending."""
        if self.frames is None:
            return self.store.elements()
        seen = np.zeros(256, dtype=bool)
        offsets = np.asarray(self.store.offsets)
        for a in range(0, len(self.frames), chunk):
            seen[np.unique(self.store.numbers_all[atom_indices(offsets, self.frames[a : a + chunk])])] = True
        return tuple(int(z) for z in np.flatnonzero(seen))


def open_pool(path: PathLike, labels: Optional[str] = None) -> Pool:
    """The pool at ``path``: a packed store folder, or an ASE database (packed once into
    the spk-meta cache). ``labels`` (stores only) restricts the pool to the frames
    labelled in that label set, and the output to it.

    Raises:
        SelectionError: no such pool, not a store or database, an unknown label set.
    """
    from spk_meta.data.pack import pack_ase_database
    from spk_meta.data.store import PackedStore, StoreError

    path = Path(path)
    try:
        if path.is_dir():
            store = PackedStore(path)
            if labels is None:
                return Pool(path, "store", store, list(store.label_sets))
            if labels not in store.label_sets:
                raise SelectionError(f"{path}: no label set '{labels}'; it has: {', '.join(store.label_sets)}")
            return Pool(path, "store", store, [labels], store.labelled(labels))
        if not path.exists():
            raise SelectionError(f"{path}: no such store or database")
        if labels is not None:
            raise SelectionError(f"--labels {labels}: a database has one set of labels; --labels is for packed stores")
        store = pack_ase_database(path)
        return Pool(path, "db", store, list(store.label_sets))
    except StoreError as err:
        raise SelectionError(str(err)) from None


@dataclass
class Selection:
    """What :func:`select` did.

    Attributes:
        out: the written task.
        n_pool: frames scored.
        scores: ``(n_pool,)`` float32 score of every pool frame (pool order).
        ranking: chosen pool positions (committee and random).
        source_index: ``(n_written,)`` the written frames' indices in the source (ascending;
            with ``label``, frames whose single point failed are not written).
        metadata: the selection record written with the output.
        labels: with ``label``, the new labels of every chosen frame (failed ones NaN).
    """

    out: Path
    n_pool: int
    scores: np.ndarray
    ranking: Ranking
    source_index: np.ndarray
    metadata: Dict = field(default_factory=dict)
    labels: Optional[object] = None  # spk_meta.active.label.Labels of the chosen frames, with label=


def check_options(n: Optional[int], threshold: Optional[float], criterion: str, stratify: str,
                  random_fraction: float, batch_size: int) -> None:
    """Refuse inconsistent options (SelectionError naming the option)."""
    if (n is None) == (threshold is None):
        raise SelectionError("give exactly one of --n and --threshold")
    if n is not None and n < 1:
        raise SelectionError(f"--n must be >= 1, got {n}")
    if threshold is not None and not (threshold >= 0 and math.isfinite(threshold)):
        raise SelectionError(f"--threshold must be a finite number >= 0, got {threshold}")
    if criterion not in CRITERIA:
        raise SelectionError(f"--criterion {criterion!r}: use one of {', '.join(CRITERIA)}")
    if stratify not in STRATIFY:
        raise SelectionError(f"--stratify {stratify!r}: use one of {', '.join(STRATIFY)}")
    if stratify != "none" and threshold is not None:
        raise SelectionError("--stratify shares out a number of frames: use it with --n, not --threshold")
    top = 1.0 if n is not None else 1.0 - 1e-12
    if not 0.0 <= random_fraction <= top:
        raise SelectionError(
            f"--random-fraction must lie in [0, 1]{' (below 1 with --threshold)' if threshold is not None else ''}, "
            f"got {random_fraction}"
        )
    if batch_size < 1:
        raise SelectionError(f"--batch-size must be >= 1, got {batch_size}")


def check_output(out: Path, kind: str, overwrite: bool) -> None:
    if kind == "db" and out.suffix != ".db":
        raise SelectionError(f"--out {out}: the pool is an ASE database, so the selection is one: name it *.db")
    if kind == "store" and out.suffix == ".db":
        raise SelectionError(f"--out {out}: the pool is a packed store, so the selection is one (a folder, "
                             "conventionally *.spkstore), not a .db")
    if out.exists() and not overwrite:
        raise SelectionError(f"--out {out} already exists (pass --overwrite to replace it)")


def check_elements(pool: Pool, ensemble: Ensemble) -> None:
    if ensemble.elements is None:
        return
    missing = sorted(set(pool.elements()) - set(ensemble.elements))
    if missing:
        raise SelectionError(
            f"{pool.path}: the pool holds {symbols(missing)}, for which the ensemble has no networks "
            f"(it has {symbols(ensemble.elements)})"
        )


def _element_bits(pool_elements: tuple) -> np.ndarray:
    """Atomic number -> one bit per pool element (uint64 lookup table)."""
    if len(pool_elements) > 64:
        raise SelectionError(f"--stratify elements handles up to 64 elements, the pool has {len(pool_elements)}")
    bits = np.zeros(256, dtype=np.uint64)
    for i, z in enumerate(pool_elements):
        bits[z] = np.uint64(1) << np.uint64(i)
    return bits


def score_pool(ensemble: Ensemble, pool: Pool, criterion: str = "rho", batch_size: int = 256,
               stratify: str = "none", progress: bool = False):
    """Score every pool frame, streaming; returns ``(scores, groups)``.

    ``scores``: ``(n_pool,)`` float32 (see :data:`CRITERIA` for units). ``groups``:
    ``(n_pool,)`` int64 group key per frame for stratification (a bit mask of the frame's
    elements, or its number of atoms), or ``None`` for ``stratify="none"``.
    """
    from schnetpack.units import convert_units

    from spk_meta.data.task_dataset import release_pages

    store = pool.store
    factor = float(convert_units(store.distance_unit, "Ang"))
    n_pool = len(pool)
    scores = np.empty(n_pool, dtype=np.float32)
    groups = None if stratify == "none" else np.empty(n_pool, dtype=np.int64)
    bits = _element_bits(pool.elements()) if stratify == "elements" else None
    maps = (store.offsets, store.numbers_all, store.positions_all, store.cell, store.pbc)
    with tqdm(total=n_pool, unit="frame", desc="scoring", disable=not progress, smoothing=0.05) as bar:
        for k, a in enumerate(range(0, n_pool, batch_size)):
            b = min(a + batch_size, n_pool)
            batch = read_store_batch(store, pool.store_frames(a, b), factor)
            pred = ensemble.predict_batch(batch, forces=criterion == "force_spread")
            scores[a:b] = pred.rho if criterion == "rho" else pred.force_spread
            if stratify == "elements":
                groups[a:b] = np.bitwise_or.reduceat(bits[batch.numbers], batch.starts).astype(np.int64)
            elif stratify == "size":
                groups[a:b] = batch.n_atoms
            if (k + 1) % RELEASE_EVERY_BATCHES == 0:
                release_pages(*maps)
            bar.update(b - a)
    release_pages(*maps)
    return scores, groups


@dataclass
class NewLabels:
    """Labels computed for the written frames (``--label``), aligned with them.

    Attributes:
        level: ``METHOD/BASIS``; code: ``"PySCF <version>"``.
        energy: ``(n_written,)`` eV; forces: per frame ``(n_atoms, 3)`` eV/Ang.
    """

    level: str
    code: str
    energy: np.ndarray
    forces: List[np.ndarray]


def _write_store(pool: Pool, frames: np.ndarray, out: Path, record: Dict, overwrite: bool, progress: bool,
                 new: Optional[NewLabels] = None) -> None:
    """The chosen frames with the pool's label sets, or with only the ``new`` labels."""
    from spk_meta.data.level_of_theory import level_slug
    from spk_meta.data.store import LabelSet, StoreWriter

    store = pool.store
    if new is None:
        label_sets = [store.label_sets[name] for name in pool.label_sets]
        energies = {name: store.energy(name) for name in pool.label_sets}
        forces = {name: store.forces(name) for name in pool.label_sets}

        def labels_of(k: int, f: int, s: slice) -> Dict:
            return {name: (float(energies[name][f]), None if forces[name] is None else np.asarray(forces[name][s]))
                    for name in pool.label_sets}
    else:
        slug = level_slug(new.level)
        label_sets = [LabelSet(slug, new.level, has_forces=True, energy_unit="eV", forces_unit="eV/Ang")]

        def labels_of(k: int, f: int, s: slice) -> Dict:
            return {slug: (float(new.energy[k]), new.forces[k])}
    source = {"selection": record, "source_store": store.source}
    with StoreWriter(out, label_sets, distance_unit=store.distance_unit, source=source, overwrite=overwrite) as w:
        for k, f in enumerate(tqdm(frames, unit="frame", desc="writing", disable=not progress)):
            s = store.atoms_slice(int(f))
            w.add_frame(np.asarray(store.numbers_all[s]), np.asarray(store.positions_all[s]), labels_of(k, f, s),
                        source_index=int(f), cell=np.asarray(store.cell[f]), pbc=np.asarray(store.pbc[f]))


def _write_database(pool: Pool, frames: np.ndarray, out: Path, record: Dict, overwrite: bool, progress: bool,
                    new: Optional[NewLabels] = None) -> None:
    """The chosen frames with the pool's labels and level, or with only the ``new`` ones."""
    from schnetpack.units import convert_units

    from spk_meta.data.level_of_theory import METADATA_KEY, LevelOfTheory
    from spk_meta.data.writer import DatabaseWriter

    store = pool.store
    factor = float(convert_units(store.distance_unit, "Ang"))  # the writer's databases are in Ang
    if new is None:
        (name,) = pool.label_sets
        ls = store.label_sets[name]
        level = LevelOfTheory.from_metadata(store.source.get("metadata", {}).get(METADATA_KEY))
        units = {"energy": ls.energy_unit, **({"forces": ls.forces_unit} if ls.has_forces else {})}
        has_forces, energy, forces = ls.has_forces, store.energy(name), store.forces(name)

        def labels_of(k: int, f: int, s: slice):
            return float(energy[f]), None if forces is None else np.asarray(forces[s])
    else:
        level = LevelOfTheory.parse(new.level, code=new.code)
        units, has_forces = {"energy": "eV", "forces": "eV/Ang"}, True

        def labels_of(k: int, f: int, s: slice):
            return float(new.energy[k]), new.forces[k]
    with DatabaseWriter(out, level, source=str(pool.path), has_forces=has_forces,
                        units=units, metadata={"selection": record}, overwrite=overwrite) as w:
        for k, f in enumerate(tqdm(frames, unit="frame", desc="writing", disable=not progress)):
            s = store.atoms_slice(int(f))
            w.add(np.asarray(store.numbers_all[s]), np.asarray(store.positions_all[s]) * factor, *labels_of(k, f, s),
                  cell=np.asarray(store.cell[f]) * factor, pbc=np.asarray(store.pbc[f]))


# -- --label: new labels for the chosen frames ---------------------------------------------------


def partial_labels_path(out: Path) -> Path:
    """Where ``--label`` keeps the labels computed so far: ``OUT.labels.partial.jsonl``."""
    return out.with_name(out.name + ".labels.partial.jsonl")


def check_label(label: str, pool: Pool, out: Path, overwrite: bool) -> None:
    """Before any frame is scored: PySCF can compute ``label`` for every element of the
    pool, the pool is molecular, and a partial labelling next to ``out`` is at this level
    (with this PySCF) or ``overwrite``. Its header holds only those: each saved label
    carries its geometry's hash, and which pool or committee chose it does not change it."""
    from spk_meta.active.label import LabelError, PartialLabels, check_level, code_version

    try:
        check_level(label, pool.elements())
        partial = PartialLabels(partial_labels_path(out), {"level": label, "code": code_version()})
        partial.check(overwrite)
    except LabelError as err:
        raise SelectionError(f"--label: {err}") from None
    pbc = pool.store.pbc if pool.frames is None else pool.store.pbc[pool.frames]
    if np.asarray(pbc).any():
        raise SelectionError(f"--label {label}: {pool.path} has periodic frames; PySCF single points here are "
                             "molecular (no cell)")


def label_chosen(pool: Pool, frames: np.ndarray, source_index: np.ndarray, label: str, out: Path,
                 overwrite: bool, progress: bool):
    """PySCF labels of the chosen store ``frames`` (keys: their ``source_index``), resumable."""
    from schnetpack.units import convert_units

    from spk_meta.active.label import LabelError, label_frames

    store = pool.store
    factor = float(convert_units(store.distance_unit, "Ang"))  # PySCF gets Ang
    items = []
    for f in frames:
        s = store.atoms_slice(int(f))
        items.append((np.asarray(store.numbers_all[s], dtype=np.int64), np.asarray(store.positions_all[s]) * factor))
    try:
        return label_frames(items, label, keys=source_index, partial=partial_labels_path(out),
                            overwrite=overwrite, progress=progress)
    except LabelError as err:
        raise SelectionError(f"--label: {err}") from None


def select(ensemble: Union[PathLike, Ensemble], source: PathLike, out: PathLike, *, n: Optional[int] = None,
           threshold: Optional[float] = None, criterion: str = "rho", labels: Optional[str] = None,
           stratify: str = "none", random_fraction: float = 0.0, batch_size: int = 256, seed: int = 0,
           label: Optional[str] = None, overwrite: bool = False, progress: bool = False, device: str = "cpu",
           trust: bool = False) -> Selection:
    """Score the pool ``source`` with the committee ``ensemble`` and write the selection to ``out``.

    Args:
        ensemble: an :class:`~spk_meta.active.ensemble.Ensemble`, or its manifest (file or folder).
        source: a packed store folder or a SchNetPack ASE database.
        out: the output task: a store folder for a store pool, a ``.db`` for a database.
        n: take this many frames; or threshold: every frame scoring above it.
        criterion: ``"rho"`` or ``"force_spread"`` (:data:`CRITERIA`).
        labels: (stores) only frames labelled in this label set, and only it in the output.
        stratify: ``"none"``; ``"elements"``: frames grouped by their set of elements;
            ``"size"``: by their number of atoms. Each group gets a share of the committee's
            frames proportional to its share of the pool (top-scoring frames within it).
        random_fraction: this fraction of the output is drawn uniformly from the frames the
            committee did not pick (``seed``).
        batch_size: frames per model call.
        label: ``METHOD/BASIS``: label the chosen frames with PySCF single points at this
            level and write only these labels (eV, eV/Ang); see the module docstring.
        overwrite: replace an existing ``out`` (and, with ``label``, a partial labelling
            made for another selection).

    Raises:
        SelectionError: bad options, ``n`` larger than the pool, elements the ensemble has
            no networks for, an existing output, a level PySCF cannot compute for an
            element of the pool: all before any frame is scored; with ``label``, every
            single point failed (nothing written).
        EnsembleError: the ensemble cannot be used (see :func:`load_ensemble`).
    """
    check_options(n, threshold, criterion, stratify, random_fraction, batch_size)
    out = Path(out).absolute()
    source = Path(source)
    if out.exists() and not overwrite:
        raise SelectionError(f"--out {out} already exists (pass --overwrite to replace it)")
    if not isinstance(ensemble, Ensemble):
        ensemble = load_ensemble(ensemble, device=device, trust=trust)
    pool = open_pool(source, labels)
    check_output(out, pool.kind, overwrite)
    if n is not None and n > len(pool):
        where = f"{source}" + (f" labelled in '{labels}'" if labels else "")
        raise SelectionError(f"--n {n} is larger than the pool: {len(pool)} frames in {where}")
    check_elements(pool, ensemble)
    if label is not None:
        check_label(label, pool, out, overwrite)
    elif pool.kind == "db":
        from spk_meta.data.level_of_theory import METADATA_KEY

        if not isinstance(pool.store.source.get("metadata", {}).get(METADATA_KEY), dict):
            raise SelectionError(f"{source}: the database records no level of theory (metadata "
                                 f"'{METADATA_KEY}'); write it with spk_meta.data.write_database")

    scores, groups = score_pool(ensemble, pool, criterion, batch_size, stratify, progress)
    unscored = int(np.isnan(scores).sum())
    if unscored:
        warnings.warn(f"{source}: the committee predicted NaN for {unscored} frames; they rank last", stacklevel=2)
    ranking = rank(scores, n=n, threshold=threshold, groups=groups, random_fraction=random_fraction, seed=seed)
    chosen = ranking.all
    if len(chosen) == 0:
        raise SelectionError(f"no frame of {source} scores above --threshold {threshold:g} {CRITERIA[criterion]} "
                             f"(highest: {float(np.nanmax(scores)) if unscored < len(scores) else float('nan'):.4g}); "
                             "nothing written")
    frames = pool.store_frames(0, len(pool))[chosen] if pool.frames is not None else chosen
    if pool.kind == "db":
        source_index = np.asarray(pool.store.source_index[frames], dtype=np.int64)
    else:
        source_index = frames.astype(np.int64)
    random_frames = (pool.frames[ranking.random] if pool.frames is not None else ranking.random)
    record = {
        "format": SELECTION_FORMAT, "version": SELECTION_VERSION,
        "source": str(source.absolute()), "source_kind": pool.kind, "labels": labels,
        "source_index_meaning": ("frame of the source store" if pool.kind == "store"
                                 else "row of the source database (ASE id - 1)"),
        "criterion": criterion, "score_unit": CRITERIA[criterion], "n": n, "threshold": threshold,
        "stratify": stratify, "random_fraction": random_fraction, "seed": seed,
        "ensemble": {"manifest": str(ensemble.manifest) if ensemble.manifest else None,
                     "sha256": ensemble.manifest_sha256, "members": len(ensemble)},
        "n_pool": len(pool), "n_selected": int(len(chosen)), "n_committee": int(len(ranking.committee)),
        "n_random": int(len(ranking.random)),
        "committee_score_min": float(np.nanmin(scores[ranking.committee])) if len(ranking.committee) else None,
        "random_source_index": [int(i) for i in (np.asarray(pool.store.source_index[random_frames])
                                                 if pool.kind == "db" else random_frames)],
    }
    computed, new = None, None
    if label is not None:
        computed = label_chosen(pool, frames, source_index, label, out, overwrite, progress)
        ok, failed = computed.ok, computed.failed
        failed_index = [int(i) for i in source_index[failed]]
        if len(ok) == 0:
            partial_labels_path(out).unlink(missing_ok=True)  # nothing in it worth resuming
            raise SelectionError(f"--label {label}: the single points of all {len(frames)} chosen frames failed "
                                 "(SCF not converged, or an error: see the warnings); nothing written")
        if len(failed):
            warnings.warn(f"--label {label}: {len(failed)} of {len(frames)} single points failed; those frames are "
                          f"dropped (source indices {failed_index[:20]}{' ...' if len(failed) > 20 else ''})",
                          stacklevel=2)
        frames, source_index = frames[ok], source_index[ok]
        new = NewLabels(label, computed.code, computed.energy[ok], [computed.forces[i] for i in ok])
        record["label"] = {"level": label, "code": computed.code, "units": {"energy": "eV", "forces": "eV/Ang"},
                           "n_labelled": int(len(ok)), "n_failed": int(len(failed)),
                           "failed_source_index": failed_index, "seconds": round(computed.seconds, 3),
                           "n_resumed": int(computed.n_resumed)}
    if pool.kind == "db":
        record["source_rows"] = [int(i) for i in source_index]
        _write_database(pool, frames, out, record, overwrite, progress, new)
    else:
        _write_store(pool, frames, out, record, overwrite, progress, new)
    if label is not None:
        partial_labels_path(out).unlink(missing_ok=True)  # the labels are in the output now
    return Selection(out=out, n_pool=len(pool), scores=scores, ranking=ranking, source_index=source_index,
                     metadata=record, labels=computed)
