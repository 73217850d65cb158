"""Lightning tasks (SchNetPack ``AtomisticTask`` subclasses)."""

from spk_meta.task.atomistic import AtomisticTask
from spk_meta.task.fomaml import FOMAMLTask
from spk_meta.task.multihead import MultiHeadTask, add_heads
from spk_meta.task.reptile import ReptileTask, outer_lr_at

__all__ = ["AtomisticTask", "FOMAMLTask", "MultiHeadTask", "ReptileTask", "add_heads", "outer_lr_at"]
