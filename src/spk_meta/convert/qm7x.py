"""QM7-X HDF5 (Hoja et al., Sci. Data 2021): ``/<molecule>/<conformer>/`` with ``atNUM``,
``atXYZ`` (Ang), ``ePBE0+MBD`` (eV) and ``totFOR`` (eV/Ang). A file or a directory of the
published ``1000.hdf5`` ... ``8000.hdf5``. The keys are SchNetPack's own
(``schnetpack.datasets.QM7X.property_dataset_keys``), so both read the same numbers.
"""

from typing import Dict, Iterator

import numpy as np

from spk_meta.convert.base import LevelSpec, Reader, SourceFrame, dataset, hdf5_files, open_hdf5
from spk_meta.data.level_of_theory import LevelOfTheory


def qm7x_keys():
    """``(energy key, forces key)`` in QM7-X files, from SchNetPack's ``QM7X`` dataset class
    ("ePBE0+MBD" in eV, "totFOR" in eV/Ang); imported when a QM7-X file is read, so the
    other converters do not import torch."""
    from schnetpack.datasets import QM7X

    assert QM7X.property_unit_dict[QM7X.energy] == "eV" and QM7X.property_unit_dict[QM7X.forces] == "eV/Ang"
    return QM7X.property_dataset_keys[QM7X.energy], QM7X.property_dataset_keys[QM7X.forces]


class QM7XReader(Reader):
    name = "qm7x"
    description = "QM7-X HDF5 file or directory (atNUM, atXYZ, ePBE0+MBD, totFOR; eV)"

    def _find_levels(self) -> Dict[str, LevelSpec]:
        level = LevelOfTheory(
            name=self.level_name or "PBE0+MBD",
            method="PBE0+MBD",
            basis="FHI-aims tight",
            code="FHI-aims",
        )
        return self._select({level.slug: LevelSpec(level, True)})

    def count(self) -> int:
        total = 0
        for path in hdf5_files(self.path):
            with open_hdf5(path) as f:
                total += sum(len(mol) for mol in f.values())
        return total

    def frames(self) -> Iterator[SourceFrame]:
        (key, _), = self.levels().items()
        energy_key, forces_key = qm7x_keys()
        for path in hdf5_files(self.path):
            with open_hdf5(path) as f:
                for mol in f.values():
                    for conf in mol.values():
                        numbers = dataset(conf, "atNUM", path).astype(int).reshape(-1)
                        n = len(numbers)
                        energy = dataset(conf, energy_key, path).reshape(-1)
                        yield SourceFrame(
                            numbers=numbers,
                            positions=dataset(conf, "atXYZ", path, (n, 3)).astype(np.float64),
                            labels={key: (float(energy[0]), dataset(conf, forces_key, path, (n, 3)).astype(np.float64))},
                            where=f"{path}:{conf.name}",
                        )
