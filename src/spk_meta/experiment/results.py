"""Tables and plots of a comparison: mean ± std over seeds, k chosen on validation.

Rows carry ``method`` (see :data:`spk_meta.experiment.plan.METHODS`) and ``k`` (``None``
for no pre-training, 1 for methods without inner steps).
"""

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from spk_meta.experiment.plan import METHODS, METHODS_WITH_K
from spk_meta.utils import atomic_path

METRICS = ("energy_rmse", "energy_mae", "forces_rmse", "forces_mae")
#: per-scan scores (spk_meta.evaluate.scan_scores.SCAN_METRICS) in the scan table
SCAN_COLUMNS = ("aligned_rmse", "roughness_ratio", "spurious_barriers", "plateau_error")


def variant_label(method: str, k: Optional[int] = None) -> str:
    """Table/legend name of a pre-training variant."""
    return {"none": "none", "joint": "k=1 (joint)", "reptile": f"Reptile k={k}", "multihead": "multi-head",
            "fomaml": f"FOMAML k={k}", "transfer": "transfer (one dataset)"}[method]


def variant_order(method: str, k: Optional[int] = None) -> tuple:
    """Sort key of a variant: methods in :data:`METHODS` order, k numerically within one."""
    return METHODS.index(method), -1 if k is None else k


def rows_from_runs(evaluated: Sequence[tuple]) -> List[Dict]:
    """``[(FinetuneRun, eval dict), ...]`` -> one row per run and temperature."""
    rows = []
    for run, ev in evaluated:
        val = (ev.get("val") or {}).get("forces_rmse", np.nan)
        for t, errs in ev["test"].items():
            rows.append({"architecture": run.architecture, "method": run.variant.method, "k": run.variant.legacy_k,
                         "n": run.n, "seed": run.seed, "T": int(t), "val_forces_rmse": val,
                         **{m: errs.get(m, np.nan) for m in METRICS}})
    return rows


def choose_ks(rows: List[Dict]) -> Dict[tuple, int]:
    """Per (architecture, N, method with a k): the k with the lowest mean validation force
    RMSE over seeds (validation frames come from the target's training file, never the
    tests)."""
    val = defaultdict(list)
    first_t = min((r["T"] for r in rows), default=None)  # one row per run: validation repeats per T
    for r in rows:
        if r["method"] in METHODS_WITH_K and r["T"] == first_t:
            val[(r["architecture"], r["n"], r["method"], r["k"])].append(r["val_forces_rmse"])
    best: Dict[tuple, tuple] = {}
    for (arch, n, method, k), v in val.items():
        score = float(np.nanmean(v))
        if (arch, n, method) not in best or score < best[(arch, n, method)][1]:
            best[(arch, n, method)] = (k, score)
    return {key: k for key, (k, _) in best.items()}


def choose_k(rows: List[Dict]) -> Dict[tuple, int]:
    """Per (architecture, N): the Reptile k chosen on validation (:func:`choose_ks`)."""
    return {(a, n): k for (a, n, m), k in choose_ks(rows).items() if m == "reptile"}


def _mean_std(values) -> tuple:
    v = np.array(values, dtype=float)
    return float(np.mean(v)), (float(np.std(v)) if len(v) > 1 else 0.0)


