"""A committee of SchNetPack models loaded from an ensemble manifest: mean prediction and spread.

::

    ens = load_ensemble("ens/")            # the folder or its ensemble.json
    pred = ens.predict(frames)             # ASE Atoms
    pred.energy, pred.energy_std, pred.rho, pred.forces, pred.forces_std, pred.force_spread
    atoms.calc = ens.calculator()          # ASE: results energy, forces, energy_std, forces_std, rho

Spreads are sample standard deviations over the members (:mod:`spk_meta.active.statistics`).
Every member is loaded with :func:`~spk_meta.model.loading.load_model` (weights-only
allow-list; ``trust`` as there) after the manifest's checks passed.
"""

import copy
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import all_changes
from schnetpack.model import NeuralNetworkPotential

from spk_meta.active.batch import FrameBatch, atoms_batch, model_inputs
from spk_meta.active.manifest import (
    MANIFEST,
    EnsembleError,
    Member,
    describe_model,
    read_manifest,
    symbols,
    write_manifest,
)
from spk_meta.active.statistics import DDOF, committee_mean_std, energy_rho, max_force_spread
from spk_meta.evaluate.ensemble import EnsembleCalculator

PathLike = Union[str, Path]


@dataclass
class CommitteePrediction:
    """Committee prediction for a batch of frames (atoms of frames one after another).

    Attributes:
        n_atoms: ``(n_frames,)``.
        member_energies: ``(M, n_frames)`` eV.
        energy, energy_std: ``(n_frames,)`` eV: mean and sample spread over members.
        rho: ``(n_frames,)`` energy_std / sqrt(n_atoms), eV / sqrt(atom).
        member_forces: ``(M, n_atoms_total, 3)`` eV/Ang, or ``None`` (energies only).
        forces, forces_std: ``(n_atoms_total, 3)`` eV/Ang, or ``None``.
        force_spread: ``(n_frames,)`` largest per-atom force spread, eV/Ang, or ``None``.
    """

    n_atoms: np.ndarray
    member_energies: np.ndarray
    energy: np.ndarray
    energy_std: np.ndarray
    rho: np.ndarray
    member_forces: Optional[np.ndarray] = None
    forces: Optional[np.ndarray] = None
    forces_std: Optional[np.ndarray] = None
    force_spread: Optional[np.ndarray] = None

    @classmethod
    def from_members(cls, n_atoms: np.ndarray, energies: np.ndarray,
                     forces: Optional[np.ndarray] = None) -> "CommitteePrediction":
        """Statistics of the members' ``energies`` ``(M, n)`` and ``forces`` ``(M, N, 3)``."""
        energy, energy_std = committee_mean_std(energies)
        pred = cls(n_atoms=n_atoms, member_energies=energies, energy=energy, energy_std=energy_std,
                   rho=energy_rho(energy_std, n_atoms))
        if forces is not None:
            pred.member_forces = forces
            pred.forces, pred.forces_std = committee_mean_std(forces)
            pred.force_spread = max_force_spread(pred.forces_std, n_atoms)
        return pred

    def forces_per_frame(self) -> List[np.ndarray]:
        """Mean forces split per frame: one ``(n_atoms, 3)`` array each."""
        if self.forces is None:
            raise ValueError("predicted without forces")
        return np.split(self.forces, np.cumsum(self.n_atoms)[:-1])


