"""``spkmeta experiment``: pre-training methods compared on an embedded case study."""

import sys
import time


def _ints(text):
    return tuple(int(x) for x in text.split(",")) if text else None


def add_parser(sub) -> None:
    from spk_meta.experiment.plan import CASES, METHODS

    p = sub.add_parser(
        "experiment",
        help="compare pre-training methods (none, joint, Reptile, multi-head, FOMAML, transfer) on an embedded case",
        description="Pre-train with each method on the case's levels of theory, fine-tune on N target (MP2) "
        "structures, evaluate on the target's test trajectories at 300/600/900 K (and, for the organic case, "
        "on rigid MP2 scans). Every method gets the same pre-training budget in inner optimiser steps; k is "
        "chosen on the target's validation frames. Every training is an `spktrain` run. Rerunning resumes: "
        "a run is reused only when its spktrain exited 0 with the same settings (recorded in "
        "runs/<name>/spkmeta_run.json); an interrupted run is resumed from its last checkpoint or redone, "
        "and the output says which. A failed run stops the comparison with its run directory and log.",
    )
    p.add_argument("--case", choices=sorted(CASES), default="ethanol",
                   help="ethanol: one molecule at every level (default); organic: many molecules at four "
                   "levels -> ethylamine at MP2, with scans")
    p.add_argument("--preset", choices=["quick", "full"], default="quick")
    p.add_argument("--out", help="output directory (runs, logs, tables, plots); default: experiment "
                   "(ethanol) or experiment_<case>")
    p.add_argument("--methods", help=f"comma-separated, from {','.join(METHODS)} (default: the preset's)")
    p.add_argument("--architectures", help="comma-separated: ani,painn,schnet")
    p.add_argument("--k", help="comma-separated Reptile inner steps, e.g. 10,30,100 (1 = the joint method)")
    p.add_argument("--fomaml-k", help="comma-separated FOMAML inner steps, e.g. 3,10")
    p.add_argument("--n", help="comma-separated numbers of target training structures, e.g. 25,100")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--pretrain-epochs", type=int, help="pre-training budget: passes' worth of inner steps")
    p.add_argument("--finetune-epochs", type=int)
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from spk_meta.experiment import (CASES, PRESETS, OtherCase, OutputBusy, Runner, RunFailed, claim_for_case,
                                     output_lock)

    ks = _ints(args.k)
    methods = tuple(args.methods.split(",")) if args.methods else None
    try:
        preset = PRESETS[args.preset].with_(
            architectures=tuple(args.architectures.split(",")) if args.architectures else None,
            methods=methods, ks=ks, fomaml_ks=_ints(args.fomaml_k), n_target=_ints(args.n),
            seeds=_ints(args.seeds), pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.finetune_epochs,
        )
    except ValueError as err:
        print(f"spkmeta experiment: error: {err}", file=sys.stderr)
        return 2
    case = CASES[args.case]
    root = Path(args.out or ("experiment" if case.name == "ethanol" else f"experiment_{case.name}"))
    if root.exists() and not root.is_dir():
        print(f"spkmeta experiment: error: --out {root} is a file, not a folder", file=sys.stderr)
        return 2
    try:
        with output_lock(root):
            claim_for_case(root, case)
            return _compare(args.preset, preset, root, Runner(root, preset, log=tqdm.write, case=case), tqdm)
    except (OutputBusy, OtherCase, RunFailed) as err:
        print(f"spkmeta experiment: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nspkmeta experiment: interrupted. Rerun the same command to continue: finished runs are "
              "reused, the interrupted one is resumed from its last checkpoint or redone.", file=sys.stderr)
        return 130


def _compare(name, preset, root, runner, tqdm) -> int:
    """Train, evaluate and tabulate every run of ``preset``; ``RunFailed`` stops at the first failure."""
    from spk_meta.experiment import expand, rows_from_runs, write_results

    pre, ft = expand(preset)
    case = runner.case
    print(f"spkmeta experiment ({case.name} case, {name}): {len(pre)} pre-training and {len(ft)} fine-tuning runs "
          f"({', '.join(v.tag for v in preset.variants())}) in {root.absolute()}")
    start = time.time()
    evaluated = []
    for run in tqdm(pre, desc="pre-training", unit="run"):
        runner.pretrain(run)
    for run in tqdm(ft, desc="fine-tuning + evaluation", unit="run"):
        runner.finetune(run)
        evaluated.append((run, runner.evaluate(run)))
    rows = rows_from_runs(evaluated)
    paths = write_results(rows, root, evaluated=evaluated, scans=runner.scans if case.scans else None)
    print(paths["markdown"].read_text())
    print(f"{time.time() - start:.0f} s; " + ", ".join(str(p) for p in paths.values()))
    return 0
