"""The saved per-task split (``task_splits.npz``): which database rows each task trains,
validates and tests on, and which database they belong to.

A run draws its split once and saves it in the run directory; a resumed run (same
``run.id``) reuses it so that its validation and test frames never leak into training.
Reuse is checked: a saved split whose counts, frame count or database content differ
from what the run asks for is an error (:class:`TaskSplitMismatch`) that names the task,
what differs and how to start fresh. The file is independent of how frames are stored:
it holds database rows (row id - 1) and a :class:`DatabaseIdentity` per task.

File format (NumPy ``.npz``, no pickles), version 2::

    format_version          () int            2
    tasks                   (n_tasks,) str
    <task>/train_idx        (n_train,) int64  database rows, ascending
    <task>/val_idx          (n_val,) int64
    <task>/test_idx         (n_test,) int64
    <task>/database         () str            absolute path when the split was drawn
    <task>/n_frames         () int            frames the task served (after NaN skips)
    <task>/fingerprint      () str            content hash of those frames: "v2:<hex>" over the
                                              packed store's content digest, label set
                                              and rows (no frame read); "<hex>" (v1, older
                                              spk-meta) over every frame, compared with
                                              v1 only (a v1 split is reused after its
                                              counts, frame count and rows are checked)

Version 1 (no ``format_version``, no fingerprint) is still read; its reuse is checked by
counts and frame count only (with a warning).

Reading a split in your own code::

    from spk_meta.data import load_splits
    val_rows = load_splits("runs/<id>/task_splits.npz")["mp2_6-31gs"].val
"""

import hashlib
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from spk_meta.data.errors import TaskDataError, TaskSplitMismatch
from spk_meta.utils import atomic_path

PathLike = Union[str, Path]
log = logging.getLogger(__name__)
#: what the data module logs when it reuses a split file (runs check their logs for it)
REUSE_LOG_LINE = "Reusing the task splits in {}"

#: version written by :func:`save_splits`
SPLITS_FORMAT_VERSION = 2
#: split names, in file and tuple order
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class DatabaseIdentity:
    """What a saved split was drawn from.

    Attributes:
        path: the task database (absolute path, informational: a moved or copied file
            with the same content is the same data).
        n_frames: frames the task served (after frames with NaN labels were skipped).
        fingerprint: digest of the served frames' content, ``"v2:<hex>"`` (taken from
            the packed store, see :meth:`~spk_meta.data.TaskData.identity`), a bare hex
            digest from an older spk-meta (:func:`fingerprint_arrays` over every frame), or
            ``None`` for a version-1 file.
    """

    path: str
    n_frames: int
    fingerprint: Optional[str] = None

    def differences(self, current: "DatabaseIdentity") -> List[str]:
        """Human-readable differences between this (saved) identity and ``current``."""
        out = []
        if self.n_frames != current.n_frames:
            out.append(f"the database has {current.n_frames} frames, the split was drawn from {self.n_frames}")
        if comparable_fingerprints(self.fingerprint, current.fingerprint) and self.fingerprint != current.fingerprint:
            out.append(
                f"the frames of {current.path} differ from those the split was drawn from "
                f"({self.path}): the database was rewritten or replaced"
            )
        return out


def fingerprint_scheme(fingerprint: Optional[str]) -> Optional[str]:
    """``"v2"`` for a fingerprint taken from the packed store without reading its frames
    (``"v2:<hex>"``), ``"v1"`` for one hashed over every frame (spk-meta before the packed
    store), ``None`` for none."""
    if not fingerprint:
        return None
    return fingerprint.split(":", 1)[0] if ":" in fingerprint else "v1"


def comparable_fingerprints(saved: Optional[str], current: Optional[str]) -> bool:
    """Whether two fingerprints were taken the same way (else the content is not compared)."""
    return fingerprint_scheme(saved) is not None and fingerprint_scheme(saved) == fingerprint_scheme(current)


