"""Pack a SchNetPack ASE database into a :mod:`packed store <spk_meta.data.store>`, once.

Users already have SchNetPack ASE databases (SQLite). Reading one row by row costs about
0.3 ms a frame, every time; a packed store opens in milliseconds whatever its size. The
packed copy lives in the spk-meta cache (``$SPKMETA_CACHE``, else ``~/.cache/spk-meta``)
under ``packed/``, named by the database's stem and a key of its identity (absolute path,
size, modification time) and of the properties asked for, so an edited or replaced
database is packed again and never served stale.

Values are stored in the database's own units (recorded in the store); converting them is
the reader's job, as with the database itself.
"""

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Optional, Union

import numpy as np
from ase.db import connect
from tqdm.auto import tqdm

from spk_meta.data.level_of_theory import METADATA_KEY
from spk_meta.utils.atomic import exclusive_lock
from spk_meta.data.store import (
    LabelSet,
    PackedStore,
    StoreError,
    StoreWriter,
    file_identity,
    remove_stale_temporaries,
)

PathLike = Union[str, Path]

#: The one label set a packed ASE database holds.
LABELS = "labels"

_SQLITE_MAGIC = b"SQLite format 3\x00"

#: Version of what a packed database holds; part of the cache key, so a copy packed by an
#: older spk-meta (without ``content_sha256``) is packed again rather than reused.
PACK_VERSION = 2


def read_database_metadata(path: Path) -> dict:
    """The metadata of a SchNetPack ASE database (StoreError naming the file if it is not one)."""
    if not path.is_file():
        raise StoreError(f"{path}: no such ASE database" if not path.exists() else f"{path}: not a file")
    with open(path, "rb") as fh:
        if fh.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
            raise StoreError(f"{path}: not an ASE database (not an SQLite file)")
    try:
        with connect(str(path), type="db", use_lock_file=False) as conn:
            return dict(conn.metadata)
    except (sqlite3.DatabaseError, KeyError, ValueError) as err:
        raise StoreError(f"{path}: not a readable ASE database ({err})") from None


