"""Tasks: one level of theory each, an ASE database or a packed store's label set, read lazily."""

from spk_meta.data.contract import EpisodicTaskData, missing_members
from spk_meta.data.datamodule import ConcatTaskSubsets, TaskDataModule
from spk_meta.data.errors import TaskDataError, TaskSplitMismatch
from spk_meta.data.sampling import PseudoRandomPermutation, TaskBatchSampler, TaskBatchStream, task_sampling_weights
from spk_meta.data.task_dataset import (
    TaskData,
    TaskDataset,
    TaskSubset,
    parse_task_source,
    resolve_task_path,
    start_directory,
    task_name_from_database,
)
from spk_meta.data.splits import (
    DatabaseIdentity,
    TaskSplit,
    draw_split,
    load_or_draw_splits,
    load_splits,
    save_splits,
    split_counts,
)
from spk_meta.data.atomrefs import (
    AtomicEnergies,
    composition_matrix,
    fit_atomic_energies,
    load_energy_references,
    save_energy_references,
)
from spk_meta.data.level_of_theory import LevelOfTheory, level_slug
from spk_meta.data.writer import DatabaseWriteError, DatabaseWriter, extxyz_to_database, write_database

__all__ = [
    "EpisodicTaskData",
    "missing_members",
    "DatabaseIdentity",
    "TaskSplit",
    "draw_split",
    "load_or_draw_splits",
    "load_splits",
    "save_splits",
    "split_counts",
    "load_energy_references",
    "save_energy_references",
    "resolve_task_path",
    "start_directory",
    "ConcatTaskSubsets",
    "TaskBatchSampler",
    "TaskBatchStream",
    "PseudoRandomPermutation",
    "parse_task_source",
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
