"""ANI-1x / ANI-1ccx HDF5 (one group per formula) and torchani's ``ANIDataset`` HDF5.

ANI-1x layout (Smith et al., Sci. Data 2020): ``/<formula>/atomic_numbers`` ``(n_atoms,)``,
``coordinates`` ``(n_conf, n_atoms, 3)`` Ang, ``<level>.energy`` ``(n_conf,)`` Hartree,
``<level>.forces`` ``(n_conf, n_atoms, 3)`` Hartree/Ang; values a level lacks are NaN.
"""

from typing import Dict, Iterator

import numpy as np
from ase.units import Hartree

from spk_meta.convert.base import (
    ConversionError, LevelSpec, Reader, SourceFrame, SourceGroup, conformers, dataset, open_hdf5, split_groups,
)
from spk_meta.data.level_of_theory import LevelOfTheory

#: ANI-1x/1ccx property prefixes: (name, method, basis). The name keeps the dataset's
#: shorthand so the database is e.g. wb97x_dz.db; method and basis are spelled out.
ANI1X_LEVELS = {
    "wb97x_dz": ("wB97X/dz", "wB97X", "6-31G(d)"),
    "wb97x_tz": ("wB97X/tz", "wB97X", "def2-TZVPP"),
    "ccsd(t)_cbs": ("CCSD(T)/CBS", "CCSD(T)", "CBS"),
    "hf_dz": ("HF/dz", "HF", "cc-pVDZ"),
    "hf_tz": ("HF/tz", "HF", "cc-pVTZ"),
    "hf_qz": ("HF/qz", "HF", "cc-pVQZ"),
    "mp2_dz": ("MP2/dz", "MP2", "cc-pVDZ"),
    "mp2_tz": ("MP2/tz", "MP2", "cc-pVTZ"),
    "mp2_qz": ("MP2/qz", "MP2", "cc-pVQZ"),
    "npno_ccsd(t)_dz": ("NPNO-CCSD(T)/dz", "NPNO-CCSD(T)", "cc-pVDZ"),
    "npno_ccsd(t)_tz": ("NPNO-CCSD(T)/tz", "NPNO-CCSD(T)", "cc-pVTZ"),
    "tpno_ccsd(t)_dz": ("TPNO-CCSD(T)/dz", "TPNO-CCSD(T)", "cc-pVDZ"),
}


def ani1x_level(prefix: str) -> LevelOfTheory:
    """The level behind an ANI-1x property prefix (unknown ones: ``method_basis``)."""
    if prefix in ANI1X_LEVELS:
        name, method, basis = ANI1X_LEVELS[prefix]
        return LevelOfTheory(name=name, method=method, basis=basis, extra={"ani1x_key": prefix})
    method, _, basis = prefix.rpartition("_")
    return LevelOfTheory.parse(f"{method or prefix}/{basis}" if method else prefix, ani1x_key=prefix)


class ANI1xReader(Reader):
    name = "ani1x"
    description = "ANI-1x / ANI-1ccx HDF5 (group per formula; Hartree, Hartree/Ang; NaN = missing)"

    def _find_levels(self) -> Dict[str, LevelSpec]:
        energies, forces = set(), set()
        with open_hdf5(self.path) as f:
            for group in f.values():
                for key in group.keys():
                    if key.endswith(".energy"):
                        energies.add(key[: -len(".energy")])
                    elif key.endswith(".forces"):
                        forces.add(key[: -len(".forces")])
        found = {k: LevelSpec(ani1x_level(k), k in forces) for k in sorted(energies)}
        return self._select(found)

    def count(self) -> int:
        with open_hdf5(self.path) as f:
            return sum(g["coordinates"].shape[0] for g in f.values() if "coordinates" in g)

    def groups(self) -> Iterator[SourceGroup]:
        levels = self.levels()
        with open_hdf5(self.path) as f:
            for name, group in f.items():
                numbers, coords = conformers(group, "atomic_numbers", "coordinates", self.path)
                n = len(numbers)
                n_conf = coords.shape[0]
                labels = {}
                for key, spec in levels.items():
                    if f"{key}.energy" not in group:
                        continue
                    e = dataset(group, f"{key}.energy", self.path, (n_conf,)) * Hartree
                    fo = None
                    if spec.has_forces and f"{key}.forces" in group:
                        fo = dataset(group, f"{key}.forces", self.path, (n_conf, n, 3)) * Hartree
                    labels[key] = (e, fo)
                yield SourceGroup(numbers, coords.astype(np.float64), labels, where=f"{self.path}:{group.name}")

    def frames(self) -> Iterator[SourceFrame]:
        return split_groups(self.groups())


class ANIDatasetReader(Reader):
    """torchani's ``ANIDataset`` HDF5 files, read through torchani itself."""

    name = "anidataset"
    description = "torchani ANIDataset HDF5 (species, coordinates, energies[, forces]; Hartree); needs --level"
    needs_level = True

    energy_key = "energies"
    forces_key = "forces"

    def _open(self):
        import os

        os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
        from torchani.datasets import ANIDataset

        open_hdf5(self.path).close()  # a clear error for corrupted files first
        try:
            return ANIDataset(str(self.path), verbose=False)
        except Exception as err:
            raise ConversionError(f"{self.path}: not a torchani ANIDataset ({err})") from None

    def _find_levels(self) -> Dict[str, LevelSpec]:
        ds = self._open()
        if self.energy_key not in ds.properties:
            raise ConversionError(
                f"{self.path}: no '{self.energy_key}' property (it has: {', '.join(sorted(ds.properties))})"
            )
        level = LevelOfTheory.parse(self.level_name)
        return {level.slug: LevelSpec(level, self.forces_key in ds.properties)}

    def count(self) -> int:
        return int(self._open().num_conformers)

    def groups(self) -> Iterator[SourceGroup]:
        """One group per torchani group whose conformers share their species (no padding);
        otherwise (``by_num_atoms`` groups of several formulas) one per conformer."""
        (key, spec), = self.levels().items()
        ds = self._open()
        for group, conf in ds.numpy_items():
            species = conf.get("species", conf.get("atomic_numbers", conf.get("numbers")))
            if species is None:
                raise ConversionError(f"{self.path}: group '{group}' has no species/atomic_numbers")
            species = np.asarray(species).astype(int)
            energies = conf[self.energy_key] * Hartree
            if len(energies) == 0:
                continue
            coords = np.asarray(conf["coordinates"], dtype=np.float64)
            forces = conf.get(self.forces_key) if spec.has_forces else None
            if forces is not None:
                forces = np.asarray(forces, dtype=np.float64) * Hartree
            where = f"{self.path}:{group}"
            if (species == species[0]).all() and (species[0] > 0).all():
                yield SourceGroup(species[0], coords, {key: (energies, forces)}, where=where)
                continue
            for i in range(len(energies)):
                keep = species[i] > 0  # torchani pads with -1
                yield SourceGroup(
                    species[i][keep], coords[i][keep][None],
                    {key: (energies[i : i + 1], None if forces is None else forces[i][keep][None])},
                    where=f"{where}[{i}]",
                )

    def frames(self) -> Iterator[SourceFrame]:
        return split_groups(self.groups())
