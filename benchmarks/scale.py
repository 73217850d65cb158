"""TaskDataModule on packed stores of 10 k to 1 M frames: start-up, memory, loader speed.

For each size, a synthetic ANI-1x-like store (C/H/N/O, 8-20 atoms a frame, conformers
grouped by formula, one wB97X label set with forces) is written once with
:class:`~spk_meta.data.store.StoreWriter` (``add_conformers``, the path ``spkmeta convert
--format packed`` takes; its own speed is measured by ``benchmarks/convert.py``) into
``--workdir`` and reused by later runs. Each measurement runs in a fresh child process:

- setup: ``TaskDataModule(...).setup("fit")`` (open the store, NaN check, split drawn and
  saved, E0 fit over the training split, in chunks);
- first batch: from ``setup`` to the first training batch (workers started);
- RSS after setup and after the loader run, of the main process: anonymous memory (what
  the process owns) and file-backed pages (memory-mapped store pages: page cache, shared
  with the workers and reclaimable); the workers' RSS is printed apart;
- loader samples/s over ``--batches`` training batches of the first epoch (no cache,
  every neighbour list built: ``MatScipyNeighborList(5.2)``, ``CastTo32``), batch 32,
  with 0 and 2 DataLoader workers.

The last line is ``ratio rss 1M/10k: X.XX``: total RSS (anonymous + file) of the main
process after setup and loading, largest size over smallest, 0 workers (goal <= 1.5).

Measured on this 2-core machine (shared, load ~2.4, ``nice -n 10``), 240 batches of 32:

=========  =======  =======  ===========  =================  ==========
frames     workers  setup    first batch  RSS after loading  samples/s
=========  =======  =======  ===========  =================  ==========
10 000     0        0.08 s   0.10 s       544 + 513 MB       2 025
10 000     2        0.07 s   0.22 s       447 + 510 MB       1 241
100 000    0        0.29 s   0.33 s       454 + 517 MB       2 210
100 000    2        0.21 s   0.35 s       454 + 511 MB       1 360
1 000 000  0        1.33 s   1.46 s       515 + 521 MB       1 935
1 000 000  2        1.06 s   1.23 s       515 + 518 MB       1 358
=========  =======  =======  ===========  =================  ==========

(RSS: anonymous + file-backed, main process; the 10 k task with 0 workers caches its
transformed samples, +97 MB.) ``ratio rss 1M/10k: 0.98``. Two workers do not help on two
cores that other processes share; they are for machines with cores to spare.

Usage::

    nice -n 10 .venv/bin/python benchmarks/scale.py [--sizes 10000 100000 1000000] [--batches 300]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LABELS = "wb97x_6-31gs"
E0 = {1: -13.6, 6: -1029.8, 7: -1484.2, 8: -2041.5}
BATCH = 32


def write_store(path: Path, n_frames: int, per_formula: int = 200, seed: int = 0) -> float:
    """A synthetic ANI-1x-like store of ``n_frames`` frames; returns frames/s written."""
    from spk_meta.data.store import LabelSet, StoreWriter

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with StoreWriter(path, [LabelSet(LABELS, "wB97X/6-31g*")], source={"synthetic": n_frames}, overwrite=True) as w:
        written = 0
        while written < n_frames:
            n_heavy = int(rng.integers(3, 8))
            heavy = rng.choice([6, 6, 6, 7, 8], n_heavy)
            n_h = int(rng.integers(max(8 - n_heavy, 1), 20 - n_heavy + 1))
            numbers = np.concatenate([heavy, np.ones(n_h, dtype=int)])
            n_conf = min(per_formula, n_frames - written)
            # atoms on a jittered grid with 1.4 Ang spacing: molecule-like densities
            grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) * 1.4
            sites = grid[rng.permutation(len(grid))[: len(numbers)]]
            positions = sites[None] + rng.normal(0, 0.1, (n_conf, len(numbers), 3))
            energy = sum(E0[int(z)] for z in numbers) + rng.normal(0, 0.5, n_conf)
            forces = rng.normal(0, 1.0, (n_conf, len(numbers), 3))
            w.add_conformers(numbers, positions, {LABELS: (energy, forces)})
            written += n_conf
    return n_frames / (time.perf_counter() - t0)


def _rss() -> dict:
    """Resident memory of this process in MB: anonymous and file-backed (from /proc)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def _children_rss() -> float:
    try:
        import psutil
    except ImportError:
        return float("nan")
    return sum(c.memory_info().rss for c in psutil.Process().children(recursive=True)) / 2**20


