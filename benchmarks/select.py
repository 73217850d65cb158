"""``spkmeta select`` on a synthetic pool: frames/s and peak memory of the streaming selection.

Builds, in ``--workdir`` (default: a temporary folder, removed afterwards):

- a synthetic ANI-1x-like packed store of ``--frames`` frames (C/H/N/O, 8-20 atoms,
  conformers jittered around a grid, grouped by formula; ``benchmarks/scale.py``'s
  ``write_store``, through :class:`~spk_meta.data.store.StoreWriter`);
- a two-member ensemble of untrained ANI models (ANI-1x AEVs and element networks, the
  ``model=ani`` architecture; ``--tiny`` shrinks the networks to 16-16-1) saved as model
  files with an ``ensemble.json``.

Then, in a fresh child process, :func:`spk_meta.active.select` scores every frame
(``--criterion``, default rho: energies only) and writes the top ``--select-fraction``
(default 1 %) as a new store. Printed: the time to score and write, frames/s over the
whole call, peak RSS (``ru_maxrss``) and the resident memory at the end split into
anonymous (what the process owns) and file-backed (libraries and memory-mapped store
pages), and the RSS once torch and the models are loaded, before any frame is read. The
last line is ``select 1M frames: X frames/s`` (with the actual count for other sizes).

Usage::

    nice -n 10 .venv/bin/python benchmarks/select.py [--frames 1000000] [--batch-size 256]
"""

import os
import sys

# this file is named like the standard library's `select`, which subprocess imports: take its
# folder off the import path before anything imports it
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def _scale_benchmark():
    """benchmarks/scale.py as a module (its synthetic store writer)."""
    spec = importlib.util.spec_from_file_location("benchmark_scale", os.path.join(HERE, "scale.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_ensemble(folder: Path, tiny: bool) -> Path:
    """Two untrained ANI NNPs (seeds 0, 1) as model files and a manifest."""
    import torch
    from schnetpack.atomistic import Forces, PairwiseDistances
    from schnetpack.model import NeuralNetworkPotential
    from schnetpack.transform import AddOffsets, CastTo64

    from spk_meta.active import ensemble_from_models
    from spk_meta.atomistic import ElementwiseAtomwise
    from spk_meta.representation import ANI

    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        rep = ANI(preset="ani1x")
        hidden = {s: (16, 16) for s in ("H", "C", "N", "O")} if tiny else None
        model = NeuralNetworkPotential(
            representation=rep, input_modules=[PairwiseDistances()],
            output_modules=[ElementwiseAtomwise(n_in=rep.n_atom_basis, preset="ani1x", hidden=hidden), Forces()],
            postprocessors=[CastTo64(), AddOffsets("energy", add_mean=True, property_mean=torch.tensor(-100.0))],
        )
        files.append(folder / f"member{seed}.pt")
        torch.save(model, files[-1])
    return ensemble_from_models(files, folder / "ensemble", seeds=[0, 1], overwrite=True)


def _rss_mb() -> dict:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


def child(args) -> None:
    """Run the selection once and print its figures as JSON (fresh process: clean RSS)."""
    import torch

    from spk_meta.active import load_ensemble, select

    if args.threads:
        torch.set_num_threads(args.threads)
    ensemble = load_ensemble(args.ensemble)
    loaded = _rss_mb()  # torch, SchNetPack and the models: before any frame is read
    t0 = time.perf_counter()
    result = select(ensemble, args.store, args.out, n=args.n, criterion=args.criterion,
                    batch_size=args.batch_size, overwrite=True, progress=args.progress)
    wall = time.perf_counter() - t0
    print(json.dumps({"frames": result.n_pool, "selected": len(result.source_index), "wall_s": wall,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "threads": torch.get_num_threads(), "loaded_mb": loaded["RssAnon"] + loaded["RssFile"],
                      **_rss_mb()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--criterion", choices=["rho", "force_spread"], default="rho")
    p.add_argument("--select-fraction", type=float, default=0.01)
    p.add_argument("--tiny", action="store_true", help="16-16-1 element networks instead of ANI-1x's")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--workdir", help="keep the store and ensemble here (reused when the size matches)")
    p.add_argument("--progress", action="store_true")
    # internal: the measured child
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--ensemble", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    write_store = _scale_benchmark().write_store
    from spk_meta.data.store import PackedStore, StoreError

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = work / f"pool_{args.frames}.spkstore"
        try:
            reuse = len(PackedStore(store)) == args.frames
        except StoreError:
            reuse = False
        if not reuse:
            rate = write_store(store, args.frames)
            print(f"wrote {store} ({args.frames} frames, {rate:,.0f} frames/s)")
        ensemble = build_ensemble(work, args.tiny)
        n = max(1, int(args.frames * args.select_fraction))
        cmd = [sys.executable, __file__, "--child", "--store", str(store), "--ensemble", str(ensemble),
               "--out", str(work / "selected.spkstore"), "--n", str(n), "--batch-size", str(args.batch_size),
               "--criterion", args.criterion, "--threads", str(args.threads)]
        cmd += ["--progress"] if args.progress else []
        # stdout: the child's JSON; stderr (progress bar, warnings) shown only with --progress
        out = subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE,
                             stderr=None if args.progress else subprocess.DEVNULL)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    rate = r["frames"] / r["wall_s"]
    print(f"scored {r['frames']} frames ({args.criterion}, 2 ANI members{' (tiny)' if args.tiny else ''}, "
          f"batch {args.batch_size}, {r['threads']} threads) and wrote the top {r['selected']} in {r['wall_s']:.1f} s")
    print(f"peak RSS {r['peak_rss_mb']:.0f} MB ({r['loaded_mb']:.0f} MB with torch and the models loaded, "
          f"before any frame); at the end {r['RssAnon']:.0f} MB anonymous + {r['RssFile']:.0f} MB file-backed")
    size = "1M" if r["frames"] == 1_000_000 else str(r["frames"])
    print(f"select {size} frames: {rate:.0f} frames/s")


if __name__ == "__main__":
    main()
