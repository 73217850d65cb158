"""``spkmeta``: one command-line tool with subcommands."""

import argparse
import os
import sys
from typing import List, Optional

from spk_meta.cli import convert, ensemble, evaluate, experiment, info, predict, select


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spkmeta",
        description="spk-meta: multi-fidelity meta-learning for SchNetPack. "
        "Training itself runs through SchNetPack's own `spktrain experiment=...`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    info.add_parser(sub)
    convert.add_parser(sub)
    evaluate.add_parser(sub)
    predict.add_parser(sub)
    experiment.add_parser(sub)
    ensemble.add_parser(sub)
    select.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")  # we never use its CUDA extensions
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
