"""Training-loader throughput: spk-meta's TaskDataModule vs SchNetPack's AtomsDataModule.

Both read the same embedded task database (wB97X/6-31G* ethanol, 200 frames, split
160/20/20) through the same transforms (``MatScipyNeighborList(5.2)``, ``CastTo32``),
batch size 16, 0 workers (the setting of our configs), and are iterated for the same
number of training epochs, interleaved (ours, theirs, ours, ...) so background load hits
both alike. Our setup opens the database's packed store (packing it into the cache on the
first run ever) and our first epoch reads each frame from it and builds every neighbour
list, cached for later epochs (a small task); SchNetPack reads SQLite rows and rebuilds
neighbour lists every epoch.

To put the numbers in context the script also times one ANI training step (forward,
forces by autograd, backward, Adam) on such a batch and prints the fraction of a step
spent waiting for data with each loader. The last line is

    ratio ours/schnetpack: X.X

= (samples/s of ours) / (samples/s of SchNetPack), over all epochs.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/data_loading.py [--epochs 10]
"""

import argparse
import os
import statistics
import tempfile
import time
from typing import Callable, List

import schnetpack as spk
import torch
from schnetpack import transform as T

from spk_meta.atomistic import ElementwiseAtomwise
from spk_meta.data import TaskDataModule
from spk_meta.datasets import ethanol_multilevel
from spk_meta.representation import ANI

BATCH = 16
SPLIT = dict(num_train=160, num_val=20, num_test=20)


def transforms():
    return [T.MatScipyNeighborList(cutoff=5.2), T.CastTo32()]


def epoch_time(loader) -> tuple:
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch["_n_atoms"])
    return time.perf_counter() - t0, n


def ani_step_time(batch, repeats: int = 20) -> float:
    rep = ANI(elements=["H", "C", "N", "O"], preset="ani1x")  # as configs/model/ani.yaml
    head = ElementwiseAtomwise(n_in=rep.n_atom_basis, elements=rep.elements, preset="ani1x")
    model = spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[head, spk.atomistic.Forces()],
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for _ in range(repeats + 3):
        inputs = {k: v.clone() for k, v in batch.items()}
        t0 = time.perf_counter()
        out = model(inputs)
        loss = ((out["energy"] - batch["energy"]) ** 2).mean() + ((out["forces"] - batch["forces"]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    db = ethanol_multilevel()["pretrain_wb97x_631gs_300K"].db
    with tempfile.TemporaryDirectory() as tmp:
        ours_dm = TaskDataModule(
            {"wb97x_6-31gs": db}, batch_size=BATCH, split_file=os.path.join(tmp, "ours.npz"),
            references_file=None, transforms=transforms(), **SPLIT,
        )
        theirs_dm = spk.data.AtomsDataModule(
            str(db), batch_size=BATCH, split_file=os.path.join(tmp, "theirs.npz"),
            transforms=transforms(), num_workers=0, **SPLIT,
        )
        t0 = time.perf_counter()
        ours_dm.setup("fit")
        ours_setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs_dm.setup("fit")
        theirs_setup = time.perf_counter() - t0
        ours_loader, theirs_loader = ours_dm.train_dataloader(), theirs_dm.train_dataloader()

        ours_t: List[float] = [ours_setup]
        theirs_t: List[float] = [theirs_setup]
        n_ours = n_theirs = 0
        for _ in range(args.epochs):
            t, n = epoch_time(ours_loader)
            ours_t.append(t)
            n_ours += n
            t, n = epoch_time(theirs_loader)
            theirs_t.append(t)
            n_theirs += n
        step = ani_step_time(next(iter(ours_loader)))

    ours_rate = n_ours / sum(ours_t)
    theirs_rate = n_theirs / sum(theirs_t)
    batches = SPLIT["num_train"] / BATCH
    print(f"database: {db.name} (200 frames, train 160), batch {BATCH}, {args.epochs} epochs, 0 workers")
    print(f"setup (read, split, E0 fit / stats): ours {ours_setup * 1e3:.0f} ms, schnetpack {theirs_setup * 1e3:.0f} ms")
    print(f"first epoch: ours {ours_t[1] * 1e3:.0f} ms (builds the cache), schnetpack {theirs_t[1] * 1e3:.0f} ms")
    print(f"later epochs (median): ours {statistics.median(ours_t[2:]) * 1e3:.1f} ms, schnetpack {statistics.median(theirs_t[2:]) * 1e3:.1f} ms")
    print(f"samples/s over all epochs incl. setup: ours {ours_rate:.0f}, schnetpack {theirs_rate:.0f}")
    print(f"ANI training step on one batch (CPU, {torch.get_num_threads()} threads): {step * 1e3:.1f} ms")
    for name, rate in (("ours", ours_rate), ("schnetpack", theirs_rate)):
        wait = BATCH / rate
        print(f"fraction of a training step waiting for data, {name}: {wait / (wait + step):.1%}")
    print(f"ratio ours/schnetpack: {ours_rate / theirs_rate:.1f}")


if __name__ == "__main__":
    main()
