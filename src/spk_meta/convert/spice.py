"""SPICE HDF5 (Eastman et al., Sci. Data 2023): one group per molecule with
``atomic_numbers``, ``conformations`` (Bohr), ``dft_total_energy`` (Hartree) and
``dft_total_gradient`` (Hartree/Bohr; forces are minus the gradient), wB97M-D3(BJ)/def2-TZVPPD.
"""

from typing import Dict, Iterator

import numpy as np
from ase.units import Bohr, Hartree

from spk_meta.convert.base import LevelSpec, Reader, SourceFrame, SourceGroup, conformers, dataset, open_hdf5, split_groups
from spk_meta.data.level_of_theory import LevelOfTheory


class SpiceReader(Reader):
    name = "spice"
    description = "SPICE HDF5 (conformations in Bohr, dft_total_energy in Hartree, dft_total_gradient)"

    def _find_levels(self) -> Dict[str, LevelSpec]:
        level = LevelOfTheory(
            name=self.level_name or "wB97M-D3(BJ)/def2-TZVPPD", method="wB97M-D3(BJ)", basis="def2-TZVPPD", code="Psi4"
        )
        return self._select({level.slug: LevelSpec(level, True)})

    def count(self) -> int:
        with open_hdf5(self.path) as f:
            return sum(g["conformations"].shape[0] for g in f.values() if "conformations" in g)

    def groups(self) -> Iterator[SourceGroup]:
        (key, _), = self.levels().items()
        with open_hdf5(self.path) as f:
            for group in f.values():
                numbers, conf = conformers(group, "atomic_numbers", "conformations", self.path)
                energy = dataset(group, "dft_total_energy", self.path, (conf.shape[0],)) * Hartree
                forces = (
                    -(dataset(group, "dft_total_gradient", self.path, conf.shape) * (Hartree / Bohr))
                    if "dft_total_gradient" in group
                    else None
                )
                yield SourceGroup(numbers, conf.astype(np.float64) * Bohr, {key: (energy, forces)},
                                  where=f"{self.path}:{group.name}")

    def frames(self) -> Iterator[SourceFrame]:
        return split_groups(self.groups())
