"""Fine-tune on the N target structures a Reptile-pre-trained committee disagrees on most,
and compare with the comparison's N random ones (issue #15, item 4).

Run it on a finished ethanol comparison, e.g. one made by
``spkmeta experiment --case ethanol --architectures ani --k 100 --n 25 --seeds 0,1,2 --out ethanol``::

    python examples/active_target_selection.py ethanol --k 100 --n 25 --seeds 0,1,2

It builds ``ethanol/active/committee`` from the seeds' ``pre_ani_k100_s*`` models, writes
``ethanol/runs/ft_ani_k100_n25_s<seed>_active`` (the same fine-tuning as the random run, on
the selected structures, with the same validation rows), evaluates them like the comparison
and prints the table it writes to ``ethanol/active/results.md`` (and ``results.csv``).
A rerun reuses finished runs. See docs/active_learning.md.
"""

import argparse
import sys

from spk_meta.active import EnsembleError
from spk_meta.experiment import OtherCase, OutputBusy, RunFailed
from spk_meta.experiment.active_target import ActiveTargetError, run_active_target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the comparison folder (spkmeta experiment --out)")
    parser.add_argument("--k", type=int, required=True, help="the Reptile k of the pre-trainings")
    parser.add_argument("--n", type=int, default=25, help="target structures per fine-tuning (default 25)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, at least 2 (default 0,1,2)")
    parser.add_argument("--architecture", default="ani", help="the model of the runs (default ani)")
    parser.add_argument("--device", default="cpu", help="where the committee scores the structures (default cpu)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    try:
        result = run_active_target(args.out, k=args.k, n=args.n, seeds=seeds, architecture=args.architecture,
                                   device=args.device)
    except (ActiveTargetError, EnsembleError, OtherCase, OutputBusy, RunFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.markdown)
    print("written: " + ", ".join(str(p) for p in result.paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
