"""Run a trained SchNetPack model (``best_model``) on structures and compare with labels."""

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from schnetpack.interfaces import AtomsConverter, SpkCalculator
from schnetpack.transform import MatScipyNeighborList

from spk_meta.evaluate.metrics import error_metrics
from spk_meta.model.compat import model_cutoff

PathLike = Union[str, Path]


def load_model(path: PathLike, device: str = "cpu") -> torch.nn.Module:
    """A ``best_model`` file (a trusted, ``torch.save``'d SchNetPack model)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    model = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{path}: not a SchNetPack model")
    return model.eval()


def _cutoff(model: torch.nn.Module, cutoff: Optional[float]) -> float:
    cutoff = cutoff or model_cutoff(model)
    if cutoff is None:
        raise ValueError("the model declares no cutoff; pass cutoff=...")
    return float(cutoff)


def calculator(model: Union[PathLike, torch.nn.Module], cutoff: Optional[float] = None, device: str = "cpu") -> SpkCalculator:
    """SchNetPack's ASE calculator for ``model``, with the model's own cutoff (eV, Ang)."""
    if not isinstance(model, torch.nn.Module):
        model = load_model(model, device)
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


def evaluate(model: Union[PathLike, torch.nn.Module], files: Sequence[PathLike], batch_size: int = 32) -> Dict[str, Dict[str, float]]:
    """Energy and force RMSE/MAE (eV, eV/Ang) of ``model`` on each file.

    Returns ``{file: {"n_frames", "energy_rmse", "energy_mae", "forces_rmse", "forces_mae"}}``
    (force entries only where the file has forces).
    """
    if not isinstance(model, torch.nn.Module):
        model = load_model(model)
    results = {}
    for path in files:
        frames = read_labelled(path)
        if not frames:
            raise ValueError(f"{path}: no frames")
        energies, forces = predict(model, frames, batch_size)
        ref_e = np.array([a.get_potential_energy() for a in frames])
        row = {"n_frames": len(frames)}
        row.update({f"energy_{k}": v for k, v in error_metrics(energies, ref_e).items()})
        try:
            ref_f = np.concatenate([a.get_forces() for a in frames])
        except (PropertyNotImplementedError, RuntimeError):
            ref_f = None  # an energy-only reference
        if ref_f is not None:
            row.update({f"forces_{k}": v for k, v in error_metrics(np.concatenate(forces), ref_f).items()})
        results[str(path)] = row
    return results
