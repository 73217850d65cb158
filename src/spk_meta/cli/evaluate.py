"""``spkmeta evaluate MODEL FILE...``: energy and force errors of a trained model."""

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="energy/force RMSE and MAE of a best_model on labelled files")
    p.add_argument("model", help="a SchNetPack best_model file")
    p.add_argument("files", nargs="+", help="ASE-readable files with energies/forces, or task .db files")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(run=run)


def run(args) -> int:
    from spk_meta.evaluate import evaluate
    from spk_meta.utils import atomic_path

    try:
        results = evaluate(args.model, args.files, batch_size=args.batch_size)
    except (FileNotFoundError, ValueError) as err:
        print(f"spkmeta evaluate: error: {err}", file=sys.stderr)
        return 2
    print(f"{'file':<50} {'frames':>6} {'E RMSE':>10} {'E MAE':>10} {'F RMSE':>10} {'F MAE':>10}")
    for path, r in results.items():
        f_rmse = f"{r['forces_rmse']:10.4f}" if "forces_rmse" in r else f"{'-':>10}"
        f_mae = f"{r['forces_mae']:10.4f}" if "forces_mae" in r else f"{'-':>10}"
        print(f"{path[-50:]:<50} {r['n_frames']:>6} {r['energy_rmse']:10.4f} {r['energy_mae']:10.4f} {f_rmse} {f_mae}")
    print("units: energies eV, forces eV/Ang")
    if args.json:
        with atomic_path(args.json, overwrite=True) as tmp:
            tmp.write_text(json.dumps(results, indent=1))
    return 0
