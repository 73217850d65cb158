"""One recorded ``spktrain`` run: reused, resumed or redone by its record, then launched.

The comparison runner and ``spkmeta ensemble`` both train through :func:`train_recorded`,
so a run directory means the same to both: ``spkmeta_run.json``
(:mod:`spk_meta.experiment.record`) says whether it finished with the settings asked now;
an interrupted run resumes from SchNetPack's ``checkpoints/last.ckpt`` or is redone.
"""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, List, Optional

from spk_meta.data.splits import REUSE_LOG_LINE
from spk_meta.experiment.record import RunSpec, decide, write_finished, write_started


class RunFailed(RuntimeError):
    """A training run failed; the message names its run directory and its log."""


def split_reuse_line(log_path: Path, split: Path) -> Optional[str]:
    """``None`` if the ``spktrain`` log ``log_path`` says that its data module reused the
    split file ``split`` (an absolute path), else the line that is missing from it."""
    line = REUSE_LOG_LINE.format(split)
    if log_path.is_file() and line in log_path.read_text(errors="replace"):
        return None
    return line


def failure_message(label: str, run: Path, what: str, log_path: Path, tail: int = 5) -> str:
    """``<label> <run name> failed: <what>``, the run directory, the log and its last lines."""
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    last = "".join(f"\n    {line}" for line in lines[-tail:])
    return (f"{label} {run.name} failed: {what}.\n  run directory: {run}\n  log: {log_path}"
            + (f"\n  last lines of the log:{last}" if last else "")
            + "\n  Rerunning the same command resumes this run from its last checkpoint if it has one, "
            "else redoes it; delete the run directory to start it over.")


def train_recorded(run: Path, spec: RunSpec, executable: str, log_path: Path, cwd: Path,
                   log: Callable[[str], None] = print, label: str = "training run",
                   on_reuse: Optional[str] = None, on_start: Optional[str] = None,
                   overrides: Optional[List[str]] = None) -> str:
    """Make ``run`` a finished ``spktrain`` run with ``spec``'s overrides.

    Args:
        run: the run directory (``run.path`` is its parent, ``run.id`` its name).
        spec: the overrides (and input hashes) that define the run.
        executable: the ``spktrain`` to start.
        log_path: the run's log (appended to when resuming, so the first attempt's stays).
        cwd: the directory ``spktrain`` starts in (also its ``PWD``).
        log: where "redoing"/"resuming" lines (and ``on_reuse``/``on_start``) go.
        label: how failures name the run ("training run", "ensemble member").
        on_reuse, on_start: optional lines to log when the run is reused / started.
        overrides: what ``spktrain`` is given, when it differs from how ``spec`` records
            it (the runner records paths relative to its folder; default: ``spec.overrides``).

    Returns:
        What was done: ``reuse``, ``start``, ``resume`` or ``redo``.

    Raises:
        RunFailed: ``spktrain`` exited non-zero or wrote no ``best_model``.
    """
    decision = decide(run, spec)
    if decision.action == "reuse":
        if on_reuse:
            log(on_reuse)
        return "reuse"
    if decision.action == "redo":
        log(f"{run.name}: redoing it: {decision.reason}")
        shutil.rmtree(run)
    elif decision.action == "resume":
        log(f"{run.name}: {decision.reason}")
    if on_start:
        log(on_start)
    given = spec.overrides if overrides is None else overrides
    args: List[str] = [executable, *given, f"run.path={run.parent}", f"run.id={run.name}"]
    run.mkdir(parents=True, exist_ok=True)
    started = write_started(run, spec, args, resumed=decision.action == "resume")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PWD": str(cwd), "TORCHANI_NO_WARN_EXTENSIONS": "1"}
    with open(log_path, "a" if decision.action == "resume" else "w") as fh:
        fh.write(f"# {decision.action}: " + " ".join(args) + "\n")
        fh.flush()
        result = subprocess.run(args, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RunFailed(failure_message(label, run, f"spktrain exited with status {result.returncode}", log_path))
    if not (run / "best_model").is_file():
        raise RunFailed(failure_message(label, run, "spktrain exited 0 but wrote no best_model", log_path))
    write_finished(run, started, result.returncode)
    return decision.action