def _summarise(rows: List[Dict], place: str, metrics: Sequence[str], chosen: Dict[tuple, int],
               place_first: bool) -> List[Dict]:
    """Mean and std over seeds of ``metrics`` per (architecture, variant, N, ``place``),
    ``place`` being ``T`` or ``scan``; ``selected`` marks the k in ``chosen``. Sorted by
    architecture, then variant and N (``place`` last, or first with ``place_first``)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["architecture"], r["method"], r["k"], r["n"], r[place])].append(r)

    def order(key):
        arch, method, k, n, where = key
        return (arch, where, variant_order(method, k), n) if place_first else (arch, variant_order(method, k), n, where)

    out = []
    for key in sorted(groups, key=order):
        arch, method, k, n, where = key
        entry = {"architecture": arch, "pretraining": variant_label(method, k), "method": method, "k": k, "n": n,
                 place: where, "seeds": len(groups[key]),
                 "selected": method in METHODS_WITH_K and chosen.get((arch, n, method)) == k}
        for m in metrics:
            entry[m], entry[m + "_std"] = _mean_std([r[m] for r in groups[key]])
        out.append(entry)
    return out


def summarise(rows: List[Dict]) -> List[Dict]:
    """Mean and std over seeds per (architecture, variant, N, T), plus the k-selected rows."""
    return _summarise(rows, "T", METRICS, choose_ks(rows), place_first=False)


def scan_rows_from_runs(evaluated: Sequence[tuple]) -> List[Dict]:
    """``[(FinetuneRun, eval dict), ...]`` -> one row per run and scan (runs without scans
    give none)."""
    rows = []
    for run, ev in evaluated:
        for scan, scores in (ev.get("scans") or {}).items():
            rows.append({"architecture": run.architecture, "method": run.variant.method, "k": run.variant.legacy_k,
                         "n": run.n, "seed": run.seed, "scan": scan,
                         **{m: (np.nan if scores.get(m) is None else scores[m]) for m in SCAN_COLUMNS}})
    return rows


def summarise_scans(scan_rows: List[Dict], rows: List[Dict]) -> List[Dict]:
    """Mean and std over seeds of each scan score per (architecture, variant, N, scan);
    ``selected`` marks the k chosen on validation (from the error ``rows``)."""
    return _summarise(scan_rows, "scan", SCAN_COLUMNS, choose_ks(rows), place_first=True)


def write_csv(path: Path, rows: List[Dict]) -> None:
    """``rows`` (dicts with the same keys) as CSV at ``path``, atomically; nothing if empty."""
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(buf.getvalue())


def write_csv_and_markdown(out_dir: Path, rows: List[Dict], text: str) -> List[Path]:
    """``out_dir/results.csv`` (``rows``) and ``out_dir/results.md`` (``text``), atomically."""
    out_dir = Path(out_dir)
    write_csv(out_dir / "results.csv", rows)
    with atomic_path(out_dir / "results.md", overwrite=True) as tmp:
        tmp.write_text(text)
    return [out_dir / "results.csv", out_dir / "results.md"]


def _cell(s: Dict, metric: str, digits: int = 4) -> str:
    """``mean ± std`` over seeds; the bare value when there is one seed (no spread to
    show); ``–`` where the metric does not apply (NaN)."""
    if not np.isfinite(s[metric]):
        return "–"
    if s["seeds"] == 1:
        return f"{s[metric]:.{digits}f}"
    return f"{s[metric]:.{digits}f} ± {s[metric + '_std']:.{digits}f}"


def _table(summary: List[Dict], place: str, columns: Dict[str, tuple]) -> str:
    """A Markdown table: model, pre-training (k choice marked), N, the ``place`` key (T or
    scan), then ``columns`` (``{metric: (header, digits)}``)."""
    heads = {"T": "T (K)", "scan": "scan"}
    lines = ["| model | pre-training | N | " + heads[place] + " | "
             + " | ".join(h for h, _ in columns.values()) + " |",
             "|" + "---|" * (4 + len(columns))]
    for s in summary:
        pre = s["pretraining"] + (" ← k chosen on validation" if s["selected"] else "")
        cells = [_cell(s, m, digits) for m, (_, digits) in columns.items()]
        lines.append(f"| {s['architecture']} | {pre} | {s['n']} | {s[place]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(summary: List[Dict]) -> str:
    """The summary as a Markdown table (values are mean ± std over seeds)."""
    return _table(summary, "T", {"energy_rmse": ("energy RMSE (eV)", 4), "energy_mae": ("energy MAE (eV)", 4),
                                 "forces_rmse": ("force RMSE (eV/Å)", 4), "forces_mae": ("force MAE (eV/Å)", 4)})


def markdown_scans(scan_summary: List[Dict]) -> str:
    """Scan scores as a Markdown table (mean ± std over seeds): the aligned curve RMSE,
    roughness relative to the reference, spurious barriers, dissociation plateau error
    (stretches only)."""
    return _table(scan_summary, "scan", {
        "aligned_rmse": ("curve RMSE, means aligned (eV)", 4), "roughness_ratio": ("roughness / reference", 2),
        "spurious_barriers": ("spurious barriers", 2), "plateau_error": ("plateau error (eV)", 4)})


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
        variants = sorted({(s["method"], s["k"]) for s in summary if s["architecture"] == arch},
                          key=lambda v: variant_order(*v))
        for j, t in enumerate(temps):
            ax = axes[i][j]
            for method, k in variants:
                _errorbar(ax, [(s["n"], s["forces_rmse"], s["forces_rmse_std"]) for s in summary
                               if s["architecture"] == arch and s["T"] == t and (s["method"], s["k"]) == (method, k)],
                          variant_label(method, k))
            _log_ticks(ax, {s["n"] for s in summary})
            ax.set_xlabel("target training structures N")
            ax.set_ylabel("force RMSE (eV/Å)")
            ax.set_title(f"{arch}, target test {t} K")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def error_vs_k_figure(summary: List[Dict]):
    """Force RMSE vs k of joint training (k = 1) and Reptile, one panel per (architecture,
    N), one line per T; no pre-training as a dashed line."""
    plt = _pyplot()
    summary = [s for s in summary if s["method"] in ("none", "joint", "reptile")]
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


def _aligned_curves(evaluated: Sequence[tuple], key: str, arch: str, n: int) -> Dict[tuple, np.ndarray]:
    """``{(method, k): (seeds, points)}`` scan energies of the runs with ``arch`` and ``n``,
    each seed's curve shifted to zero mean (eV)."""
    curves = defaultdict(list)
    for run, ev in evaluated:
        energies = ((ev.get("scans") or {}).get(key) or {}).get("energies")
        if energies is not None and run.architecture == arch and run.n == n:
            e = np.asarray(energies, dtype=float)
            curves[(run.variant.method, run.variant.legacy_k)].append(e - e.mean())
    return {v: np.stack(c) for v, c in curves.items()}


