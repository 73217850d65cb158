"""``spkmeta info``: installed versions and the configs spk-meta adds to ``spktrain``."""

import sys
from importlib.metadata import PackageNotFoundError, version

from spk_meta.configs_index import MissingConfigsError, shadowed_configs, spk_meta_configs

PACKAGES = ("spk-meta", "schnetpack", "torchani", "torch", "pytorch-lightning", "hydra-core", "ase")


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="print versions and the config groups spk-meta adds")
    p.set_defaults(run=run)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def run(args) -> int:
    print("versions:")
    for name in PACKAGES:
        print(f"  {name:<18} {_version(name)}")
    try:
        groups = spk_meta_configs()
        shadowed = shadowed_configs()
    except MissingConfigsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("config groups added to spktrain (use as `spktrain GROUP=NAME`):")
    for group, names in sorted(groups.items()):
        if group:
            print(f"  {group:<22} {', '.join(names)}")
    print("experiments: " + ", ".join(groups.get("experiment", [])))
    if shadowed:
        print(f"warning: these configs shadow SchNetPack's own: {', '.join(shadowed)}", file=sys.stderr)
        return 1
    return 0
