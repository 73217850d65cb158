"""Memory and speed of ``spkmeta convert ani1x`` on a 100k-frame ANI-1x-layout file,
into SQLite databases (``--format db``, the default) and into a packed store
(``--format packed``), side by side.

Writes a synthetic file in the published ANI-1x layout (groups per formula, 1-32 heavy
atoms + H, ``coordinates`` float32, ``wb97x_dz.energy``/``.forces`` and
``ccsd(t)_cbs.energy`` with 70 % NaN, Hartree units), then runs the real command line
in a child process and reads its peak resident memory (``ru_maxrss`` of the child). For
bounded memory the peak must not grow with the number of frames: the script converts a
10 % prefix of the file too (``--max-frames``) and prints both. (The one thing that does grow
is the record behind the summary's outlier check: 12 bytes per written frame and level,
about 2 MB for this file; the packed path adds 8 bytes per frame and level to name the
first outlier's frame.) Frames/s count the whole command (start-up, the count pass, the
manifest) after the imports: the command's fixed start-up (importing torch, Lightning and
SchNetPack, 5-20 s on a busy machine) does not grow with the frames, and is printed apart
as the whole command's time. The last lines are

    db peak RSS 100k frames / 10k frames: X.XX
    packed peak RSS 100k frames / 10k frames: X.XX
    db convert: X frames/s
    packed convert: X frames/s

Measured on this 2-core machine (shared, ``nice``), 100k frames: db 3 735 frames/s, packed
245 259 frames/s after the imports (6.2 s for the whole command, 16 246 frames/s, most of it
importing torch); 1M frames, packed: 164 856 frames/s after the imports, 14.4 s in all
(69 663 frames/s), peak RSS 1.08x that of 100k frames.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/convert.py [--frames 100000] [--formats db,packed]
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
    """Run ``spkmeta convert ani1x SRC OUT EXTRA...`` in a child: (seconds of the whole
    command, seconds after the imports, peak RSS MiB, stdout)."""
    code = (
        "import resource, sys, time; from spk_meta.cli.main import main; import spk_meta.convert; "
        "t0 = time.perf_counter(); rc = main(sys.argv[1:]); print('ELAPSED', time.perf_counter() - t0); "
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
    converting = float(next(l for l in res.stdout.splitlines() if l.startswith("ELAPSED")).split()[1])
    return elapsed, converting, rss_kb / 1024, res.stdout.split("ELAPSED")[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--formats", default="db,packed", help="output formats to run, comma-separated")
    args = parser.parse_args()
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "ani1x-synthetic.h5"
        t0 = time.perf_counter()
        write_ani1x_layout(src, args.frames)
        print(f"wrote {args.frames} frames ({src.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
        rates = {}
        for fmt in formats:
            extra = ["--format", fmt]
            small_t, _, small_rss, _ = run_convert(src, Path(tmp) / f"small-{fmt}", [*extra, "--max-frames", str(args.frames // 10)])
            full_t, full_conv, full_rss, report = run_convert(src, Path(tmp) / f"full-{fmt}", extra)
            rates[fmt] = args.frames / full_conv
            print(f"--format {fmt}:")
            print(report.rstrip())
            print(f"{args.frames // 10} frames: {small_t:.1f} s, peak RSS {small_rss:.0f} MiB")
            print(f"{args.frames} frames: {full_t:.1f} s in all ({args.frames / full_t:.0f} frames/s), "
                  f"{full_conv:.1f} s after the imports ({rates[fmt]:.0f} frames/s), peak RSS {full_rss:.0f} MiB")
            rates[fmt + " ratio"] = full_rss / small_rss
        for fmt in formats:
            print(f"{fmt} peak RSS {args.frames // 1000}k frames / {args.frames // 10000}k frames: {rates[fmt + ' ratio']:.2f}")
        for fmt in formats:
            print(f"{fmt} convert: {rates[fmt]:.0f} frames/s")


if __name__ == "__main__":
    main()
