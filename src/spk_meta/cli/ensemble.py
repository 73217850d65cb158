"""``spkmeta ensemble EXPERIMENT --members M --out DIR [OVERRIDE ...]``: train a committee.

Member ``i`` is ``spktrain experiment=EXPERIMENT seed=<base-seed + i> OVERRIDE...`` in
``DIR/members/m<i>`` (log ``DIR/logs/m<i>.log``); when all have finished, ``DIR/ensemble.json``
lists their ``best_model`` files with SHA-256, seed, overrides, cutoff and elements. A rerun
reuses members that finished with the same settings, resumes interrupted ones and redoes
the others. See docs/active_learning.md.
"""

import sys


def _overrides_anywhere(parser) -> None:
    """Let Hydra overrides (``key=value``) stand before or after the options.

    argparse fills a ``nargs="*"`` positional from one run of positionals only, so
    ``EXPERIMENT --members 4 a=1`` would leave ``a=1`` unrecognised; the positionals it
    leaves over are appended to ``overrides`` instead (unknown options stay errors).
    """
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, extra = parse(args, namespace)
        ns.overrides = list(ns.overrides or []) + [a for a in extra if not a.startswith("-")]
        return ns, [a for a in extra if a.startswith("-")]

    parser.parse_known_args = parse_known_args


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ensemble",
        help="train M spktrain runs differing only in seed, recorded as one committee (ensemble.json)",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("experiment", help="spktrain experiment config, e.g. scratch_ani, finetune_ani")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides for every member, e.g. trainer.max_epochs=50 'data.num_train=100'")
    p.add_argument("--members", type=int, required=True, help="number of members (>= 2)")
    p.add_argument("--out", required=True, help="the ensemble folder")
    p.add_argument("--base-seed", type=int, default=0, help="member i trains with seed base-seed + i (default 0)")
    p.add_argument("--trust", action="store_true",
                   help="fully unpickle member models that name code outside SchNetPack's model classes")
    _overrides_anywhere(p)
    p.set_defaults(run=run)


def _error(message: str) -> None:
    print(f"spkmeta ensemble: error: {message}", file=sys.stderr)


def run(args) -> int:
    """Exit 0 when the manifest is written; 2 for bad input (before any training); 1 when
    a member failed or members disagree in cutoff/elements."""
    from spk_meta.active import EnsembleError, train_ensemble
    from spk_meta.active.manifest import read_manifest, symbols
    from spk_meta.active.train import check_overrides
    from spk_meta.experiment import OutputBusy, RunFailed

    try:
        if args.members < 2:
            raise EnsembleError(f"an ensemble needs at least 2 members, got --members {args.members}")
        check_overrides(args.overrides)
    except EnsembleError as err:
        _error(str(err))
        return 2
    try:
        manifest = train_ensemble(args.experiment, args.members, args.out, args.overrides,
                                  base_seed=args.base_seed, trust=args.trust)
    except (EnsembleError, RunFailed, OutputBusy) as err:
        _error(str(err))
        return 1
    except KeyboardInterrupt:
        _error("interrupted; rerun the same command to continue (finished members are reused)")
        return 130
    _, _, members = read_manifest(manifest)
    print(f"wrote {manifest}: {len(members)} members, cutoff {members[0].cutoff:g} Ang, "
          f"elements {symbols(members[0].elements)}")
    return 0
