"""Training throughput of Reptile (k = 10) vs plain SchNetPack training, same model and data.

Both train the same ANI model (``configs/model/ani.yaml`` sizes) with Adam on the three
embedded ethanol pre-training levels served by one ``TaskDataModule`` (neighbour lists
cached, batch 16), through Lightning on CPU, validation off:

  (a) ``spk_meta.task.ReptileTask`` with k = 10, epsilon = 0.5 (so the outer update runs);
  (b) SchNetPack's ``AtomisticTask`` on the data module's joint loader.

Each run takes the same number of optimiser steps; runs alternate (a, b, a, b, ...) and
the median structures/s of each is reported. The last line is

    ratio reptile/plain: X.XX

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/reptile_overhead.py [--steps 200] [--repeats 5]
"""

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings

import pytorch_lightning as pl
import schnetpack as spk
import torch
from schnetpack import transform as T

from spk_meta.atomistic import ElementwiseAtomwise
from spk_meta.data import TaskDataModule
from spk_meta.datasets import ethanol_multilevel
from spk_meta.representation import ANI
from spk_meta.task import ReptileTask

BATCH = 16


def ani():
    torch.manual_seed(0)
    rep = ANI(preset="ani1x")
    return spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[ElementwiseAtomwise(n_in=rep.n_atom_basis, preset="ani1x"), spk.atomistic.Forces()],
    )


def outputs():
    return [
        spk.task.ModelOutput("energy", loss_fn=torch.nn.MSELoss(), loss_weight=0.5, metrics={}),
        spk.task.ModelOutput("forces", loss_fn=torch.nn.MSELoss(), loss_weight=0.5, metrics={}),
    ]


def datamodule(tmp):
    data = ethanol_multilevel()
    tasks = {f.level_of_theory.slug: f.db for f in data.select("pretrain").values()}
    dm = TaskDataModule(
        tasks, batch_size=BATCH, num_train=160, num_val=20, num_test=20, split_seed=0,
        split_file=os.path.join(tmp, "split.npz"), references_file=None,
        transforms=[T.MatScipyNeighborList(5.2), T.CastTo32()],
    )
    dm.setup("fit")
    for name in dm.task_names:  # fill the neighbour-list cache outside the timing
        for i in range(len(dm.subsets[name]["train"])):
            dm.subsets[name]["train"][i]
    return dm


def timed_fit(task, dm, steps) -> float:
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    elapsed = time.perf_counter() - t0
    assert trainer.global_step == steps, (trainer.global_step, steps)
    return steps * BATCH / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps per run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    reptile, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        dm = datamodule(tmp)
        for _ in range(args.repeats):
            task = ReptileTask(ani(), outputs(), optimizer_args={"lr": 1e-4}, inner_steps=10, outer_lr=0.5, sampling_seed=0)
            dm.serve_episodes(None)
            reptile.append(timed_fit(task, dm, args.steps))
            dm.serve_episodes(None)  # the joint loader for the plain task
            task = spk.task.AtomisticTask(ani(), outputs(), optimizer_args={"lr": 1e-4})
            plain.append(timed_fit(task, dm, args.steps))
    r, p = statistics.median(reptile), statistics.median(plain)
    print(f"ANI (ani1x sizes), 3 ethanol levels, batch {BATCH}, {args.steps} optimiser steps per run, "
          f"{args.repeats} runs each, CPU {torch.get_num_threads()} threads")
    print(f"Reptile k=10 eps=0.5: {r:.0f} structures/s (runs: {', '.join(f'{x:.0f}' for x in reptile)})")
    print(f"plain AtomisticTask:  {p:.0f} structures/s (runs: {', '.join(f'{x:.0f}' for x in plain)})")
    print(f"ratio reptile/plain: {r / p:.2f}")


if __name__ == "__main__":
    main()
