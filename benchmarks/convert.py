"""Memory and speed of ``spkmeta convert ani1x`` on a 100k-frame ANI-1x-layout file.

Writes a synthetic file in the published ANI-1x layout (groups per formula, 1-32 heavy
atoms + H, ``coordinates`` float32, ``wb97x_dz.energy``/``.forces`` and
``ccsd(t)_cbs.energy`` with 70 % NaN, Hartree units), then runs the real command line
in a child process and reads its peak resident memory (``ru_maxrss`` of the child). For
bounded memory the peak must not grow with the number of frames: the script converts a
10 % prefix of the file too (``--max-frames``) and prints both. (The one thing that does grow
is the record behind the summary's outlier check: 12 bytes per written frame and level,
about 2 MB for this file.) The last line is

    peak RSS 100k frames / 10k frames: X.XX

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/convert.py [--frames 100000]
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

HEAVY = (6, 7, 8)


def write_ani1x_layout(path: Path, n_frames: int, per_group: int = 500, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    written = 0
    with h5py.File(path, "w") as f:
        g = 0
        while written < n_frames:
            n_heavy = int(rng.integers(1, 9))
            z = np.concatenate([rng.choice(HEAVY, n_heavy), np.ones(2 * n_heavy + 2, dtype=int)])
            n = len(z)
            n_conf = min(per_group, n_frames - written)
            grp = f.create_group(f"mol{g:05d}")
            grp["atomic_numbers"] = z.astype(np.uint8)
            grp["coordinates"] = rng.normal(0, 1.5, (n_conf, n, 3)).astype(np.float32)
            grp["wb97x_dz.energy"] = rng.normal(-40 * n_heavy, 1, n_conf)
            grp["wb97x_dz.forces"] = rng.normal(0, 0.02, (n_conf, n, 3)).astype(np.float32)
            cc = rng.normal(-40 * n_heavy, 1, n_conf)
            cc[rng.random(n_conf) < 0.7] = np.nan
            grp["ccsd(t)_cbs.energy"] = cc
            written += n_conf
            g += 1


def run_convert(src: Path, out: Path, extra=()) -> tuple:
    code = (
        "import resource, sys; from spk_meta.cli.main import main; rc = main(sys.argv[1:]); "
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", code, "convert", "ani1x", str(src), str(out), "--no-progress", *extra],
        capture_output=True, text=True,
    )
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    rss_kb = int(next(l for l in res.stdout.splitlines() if l.startswith("MAXRSS")).split()[1])
    return elapsed, rss_kb / 1024, res.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "ani1x-synthetic.h5"
        t0 = time.perf_counter()
        write_ani1x_layout(src, args.frames)
        print(f"wrote {args.frames} frames ({src.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
        small_t, small_rss, _ = run_convert(src, Path(tmp) / "small", ["--max-frames", str(args.frames // 10)])
        full_t, full_rss, report = run_convert(src, Path(tmp) / "full")
        print(report.split("MAXRSS")[0].rstrip())
        print(f"{args.frames // 10} frames: {small_t:.0f} s, peak RSS {small_rss:.0f} MiB")
        print(f"{args.frames} frames: {full_t:.0f} s ({args.frames / full_t:.0f} frames/s), peak RSS {full_rss:.0f} MiB")
        print(f"peak RSS {args.frames // 1000}k frames / {args.frames // 10000}k frames: {full_rss / small_rss:.2f}")


if __name__ == "__main__":
    main()
