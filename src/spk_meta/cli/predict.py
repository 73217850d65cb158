"""``spkmeta predict MODEL FILE... --out OUT``: energies and forces of a trained model.

SchNetPack's ``spkpredict`` needs ``enable_grad=true`` for any force model and, under
Lightning 2.x, ``write_interval=batch`` (its epoch writer expects one list per data loader
and fails with ``'str' object has no attribute 'items'``); it then writes one torch file per
batch of a database. This command predicts on any ASE-readable file or task database and
writes one file, per frame, in the order given:

* ``OUT.extxyz`` (or ``.xyz``): the structures with ``energy`` (eV) and ``forces``
  (eV/Ang) as ASE's extended XYZ results, ``source`` (input file) and ``source_index``
  (frame in it) in each frame's info;
* ``OUT.npz``: ``energy`` ``(n_frames,)``, ``forces`` ``(n_atoms_total, 3)``,
  ``n_atoms`` ``(n_frames,)`` (split ``forces`` and ``positions`` with
  ``np.split(a, np.cumsum(n_atoms)[:-1])``), ``numbers``, ``positions`` (Ang),
  ``source`` and ``source_index`` ``(n_frames,)``.

The output is written under a temporary name and renamed when every file was predicted:
if one file fails (an element the model lacks, an unreadable file), nothing is written
and the error names the file.
"""

import pickle
import sys
import warnings
from pathlib import Path
from typing import List, Sequence

import numpy as np

SUFFIXES = {".extxyz": "extxyz", ".xyz": "extxyz", ".npz": "npz"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predicted energies and forces of a best_model per frame, to extxyz or npz",
    )
    p.add_argument("model", help="a SchNetPack best_model file")
    p.add_argument("files", nargs="+", help="ASE-readable structure files, or task .db files")
    p.add_argument("--out", required=True, help="output file: .extxyz/.xyz or .npz (by suffix)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--batch-size", type=int, default=32, help="structures per model call")
    p.add_argument(
        "--trust", action="store_true",
        help="fully unpickle a model file that names code outside SchNetPack's model classes "
        "(it can run that code: only for files you trust)",
    )
    p.set_defaults(run=run)


def _error(message: str) -> None:
    print(f"spkmeta predict: error: {message}", file=sys.stderr)


def predict_files(model, files: Sequence[str], batch_size: int = 32) -> List:
    """Frames of every file (in order) carrying the model's energy and forces.

    Each frame gets a ``SinglePointCalculator`` with ``energy`` (eV) and ``forces``
    ``(n_atoms, 3)`` (eV/Ang), and ``info["source"]``/``info["source_index"]``.

    Raises:
        ValueError: naming the file, if a file has no frames or cannot be predicted.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    from spk_meta.evaluate import predict, read_labelled

    out = []
    for path in files:
        try:
            frames = read_labelled(path)
            if not frames:
                raise ValueError("no frames")
            energies, forces = predict(model, frames, batch_size)
        except Exception as err:  # a file that fails is named, whatever went wrong
            raise ValueError(f"{path}: {err}") from err
        for i, (atoms, e, f) in enumerate(zip(frames, energies, forces)):
            atoms = atoms.copy()  # drops the file's own labels
            atoms.info.update(source=str(path), source_index=i)
            atoms.calc = SinglePointCalculator(atoms, energy=float(e), forces=f)
            out.append(atoms)
    return out


def write_predictions(frames: Sequence, out: Path, overwrite: bool = False) -> Path:
    """Write predicted frames to ``out`` (format by suffix, see the module), atomically."""
    import ase.io

    from spk_meta.utils import atomic_path

    kind = SUFFIXES[out.suffix.lower()]
    with atomic_path(out, overwrite=overwrite) as tmp:
        if kind == "extxyz":
            ase.io.write(str(tmp), list(frames), format="extxyz")
        else:
            with open(tmp, "wb") as fh:  # np.savez would append .npz to a str path
                np.savez(
                    fh,
                    energy=np.array([a.get_potential_energy() for a in frames]),
                    forces=np.concatenate([a.get_forces() for a in frames]),
                    n_atoms=np.array([len(a) for a in frames]),
                    numbers=np.concatenate([a.numbers for a in frames]),
                    positions=np.concatenate([a.positions for a in frames]),
                    source=np.array([a.info["source"] for a in frames]),
                    source_index=np.array([a.info["source_index"] for a in frames]),
                )
    return out


def run(args) -> int:
    """Exit 0 when written; 1 if a file failed (nothing written); 2 for usage errors and
    models that cannot be loaded."""
    from spk_meta.evaluate import energy_reference_missing, load_model

    out = Path(args.out)
    if out.suffix.lower() not in SUFFIXES:
        _error(f"--out {out}: unknown format; use a .extxyz, .xyz or .npz file name")
        return 2
    if out.exists() and not args.overwrite:
        _error(f"--out {out} already exists (pass --overwrite to replace it)")
        return 2
    if args.batch_size < 1:
        _error(f"--batch-size must be >= 1, got {args.batch_size}")
        return 2
    try:
        model = load_model(args.model, trust=args.trust)
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as err:
        _error(str(err))
        return 2
    why = energy_reference_missing(model)
    if why:
        print(f"spkmeta predict: WARNING: energies are not total energies: {why}", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # said above, once, in our words
            frames = predict_files(model, args.files, args.batch_size)
    except ValueError as err:
        _error(f"{err} (nothing written)")
        return 1
    write_predictions(frames, out, overwrite=args.overwrite)
    print(f"wrote {len(frames)} frames (energy eV, forces eV/Ang) to {out}")
    return 0