def measure(store: str, workers: int, batches: int, neighbor_list: str = "matscipy") -> dict:
    """One measurement (run in a fresh child process); returns the figures as a dict."""
    import torch
    from schnetpack import transform as T

    from spk_meta.data import TaskDataModule

    torch.set_num_threads(1)
    before = _rss()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        dm = TaskDataModule(
            {"t": f"{store}@{LABELS}"}, batch_size=BATCH, num_train=0.8, num_val=0.1, num_test=None,
            split_file=os.path.join(tmp, "splits.npz"), references_file=None, split_seed=0,
            transforms=[NEIGHBOR_LISTS[neighbor_list](cutoff=5.2), T.CastTo32()], num_workers=workers,
        )
        dm.setup("fit")
        t_setup = time.perf_counter() - t0
        after_setup = _rss()
        loader = dm.train_dataloader()
        batches = min(batches, len(loader) - 1)
        loader = iter(loader)
        next(loader)
        t_first = time.perf_counter() - t0
        t1 = time.perf_counter()
        n = 0
        for _ in range(batches):
            n += len(next(loader)["_n_atoms"])
        rate = n / (time.perf_counter() - t1)
        after = _rss()
        workers_rss = _children_rss()
        del loader
    return {
        "frames": len(dm.dataset["t"]), "workers": workers, "setup_s": t_setup, "first_batch_s": t_first,
        "samples_per_s": rate, "rss_before": before, "rss_setup": after_setup, "rss_after": after,
        "workers_rss_mb": workers_rss,
    }


#: --neighbor-list choices -> SchNetPack transform class name
NEIGHBOR_LISTS = {
    "matscipy": lambda **kw: __import__("schnetpack").transform.MatScipyNeighborList(**kw),
    "vesin": lambda **kw: __import__("schnetpack").transform.VesinNeighborList(**kw),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=240, help="training batches timed per run (at most an epoch)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "spkmeta-scale"))
    parser.add_argument("--neighbor-list", choices=sorted(NEIGHBOR_LISTS), default="matscipy",
                        help="SchNetPack neighbour-list transform (MatScipy: our configs' default)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.workers[0], args.batches, args.neighbor_list)))
        return

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPKMETA_CACHE": str(workdir / "cache")}
    rows = []
    for size in args.sizes:
        store = workdir / f"synthetic-{size}.spkstore"
        if not store.exists():
            rate = write_store(store, size)
            print(f"wrote {store.name}: {rate:,.0f} frames/s", flush=True)
        for w in args.workers:
            cmd = [sys.executable, __file__, "--measure", str(store), "--workers", str(w), "--batches", str(args.batches),
                   "--neighbor-list", args.neighbor_list]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"measurement failed for {size} frames, {w} workers:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["size"] = size
            rows.append(row)
            print(
                f"{size:>9,} frames  {w} workers  setup {row['setup_s']:6.2f} s  first batch {row['first_batch_s']:6.2f} s  "
                f"RSS after setup {row['rss_setup']['RssAnon']:6.0f} anon + {row['rss_setup']['RssFile']:5.0f} file MB  "
                f"after loading {row['rss_after']['RssAnon']:6.0f} + {row['rss_after']['RssFile']:5.0f} MB "
                f"(workers {row['workers_rss_mb']:5.0f} MB)  {row['samples_per_s']:7.0f} samples/s",
                flush=True,
            )

    def total(row):
        return row["rss_after"]["RssAnon"] + row["rss_after"]["RssFile"]

    zero = {r["size"]: r for r in rows if r["workers"] == min(args.workers)}
    small, large = zero[min(zero)], zero[max(zero)]
    print(f"ratio anon rss {max(zero)}/{min(zero)}: {large['rss_after']['RssAnon'] / small['rss_after']['RssAnon']:.2f}")
    print(f"ratio rss 1M/10k: {total(large) / total(small):.2f}")


if __name__ == "__main__":
    main()
