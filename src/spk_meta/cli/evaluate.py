"""``spkmeta evaluate MODEL FILE...``: energy and force errors of a trained model."""

import json
import pickle
import sys
import warnings


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="energy/force RMSE and MAE of a best_model on labelled files")
    p.add_argument("model", help="a SchNetPack best_model file (or a task's .ckpt)")
    p.add_argument("files", nargs="+", help="ASE-readable files with energies/forces, or task .db files")
    p.add_argument("--json", help="also write the numbers to this JSON file (failed files: their error)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--trust", action="store_true",
        help="fully unpickle a model file that names code outside SchNetPack's model classes "
        "(it can run that code: only for files you trust)",
    )
    p.set_defaults(run=run)


def _cell(row: dict, key: str) -> str:
    """A number; ``n/a`` where it was refused (no energy reference); ``-`` where the file
    has no such label."""
    if key not in row:
        return f"{'-':>10}"
    return f"{'n/a':>10}" if row[key] is None else f"{row[key]:10.4f}"


def run(args) -> int:
    """Exit 0 if every file was evaluated, 1 if some failed (the others are still printed
    and written), 2 if the model cannot be loaded."""
    from spk_meta.evaluate import evaluate, load_model
    from spk_meta.utils import atomic_path

    try:
        model = load_model(args.model, trust=args.trust)
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as err:
        # no such file; NotAModelFile; UntrustedModelFile (says how to trust the file)
        print(f"spkmeta evaluate: error: {err}", file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # said below, once, in our words
        results = evaluate(model, args.files, batch_size=args.batch_size, errors="record")
    notes = {r["energy_note"] for r in results.values() if "energy_note" in r}
    for note in sorted(notes):
        print(f"spkmeta evaluate: WARNING: energy errors not reported (n/a): {note}", file=sys.stderr)
    print(f"{'file':<50} {'frames':>6} {'E RMSE':>10} {'E MAE':>10} {'F RMSE':>10} {'F MAE':>10}")
    failed = 0
    for path, r in results.items():
        if "error" in r:
            failed += 1
            print(f"{path[-50:]:<50} failed: see the error below")
            continue
        cells = [_cell(r, k) for k in ("energy_rmse", "energy_mae", "forces_rmse", "forces_mae")]
        print(f"{path[-50:]:<50} {r['n_frames']:>6} {' '.join(cells)}")
    print("units: energies eV, forces eV/Ang")
    for r in results.values():
        if "error" in r:
            print(f"spkmeta evaluate: error: {r['error']}", file=sys.stderr)
    if args.json:
        with atomic_path(args.json, overwrite=True) as tmp:
            tmp.write_text(json.dumps(results, indent=1))
    if failed:
        print(f"spkmeta evaluate: {failed} of {len(results)} files failed", file=sys.stderr)
    return 1 if failed else 0
