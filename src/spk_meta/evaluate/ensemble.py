"""Ensembles of models: mean prediction and spread, as an ASE calculator."""

from typing import Optional, Sequence

import numpy as np
from ase.calculators.calculator import Calculator, all_changes


class EnsembleCalculator(Calculator):
    """Mean energy/forces of several ASE calculators; ``results["energy_std"]`` (eV) and
    ``results["forces_std"]`` (eV/Ang, per atom and component) give the spread."""

    implemented_properties = ["energy", "forces", "energy_std", "forces_std"]

    def __init__(self, calculators: Sequence[Calculator], **kwargs):
        super().__init__(**kwargs)
        if len(calculators) < 2:
            raise ValueError("an ensemble needs at least two calculators")
        self.calculators = list(calculators)

    @classmethod
    def from_models(cls, models: Sequence, cutoff: Optional[float] = None, device: str = "cpu",
                    trust: bool = False, **kwargs) -> "EnsembleCalculator":
        """An ensemble of SchNetPack models (modules or model files, loaded with
        :func:`~spk_meta.model.loading.load_model`; ``trust`` as there)."""
        from spk_meta.evaluate.predict import calculator

        return cls([calculator(m, cutoff=cutoff, device=device, trust=trust) for m in models], **kwargs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energies, forces = [], []
        for calc in self.calculators:
            a = self.atoms.copy()
            a.calc = calc
            energies.append(a.get_potential_energy())
            forces.append(a.get_forces())
        energies, forces = np.array(energies), np.array(forces)
        self.results = {
            "energy": float(energies.mean()),
            "forces": forces.mean(axis=0),
            "energy_std": float(energies.std()),
            "forces_std": forces.std(axis=0),
        }
