"""Tables and plots of a comparison: mean ± std over seeds, k chosen on validation."""

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from spk_meta.utils import atomic_path

METRICS = ("energy_rmse", "energy_mae", "forces_rmse", "forces_mae")


def variant_label(k: Optional[int]) -> str:
    return "none" if k is None else ("k=1 (joint)" if k == 1 else f"Reptile k={k}")


def variant_order(k: Optional[int]) -> int:
    """Sort key of a pre-training variant: none, then k numerically (1, 10, 30, 100, 300)."""
    return -1 if k is None else k


def rows_from_runs(evaluated: Sequence[tuple]) -> List[Dict]:
    """``[(FinetuneRun, eval dict), ...]`` -> one row per run and temperature."""
    rows = []
    for run, ev in evaluated:
        val = (ev.get("val") or {}).get("forces_rmse", np.nan)
        for t, errs in ev["test"].items():
            rows.append({"architecture": run.architecture, "k": run.variant, "n": run.n, "seed": run.seed,
                         "T": int(t), "val_forces_rmse": val, **{m: errs.get(m, np.nan) for m in METRICS}})
    return rows


def choose_k(rows: List[Dict]) -> Dict[tuple, int]:
    """Per (architecture, N): the Reptile k (> 1) with the lowest mean validation force
    RMSE over seeds (validation frames come from the MP2 training file, never the tests)."""
    val = defaultdict(list)
    for r in rows:
        if r["k"] is not None and r["k"] > 1 and r["T"] == 300:
            val[(r["architecture"], r["n"], r["k"])].append(r["val_forces_rmse"])
    best: Dict[tuple, tuple] = {}
    for (arch, n, k), v in val.items():
        score = float(np.nanmean(v))
        if (arch, n) not in best or score < best[(arch, n)][1]:
            best[(arch, n)] = (k, score)
    return {key: k for key, (k, _) in best.items()}


def summarise(rows: List[Dict]) -> List[Dict]:
    """Mean and std over seeds per (architecture, variant, N, T), plus the k-selected rows."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["architecture"], r["k"], r["n"], r["T"])].append(r)
    chosen = choose_k(rows)
    out = []
    for (arch, k, n, t), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], variant_order(kv[0][1]), *kv[0][2:])):
        entry = {"architecture": arch, "pretraining": variant_label(k), "k": k, "n": n, "T": t, "seeds": len(rs),
                 "selected": chosen.get((arch, n)) == k}
        for m in METRICS:
            v = np.array([r[m] for r in rs], dtype=float)
            entry[m] = float(np.mean(v))
            entry[m + "_std"] = float(np.std(v)) if len(v) > 1 else 0.0
        out.append(entry)
    return out


def _write_csv(path: Path, rows: List[Dict]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(buf.getvalue())


def _cell(s: Dict, metric: str) -> str:
    """``mean ± std`` over seeds; the bare value when there is one seed (no spread to show)."""
    if s["seeds"] == 1:
        return f"{s[metric]:.4f}"
    return f"{s[metric]:.4f} ± {s[metric + '_std']:.4f}"


def markdown(summary: List[Dict]) -> str:
    """The summary as a Markdown table (values are mean ± std over seeds)."""
    lines = [
        "| model | pre-training | N | T (K) | energy RMSE (eV) | energy MAE (eV) | force RMSE (eV/Å) | force MAE (eV/Å) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        pre = s["pretraining"] + (" ← k chosen on validation" if s["selected"] else "")
        cells = [_cell(s, m) for m in METRICS]
        lines.append(f"| {s['architecture']} | {pre} | {s['n']} | {s['T']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _log_ticks(ax, values) -> None:
    """A log x axis labelled exactly at ``values`` (N or k), no minor labels."""
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(values)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _errorbar(ax, points, label):
    """One line with error bars from ``(x, mean, std)`` points (sorted by x)."""
    if not points:
        return None
    x, mean, std = map(np.array, zip(*sorted(points)))
    return ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves_figure(summary: List[Dict]):
    """Force RMSE vs N, one panel per (architecture, T), one line per pre-training variant
    (legend: none, then k in numerical order)."""
    plt = _pyplot()
    archs = sorted({s["architecture"] for s in summary})
    temps = sorted({s["T"] for s in summary})
    fig, axes = plt.subplots(len(archs), len(temps), figsize=(4 * len(temps), 3.2 * len(archs)), squeeze=False)
    for i, arch in enumerate(archs):
        variants = sorted({s["k"] for s in summary if s["architecture"] == arch}, key=variant_order)
        for j, t in enumerate(temps):
            ax = axes[i][j]
            for k in variants:
                _errorbar(ax, [(s["n"], s["forces_rmse"], s["forces_rmse_std"]) for s in summary
                               if s["architecture"] == arch and s["T"] == t and s["k"] == k], variant_label(k))
            _log_ticks(ax, {s["n"] for s in summary})
            ax.set_xlabel("MP2 training structures N")
            ax.set_ylabel("force RMSE (eV/Å)")
            ax.set_title(f"{arch}, MP2 test {t} K")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def error_vs_k_figure(summary: List[Dict]):
    """Force RMSE vs k, one panel per (architecture, N), one line per T; no pre-training as
    a dashed line."""
    plt = _pyplot()
    archs = sorted({s["architecture"] for s in summary})
    temps = sorted({s["T"] for s in summary})
    ns = sorted({s["n"] for s in summary})
    fig, axes = plt.subplots(len(archs), len(ns), figsize=(4 * len(ns), 3.2 * len(archs)), squeeze=False)
    for i, arch in enumerate(archs):
        for j, n in enumerate(ns):
            ax = axes[i][j]
            for t in temps:
                line = _errorbar(ax, [(s["k"], s["forces_rmse"], s["forces_rmse_std"]) for s in summary
                                      if s["architecture"] == arch and s["n"] == n and s["T"] == t
                                      and s["k"] is not None], f"{t} K")
                none = [s["forces_rmse"] for s in summary
                        if s["architecture"] == arch and s["n"] == n and s["T"] == t and s["k"] is None]
                if line is not None and none:
                    ax.axhline(none[0], ls="--", color=line[0].get_color(), lw=1)
            _log_ticks(ax, {s["k"] for s in summary if s["k"] is not None})
            ax.set_xlabel("k (inner steps; 1 = joint)")
            ax.set_ylabel("force RMSE (eV/Å)")
            ax.set_title(f"{arch}, N = {n} (dashed: no pre-training)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot(summary: List[Dict], root: Path) -> List[Path]:
    """``learning_curves.png`` and ``error_vs_k.png`` in ``root``, each written atomically."""
    plt = _pyplot()
    paths = []
    for name, build in (("learning_curves", learning_curves_figure), ("error_vs_k", error_vs_k_figure)):
        fig = build(summary)
        paths.append(Path(root) / f"{name}.png")
        with atomic_path(paths[-1], overwrite=True) as tmp:
            fig.savefig(tmp, dpi=120)
        plt.close(fig)
    return paths


def write_results(rows: List[Dict], root: Path) -> Dict[str, Path]:
    summary = summarise(rows)
    root = Path(root)
    _write_csv(root / "results_runs.csv", rows)
    _write_csv(root / "results.csv", summary)
    md = markdown(summary)
    with atomic_path(root / "results.md", overwrite=True) as tmp:
        tmp.write_text(md + "\n")
    paths = {"runs_csv": root / "results_runs.csv", "csv": root / "results.csv", "markdown": root / "results.md"}
    for p in plot(summary, root):
        paths[p.stem] = p
    return paths
