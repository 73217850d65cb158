"""Run a trained SchNetPack model (``best_model``) on structures and compare with labels."""

import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from schnetpack.interfaces import AtomsConverter, SpkCalculator
from schnetpack.transform import AddOffsets, MatScipyNeighborList

from spk_meta.evaluate.metrics import error_metrics
from spk_meta.model.preflight import model_cutoff
from spk_meta.model.loading import load_model
from spk_meta.utils.schnetpack_compat import offsets_property

PathLike = Union[str, Path]

#: Why energy errors of a multi-level model with no active level mean nothing.
NO_ACTIVE_LEVEL = (
    "the model was trained on several levels of theory with none active: it predicts "
    "energies minus each level's fitted per-element reference (E0), which no level's total "
    "energies match. Fine-tune it on one level (experiment=finetune_ani) for energies; "
    "forces are unaffected"
)


def energy_reference_missing(model: torch.nn.Module) -> Optional[str]:
    """Why ``model``'s energies cannot be compared with total energies, or ``None``.

    ``model.energy_level`` (recorded by spk-meta's tasks) decides: ``None`` means a
    multi-level model with no active level. Models saved before it existed: an energy
    ``AddOffsets`` that adds neither a per-element reference nor a mean (all zeros) marks
    such a model too.
    """
    if "energy_level" in vars(model):
        return NO_ACTIVE_LEVEL if model.energy_level is None else None
    offsets = [pp for pp in getattr(model, "postprocessors", [])
               if isinstance(pp, AddOffsets) and offsets_property(pp) == "energy"]
    for pp in offsets:
        atomref = getattr(pp, "atomref", None) if pp.add_atomrefs else None
        adds_atomref = atomref is not None and bool(torch.any(atomref != 0))
        adds_mean = bool(pp.add_mean) and abs(float(pp.mean)) > 1e-3
        if adds_atomref or adds_mean:
            return None
    return NO_ACTIVE_LEVEL if offsets else None


def _cutoff(model: torch.nn.Module, cutoff: Optional[float]) -> float:
    cutoff = cutoff or model_cutoff(model)
    if cutoff is None:
        raise ValueError("the model declares no cutoff; pass cutoff=...")
    return float(cutoff)


def calculator(model: Union[PathLike, torch.nn.Module], cutoff: Optional[float] = None, device: str = "cpu",
               trust: bool = False) -> SpkCalculator:
    """SchNetPack's ASE calculator for ``model`` (a module or a file for
    :func:`~spk_meta.model.loading.load_model`), with the model's own cutoff (eV, Ang)."""
    if not isinstance(model, torch.nn.Module):
        model = load_model(model, trust=trust, device=device)
    return SpkCalculator(model, neighbor_list=MatScipyNeighborList(_cutoff(model, cutoff)),
                         energy_unit="eV", position_unit="Ang", device=device)


def predict(model: torch.nn.Module, frames: Sequence[Atoms], batch_size: int = 32,
            cutoff: Optional[float] = None) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Energies ``(n_frames,)`` (eV) and forces (one ``(n_atoms, 3)`` array per frame, eV/Ang)."""
    converter = AtomsConverter(neighbor_list=MatScipyNeighborList(_cutoff(model, cutoff)), dtype=torch.float32,
                               device=next(model.parameters()).device)
    energies, forces = [], []
    for start in range(0, len(frames), batch_size):
        chunk = list(frames[start : start + batch_size])
        out = model(converter(chunk))
        energies.append(out["energy"].detach().cpu().double().numpy().reshape(-1))
        f = out["forces"].detach().cpu().double().numpy()
        sizes = np.cumsum([len(a) for a in chunk])[:-1]
        forces.extend(np.split(f, sizes))
    return np.concatenate(energies), forces


def read_labelled(path: PathLike) -> List[Atoms]:
    """Frames with reference energies/forces: any ASE-readable file, or a task database
    (read through :class:`~spk_meta.data.TaskData`, so units are converted)."""
    path = Path(path)
    if path.suffix == ".db":
        from ase.calculators.singlepoint import SinglePointCalculator

        from spk_meta.data import TaskData

        data = TaskData(path.stem, path)
        frames = []
        for i in range(len(data)):
            s = data[i]
            atoms = Atoms(numbers=s["_atomic_numbers"].numpy(), positions=s["_positions"].numpy())
            forces = s["forces"].numpy() if data.has_forces else None
            atoms.calc = SinglePointCalculator(atoms, energy=float(s["energy"]), forces=forces)
            frames.append(atoms)
        return frames
    return ase.io.read(str(path), ":")


def evaluate_frames(model: torch.nn.Module, frames: Sequence[Atoms], batch_size: int = 32) -> Dict[str, Any]:
    """Energy and force RMSE/MAE (eV, eV/Ang) of ``model`` on labelled ``frames``.

    Returns ``{"n_frames", "energy_rmse", "energy_mae", "forces_rmse", "forces_mae"}``
    (force entries only where the frames have forces). Energy entries are ``None``, with
    ``"energy_note"`` saying why, when the model predicts no total energies
    (:func:`energy_reference_missing`).
    """
    if not frames:
        raise ValueError("no frames")
    energies, forces = predict(model, frames, batch_size)
    row: Dict[str, Any] = {"n_frames": len(frames)}
    why = energy_reference_missing(model)
    if why is None:
        ref_e = np.array([a.get_potential_energy() for a in frames])
        row.update({f"energy_{k}": v for k, v in error_metrics(energies, ref_e).items()})
    else:
        row.update({"energy_rmse": None, "energy_mae": None, "energy_note": why})
    try:
        ref_f = np.concatenate([a.get_forces() for a in frames])
    except (PropertyNotImplementedError, RuntimeError):
        ref_f = None  # an energy-only reference
    if ref_f is not None:
        row.update({f"forces_{k}": v for k, v in error_metrics(np.concatenate(forces), ref_f).items()})
    return row


def evaluate(model: Union[PathLike, torch.nn.Module], files: Sequence[PathLike], batch_size: int = 32,
             trust: bool = False, errors: str = "raise") -> Dict[str, Dict[str, Any]]:
    """Energy and force RMSE/MAE (eV, eV/Ang) of ``model`` on each file.

    Args:
        model: a module, or a model file for :func:`~spk_meta.model.loading.load_model`.
        files: ASE-readable files with energies (and forces), or task ``.db`` files.
        trust: passed to ``load_model`` (unpickle a file the allow-list refuses).
        errors: ``"raise"``: a file that cannot be evaluated raises ``ValueError`` naming
            it; ``"record"``: its row is ``{"error": message}`` and the others go on.

    Returns ``{file: row}`` with rows as in :func:`evaluate_frames`. When the model has no
    energy reference, a warning says why energies are not reported.
    """
    if errors not in ("raise", "record"):
        raise ValueError(f"errors must be 'raise' or 'record', not {errors!r}")
    if not isinstance(model, torch.nn.Module):
        model = load_model(model, trust=trust)
    why = energy_reference_missing(model)
    if why is not None:
        warnings.warn(f"energy errors not reported: {why}", stacklevel=2)
    results: Dict[str, Dict[str, Any]] = {}
    for path in files:
        try:
            results[str(path)] = evaluate_frames(model, read_labelled(path), batch_size)
        except Exception as err:  # noqa: BLE001 - any failure is this file's: name it
            message = f"{path}: {err}" if isinstance(err, (ValueError, KeyError, OSError)) else \
                f"{path}: {type(err).__name__}: {err}"
            if errors == "raise":
                raise ValueError(message) from err
            results[str(path)] = {"error": message}
    return results
