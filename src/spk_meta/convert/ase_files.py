"""Any file ASE can read with energies (and forces): extxyz and friends.

Labels are found the way :func:`spk_meta.data.write_database` finds them (calculator
results, else ``info``/``arrays``); ``--level`` names the level of theory (else the
frames' ``level_of_theory`` info entry); ``--energy-unit``/``--distance-unit`` convert.
"""

from typing import Dict, Iterator, Optional

import ase.io
import numpy as np

from spk_meta.convert.base import ConversionError, LevelSpec, Reader, SourceFrame
from spk_meta.data.level_of_theory import LevelOfTheory
from spk_meta.data.writer import _label


class ASEReader(Reader):
    name = "ase"
    description = "any ASE-readable file (extxyz, ...) with energies and forces; --level names the level"

    def __init__(self, path, level=None, only=None, energy_unit: str = "eV", distance_unit: str = "Ang"):
        super().__init__(path, level, only)
        from schnetpack.units import convert_units

        try:
            self.energy_factor = float(convert_units(energy_unit, "eV"))
            self.distance_factor = float(convert_units(distance_unit, "Ang"))
        except Exception:
            raise ConversionError(f"unknown unit: energy '{energy_unit}' or distance '{distance_unit}'") from None

    def _first(self):
        try:
            return next(ase.io.iread(str(self.path), index=":"), None)
        except Exception as err:
            raise ConversionError(f"{self.path}: ASE cannot read this file ({err})") from None

    def _find_levels(self) -> Dict[str, LevelSpec]:
        first = self._first()
        if first is None:
            raise ConversionError(f"{self.path}: no frames")
        name: Optional[str] = self.level_name or first.info.get("level_of_theory")
        if not name:
            raise ConversionError(f"{self.path}: no level of theory; pass --level METHOD/BASIS")
        level = LevelOfTheory.parse(str(name))
        has_forces = _label(first, "forces", per_atom=True) is not None
        return {level.slug: LevelSpec(level, has_forces)}

    def count(self) -> int:
        return sum(1 for _ in ase.io.iread(str(self.path), index=":"))

    def frames(self) -> Iterator[SourceFrame]:
        (key, spec), = self.levels().items()
        for i, atoms in enumerate(ase.io.iread(str(self.path), index=":")):
            where = f"{self.path}: frame {i}"
            energy = _label(atoms, "energy", per_atom=False)
            if energy is None or energy.size != 1:
                raise ConversionError(f"{where}: no energy (one number expected)")
            forces = _label(atoms, "forces", per_atom=True) if spec.has_forces else None
            if forces is not None and forces.shape != (len(atoms), 3):
                raise ConversionError(f"{where}: forces must have shape ({len(atoms)}, 3), got {forces.shape}")
            factor_f = self.energy_factor / self.distance_factor
            yield SourceFrame(
                numbers=atoms.numbers.copy(),
                positions=atoms.positions * self.distance_factor,
                labels={key: (float(energy.reshape(-1)[0]) * self.energy_factor, None if forces is None else forces * factor_f)},
                where=where,
                cell=np.asarray(atoms.cell) * self.distance_factor,
                pbc=atoms.pbc.copy(),
            )
