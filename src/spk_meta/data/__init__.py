"""Task databases: one SchNetPack ASE database per level of theory."""

from spk_meta.data.atomrefs import AtomicEnergies, composition_matrix, fit_atomic_energies
from spk_meta.data.level_of_theory import LevelOfTheory, level_slug
from spk_meta.data.writer import DatabaseWriteError, extxyz_to_database, write_database

__all__ = [
    "AtomicEnergies",
    "composition_matrix",
    "fit_atomic_energies",
    "LevelOfTheory",
    "level_slug",
    "DatabaseWriteError",
    "extxyz_to_database",
    "write_database",
]
