"""The contract between an episodic training task (``ReptileTask``) and its data module.

:class:`EpisodicTaskData` lists everything :class:`~spk_meta.task.ReptileTask` uses from
``trainer.datamodule``; :class:`~spk_meta.data.TaskDataModule` implements it. Any data
module with these members (e.g. one on another storage) can drive Reptile.

How an epoch is driven (Lightning manual optimisation):

1. at ``setup("fit")`` the task calls ``serve_episodes(b)`` with ``b`` = the batches one
   outer step consumes (inner steps x tasks per step);
2. from then on the module's ``train_dataloader()`` yields the **outer-step indices**
   ``0, 1, ..., n - 1`` of one epoch (plain ints, no data), where ``n`` is the number of
   outer steps whose ``b`` batches add up to one pass over every task's training batches
   (at least 1). Lightning hands each index to ``training_step``, which ignores it;
3. ``training_step`` picks tasks with ``task_sampling_weights()`` and draws each batch
   with ``next_batch(task)``, from an endless per-task stream.

Lightning therefore counts, logs and checkpoints outer steps (``val_check_interval``,
``limit_train_batches``), while ``trainer.global_step`` counts inner optimiser steps.
``stream_state()``/``load_stream_state()`` capture the per-task streams (per rank under
DDP), so a resumed run draws exactly the batches an uninterrupted one would.
"""

import inspect
from typing import Any, Dict, List, Mapping, Protocol, runtime_checkable

import torch


@runtime_checkable
class EpisodicTaskData(Protocol):
    """What an episodic task needs from its data module (see the module docstring)."""

    @property
    def task_names(self) -> List[str]:
        """Task names in task-index order (``batch["_task"]`` indexes this list)."""

    def task_sampling_weights(self) -> Dict[str, float]:
        """Probability of drawing each task for an episode (sums to 1)."""

    def next_batch(self, name: str) -> Dict[str, torch.Tensor]:
        """The next training batch of task ``name`` (a SchNetPack batch, CPU tensors)."""

    def serve_episodes(self, batches_per_step: int) -> None:
        """Make ``train_dataloader()`` yield outer-step indices, ``batches_per_step``
        batches per outer step (see the module docstring)."""

    def stream_state(self) -> Dict[str, Any]:
        """Position of every task's batch stream (picklable), for checkpoints."""

    def load_stream_state(self, state: Mapping[str, Any]) -> None:
        """Continue the streams from a :meth:`stream_state`."""


def missing_members(obj: Any, protocol: type = EpisodicTaskData) -> List[str]:
    """The members of ``protocol`` that ``obj`` lacks (empty: ``isinstance`` holds).

    Looked up statically, so a property that needs ``setup()`` is not evaluated.
    """
    members = [n for n in vars(protocol) if not n.startswith("_")]
    return [n for n in members if _lacks(obj, n)]


def _lacks(obj: Any, name: str) -> bool:
    try:
        inspect.getattr_static(obj, name)
    except AttributeError:
        return True
    return False
