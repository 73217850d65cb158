"""Tasks: one level of theory each, an ASE database or a packed store's label set, read lazily.

The names below are imported on first use (PEP 562), so that ``spkmeta convert`` and other
tools that need only the writers and the store do not import torch and Lightning.
"""

import importlib
from typing import Any, List

#: public name -> submodule of spk_meta.data that defines it
_EXPORTS = {
    "EpisodicTaskData": "contract",
    "missing_members": "contract",
    "DatabaseIdentity": "splits",
    "TaskSplit": "splits",
    "draw_split": "splits",
    "load_or_draw_splits": "splits",
    "load_splits": "splits",
    "save_splits": "splits",
    "split_counts": "splits",
    "load_energy_references": "atomrefs",
    "save_energy_references": "atomrefs",
    "resolve_task_path": "task_dataset",
    "start_directory": "task_dataset",
    "ConcatTaskSubsets": "datamodule",
    "TaskBatchSampler": "sampling",
    "TaskBatchStream": "sampling",
    "PseudoRandomPermutation": "sampling",
    "parse_task_source": "task_dataset",
    "TaskData": "task_dataset",
    "TaskDataError": "errors",
    "TaskDataModule": "datamodule",
    "TaskDataset": "task_dataset",
    "TaskSplitMismatch": "errors",
    "TaskSubset": "task_dataset",
    "task_name_from_database": "task_dataset",
    "task_sampling_weights": "sampling",
    "AtomicEnergies": "atomrefs",
    "composition_matrix": "atomrefs",
    "fit_atomic_energies": "atomrefs",
    "LevelOfTheory": "level_of_theory",
    "level_slug": "level_of_theory",
    "DatabaseWriteError": "writer",
    "DatabaseWriter": "writer",
    "extxyz_to_database": "writer",
    "write_database": "writer",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'spk_meta.data' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"spk_meta.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
