"""The converter's output folder: one writer at a time, no leftovers, a manifest.

:class:`OutputFolder` is what ``spkmeta convert`` holds while it writes into OUTDIR:

* a lock (``fcntl.flock`` on ``OUTDIR/.spkmeta-convert.lock``, which holds the owner's
  pid and is removed on release): a second conversion into the same folder fails at once
  with a message naming the folder and that pid;
* under the lock, temporary databases and packed stores of killed conversions
  (``.NAME.PID-XXXXXXXX.tmp.db``, ``.NAME.spkstore.PID-XXXXXXXX.tmp`` whose PID no longer
  runs) are removed;
* after a successful run, :meth:`OutputFolder.commit` writes ``convert_manifest.json``
  (atomically) listing every database or packed store (``*.spkstore``) in the folder with
  its level(s), frame count, source, options, command and spk-meta version. With ``overwrite`` the folder is made to hold
  exactly what this run wrote: databases of earlier conversions that this run did not
  write are removed, but only if they are ours (listed unchanged in the previous manifest,
  or a database whose metadata says ``spkmeta convert`` wrote it); any other file is kept
  and named in the summary. Without ``overwrite`` nothing is removed and the manifest
  keeps the earlier entries whose files are still there.
"""

import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from spk_meta.convert.base import ConversionError, PathLike
from spk_meta.data.store import META_FILE, STORE_SUFFIX, remove_stale_temporaries
from spk_meta.data.writer import pid_alive, stale_temporary_files

try:
    import fcntl
except ImportError:  # not POSIX: no lock (documented)
    fcntl = None

LOCK_NAME = ".spkmeta-convert.lock"
MANIFEST_NAME = "convert_manifest.json"
MANIFEST_VERSION = 1


def check_outdir(outdir: PathLike) -> Path:
    """``outdir`` as an absolute path; a :class:`ConversionError` if it (or the first
    existing folder above it) is a file."""
    outdir = Path(outdir).absolute()
    if outdir.exists() and not outdir.is_dir():
        raise ConversionError(f"OUTDIR is a file, not a folder: {outdir}")
    for parent in outdir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConversionError(f"OUTDIR {outdir} cannot be created: {parent} is a file, not a folder")
            break
    return outdir


def _is_converted_database(path: Path) -> bool:
    """True if ``path`` is an ASE database whose metadata says ``spkmeta convert`` wrote it.

    Read with sqlite3 in read-only mode: ASE's ``connect`` would create its tables in a
    foreign SQLite file, and a user's file must stay untouched.
    """
    import sqlite3

    try:
        con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT value FROM information WHERE name='metadata'").fetchone()
        finally:
            con.close()
        return row is not None and "converted_from" in json.loads(row[0])
    except (sqlite3.Error, ValueError, TypeError):
        return False


def _is_converted_store(path: Path) -> bool:
    """True if ``path`` is a packed store whose ``store.json`` says ``spkmeta convert`` wrote it."""
    try:
        meta = json.loads((path / META_FILE).read_text())
        return meta["source"]["written_by"] == "spkmeta convert"
    except (OSError, ValueError, TypeError, KeyError):
        return False


