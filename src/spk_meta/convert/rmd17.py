"""Revised MD17 ``.npz`` files (Christensen & von Lilienfeld 2020): ``nuclear_charges``,
``coords`` (Ang), ``energies`` and ``forces`` in kcal/mol(/Ang), PBE/def2-SVP. A file or
the directory of ``rmd17_*.npz``; units as SchNetPack's ``rMD17`` dataset declares them.
"""

from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np

from spk_meta.convert.base import ConversionError, LevelSpec, Reader, SourceFrame
from spk_meta.data.level_of_theory import LevelOfTheory

KEYS = ("nuclear_charges", "coords", "energies", "forces")


class RMD17Reader(Reader):
    name = "rmd17"
    description = "rMD17 .npz file or directory (nuclear_charges, coords, energies, forces; kcal/mol)"

    def _files(self) -> List[Path]:
        if self.path.is_dir():
            files = sorted(self.path.glob("*.npz"))
            if not files:
                raise ConversionError(f"{self.path}: no .npz files in this directory")
            return files
        return [self.path]

    def _load(self, path: Path):
        try:
            data = np.load(path)
        except Exception as err:
            raise ConversionError(f"{path}: not a readable .npz file ({err})") from None
        missing = [k for k in KEYS if k not in data]
        if missing:
            raise ConversionError(f"{path}: no '{missing[0]}' array (rMD17 files have {', '.join(KEYS)})")
        z = data["nuclear_charges"].astype(int).reshape(-1)
        n, m = len(data["energies"]), len(z)
        for key, shape in (("coords", (n, m, 3)), ("forces", (n, m, 3)), ("energies", (n,))):
            if data[key].shape != shape:
                raise ConversionError(f"{path}: '{key}' has shape {data[key].shape}, expected {shape}")
        return data, z

    def _find_levels(self) -> Dict[str, LevelSpec]:
        level = LevelOfTheory(name=self.level_name or "PBE/def2-SVP", method="PBE", basis="def2-SVP", code="ORCA")
        return self._select({level.slug: LevelSpec(level, True)})

    def count(self) -> int:
        return sum(len(np.load(p)["energies"]) for p in self._files())

    def frames(self) -> Iterator[SourceFrame]:
        # SchNetPack's rMD17 stores kcal/mol too; imported here so other converters stay torch-free
        from schnetpack.datasets import rMD17
        from schnetpack.units import convert_units

        assert rMD17.energy == "energy"
        factor = float(convert_units("kcal/mol", "eV"))
        (key, _), = self.levels().items()
        for path in self._files():
            data, z = self._load(path)
            for i in range(len(data["energies"])):
                yield SourceFrame(
                    numbers=z,
                    positions=data["coords"][i].astype(np.float64),
                    labels={key: (float(data["energies"][i]) * factor, data["forces"][i] * factor)},
                    where=f"{path}[{i}]",
                )
