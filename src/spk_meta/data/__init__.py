"""Task databases: one SchNetPack ASE database per level of theory."""

from spk_meta.data.datamodule import ConcatTaskSubsets, TaskDataModule, TaskSplitMismatch
from spk_meta.data.sampling import TaskBatchSampler, TaskBatchStream, task_sampling_weights
from spk_meta.data.task_dataset import (
    TaskData,
    TaskDataError,
    TaskDataset,
    TaskSubset,
    task_name_from_database,
)
from spk_meta.data.atomrefs import AtomicEnergies, composition_matrix, fit_atomic_energies
from spk_meta.data.level_of_theory import LevelOfTheory, level_slug
from spk_meta.data.writer import DatabaseWriteError, DatabaseWriter, extxyz_to_database, write_database

__all__ = [
    "ConcatTaskSubsets",
    "TaskBatchSampler",
    "TaskBatchStream",
    "TaskData",
    "TaskDataError",
    "TaskDataModule",
    "TaskDataset",
    "TaskSplitMismatch",
    "TaskSubset",
    "task_name_from_database",
    "task_sampling_weights",
    "AtomicEnergies",
    "composition_matrix",
    "fit_atomic_energies",
    "LevelOfTheory",
    "level_slug",
    "DatabaseWriteError",
    "DatabaseWriter",
    "extxyz_to_database",
    "write_database",
]
