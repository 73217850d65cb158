"""Lightning tasks (SchNetPack ``AtomisticTask`` subclasses)."""

from spk_meta.task.atomistic import AtomisticTask
from spk_meta.task.reptile import ReptileTask, outer_lr_at

__all__ = ["AtomisticTask", "ReptileTask", "outer_lr_at"]
