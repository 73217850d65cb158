"""Transition1x HDF5 (Schreiner et al., Sci. Data 2022): ``/data/<formula>/<reaction>/``
with ``atomic_numbers``, ``positions`` ``(n_conf, n_atoms, 3)`` Ang and
``wB97x_6-31G(d).energy``/``.forces`` (eV, eV/Ang). The ``train``/``val``/``test``
groups repeat reactions of ``data``: each reaction is converted once.
"""

from typing import Dict, Iterator, Set, Tuple

import numpy as np

from spk_meta.convert.base import (
    ConversionError, LevelSpec, Reader, SourceFrame, SourceGroup, conformers, dataset, open_hdf5, split_groups,
)
from spk_meta.data.level_of_theory import LevelOfTheory

PREFIX = "wB97x_6-31G(d)"
SPLITS = ("data", "train", "val", "test")


class Transition1xReader(Reader):
    name = "transition1x"
    description = "Transition1x HDF5 (data|train|val|test/formula/reaction; wB97x_6-31G(d).energy/.forces; eV)"

    def _find_levels(self) -> Dict[str, LevelSpec]:
        level = LevelOfTheory(name=self.level_name or "wB97x/6-31G(d)", method="wB97x", basis="6-31G(d)")
        return self._select({level.slug: LevelSpec(level, True)})

    def _reactions(self, f) -> Iterator[Tuple[str, str, object]]:
        """Each (formula, reaction) once: ``data`` first, then splits it does not cover."""
        present = [s for s in SPLITS if s in f]
        if not present:
            raise ConversionError(f"{self.path}: none of the groups {', '.join(SPLITS)} is present")
        seen: Set[Tuple[str, str]] = set()
        for split in present:
            for formula, reactions in f[split].items():
                for rxn, group in reactions.items():
                    if (formula, rxn) not in seen:
                        seen.add((formula, rxn))
                        yield formula, rxn, group

    def count(self) -> int:
        with open_hdf5(self.path) as f:
            return sum(g["positions"].shape[0] for _, _, g in self._reactions(f) if "positions" in g)

    def groups(self) -> Iterator[SourceGroup]:
        (key, _), = self.levels().items()
        with open_hdf5(self.path) as f:
            for formula, rxn, group in self._reactions(f):
                numbers, pos = conformers(group, "atomic_numbers", "positions", self.path)
                e = dataset(group, f"{PREFIX}.energy", self.path, (pos.shape[0],)).astype(np.float64)
                fo = dataset(group, f"{PREFIX}.forces", self.path, pos.shape).astype(np.float64)
                yield SourceGroup(numbers, pos.astype(np.float64), {key: (e, fo)}, where=f"{self.path}:{group.name}")

    def frames(self) -> Iterator[SourceFrame]:
        return split_groups(self.groups())
