"""``spkmeta convert FORMAT INPUT OUTDIR``: a published dataset -> one database per level,
or (``--format packed``) one packed task store per source."""

import argparse
import math
import shlex
import sys

EPILOG = """examples:
  spkmeta convert ani1x ani1x-release.h5 data/ --only wb97x_dz,ccsd(t)_cbs --elements H,C,N,O
  spkmeta convert rmd17 rmd17/npz_data/rmd17_ethanol.npz data/
  spkmeta convert ase frames.extxyz data/ --level "wB97X/6-31g*"
  spkmeta convert ani1x ani1x-release.h5 data/ --format packed
Outputs are named by the level-of-theory slug (wb97x_dz.db, ccsd-t_cbs.db, ...); energies
in eV, forces in eV/Ang, positions in Ang, the level of theory in the metadata.
--format packed writes one store per source instead (ani1x-release.spkstore: positions
once, one label set per level named by its slug, NaN where a structure has no usable
label at that level), reading whole conformer groups: many times faster.
OUTDIR/convert_manifest.json lists the databases/stores (level, frames, source, options);
with --overwrite, OUTDIR holds exactly this run's databases afterwards. One conversion
at a time per OUTDIR (a lock); a killed one's temporary files go on the next run."""


def whole_number(minimum: int):
    """An argparse ``type``: an integer >= ``minimum`` (counts must not be 0 or negative)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


def positive_number(text: str) -> float:
    """An argparse ``type``: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_parser(sub) -> None:
    from spk_meta.convert import READERS

    formats = "\n".join(f"  {name:<13} {r.description}" for name, r in READERS.items())
    p = sub.add_parser(
        "convert",
        help="convert a public dataset into one SchNetPack database per level of theory",
        description="formats:\n" + formats,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("format", choices=list(READERS), metavar="FORMAT", help="one of: " + ", ".join(READERS))
    p.add_argument("input", help="the input file (or directory for qm7x and rmd17)")
    p.add_argument("outdir", help="output directory for the .db files (or the .spkstore)")
    p.add_argument("--level", help="level-of-theory name, METHOD/BASIS (required for anidataset; names ase input)")
    p.add_argument("--only", help="comma-separated level keys of a multi-level source (ani1x: wb97x_dz,...)")
    p.add_argument("--elements", help="keep structures made only of these elements, e.g. H,C,N,O")
    p.add_argument("--max-frames", type=whole_number(1), metavar="N", help="convert at most this many structures (N >= 1)")
    p.add_argument("--seed", type=whole_number(0), help="with --max-frames: a random subset drawn with this seed (>= 0)")
    p.add_argument("--max-force", type=positive_number, help="drop frames with an atomic force above this (eV/Ang)")
    p.add_argument("--energy-cut", type=positive_number, help="drop frames further than this (eV/atom) from their level's median energy per atom")
    p.add_argument("--energy-unit", default="eV", help="ase format: unit of the energies in the file")
    p.add_argument("--distance-unit", default="Ang", help="ase format: unit of the positions in the file")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing databases; afterwards OUTDIR holds only this run's databases "
                        "(earlier converted ones are removed, other files kept and named)")
    p.add_argument("--format", "--output-format", dest="output_format", choices=["db", "packed"], default="db",
                   help="what to write (FORMAT above is the input layout): db = one SchNetPack database "
                        "per level (default); packed = one packed task store per source, a label set per level")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def command_line(args) -> str:
    """The canonical ``spkmeta convert ...`` line for ``args`` (recorded in the manifest)."""
    words = ["spkmeta", "convert", args.format, args.input, args.outdir]
    for name in ("level", "only", "elements", "max_frames", "seed", "max_force", "energy_cut"):
        value = getattr(args, name)
        if value is not None:
            words += ["--" + name.replace("_", "-"), str(value)]
    if args.format == "ase":
        words += ["--energy-unit", args.energy_unit, "--distance-unit", args.distance_unit]
    if getattr(args, "output_format", "db") != "db":
        words += ["--format", args.output_format]
    words += ["--overwrite"] if args.overwrite else []
    return shlex.join(words)


def run(args) -> int:
    from spk_meta.convert import ConversionError, convert

    extra = {}
    if args.format == "ase":
        extra = {"energy_unit": args.energy_unit, "distance_unit": args.distance_unit}
    try:
        summary = convert(
            args.format, args.input, args.outdir, level=args.level,
            only=args.only.split(",") if args.only else None, elements=args.elements,
            max_frames=args.max_frames, seed=args.seed, max_force=args.max_force,
            energy_cut=args.energy_cut, overwrite=args.overwrite, progress=not args.no_progress,
            command=command_line(args), output_format=args.output_format, **extra,
        )
    except (ConversionError, FileExistsError) as err:
        print(f"spkmeta convert: error: {err}", file=sys.stderr)
        return 2
    print(summary)
    return 0