@dataclass(frozen=True, eq=False)
class TaskSplit:
    """One task's split as database rows (row id - 1).

    Attributes:
        train, val, test: database rows, shape ``(n,)`` each, int64, ascending, read-only.
        identity: the database the rows belong to (``None``: not recorded).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    identity: Optional[DatabaseIdentity] = None

    def __post_init__(self):
        for name in SPLIT_NAMES:
            rows = np.array(getattr(self, name), dtype=np.int64).reshape(-1)
            rows.setflags(write=False)
            object.__setattr__(self, name, rows)

    def __getitem__(self, split: str) -> np.ndarray:
        if split not in SPLIT_NAMES:
            raise KeyError(f"no split '{split}' (splits: {', '.join(SPLIT_NAMES)})")
        return getattr(self, split)

    @property
    def counts(self) -> Tuple[int, int, int]:
        """``(n_train, n_val, n_test)``."""
        return tuple(len(getattr(self, s)) for s in SPLIT_NAMES)


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """SHA-256 over the dtype, shape and bytes of each array, in order (hex digest).

    The data layer passes the frames as they are stored (rows, atomic numbers,
    positions, energies in the database's own units), so the fingerprint does not
    change with the units a run asks for.
    """
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def split_counts(n: int, num_train, num_val, num_test, where: str) -> Tuple[int, int, int]:
    """Resolve counts or fractions against ``n`` frames; ``num_test=None`` takes the rest.

    An ``int`` is a frame count, a ``float`` in [0, 1] a fraction of ``n`` (rounded down).

    Raises:
        TaskDataError: a negative value, a fraction > 1, no training frames, or more
            frames than exist (the message names ``where``).
    """

    def count(value, what):
        if value is None:
            return None
        if value < 0:
            raise TaskDataError(f"{where}: {what} must be >= 0, got {value}")
        if isinstance(value, float):
            if value > 1.0:
                raise TaskDataError(f"{where}: {what}={value} is neither a count (int) nor a fraction <= 1")
            return int(math.floor(value * n))
        return int(value)

    n_train = count(num_train, "num_train") or 0
    n_val = count(num_val, "num_val") or 0
    n_test = count(num_test, "num_test")
    if n_test is None:
        n_test = max(n - n_train - n_val, 0)
    if n_train + n_val + n_test > n:
        raise TaskDataError(
            f"{where}: the split asks for {n_train} train + {n_val} val + {n_test} test = "
            f"{n_train + n_val + n_test} frames but only {n} are available"
        )
    if n_train == 0:
        raise TaskDataError(f"{where}: the split leaves no training frames")
    return n_train, n_val, n_test


def draw_split(n_frames: int, counts: Sequence[int], rng=None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random split of ``range(n_frames)`` into disjoint, sorted train/val/test positions.

    Args:
        n_frames: frames to split.
        counts: ``(n_train, n_val, n_test)``, summing to at most ``n_frames``.
        rng: a ``numpy.random.Generator`` (or the ``numpy.random`` module, the global RNG).
    """
    rng = np.random if rng is None else rng
    n_train, n_val, n_test = (int(c) for c in counts)
    perm = rng.permutation(n_frames)
    return (
        np.sort(perm[:n_train]),
        np.sort(perm[n_train : n_train + n_val]),
        np.sort(perm[n_train + n_val : n_train + n_val + n_test]),
    )


def save_splits(path: PathLike, splits: Mapping[str, TaskSplit]) -> Path:
    """Write ``splits`` (every task with its :class:`DatabaseIdentity`) atomically.

    The file appears complete or not at all (temporary name, then rename).
    """
    path = Path(path)
    arrays = {"format_version": np.array(SPLITS_FORMAT_VERSION), "tasks": np.array(list(splits))}
    for name, split in splits.items():
        if split.identity is None:
            raise ValueError(f"task '{name}': a split is saved with its database identity")
        arrays[f"{name}/database"] = np.array(str(split.identity.path))
        arrays[f"{name}/n_frames"] = np.array(int(split.identity.n_frames))
        arrays[f"{name}/fingerprint"] = np.array(str(split.identity.fingerprint or ""))
        for s in SPLIT_NAMES:
            arrays[f"{name}/{s}_idx"] = split[s]
    with atomic_path(path, overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


def load_splits(path: PathLike) -> Dict[str, TaskSplit]:
    """The splits saved in ``path``: ``{task: TaskSplit}`` (database rows per split).

    Reads format versions 1 and 2 (version 1 has no fingerprint: ``identity.fingerprint``
    is ``None``, and ``identity`` itself is ``None`` if the frame count was not saved).

    Raises:
        TaskSplitMismatch: not a split file, an unknown version, or a task without rows.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            content = {k: z[k] for k in z.files}
        tasks = [str(t) for t in content["tasks"].reshape(-1)]
    except Exception as err:
        raise TaskSplitMismatch(f"{path}: not a task split file ({type(err).__name__}: {err})") from None
    version = int(content["format_version"]) if "format_version" in content else 1
    if version > SPLITS_FORMAT_VERSION:
        raise TaskSplitMismatch(
            f"{path}: split file format {version} is newer than this spk-meta reads "
            f"({SPLITS_FORMAT_VERSION}); upgrade spk-meta or start a new run"
        )
    out = {}
    for name in tasks:
        missing = [f"{name}/{s}_idx" for s in SPLIT_NAMES if f"{name}/{s}_idx" not in content]
        if missing:
            raise TaskSplitMismatch(f"{path}: task '{name}' has no {', '.join(missing)}")
        identity = None
        if f"{name}/n_frames" in content:
            fingerprint = str(content[f"{name}/fingerprint"]) if f"{name}/fingerprint" in content else ""
            identity = DatabaseIdentity(
                path=str(content.get(f"{name}/database", "")),
                n_frames=int(content[f"{name}/n_frames"]),
                fingerprint=fingerprint or None,
            )
        out[name] = TaskSplit(*(content[f"{name}/{s}_idx"] for s in SPLIT_NAMES), identity=identity)
    return out


def check_saved_split(
    path: PathLike,
    name: str,
    saved: TaskSplit,
    identity: DatabaseIdentity,
    counts: Sequence[int],
) -> None:
    """Refuse to reuse a saved split that does not fit this run.

    Args:
        path: the split file (named in the message).
        name: the task.
        saved: its saved split.
        identity: the task's database as this run sees it.
        counts: ``(n_train, n_val, n_test)`` this run asks for.

    Raises:
        TaskSplitMismatch: listing every difference and how to start fresh.
    """
    differences = []
    if tuple(saved.counts) != tuple(int(c) for c in counts):
        have = "/".join(str(c) for c in saved.counts)
        want = "/".join(str(int(c)) for c in counts)
        differences.append(f"it has {have} train/val/test frames, this run asks for {want}")
    if saved.identity is not None:
        differences += saved.identity.differences(identity)
    if differences:
        raise TaskSplitMismatch(
            f"{path}: the saved split of task '{name}' ({identity.path}) does not match this run: "
            + "; ".join(differences)
            + f". To start fresh, delete {path} (a new split is drawn) or use a new run.id; "
            "to resume the old run, give it its original data options"
        )
    if saved.identity is None or saved.identity.fingerprint is None:
        warnings.warn(
            f"{path}: an old-format split file (no database fingerprint); task '{name}' is "
            "reused after checking its counts only",
            stacklevel=2,
        )
    elif not comparable_fingerprints(saved.identity.fingerprint, identity.fingerprint):
        warnings.warn(
            f"{path}: task '{name}' was split by an older spk-meta (another database fingerprint); "
            "it is reused after checking its counts, frame count and rows only",
            stacklevel=2,
        )


def rows_to_positions(
    path: PathLike, name: str, split: str, rows: np.ndarray, db_index: np.ndarray, database: str = "the task"
) -> np.ndarray:
    """Positions in a task's frames (``db_index``: database row of each frame) of ``rows``.

    Raises:
        TaskSplitMismatch: a row the task does not serve (named, with how to start fresh).
    """
    db_index = np.asarray(db_index, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    order = np.argsort(db_index, kind="stable")
    sorted_rows = db_index[order]
    at = np.searchsorted(sorted_rows, rows)
    found = at < len(sorted_rows)
    found[found] = sorted_rows[at[found]] == rows[found]
    if not found.all():
        missing = rows[~found][:5].tolist()
        raise TaskSplitMismatch(
            f"{path}: task '{name}' split '{split}' names database rows {missing} that "
            f"{database} does not provide; delete the file or use a new run.id to start fresh"
        )
    return order[at]


def load_or_draw_splits(
    path: Optional[PathLike],
    db_index: Mapping[str, np.ndarray],
    identities: Mapping[str, DatabaseIdentity],
    counts: Mapping[str, Sequence[int]],
    rng=None,
) -> Dict[str, Dict[str, np.ndarray]]:
    """Every task's split as positions into its frames: ``{task: {split: (n,) int64}}``.

    If ``path`` exists, its split is reused after :func:`check_saved_split` for every task
    (same tasks, counts and database content); else a split is drawn with ``rng`` for every
    task and, if ``path`` is given, saved only then (nothing is written when a task fails).

    Args:
        path: the split file, or ``None`` (draw, don't save).
        db_index: per task, the database row of each frame it serves, ``(n_frames,)``.
        identities: per task, its database as this run sees it.
        counts: per task, ``(n_train, n_val, n_test)`` (:func:`split_counts`).
        rng: as in :func:`draw_split`.
    """
    path = Path(path) if path else None
    if path is not None and path.exists():
        saved = load_splits(path)
        if sorted(saved) != sorted(db_index):
            raise TaskSplitMismatch(
                f"{path}: the saved split is for tasks [{', '.join(saved)}] but this run has "
                f"[{', '.join(db_index)}]; use a new run directory (run.id) or delete the file"
            )
        out = {}
        for name, rows in db_index.items():
            check_saved_split(path, name, saved[name], identities[name], counts[name])
            out[name] = {
                s: rows_to_positions(path, name, s, saved[name][s], rows, identities[name].path) for s in SPLIT_NAMES
            }
        log.info(REUSE_LOG_LINE.format(path.absolute()))
        return out
    out = {name: dict(zip(SPLIT_NAMES, draw_split(len(rows), counts[name], rng))) for name, rows in db_index.items()}
    if path is not None:
        save_splits(path, {
            name: TaskSplit(*(rows[out[name][s]] for s in SPLIT_NAMES), identity=identities[name])
            for name, rows in db_index.items()
        })
    return out
