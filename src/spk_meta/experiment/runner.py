"""Run the planned trainings through ``spktrain`` (the code path users use) and evaluate them.

Every run lives in ``<root>/runs/<name>`` with its log in ``<root>/logs/<name>.log``. A run
counts as finished only when ``spktrain`` exited 0 and the runner recorded that in the run's
``spkmeta_run.json`` (:mod:`spk_meta.experiment.record`) with the same settings as asked now;
an interrupted run is resumed from SchNetPack's ``checkpoints/last.ckpt`` or redone, and the
runner says which. Evaluations (``eval.json``) are reused only for the model they measured.
"""

import fcntl
import json
import os
import shutil
import sys
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

import spk_meta.datasets
from spk_meta.data import load_splits
from spk_meta.evaluate import error_metrics, evaluate, load_model, predict, read_labelled
from spk_meta.experiment.plan import CASES, Case, FinetuneRun, Preset, PretrainRun
from spk_meta.experiment.launch import RunFailed, train_recorded
from spk_meta.experiment.record import FINISHED, RunSpec, read_record
from spk_meta.utils import atomic_path

#: structures per batch in every shipped data config (the budget counts batches)
BATCH_SIZE = 16
#: the file in a comparison folder that says which case it holds
CASE_FILE = "comparison.json"


class OutputBusy(RuntimeError):
    """Another ``spkmeta experiment`` holds the output folder."""


class OtherCase(RuntimeError):
    """The output folder holds another case's comparison."""


def claim_for_case(root: Path, case: Case) -> None:
    """Record in ``<root>/comparison.json`` that ``root`` holds ``case``'s comparison.

    Run names do not carry the case, so a second case in the same folder would redo (and
    so delete) the first case's runs one by one; it is refused instead.

    Raises:
        OtherCase: ``root`` holds another case (named, with the way out).
    """
    path = Path(root) / CASE_FILE
    if path.exists():
        try:
            held = json.loads(path.read_text()).get("case")
        except (OSError, ValueError, AttributeError):
            held = None
        if held == case.name:
            return
        raise OtherCase(f"{root} holds the {held or 'unknown'} case's comparison ({path}); choose another --out "
                        f"for --case {case.name}")
    if any((Path(root) / "runs").glob("*/spkmeta_run.json")) and case.name != "ethanol":
        # runs from before comparison.json existed were all the ethanol case
        raise OtherCase(f"{root} holds runs of the ethanol case; choose another --out for --case {case.name}")
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps({"case": case.name}) + "\n")


LOCK_FILE = ".spkmeta-experiment.lock"


