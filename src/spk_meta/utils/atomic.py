"""Write-then-rename, so readers never see a half-written file."""

import contextlib
import fcntl
import os
import uuid
from pathlib import Path
from typing import Iterator, Union


@contextlib.contextmanager
def exclusive_lock(path: Union[str, Path]) -> Iterator[Path]:
    """Hold an exclusive ``fcntl.flock`` on the file ``path`` (created if missing) for the
    block, waiting for another process that holds it: one writer of a shared file at a time
    (e.g. two DDP ranks that both find a cache entry missing). Released when the block
    ends or the process dies; the lock file itself is left in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def atomic_path(final: Union[str, Path], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it to ``final`` on success.

    The temporary file keeps ``final``'s suffix (ASE picks the database backend from it)
    and lives in the same directory, so the rename is atomic on POSIX. On any exception
    the temporary file is removed and ``final`` is left untouched.

    Args:
        final: the path the finished file should have.
        overwrite: replace an existing ``final``; otherwise a ``FileExistsError`` is raised
            before anything is written.
    """
    final = Path(final).absolute()
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


class AllOrNothing:
    """Writer protocol: ``with Writer(...) as w:`` calls ``close()`` (which puts the output
    in place) on success and ``abort()`` (which drops everything) on an exception."""

    def close(self):  # pragma: no cover - implemented by the writer
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - implemented by the writer
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