def output_size(path: Path) -> int:
    """Bytes of a database file, or of every file in a packed store folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _remove_output(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class OutputFolder:
    """The lock, the clean-up and the manifest of one conversion into ``path``.

    Use as a context manager around the whole conversion; the lock is held until exit.
    """

    def __init__(self, path: PathLike):
        self.path = check_outdir(path)
        self.lock_path = self.path / LOCK_NAME
        self.manifest_path = self.path / MANIFEST_NAME
        self._fd: Optional[int] = None
        self._created = False
        #: temporary files of killed conversions removed on entry
        self.removed_temporaries: List[str] = []

    # -- the lock --------------------------------------------------------------------------

    def __enter__(self) -> "OutputFolder":
        try:
            self._created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as err:  # e.g. a folder the user may not write to
            raise ConversionError(f"OUTDIR {self.path}: cannot write here ({err.strerror or err})") from None
        try:
            stale = stale_temporary_files(self.path)
            for p in self.path.glob(f".{MANIFEST_NAME}.*.tmp"):
                pid = p.name[len(MANIFEST_NAME) + 2 : -len(".tmp")]
                if pid.isdigit() and not pid_alive(int(pid)):
                    stale.append(p)
            for p in stale:
                p.unlink(missing_ok=True)
                self.removed_temporaries.append(p.name)
            self.removed_temporaries += [p.name for p in remove_stale_temporaries(self.path)]
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._unlock()
        if exc_type is not None and self._created:
            try:
                self.path.rmdir()  # a failed run into a new folder leaves no folder either
            except OSError:
                pass  # not empty: someone else's files

    def _lock(self) -> None:
        if fcntl is None:
            return
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ConversionError(
                    f"{self.path}: another spkmeta convert (pid {holder}) is writing into this folder; "
                    "wait for it to finish or choose another OUTDIR"
                ) from None
            # the holder before us may have removed the file after we opened it: the lock
            # counts only if our descriptor is still the file under that name
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _unlock(self) -> None:
        if self._fd is None:
            return
        try:
            self.lock_path.unlink(missing_ok=True)  # still holding the lock: see _lock
        finally:
            os.close(self._fd)
            self._fd = None

    # -- manifest and stale outputs --------------------------------------------------------

    def previous_manifest(self) -> Dict[str, Any]:
        """The manifest an earlier conversion left (``{}`` if none or unreadable)."""
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {}
        return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else {}

    def _stale_outputs(self, written: Dict[str, Dict], previous: Dict[str, Any]) -> Tuple[List[Path], List[str]]:
        """With ``overwrite``: our databases and packed stores this run did not write (to
        remove), and the other ``.db`` files and ``.spkstore`` folders (kept, named)."""
        listed = previous.get("files", {})
        remove, kept = [], []
        candidates = {p.name for p in self.path.glob("*.db")} | {p.name for p in self.path.glob(f"*{STORE_SUFFIX}")}
        candidates |= set(listed)
        for name in sorted(candidates - set(written)):
            p = self.path / name
            if Path(name).name != name or not (p.is_file() or (p.suffix == STORE_SUFFIX and p.is_dir())):
                continue
            entry = listed.get(name)
            unchanged = isinstance(entry, dict) and entry.get("size_bytes") == output_size(p)
            if unchanged or (p.suffix == ".db" and _is_converted_database(p)) or (p.is_dir() and _is_converted_store(p)):
                remove.append(p)
            else:
                kept.append(name)
        return remove, kept

    def commit(self, written: Dict[str, Dict], overwrite: bool, run: Dict[str, Any]) -> Tuple[List[str], List[str]]:
        """After a successful conversion: remove stale outputs (``overwrite`` only) and
        write the manifest.

        Args:
            written: ``{file name: entry}`` for every database (or packed store) this run wrote (the entry:
                level, frames, ...; ``size_bytes`` is added here).
            overwrite: whether the run was asked to replace the folder's databases.
            run: what the run was (command, options, ...), stored as ``last_run``.

        Returns:
            the names removed and the names of other ``.db`` files kept.
        """
        previous = self.previous_manifest()
        removed: List[str] = []
        kept: List[str] = []
        files: Dict[str, Dict] = {}
        if overwrite:
            stale, kept = self._stale_outputs(written, previous)
            for p in stale:
                _remove_output(p)
                removed.append(p.name)
        else:
            files = {name: e for name, e in previous.get("files", {}).items() if (self.path / name).exists()}
        for name, entry in written.items():
            files[name] = {**entry, "size_bytes": output_size(self.path / name)}
        from spk_meta import __version__

        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "written_by": "spkmeta convert",
            "spk_meta_version": __version__,
            "updated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "files": dict(sorted(files.items())),
            "last_run": {**run, "removed": removed, "removed_temporaries": self.removed_temporaries,
                         "kept_other_files": kept},
        }
        tmp = self.manifest_path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(manifest, indent=1) + "\n")
            os.replace(tmp, self.manifest_path)
        finally:
            tmp.unlink(missing_ok=True)
        return removed, kept