def packed_path(db_path: PathLike, energy_key: str, forces_key: Optional[str], cache: Optional[PathLike] = None) -> Path:
    """Where :func:`pack_ase_database` keeps the packed copy of ``db_path``."""
    from spk_meta.datasets.embedded import cache_dir  # here: spk_meta.datasets imports spk_meta.data

    ident = file_identity(db_path)
    key = json.dumps(
        {**ident, "energy_key": energy_key, "forces_key": forces_key, "pack_version": PACK_VERSION}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir(cache) / "packed" / f"{Path(db_path).stem}-{digest}.spkstore"


def pack_ase_database(
    db_path: PathLike,
    energy_key: str = "energy",
    forces_key: Optional[str] = "forces",
    cache: Optional[PathLike] = None,
    progress: Optional[bool] = None,
) -> PackedStore:
    """The packed store of a SchNetPack ASE database, packing it on first use.

    Args:
        db_path: the database (``_property_unit_dict`` and ``_distance_unit`` metadata
            required, as SchNetPack writes them).
        energy_key: energy property (required in the database's units).
        forces_key: forces property; ``None`` or absent from the database: energy only.
        cache: cache folder (default: :func:`spk_meta.datasets.embedded.cache_dir`).
        progress: progress bar while packing (default: for 10 000+ rows).

    Returns:
        The store, with one label set :data:`LABELS`; a row without a value for a
        property is stored as NaN there (the data module's NaN policy decides). Its
        ``source["content_sha256"]`` is a digest of every row's id, atoms, positions,
        cell, pbc and labels, taken while packing: the same for a copy of the database
        (other path and mtime), different for a rewritten one.

    Raises:
        StoreError: the file is not a usable SchNetPack database (message names the file,
            and the row for a malformed value).
    """
    db_path = Path(db_path).absolute()
    md = read_database_metadata(db_path)
    unit_dict = md.get("_property_unit_dict")
    if not isinstance(unit_dict, dict) or "_distance_unit" not in md:
        raise StoreError(
            f"{db_path}: the database has no units (metadata '_property_unit_dict' and "
            "'_distance_unit'); write it with spk_meta.data.write_database or spkconvert"
        )
    if energy_key not in unit_dict:
        raise StoreError(
            f"{db_path}: no '{energy_key}' property (the database has: {', '.join(unit_dict) or 'none'}); "
            "every task needs energies"
        )
    has_forces = forces_key is not None and forces_key in unit_dict
    out = packed_path(db_path, energy_key, forces_key if has_forces else None, cache)
    store = _packed_copy(out, db_path)
    if store is not None:
        return store
    # one packer per cache entry: DDP ranks (or runs) that all find it missing would
    # otherwise race to rename their copies onto the same folder
    with exclusive_lock(out.parent / f".{out.name}.lock"):
        store = _packed_copy(out, db_path)  # packed by another process while this one waited
        if store is not None:
            return store
        remove_stale_temporaries(out.parent)
        _pack(db_path, md, unit_dict, energy_key, forces_key, has_forces, out, progress)
    return PackedStore(out)


def _packed_copy(out: Path, db_path: Path) -> Optional[PackedStore]:
    """The packed store at ``out`` if it is of ``db_path`` as the file is now, else None."""
    if out.exists():
        store = PackedStore(out)
        if store.source.get("database") == file_identity(db_path):
            return store
    return None


def _pack(db_path: Path, md: dict, unit_dict: dict, energy_key: str, forces_key: Optional[str], has_forces: bool,
          out: Path, progress: Optional[bool]) -> None:
    """Write the packed copy of ``db_path`` to ``out`` (see :func:`pack_ase_database`)."""
    level = md.get(METADATA_KEY)
    labels = LabelSet(
        LABELS,
        level_of_theory=level.get("name") if isinstance(level, dict) else None,
        has_forces=has_forces,
        energy_unit=str(unit_dict[energy_key]),
        forces_unit=str(unit_dict[forces_key]) if has_forces else None,
    )
    source = {
        "database": file_identity(db_path),
        "energy_key": energy_key,
        "forces_key": forces_key if has_forces else None,
        "metadata": {k: v for k, v in md.items() if _jsonable(v)},
    }
    with StoreWriter(out, [labels], distance_unit=str(md["_distance_unit"]), source=source, overwrite=True) as w:
        with connect(str(db_path), type="db", use_lock_file=False) as conn:
            total = conn.count()
            show = progress if progress is not None else total >= 10_000
            rows = tqdm(conn.select(), total=total, desc=f"packing {db_path.name}", unit="frame", disable=not show)
            digest = hashlib.sha256()
            for row in rows:
                energy, forces = _row_labels(db_path, row, energy_key, forces_key if has_forces else None)
                numbers = np.asarray(row.numbers, dtype=np.int64)
                positions = np.asarray(row.positions, dtype=np.float64)
                cell = np.asarray(row.cell, dtype=np.float64).reshape(3, 3)
                pbc = np.asarray(row.pbc, dtype=bool)
                for part in (np.int64(row.id), numbers, positions, cell, pbc, np.float64(energy), forces):
                    if part is not None:
                        part = np.ascontiguousarray(part)
                        digest.update(f"{part.dtype.str}{part.shape}".encode())
                        digest.update(part.tobytes())
                w.add_frame(numbers, positions, {LABELS: (energy, forces)}, source_index=row.id - 1, cell=cell, pbc=pbc)
            w.source["content_sha256"] = digest.hexdigest()


def _row_labels(path: Path, row, energy_key: str, forces_key: Optional[str]):
    where = f"{path}: row {row.id}"
    data = row.data
    energy = np.asarray(data[energy_key], dtype=np.float64).reshape(-1) if energy_key in data else np.array([np.nan])
    if energy.size != 1:
        raise StoreError(f"{where}: '{energy_key}' must be one number, got shape {energy.shape}")
    forces = None
    if forces_key is not None:
        n = len(row.numbers)
        if forces_key in data:
            forces = np.asarray(data[forces_key], dtype=np.float64)
            if forces.shape != (n, 3):
                raise StoreError(f"{where}: '{forces_key}' must have shape ({n}, 3), got {forces.shape}")
        else:
            forces = np.full((n, 3), np.nan)
    return float(energy[0]), forces


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
