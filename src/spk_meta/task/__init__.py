"""Lightning tasks (SchNetPack ``AtomisticTask`` subclasses)."""

from spk_meta.task.atomistic import AtomisticTask

__all__ = ["AtomisticTask"]
