"""``spkmeta select ENSEMBLE --from POOL (--n N | --threshold X) --out OUT``: pick the frames a
committee disagrees on most and write them as a new task.

The pool (``--from``) is a packed store (``spkmeta convert --format packed``) or a
SchNetPack ASE database; every frame is scored in batches and the selection is written as
the same kind (store folder, or ``.db``), atomically, with the source indices, criterion and
ensemble hash in its metadata. With ``--label METHOD/BASIS`` the chosen frames are labelled
anew with PySCF single points (the ``datagen`` extra) and written with only those labels;
the level is checked against the pool's elements before anything is scored, and a killed
labelling continues on a rerun of the same command. See docs/active_learning.md.
"""

import pickle
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "select",
        help="select the frames of a store/database an ensemble disagrees on most, as a new task",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("ensemble", help="ensemble.json or its folder (spkmeta ensemble)")
    p.add_argument("--from", dest="source", required=True, metavar="STORE_OR_DB",
                   help="the pool: a packed store folder or an ASE .db")
    p.add_argument("--labels", help="(stores) only frames labelled in this label set; only it is written")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--n", type=int, help="number of frames to select")
    how.add_argument("--threshold", type=float,
                     help="select every frame scoring above this (rho: eV/sqrt(atom), force_spread: eV/Ang)")
    p.add_argument("--out", required=True, help="output: a store folder (store pool) or a .db (database pool)")
    p.add_argument("--criterion", choices=["rho", "force_spread"], default="rho",
                   help="rho: sigma_E/sqrt(N_atoms) (default); force_spread: largest per-atom force spread")
    p.add_argument("--stratify", choices=["none", "elements", "size"], default="none",
                   help="share the committee's frames over groups (element set, or atom count) in proportion "
                        "to their share of the pool (with --n)")
    p.add_argument("--random-fraction", type=float, default=0.0,
                   help="fraction of the output drawn uniformly from the frames not picked (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="frames per model call (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random fraction (default 0)")
    p.add_argument("--label", metavar="METHOD/BASIS",
                   help="label the selected frames with PySCF at this level (HF, MP2 or a libxc functional, e.g. "
                        "'MP2/6-31g*'; energies eV, forces eV/Ang) and write only these labels; frames whose "
                        "single point fails are dropped")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (and, with --label, partial labels of another selection)")
    p.add_argument("--device", default="cpu", help="torch device of the models (default cpu)")
    p.add_argument("--trust", action="store_true",
                   help="fully unpickle member models that name code outside SchNetPack's model classes")
    p.set_defaults(run=run)


def _error(message: str) -> None:
    print(f"spkmeta select: error: {message}", file=sys.stderr)


def run(args) -> int:
    """Exit 0 when written; 2 for bad input (nothing scored); 1 if selection found nothing
    (or every --label single point failed)."""
    from spk_meta.active import EnsembleError, SelectionError, load_ensemble, select
    from spk_meta.active.selection import check_options

    try:
        check_options(args.n, args.threshold, args.criterion, args.stratify, args.random_fraction, args.batch_size)
        ensemble = load_ensemble(args.ensemble, device=args.device, trust=args.trust)
    except (SelectionError, EnsembleError, FileNotFoundError, pickle.UnpicklingError) as err:
        _error(str(err))
        return 2
    except ValueError as err:  # a member file that is not a model
        _error(str(err))
        return 2
    try:
        result = select(ensemble, args.source, args.out, n=args.n, threshold=args.threshold,
                        criterion=args.criterion, labels=args.labels, stratify=args.stratify,
                        random_fraction=args.random_fraction, batch_size=args.batch_size, seed=args.seed,
                        label=args.label, overwrite=args.overwrite, progress=True)
    except SelectionError as err:
        _error(str(err))
        return 1 if "nothing written" in str(err) else 2
    md = result.metadata
    how = f"{md['n_committee']} by {md['criterion']}, {md['n_random']} at random"
    if "label" not in md:
        print(f"wrote {md['n_selected']} of {md['n_pool']} frames to {result.out} ({how})")
        return 0
    lab = md["label"]
    print(f"wrote {lab['n_labelled']} of {md['n_pool']} frames to {result.out} ({md['n_selected']} chosen: {how}; "
          f"labelled at {lab['level']} with {lab['code']} in {lab['seconds']:.0f} s, {lab['n_failed']} failed "
          "and dropped)")
    return 0