def energy_only(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a SchNetPack ``NeuralNetworkPotential`` without its response modules
    (``Forces``: anything needing derivatives), so that energies run without autograd.

    The energies are those of ``model`` (the same modules and weights, minus the ones
    that only differentiate them)."""
    model = copy.deepcopy(model)
    model.output_modules = torch.nn.ModuleList(
        [m for m in model.output_modules if not getattr(m, "required_derivatives", None)]
    )
    model.collect_derivatives()
    model.collect_outputs()
    return model


def _weightless_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two modules are the same computation without weights: same class and
    settings (``repr``), no parameters, equal buffers."""
    if type(a) is not type(b) or repr(a) != repr(b):
        return False
    if any(True for _ in a.parameters()) or any(True for _ in b.parameters()):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def shares_representation(models: Sequence[torch.nn.Module]) -> bool:
    """Whether every member computes the same representation from the same inputs: plain
    ``NeuralNetworkPotential`` s whose input modules and representation have no weights and
    equal settings (ANI's AEVs: an ANI committee differs only in its element networks).
    The representation is then computed once per batch for all members."""
    first = models[0]
    for m in models:
        if type(m) is not NeuralNetworkPotential or len(m.input_modules) != len(first.input_modules):
            return False
        if not _weightless_equal(m.representation, first.representation):
            return False
        if not all(_weightless_equal(a, b) for a, b in zip(m.input_modules, first.input_modules)):
            return False
    return True


class Ensemble:
    """A committee of M >= 2 SchNetPack models sharing a cutoff and elements.

    Args:
        models: loaded models (eval mode).
        members: their manifest entries (same order).
        manifest: the manifest file they came from, if any.
        device: where the models run.
        share_representation: compute a weightless representation (ANI's AEVs) once per
            batch for all members when predicting energies only (``None``: when
            :func:`shares_representation` says they are equal).
    """

    def __init__(self, models: Sequence[torch.nn.Module], members: Sequence[Member],
                 manifest: Optional[Path] = None, device: Union[str, torch.device] = "cpu",
                 share_representation: Optional[bool] = None):
        if len(models) != len(members):
            raise ValueError(f"{len(models)} models for {len(members)} members")
        self.models = list(models)
        self.members = list(members)
        self.manifest = manifest
        self.manifest_sha256 = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest else None
        self.device = torch.device(device)
        self.cutoff = float(members[0].cutoff)
        self.elements = members[0].elements
        self.dtype = next(models[0].parameters()).dtype
        self._energy_models: Optional[List[torch.nn.Module]] = None
        self.share_representation = (shares_representation(self.models) if share_representation is None
                                     else bool(share_representation))

    def __len__(self) -> int:
        return len(self.models)

    @property
    def energy_models(self) -> List[torch.nn.Module]:
        if self._energy_models is None:
            self._energy_models = [energy_only(m) for m in self.models]
        return self._energy_models

    def inputs(self, batch: FrameBatch):
        """The SchNetPack inputs of ``batch`` for these models (their cutoff and dtype)."""
        return model_inputs(batch, self.cutoff, dtype=self.dtype, device=self.device)

    def predict_batch(self, batch: FrameBatch, forces: bool = True) -> CommitteePrediction:
        """Committee prediction for one batch; ``forces=False`` runs energies only (no autograd)."""
        inputs = self.inputs(batch)
        energies, all_forces = [], []
        if forces:
            for model in self.models:
                with torch.enable_grad():
                    out = model(dict(inputs))  # a copy: the model adds its own keys
                energies.append(out["energy"].detach().double().cpu().numpy().reshape(-1))
                all_forces.append(out["forces"].detach().double().cpu().numpy())
        else:
            with torch.inference_mode():
                energies = [e.double().cpu().numpy().reshape(-1) for e in self._member_energies(inputs)]
        return CommitteePrediction.from_members(
            batch.n_atoms, np.stack(energies), np.stack(all_forces) if forces else None
        )

    def _member_energies(self, inputs) -> List[torch.Tensor]:
        """Each member's energies (no derivatives), the shared representation computed once
        if :attr:`share_representation` (the steps of ``NeuralNetworkPotential.forward``)."""
        if not self.share_representation:
            return [model(dict(inputs))["energy"] for model in self.energy_models]
        first = self.energy_models[0]
        inputs = dict(inputs)
        for module in first.input_modules:
            inputs = module(inputs)
        inputs = first.representation(inputs)
        energies = []
        for model in self.energy_models:
            out = dict(inputs)  # each member adds its own outputs
            for module in model.output_modules:
                out = module(out)
            energies.append(model.extract_outputs(model.postprocess(out))["energy"])
        return energies

    def predict(self, frames: Sequence[Atoms], batch_size: int = 64, forces: bool = True) -> CommitteePrediction:
        """Committee prediction for ASE ``frames`` (Ang), in batches of ``batch_size``."""
        if not frames:
            raise ValueError("no frames")
        parts = [self.predict_batch(atoms_batch(list(frames[a : a + batch_size])), forces=forces)
                 for a in range(0, len(frames), batch_size)]
        return CommitteePrediction.from_members(
            np.concatenate([p.n_atoms for p in parts]),
            np.concatenate([p.member_energies for p in parts], axis=1),
            np.concatenate([p.member_forces for p in parts], axis=1) if forces else None,
        )

    def calculator(self) -> "CommitteeCalculator":
        """An ASE calculator: mean energy/forces, ``energy_std``, ``forces_std``, ``rho``."""
        return CommitteeCalculator.from_models(self.models, cutoff=self.cutoff, device=str(self.device))

    def __repr__(self) -> str:
        return (f"Ensemble({len(self)} members, cutoff {self.cutoff:g} Ang, elements {symbols(self.elements)}"
                + (f", {self.manifest}" if self.manifest else "") + ")")


class CommitteeCalculator(EnsembleCalculator):
    """:class:`~spk_meta.evaluate.ensemble.EnsembleCalculator` with the committee's
    conventions: spreads with Bessel's correction (the base class divides by M) and
    ``rho`` = energy_std / sqrt(n_atoms) (eV / sqrt(atom))."""

    implemented_properties = EnsembleCalculator.implemented_properties + ["rho"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        m = len(self.calculators)
        bessel = math.sqrt(m / (m - DDOF))  # population std -> sample std
        self.results["energy_std"] = self.results["energy_std"] * bessel
        self.results["forces_std"] = self.results["forces_std"] * bessel
        self.results["rho"] = self.results["energy_std"] / math.sqrt(len(self.atoms))


def load_ensemble(path: PathLike, device: Union[str, torch.device] = "cpu", trust: bool = False) -> Ensemble:
    """The committee of the manifest at ``path`` (``ensemble.json`` or its folder).

    The manifest is checked first (at least two members, one cutoff, one element set,
    every file's SHA-256 as recorded), then each model is loaded and checked against its entry.

    Raises:
        EnsembleError: naming the member and what is wrong.
        FileNotFoundError, NotAModelFile, UntrustedModelFile: from ``load_model``.
    """
    from spk_meta.model.loading import load_model

    file, _, members = read_manifest(path)
    models = []
    for m in members:
        model = load_model(m.file(file.parent), trust=trust, device=str(device))
        actual = describe_model(model, m.name, m.file(file.parent), file.parent)
        if (actual.cutoff, actual.elements) != (m.cutoff, m.elements):
            raise EnsembleError(
                f"{file}: member {m.name}: the model has cutoff {actual.cutoff:g} Ang and elements "
                f"{symbols(actual.elements)}, the manifest says {m.cutoff:g} Ang and {symbols(m.elements)}"
            )
        models.append(model)
    return Ensemble(models, members, manifest=file, device=device)


def ensemble_from_models(model_files: Sequence[PathLike], out: PathLike, seeds: Optional[Sequence[int]] = None,
                         overwrite: bool = False, trust: bool = False) -> Path:
    """Write a manifest in folder ``out`` for model files trained elsewhere (members
    ``m0``, ``m1``, ... in the order given; paths stored relative to ``out``).

    Raises:
        EnsembleError: fewer than 2 files, different cutoffs or elements (nothing written).
        FileExistsError: ``out/ensemble.json`` exists and ``overwrite`` is false.
    """
    from spk_meta.model.loading import load_model

    out = Path(out).absolute()
    if len(model_files) < 2:
        raise EnsembleError(f"an ensemble needs at least 2 members, got {len(model_files)} model file(s)")
    if seeds is not None and len(seeds) != len(model_files):
        raise ValueError(f"{len(seeds)} seeds for {len(model_files)} model files")
    if (out / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{out / MANIFEST} already exists (overwrite to replace it)")
    members = [
        describe_model(load_model(f, trust=trust), f"m{i}", f, out, seed=None if seeds is None else int(seeds[i]))
        for i, f in enumerate(model_files)
    ]
    return write_manifest(out, members, overwrite=overwrite)