@contextmanager
def output_lock(root: Path) -> Iterator[Path]:
    """Hold an exclusive lock on the comparison folder ``root`` (``<root>/.spkmeta-experiment.lock``).

    Two comparisons in one folder would take each other's running trainings for killed ones
    and redo them. The lock is released when the block ends or the process dies.

    Raises:
        OutputBusy: another process holds it (its pid is named).
    """
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise OutputBusy(f"{root} is in use by another spkmeta experiment or ensemble (pid {holder}; "
                             f"lock {path}); wait for it to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


#: overrides whose value is a file path (recorded relative to the comparison folder)
PATH_KEYS = ("pretrained", "data.split_file")


def recorded_overrides(overrides: List[str], root: Path) -> List[str]:
    """The overrides as a run record holds them: paths inside ``root`` relative to it, so
    that a moved comparison folder is still reused (:func:`absolute_overrides` undoes it)."""
    return [o.replace(f"{Path(root)}{os.sep}", "") for o in overrides]


def absolute_overrides(overrides: List[str], root: Path) -> List[str]:
    """Recorded overrides as ``spktrain`` gets them: the relative paths of :data:`PATH_KEYS`
    made absolute under ``root`` again."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key in PATH_KEYS and value and not os.path.isabs(value):
            o = f"{key}={Path(root) / value}"
        out.append(o)
    return out


def spktrain_executable() -> str:
    local = Path(sys.executable).parent / "spktrain"
    return str(local) if local.exists() else (shutil.which("spktrain") or "spktrain")


class Runner:
    """Trains and evaluates the runs of one comparison under ``root``."""

    def __init__(self, root: Path, preset: Preset, log=print, case: Optional[Case] = None):
        self.root = Path(root).absolute()
        self.preset = preset
        self.case = case or CASES["ethanol"]
        self.log = log
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(parents=True, exist_ok=True)

    @cached_property
    def data(self):
        """The case's embedded dataset (checked against its manifest once, not per run)."""
        return getattr(spk_meta.datasets, self.case.dataset)()

    @cached_property
    def target_train_frames(self):
        """The labelled target training frames in database order; validation rows index them."""
        return read_labelled(self.data[self.case.target_train].db)

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def _spktrain(self, name: str, overrides: List[str], inputs: Optional[Dict[str, str]] = None) -> Path:
        """Run ``spktrain`` for ``name`` unless a finished run with the same settings exists.

        Args:
            name: the run id (``run.id``); the run lives in ``runs/<name>``.
            overrides: the Hydra overrides that define the run (``run.path``/``run.id`` are added).
            inputs: SHA-256 of the files the run starts from (a pre-trained model), so that a
                run is redone when its input was retrained.

        Raises:
            RunFailed: ``spktrain`` exited non-zero or wrote no ``best_model``.
        """
        run = self.run_dir(name)
        overrides = [*overrides, "logger=csv", *self.preset.extra]
        spec = RunSpec(recorded_overrides(overrides, self.root), dict(inputs or {}))
        train_recorded(run, spec, spktrain_executable(), self.root / "logs" / f"{name}.log", self.root,
                       log=self.log, overrides=overrides)
        return run

    def finished_model(self, name: str) -> Tuple[Path, str]:
        """``best_model`` of the finished run ``name`` and its recorded SHA-256.

        Raises:
            RunFailed: the run has no finished record or no ``best_model``.
        """
        run = self.run_dir(name)
        try:
            record = read_record(run)
        except ValueError as err:
            raise RunFailed(f"training run {name}: {err}") from err
        model = run / "best_model"
        if record is None or record["status"] != FINISHED or not model.is_file():
            raise RunFailed(f"training run {name} has not finished ({run}): train it first")
        return model, record["best_model_sha256"]

    def pretrain_steps(self, run: PretrainRun) -> int:
        """Optimiser steps (``trainer.max_steps``) that give ``run`` the comparison's budget:
        ``pretrain_epochs`` passes' worth of inner steps over the multi-level training
        frames, for every method (Reptile with large k would otherwise get k batches per
        outer step however few batches the data has). FOMAML's step counter also counts its
        one outer step per k inner steps, so it gets (k + 1) / k as many."""
        inner = self.preset.pretrain_epochs * self.case.pretrain_batches_per_epoch(BATCH_SIZE)
        if run.variant.method == "fomaml":
            return inner * (run.k + 1) // run.k
        return inner

    def pretrain(self, run: PretrainRun) -> Path:
        """Pre-train ``run`` with its method's experiment on the case's data."""
        method, case = run.variant.method, self.case
        experiment = {"joint": "joint_ani", "reptile": "reptile_ani", "multihead": "multihead_ani",
                      "fomaml": "reptile_ani", "transfer": "transfer_ani"}[method]
        data = case.transfer_data if method == "transfer" else case.pretrain_data
        overrides = [f"experiment={experiment}", f"model={run.architecture}", f"data={data}", f"seed={run.seed}",
                     f"+trainer.max_steps={self.pretrain_steps(run)}", "trainer.max_epochs=-1"]
        if method == "fomaml":
            overrides.append("task=fomaml")
        if method in ("reptile", "fomaml"):
            overrides.append(f"task.inner_steps={run.k}")
        return self._spktrain(run.name, overrides)

    def finetune(self, run: FinetuneRun) -> Path:
        """Train on ``n`` target frames from scratch (``none``) or from the pre-trained
        model; a multi-head model starts from its head with the lowest loss on the target's
        training frames (``model.head=best``)."""
        data = [f"data={self.case.target_data}", f"data.num_train={run.n}", f"data.num_val={self.preset.num_val}",
                f"seed={run.seed}", f"trainer.max_epochs={self.preset.finetune_epochs}"]
        if run.pretrain is None:
            return self._spktrain(run.name, ["experiment=scratch_ani", f"model={run.architecture}", *data])
        pretrained, digest = self.finished_model(run.pretrain.name)
        head = ["model.head=best"] if run.variant.method == "multihead" else []
        return self._spktrain(run.name, ["experiment=finetune_ani", f"pretrained={pretrained}", *head, *data],
                              inputs={"pretrained_sha256": digest})

    def evaluate(self, run: FinetuneRun) -> Dict:
        """Errors on the target's test files per temperature and on the run's validation
        split; for a case with scans, each scan's energies and scores."""
        model_path, model_sha = self.finished_model(run.name)
        out = self.run_dir(run.name) / "eval.json"
        if out.exists():
            try:
                result = json.loads(out.read_text())
            except (OSError, json.JSONDecodeError):
                result = {}
            if result.get("best_model_sha256") == model_sha and result.get("case") == self.case.name:
                return result
        data = self.data
        model = load_model(model_path)
        files = {t: data[key].extxyz for t, key in self.case.tests}
        errors = evaluate(model, list(files.values()))
        result = {"case": self.case.name, "test": {str(t): errors[str(p)] for t, p in files.items()},
                  "val": self._validation(run, model), "best_model_sha256": model_sha}
        if self.case.scans:
            result["scans"] = self._scans(model)
        with atomic_path(out, overwrite=True) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        return result

    @cached_property
    def scans(self) -> Dict[str, object]:
        """The case's labelled reference scans, ``{dataset key: LabelledScan}``, read once."""
        from spk_meta.evaluate.scan_scores import read_scan

        return {key: read_scan(self.data[key].extxyz) for key in self.case.scans}

    def _scans(self, model) -> Dict[str, Dict]:
        """Scores and energies (eV) of ``model`` on the case's labelled scans."""
        from spk_meta.evaluate.scan_scores import predict_scan, score_scan

        out = {}
        for key, scan in self.scans.items():
            energies = predict_scan(model, scan)
            out[key] = {**score_scan(scan, energies), "energies": [float(e) for e in energies]}
        return out

    def _validation(self, run: FinetuneRun, model) -> Optional[Dict]:
        """Errors on the fine-tuning run's own validation frames (target training file)."""
        rows = load_splits(self.run_dir(run.name) / "task_splits.npz")[self.case.target_task].val
        if len(rows) == 0:
            return None
        frames = [self.target_train_frames[int(r)] for r in rows]
        energies, forces = predict(model, frames)
        e = error_metrics(energies, [a.get_potential_energy() for a in frames])
        f = error_metrics(np.concatenate(forces), np.concatenate([a.get_forces() for a in frames]))
        return {"energy_rmse": e["rmse"], "forces_rmse": f["rmse"], "n_frames": len(frames)}
