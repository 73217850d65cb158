"""``spkmeta experiment``: no pre-training vs k = 1 vs Reptile on the embedded ethanol data."""

import sys
import time


def _ints(text):
    return tuple(int(x) for x in text.split(",")) if text else None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "experiment",
        help="run the Reptile-vs-baselines comparison on the embedded ethanol data",
        description="Pre-train (none, k=1, Reptile for each k) on the three embedded levels, fine-tune "
        "on N MP2 structures, evaluate on the MP2 test frames at 300/600/900 K; every training "
        "is an `spktrain` run. Rerunning resumes: a run is reused only when its spktrain exited 0 "
        "with the same settings (recorded in runs/<name>/spkmeta_run.json); an interrupted run is "
        "resumed from its last checkpoint or redone, and the output says which. A failed run stops "
        "the comparison with its run directory and log.",
    )
    p.add_argument("--preset", choices=["quick", "full"], default="quick")
    p.add_argument("--out", default="experiment", help="output directory (runs, logs, tables, plots)")
    p.add_argument("--architectures", help="comma-separated: ani,painn,schnet")
    p.add_argument("--k", help="comma-separated inner steps (1 = joint training), e.g. 1,10,30,100,300")
    p.add_argument("--n", help="comma-separated numbers of MP2 training structures, e.g. 25,100")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--pretrain-epochs", type=int)
    p.add_argument("--finetune-epochs", type=int)
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from spk_meta.experiment import PRESETS, OutputBusy, Runner, RunFailed, output_lock

    preset = PRESETS[args.preset].with_(
        architectures=tuple(args.architectures.split(",")) if args.architectures else None,
        ks=_ints(args.k), n_target=_ints(args.n), seeds=_ints(args.seeds),
        pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.finetune_epochs,
    )
    root = Path(args.out)
    if root.exists() and not root.is_dir():
        print(f"spkmeta experiment: error: --out {root} is a file, not a folder", file=sys.stderr)
        return 2
    try:
        with output_lock(root):
            return _compare(args.preset, preset, root, Runner(root, preset, log=tqdm.write), tqdm)
    except (OutputBusy, RunFailed) as err:
        print(f"spkmeta experiment: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nspkmeta experiment: interrupted. Rerun the same command to continue: finished runs are "
              "reused, the interrupted one is resumed from its last checkpoint or redone.", file=sys.stderr)
        return 130


def _compare(name, preset, root, runner, tqdm) -> int:
    """Train, evaluate and tabulate every run of ``preset``; ``RunFailed`` stops at the first failure."""
    from spk_meta.experiment import expand, markdown, rows_from_runs, summarise, write_results

    pre, ft = expand(preset)
    print(f"spkmeta experiment ({name}): {len(pre)} pre-training and {len(ft)} fine-tuning runs in {root.absolute()}")
    start = time.time()
    evaluated = []
    for run in tqdm(pre, desc="pre-training", unit="run"):
        runner.pretrain(run)
    for run in tqdm(ft, desc="fine-tuning + evaluation", unit="run"):
        runner.finetune(run)
        evaluated.append((run, runner.evaluate(run)))
    rows = rows_from_runs(evaluated)
    paths = write_results(rows, root)
    print(markdown(summarise(rows)))
    print(f"\n{time.time() - start:.0f} s; " + ", ".join(str(p) for p in paths.values()))
    return 0
