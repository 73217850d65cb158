"""The record a run directory of ``spkmeta experiment`` carries, and what to do with it.

SchNetPack writes ``best_model`` at the first improving epoch, so its presence says nothing
about whether training ended. The runner therefore writes ``spkmeta_run.json`` into the run
directory, atomically, twice: before ``spktrain`` starts (``status: "started"``, with the
spec that defines the run: its overrides and the hashes of its input models) and after
``spktrain`` exited 0 with a ``best_model`` (``status: "finished"``, with the exit status,
the SHA-256 of ``best_model`` and the test metrics SchNetPack logged).

:func:`decide` turns a run directory and the spec asked for now into one action:

``start``
    nothing there yet.
``reuse``
    a finished record with the same spec, next to the ``best_model`` it describes.
``resume``
    a started record with the same spec and SchNetPack's ``checkpoints/last.ckpt``:
    ``spktrain`` continues from that checkpoint by itself when it finds ``config.yaml``.
``redo``
    anything else (no record, another spec, no checkpoint, a changed ``best_model``):
    the directory is removed and the run starts over.
"""

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from spk_meta.utils import atomic_path

RECORD = "spkmeta_run.json"
FORMAT = 1
STARTED, FINISHED = "started", "finished"
#: what SchNetPack's ``spktrain`` resumes from when it finds ``config.yaml`` in its run dir
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


@dataclass(frozen=True)
class RunSpec:
    """What defines a training run: the ``spktrain`` overrides (without ``run.path`` and
    ``run.id``, which only say where it lives) and the SHA-256 of the models it starts from."""

    overrides: Sequence[str]
    inputs: Dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> Dict:
        return {"overrides": list(self.overrides), "inputs": dict(sorted(self.inputs.items()))}


@dataclass(frozen=True)
class Decision:
    action: str  # "start" | "reuse" | "resume" | "redo"
    reason: str = ""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(run_dir: Path) -> Optional[Dict]:
    """The run's record; ``None`` when there is none. Raises ``ValueError`` when it cannot be read."""
    path = Path(run_dir) / RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable run record ({err})") from err
    if not isinstance(record, dict) or record.get("status") not in (STARTED, FINISHED):
        raise ValueError(f"{path}: not a run record of spkmeta experiment")
    return record


def spec_differences(recorded: Dict, spec: RunSpec) -> str:
    """What differs between a recorded spec and ``spec``, in words ('' when nothing does)."""
    old_over, new_over = list(recorded.get("overrides", [])), list(spec.overrides)
    parts = []
    if old_over != new_over:
        gone = [o for o in old_over if o not in new_over]
        new = [o for o in new_over if o not in old_over]
        if gone or new:
            parts.append(f"overrides asked now {new or '[]'}, recorded {gone or '[]'}")
        else:
            parts.append(f"override order asked now {new_over}, recorded {old_over}")
    old_in, new_in = recorded.get("inputs", {}), spec.as_dict()["inputs"]
    for key in sorted(set(old_in) | set(new_in)):
        if old_in.get(key) != new_in.get(key):
            parts.append(f"input {key} is now {_short(new_in.get(key))}, recorded {_short(old_in.get(key))}")
    return "; ".join(parts)


def _short(digest: Optional[str]) -> str:
    return "none" if digest is None else digest[:12]


def decide(run_dir: Path, spec: RunSpec) -> Decision:
    """What to do with ``run_dir`` when the run ``spec`` is asked for (see the module docstring)."""
    run_dir = Path(run_dir)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return Decision("start")
    try:
        record = read_record(run_dir)
    except ValueError as err:
        return Decision("redo", str(err))
    if record is None:
        return Decision("redo", f"no {RECORD}: not started by this version of spkmeta experiment, "
                                "so neither its settings nor its end are known")
    differs = spec_differences(record.get("spec", {}), spec)
    if record["status"] == FINISHED:
        if differs:
            return Decision("redo", f"finished with other settings ({differs})")
        model = run_dir / "best_model"
        if not model.is_file():
            return Decision("redo", "finished, but its best_model is gone")
        if sha256(model) != record.get("best_model_sha256"):
            return Decision("redo", "finished, but its best_model changed since (SHA-256 differs)")
        return Decision("reuse")
    if differs:
        return Decision("redo", f"interrupted, and started with other settings ({differs})")
    if (run_dir / LAST_CHECKPOINT).is_file() and (run_dir / "config.yaml").is_file():
        return Decision("resume", f"interrupted; resuming from {LAST_CHECKPOINT}")
    return Decision("redo", f"interrupted before SchNetPack wrote {LAST_CHECKPOINT}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write(run_dir: Path, record: Dict) -> None:
    with atomic_path(Path(run_dir) / RECORD, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")


def write_started(run_dir: Path, spec: RunSpec, command: List[str], resumed: bool = False) -> Dict:
    """Record, before ``spktrain`` starts, how the run is defined; keeps an earlier start time."""
    try:
        previous = read_record(run_dir) if resumed else None
    except ValueError:
        previous = None
    record = {"format": FORMAT, "status": STARTED, "spec": spec.as_dict(), "command": list(command),
              "started": (previous or {}).get("started", _now()), "attempts": (previous or {}).get("attempts", 0) + 1}
    _write(run_dir, record)
    return record


def write_finished(run_dir: Path, started: Dict, exit_status: int) -> Dict:
    """Mark the run finished: ``spktrain`` exited ``exit_status`` (0) and ``best_model`` exists."""
    run_dir = Path(run_dir)
    record = {**started, "status": FINISHED, "exit_status": exit_status, "finished": _now(),
              "best_model_sha256": sha256(run_dir / "best_model"), "test_metrics": logged_test_metrics(run_dir)}
    _write(run_dir, record)
    return record


def logged_test_metrics(run_dir: Path) -> Dict[str, float]:
    """The ``test_*`` metrics of the latest CSV log (``logger=csv``) of the run; {} if none."""
    versions = sorted(Path(run_dir).glob("csv/version_*/metrics.csv"),
                      key=lambda p: int(re.sub(r"\D", "", p.parent.name) or -1))
    if not versions:
        return {}
    metrics: Dict[str, float] = {}
    with open(versions[-1], newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key and key.startswith("test_") and value not in ("", None):
                    try:
                        metrics[key] = float(value)
                    except ValueError:
                        pass
    return metrics

