"""Active vs random selection of pre-training frames on the embedded multi-level data.

The query-by-committee loop of the seed paper's data curation (and of ANI-1x), on the
pre-training tasks of a case (``organic``: four levels of theory, each its own molecules;
``ethanol``: three levels, one molecule):

1. start from ``--n-start`` random frames of every task;
2. train a committee of ``--members`` models (``spkmeta ensemble``: ``spktrain`` runs that
   differ only in seed) on them;
3. add the ``--n-add`` frames per task the committee disagrees on most (largest per-atom
   force spread), or ``--n-add`` random ones, and retrain; ``--rounds`` times;
4. after every round, the test force RMSE on fixed held-out frames of every task.

Writes ``OUT/results.md``, ``results.csv`` and ``learning_curve.png`` (error vs frames per
task, active vs random, mean ± std over seeds). Rerunning the same command reuses every
finished training. See :mod:`spk_meta.experiment.active_pretraining` for the details and
``docs/active_learning.md`` for the tools it is built from.

    python examples/active_pretraining.py OUT --seeds 0 1 2                            # joint committees
    python examples/active_pretraining.py OUT2 --seeds 0 1 2 --experiment reptile_ani  # Reptile ones

(the README's table and figure: the defaults are its settings, organic case, 3 members,
16 + 3 x 16 frames per task, 1 000 steps; about 40 minutes each on 2 CPU cores). A quick
look, a few minutes:

    python examples/active_pretraining.py OUT --members 2 --rounds 1 --steps 200 --seeds 0
"""

import argparse
import sys

from spk_meta.experiment.active_pretraining import (
    STRATEGIES,
    ActivePretrainingError,
    LoopSettings,
    run_active_pretraining,
)
from spk_meta.experiment.launch import RunFailed
from spk_meta.experiment.runner import OutputBusy


def make_parser() -> argparse.ArgumentParser:
    d = LoopSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", help="output folder (rerunning the same command resumes it)")
    p.add_argument("--case", default=d.case, help="ethanol or organic: whose pre-training tasks")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one loop per seed (initial frames, members)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--members", type=int, default=d.members, help="committee size")
    p.add_argument("--rounds", type=int, default=d.rounds, help="selection rounds after the random start")
    p.add_argument("--n-start", type=int, default=d.n_start, help="random frames per task in round 0")
    p.add_argument("--n-add", type=int, default=d.n_add, help="frames added per task per round")
    p.add_argument("--n-val", type=int, default=d.n_val, help="fixed validation frames per task")
    p.add_argument("--n-test", type=int, default=d.n_test, help="fixed test frames per task (the curve)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimiser steps of every training")
    p.add_argument("--experiment", default=d.experiment, help="spktrain experiment of every member")
    p.add_argument("--criterion", default=d.criterion, help="force_spread (eV/Ang) or rho (eV/sqrt(atom))")
    p.add_argument("--stratify", default=d.stratify, help="none, elements or size (within each task)")
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="draws the fixed validation/test frames")
    p.add_argument("overrides", nargs="*", help="further spktrain overrides of every member, KEY=VALUE")
    return p


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    settings = LoopSettings(case=args.case, members=args.members, rounds=args.rounds, n_start=args.n_start,
                            n_add=args.n_add, n_val=args.n_val, n_test=args.n_test, steps=args.steps,
                            experiment=args.experiment, overrides=tuple(args.overrides), criterion=args.criterion,
                            stratify=args.stratify, split_seed=args.split_seed)
    try:
        result = run_active_pretraining(args.out, settings, seeds=args.seeds, strategies=args.strategies)
    except (ActivePretrainingError, OutputBusy) as err:
        print(f"active_pretraining: error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"active_pretraining: a training failed: {err}", file=sys.stderr)
        return 1
    print(result.markdown)
    print("wrote " + ", ".join(str(p) for p in result.paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
