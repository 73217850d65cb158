"""Run the planned trainings through ``spktrain`` (the code path users use) and evaluate them.

Every run lives in ``<root>/runs/<name>`` and is skipped when its ``best_model`` (training)
or ``eval.json`` (evaluation) exists, so an interrupted comparison resumes where it stopped.
"""

import json
import os
import shutil
import subprocess
import sys
from functools import cached_property
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from spk_meta.datasets import ethanol_multilevel
from spk_meta.evaluate import error_metrics, evaluate, load_model, predict, read_labelled
from spk_meta.experiment.plan import FinetuneRun, Preset, PretrainRun
from spk_meta.utils import atomic_path

TEMPERATURES = (300, 600, 900)
#: inner steps in one pass over data=ethanol_multilevel: 3 levels x 160 frames / batch 16
PRETRAIN_BATCHES_PER_EPOCH = 3 * 160 // 16


class RunFailed(RuntimeError):
    """A training run exited non-zero; the message points at its log."""


def spktrain_executable() -> str:
    local = Path(sys.executable).parent / "spktrain"
    return str(local) if local.exists() else (shutil.which("spktrain") or "spktrain")


class Runner:
    """Trains and evaluates the runs of one comparison under ``root``."""

    def __init__(self, root: Path, preset: Preset, log=print):
        self.root = Path(root).absolute()
        self.preset = preset
        self.log = log
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(parents=True, exist_ok=True)

    @cached_property
    def data(self):
        """The embedded dataset (checked against its manifest once, not per run)."""
        return ethanol_multilevel()

    @cached_property
    def mp2_train_frames(self):
        """The labelled MP2 training frames in database order; validation rows index them."""
        return read_labelled(self.data["target_mp2_631gs_train_300K"].db)

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def _spktrain(self, name: str, overrides: List[str]) -> Path:
        run = self.run_dir(name)
        if (run / "best_model").exists():
            return run
        args = [spktrain_executable(), *overrides, f"run.path={self.root / 'runs'}", f"run.id={name}",
                "logger=csv", *self.preset.extra]
        log_path = self.root / "logs" / f"{name}.log"
        env = {**os.environ, "PWD": str(self.root), "TORCHANI_NO_WARN_EXTENSIONS": "1"}
        with open(log_path, "w") as fh:
            fh.write(" ".join(args) + "\n")
            fh.flush()
            result = subprocess.run(args, cwd=self.root, env=env, stdout=fh, stderr=subprocess.STDOUT)
        if result.returncode != 0 or not (run / "best_model").exists():
            raise RunFailed(f"{name} failed (exit {result.returncode}); see {log_path}")
        return run

    def pretrain(self, run: PretrainRun) -> Path:
        """Every k gets the same budget of inner optimiser steps: ``pretrain_epochs`` passes
        over the three levels' training batches (an epoch of Reptile with large k would
        otherwise hold k batches per outer step however few batches the data has)."""
        experiment = "joint_ani" if run.k == 1 else "reptile_ani"
        steps = self.preset.pretrain_epochs * PRETRAIN_BATCHES_PER_EPOCH
        overrides = [f"experiment={experiment}", f"model={run.architecture}", f"seed={run.seed}",
                     f"+trainer.max_steps={steps}", "trainer.max_epochs=-1"]
        if run.k > 1:
            overrides.append(f"task.inner_steps={run.k}")
        return self._spktrain(run.name, overrides)

    def finetune(self, run: FinetuneRun) -> Path:
        data = [f"data.num_train={run.n}", f"data.num_val={self.preset.num_val}", f"seed={run.seed}",
                f"trainer.max_epochs={self.preset.finetune_epochs}"]
        if run.pretrain is None:
            return self._spktrain(run.name, ["experiment=scratch_ani", f"model={run.architecture}", *data])
        pretrained = self.run_dir(run.pretrain.name) / "best_model"
        return self._spktrain(run.name, ["experiment=finetune_ani", f"pretrained={pretrained}", *data])

    def evaluate(self, run: FinetuneRun) -> Dict:
        """Errors on the MP2 test files per temperature and on the run's validation split."""
        out = self.run_dir(run.name) / "eval.json"
        if out.exists():
            return json.loads(out.read_text())
        data = self.data
        model = load_model(self.run_dir(run.name) / "best_model")
        files = {t: data[f"target_mp2_631gs_test_{t}K"].extxyz for t in TEMPERATURES}
        errors = evaluate(model, list(files.values()))
        result = {"test": {str(t): errors[str(p)] for t, p in files.items()}, "val": self._validation(run, model)}
        with atomic_path(out, overwrite=True) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        return result

    def _validation(self, run: FinetuneRun, model) -> Optional[Dict]:
        """Errors on the fine-tuning run's own validation frames (MP2 training file)."""
        split = np.load(self.run_dir(run.name) / "task_splits.npz")
        rows = split["mp2_6-31gs/val_idx"]
        if len(rows) == 0:
            return None
        frames = [self.mp2_train_frames[int(r)] for r in rows]
        energies, forces = predict(model, frames)
        e = error_metrics(energies, [a.get_potential_energy() for a in frames])
        f = error_metrics(np.concatenate(forces), np.concatenate([a.get_forces() for a in frames]))
        return {"energy_rmse": e["rmse"], "forces_rmse": f["rmse"], "n_frames": len(frames)}
