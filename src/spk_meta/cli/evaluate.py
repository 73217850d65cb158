"""``spkmeta evaluate MODEL [FILE...] [--scans SCAN...]``: energy and force errors of a
trained model on labelled files, and the quality of its surface on labelled rigid scans."""

import json
import pickle
import sys
import warnings
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="energy/force RMSE and MAE of a best_model on labelled files, "
                       "and its curves on labelled scans (--scans)")
    p.add_argument("model", help="a SchNetPack best_model file (or a task's .ckpt)")
    p.add_argument("files", nargs="*", help="ASE-readable files with energies/forces, or task .db files "
                   "(optional with --scans; put them before --scans)")
    p.add_argument("--scans", nargs="+", default=[], metavar="SCAN",
                   help="labelled rigid scan files (extxyz with scan_coordinate, scan_kind, scan_atoms, "
                   "scan_unit in each frame's info): aligned RMSE, roughness ratio, spurious barriers "
                   "and plateau error against the file's energies")
    p.add_argument("--plot-dir", help="write one PNG per scan (model vs reference, dashed) into this folder")
    p.add_argument("--json", help="also write the numbers to this JSON file (failed files: their error; "
                   "scans under \"scans\")")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--trust", action="store_true",
        help="fully unpickle a model file that names code outside SchNetPack's model classes "
        "(it can run that code: only for files you trust)",
    )
    p.set_defaults(run=run)


def _cell(row: dict, key: str) -> str:
    """A number; ``n/a`` where it was refused (no energy reference, a torsion's plateau);
    ``-`` where the file has no such label."""
    if key not in row:
        return f"{'-':>10}"
    return f"{'n/a':>10}" if row[key] is None else f"{row[key]:10.4f}"


def _error_message(path, err: Exception) -> str:
    """``err`` naming ``path`` once (read_scan's errors already name it)."""
    if isinstance(err, ValueError) and str(err).startswith(str(path)):
        return str(err)
    return f"{path}: {err}" if isinstance(err, (ValueError, KeyError, OSError)) else \
        f"{path}: {type(err).__name__}: {err}"


def _plot_names(paths) -> dict:
    """``{path: png name}``: the scan's stem, numbered where two scans share one."""
    names, used = {}, set()
    for path in paths:
        stem, n = Path(path).stem, 1
        name = f"{stem}.png"
        while name in used:
            n += 1
            name = f"{stem}-{n}.png"
        used.add(name)
        names[path] = name
    return names


def score_scans(model, paths, batch_size: int, plot_dir=None) -> dict:
    """``{path: row}``: the scores of :func:`~spk_meta.evaluate.scan_scores.score_scan` with
    the scan's ``name``, ``kind`` and ``unit``, and ``plot`` where a PNG was written; a scan
    that fails is ``{"error": message}`` and the others go on."""
    from spk_meta.evaluate.scan_scores import predict_scan, read_scan, scan_figure, score_scan
    from spk_meta.utils import atomic_path

    rows, names = {}, _plot_names([str(p) for p in paths])
    for path in map(str, paths):
        try:
            scan = read_scan(path)
            energies = predict_scan(model, scan, batch_size)
            row = {"name": scan.name, "kind": scan.kind, "unit": scan.unit, **score_scan(scan, energies)}
            if plot_dir is not None:
                fig = scan_figure(scan, {"model": energies})
                with atomic_path(Path(plot_dir) / names[path], overwrite=True) as tmp:
                    fig.savefig(tmp, dpi=120)
                row["plot"] = str(Path(plot_dir) / names[path])
            rows[path] = row
        except Exception as err:  # noqa: BLE001 - any failure is this scan's: name it
            rows[path] = {"error": _error_message(path, err)}
    return rows


def _print_files(results: dict) -> None:
    print(f"{'file':<50} {'frames':>6} {'E RMSE':>10} {'E MAE':>10} {'F RMSE':>10} {'F MAE':>10}")
    for path, r in results.items():
        if "error" in r:
            print(f"{path[-50:]:<50} failed: see the error below")
            continue
        cells = [_cell(r, k) for k in ("energy_rmse", "energy_mae", "forces_rmse", "forces_mae")]
        print(f"{path[-50:]:<50} {r['n_frames']:>6} {' '.join(cells)}")
    print("units: energies eV, forces eV/Ang")


def _print_scans(scans: dict) -> None:
    print(f"{'scan':<40} {'kind':>8} {'points':>6} {'aligned':>10} {'roughness':>10} {'spurious':>8} "
          f"{'plateau':>10}")
    print(f"{'':<40} {'':>8} {'':>6} {'RMSE':>10} {'ratio':>10} {'barriers':>8} {'error':>10}")
    for path, r in scans.items():
        if "error" in r:
            print(f"{path[-40:]:<40} failed: see the error below")
            continue
        print(f"{r['name'][-40:]:<40} {r['kind']:>8} {r['n_points']:>6} {_cell(r, 'aligned_rmse')} "
              f"{_cell(r, 'roughness_ratio')} {r['spurious_barriers']:>8} {_cell(r, 'plateau_error')}")
    print("units: aligned RMSE and plateau error eV (curves aligned by their means; plateau: last point "
          "above the minimum, model minus reference); roughness ratio model/reference; "
          "plateau n/a for torsions")


def run(args) -> int:
    """Exit 0 if every file and scan was evaluated, 1 if some failed (the others are still
    printed and written), 2 if the model cannot be loaded or nothing was given."""
    from spk_meta.evaluate import evaluate, load_model
    from spk_meta.utils import atomic_path

    if not args.files and not args.scans:
        print("spkmeta evaluate: error: give labelled FILEs, --scans SCAN..., or both", file=sys.stderr)
        return 2
    try:
        model = load_model(args.model, trust=args.trust)
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as err:
        # no such file; NotAModelFile; UntrustedModelFile (says how to trust the file)
        print(f"spkmeta evaluate: error: {err}", file=sys.stderr)
        return 2
    results: dict = {}
    if args.files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # said below, once, in our words
            results = evaluate(model, args.files, batch_size=args.batch_size, errors="record")
        notes = {r["energy_note"] for r in results.values() if "energy_note" in r}
        for note in sorted(notes):
            print(f"spkmeta evaluate: WARNING: energy errors not reported (n/a): {note}", file=sys.stderr)
        _print_files(results)
    # Scan scores compare shapes along one composition: a constant offset (even a missing
    # energy reference) cancels in every score, so they are reported for any model.
    scans = score_scans(model, args.scans, args.batch_size, args.plot_dir) if args.scans else {}
    if scans:
        _print_scans(scans)
    for r in (*results.values(), *scans.values()):
        if "error" in r:
            print(f"spkmeta evaluate: error: {r['error']}", file=sys.stderr)
    if args.json:
        saved = dict(results)
        if args.scans:
            saved["scans"] = scans
        with atomic_path(args.json, overwrite=True) as tmp:
            tmp.write_text(json.dumps(saved, indent=1))
    failed = sum("error" in r for r in results.values())
    failed_scans = sum("error" in r for r in scans.values())
    if failed:
        print(f"spkmeta evaluate: {failed} of {len(results)} files failed", file=sys.stderr)
    if failed_scans:
        print(f"spkmeta evaluate: {failed_scans} of {len(scans)} scans failed", file=sys.stderr)
    return 1 if failed or failed_scans else 0
