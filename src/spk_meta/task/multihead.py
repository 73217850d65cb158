"""Multi-head joint training: a shared representation, one output head per level of theory.

The baseline today's MLIP codes use for several levels of theory (MACE ``heads``, DeePMD
DPA multi-task, SevenNet, UMA): every batch comes from one task, updates the shared weights
and that task's own head. It runs through :class:`~spk_meta.task.ReptileTask`'s code path
with k = 1 and ε = 1 (plain SGD on batches of sampled tasks, exactly joint training), with
the model's energy head replaced at set-up by a :class:`~spk_meta.atomistic.MultiHead`
holding one copy per task of the data module. Per-task E0 stays on the data side, as for
the other methods.
"""

from typing import List, Optional

from schnetpack.atomistic import Forces, Response
from torch import nn

from spk_meta.atomistic.multihead import MultiHead, find_multihead
from spk_meta.task.reptile import ReptileTask

__all__ = ["MultiHeadTask", "add_heads"]


def _energy_head_index(model: nn.Module, targets: List[str]) -> int:
    """Index in ``model.output_modules`` of the module writing one of ``targets`` (the
    energy head; derivative modules such as ``Forces`` are skipped)."""
    for i, module in enumerate(model.output_modules):
        if isinstance(module, (Forces, Response)):
            continue
        if getattr(module, "output_key", None) in targets:
            return i
    raise ValueError(
        "cannot find the output head to split per task: no output module (other than Forces/Response) "
        f"writes one of {targets}; output modules: {[type(m).__name__ for m in model.output_modules]}"
    )


def add_heads(model: nn.Module, task_names: List[str], targets: List[str], share_hidden: bool = True) -> MultiHead:
    """Replace the model's energy head by a :class:`MultiHead` with one copy per task, in place.

    A model that already has heads keeps them if they are exactly ``task_names`` (resume,
    or continued multi-head training); other heads are an error naming both lists.
    """
    existing = find_multihead(model)
    if existing is not None:
        if list(existing.task_names) != list(task_names):
            raise ValueError(
                f"the model's heads {existing.task_names} are not this data's tasks {list(task_names)}; "
                "select one head first (spk_meta.atomistic.select_head) to train on other tasks"
            )
        return existing
    i = _energy_head_index(model, targets)
    heads = MultiHead(model.output_modules[i], task_names, share_hidden=share_hidden)
    model.output_modules[i] = heads
    return heads


class MultiHeadTask(ReptileTask):
    """Joint training with one output head per task (``task=multihead``).

    Args:
        share_hidden: ANI only - heads share the hidden layers of the element networks and
            own their last layer (the AEV has no weights to share); see
            :class:`~spk_meta.atomistic.MultiHead`.
        inner_steps, outer_lr: default 1 and 1.0 (joint training); other values give
            Reptile with per-task heads.
        everything else: as :class:`~spk_meta.task.ReptileTask`.
    """

    def __init__(self, *args, share_hidden: bool = True, inner_steps: int = 1, outer_lr: float = 1.0, **kwargs):
        super().__init__(*args, inner_steps=inner_steps, outer_lr=outer_lr, **kwargs)
        self.share_hidden = bool(share_hidden)

    def setup(self, stage: Optional[str] = None):
        dm = self.trainer.datamodule
        names = list(getattr(dm, "task_names", []) or [])
        if not names:
            raise TypeError("task=multihead needs a task data module (data=tasks or data=ethanol_multilevel)")
        targets = [o.target_property for o in self.outputs]
        add_heads(self.model, names, targets, share_hidden=self.share_hidden)
        super().setup(stage)