def scan_comparison_figure(scan, key: str, evaluated: Sequence[tuple], chosen: Dict[tuple, int]):
    """One scan against its reference: one panel per (architecture, N), one line per
    variant (for Reptile and FOMAML only the k chosen on validation) with the mean over
    seeds and a band of ± one std; each curve and the reference (dashed black) are shifted
    to zero mean, as the aligned RMSE compares them."""
    plt = _pyplot()
    panels = sorted({(run.architecture, run.n) for run, ev in evaluated if key in (ev.get("scans") or {})})
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.4), squeeze=False)
    x = np.asarray(scan.coordinate, dtype=float)
    ref = np.asarray(scan.reference, dtype=float)
    for ax, (arch, n) in zip(axes[0], panels):
        curves = _aligned_curves(evaluated, key, arch, n)
        for (method, k) in sorted(curves, key=lambda v: variant_order(*v)):
            if method in METHODS_WITH_K and chosen.get((arch, n, method)) != k:
                continue
            c = curves[(method, k)]
            line, = ax.plot(x, c.mean(0), label=variant_label(method, k), lw=1.3)
            if len(c) > 1:
                ax.fill_between(x, c.mean(0) - c.std(0), c.mean(0) + c.std(0), color=line.get_color(), alpha=0.15)
        ax.plot(x, ref - ref.mean(), "k--", lw=1.6, label="reference (MP2)")
        ax.set_xlabel(f"{scan.kind} coordinate ({scan.unit})")
        ax.set_ylabel("energy − curve mean (eV)")
        ax.set_title(f"{key.removeprefix('scan_')}: {arch}, N = {n}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_results(rows: List[Dict], root: Path, evaluated: Optional[Sequence[tuple]] = None,
                  scans: Optional[Dict[str, object]] = None) -> Dict[str, Path]:
    """Tables (CSV, Markdown) and figures of a comparison in ``root``, each written atomically.

    Args:
        rows: :func:`rows_from_runs` of the evaluated runs.
        evaluated: ``[(FinetuneRun, eval dict), ...]``; with ``scans``, their scan scores
            and curves.
        scans: ``{dataset key: LabelledScan}`` of the case's reference scans (the scan
            table, ``results_scans.csv`` and one ``scan_<name>.png`` per scan).
    """
    summary = summarise(rows)
    root = Path(root)
    write_csv(root / "results_runs.csv", rows)
    write_csv(root / "results.csv", summary)
    md = markdown(summary)
    paths = {"runs_csv": root / "results_runs.csv", "csv": root / "results.csv", "markdown": root / "results.md"}
    if scans and evaluated:
        scan_rows = scan_rows_from_runs(evaluated)
        scan_summary = summarise_scans(scan_rows, rows)
        write_csv(root / "results_scans_runs.csv", scan_rows)
        write_csv(root / "results_scans.csv", scan_summary)
        md += "\n\n" + markdown_scans(scan_summary)
        paths.update(scans_csv=root / "results_scans.csv", scans_runs_csv=root / "results_scans_runs.csv")
        plt = _pyplot()
        chosen = choose_ks(rows)
        for key, scan in scans.items():
            fig = scan_comparison_figure(scan, key, evaluated, chosen)
            path = root / f"{key}.png"
            with atomic_path(path, overwrite=True) as tmp:
                fig.savefig(tmp, dpi=120)
            plt.close(fig)
            paths[key] = path
    with atomic_path(root / "results.md", overwrite=True) as tmp:
        tmp.write_text(md + "\n")
    for p in plot(summary, root):
        paths[p.stem] = p
    return paths
