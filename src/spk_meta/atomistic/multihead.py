"""Several output heads on one shared representation: one head per task (level of theory).

This is how MACE (``heads:``), DeePMD DPA multi-task, SevenNet and UMA train on several
levels of theory at once: the representation is shared, each level has its own readout.
:class:`MultiHead` is a SchNetPack output module that holds one copy of an output module
per task and, for a batch, applies each molecule's own head (molecules are labelled with
their task index under :data:`spk_meta.properties.task` by the data module).

What is shared depends on the architecture:

* PaiNN / SchNet: the representation has all the message-passing weights; each task gets a
  whole ``Atomwise`` readout (as MACE's per-head readouts).
* ANI: the AEV has no trainable weights, so whole per-task element networks would share
  nothing. The heads share every hidden layer of the element networks and own only the
  last linear layer of each (``share_hidden=True``, the default for
  ``ElementwiseAtomwise``): a shared trunk, per-level readouts.

At inference there is no task label: set :attr:`MultiHead.active_head` (or use
:func:`select_head` to replace the multi-head module by a plain copy of one head, which is
what fine-tuning and TorchScript export want). Without an active head the module refuses
to guess and names the heads it has.
"""

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from schnetpack import properties as structure
from torch import nn

from spk_meta import properties
from spk_meta.atomistic.elementwise import ElementwiseAtomwise

__all__ = ["MultiHead", "select_head", "find_multihead", "head_names", "choose_head", "choose_best_head", "best_head_pending"]


class MultiHead(nn.Module):
    """One output module per task; each molecule is predicted by its own task's head.

    Reads ``inputs[spk_meta.properties.task]`` ``(n_molecules,)`` (index into
    ``task_names``) unless :attr:`active_head` is set; writes the heads' outputs (the same
    keys as the template, e.g. ``energy`` ``(n_molecules,)``), per-atom outputs selected by
    the atom's molecule.

    Args:
        template: the output module to copy per task (e.g. ``ElementwiseAtomwise``,
            ``schnetpack.atomistic.Atomwise``).
        task_names: the tasks, in the data module's task-index order.
        share_hidden: for ``ElementwiseAtomwise`` templates, share every layer but the
            last of each element network between heads (default ``True``). Ignored for
            other templates (whose heads are independent copies).
        active_head: the head used when a batch carries no task labels.
    """

    def __init__(
        self,
        template: nn.Module,
        task_names: Sequence[str],
        share_hidden: bool = True,
        active_head: Optional[str] = None,
    ):
        super().__init__()
        names = [str(t) for t in task_names]
        if not names:
            raise ValueError("MultiHead needs at least one task name")
        if len(set(names)) != len(names):
            raise ValueError(f"MultiHead: task names repeat: {names}")
        self.task_names: List[str] = names
        self.heads = nn.ModuleDict({name: copy.deepcopy(template) for name in names})
        if share_hidden and isinstance(template, ElementwiseAtomwise):
            first = self.heads[names[0]]
            for name in names[1:]:
                for symbol, net in self.heads[name].atomics.items():
                    net.layers = first.atomics[symbol].layers  # the same module: shared weights
        self.share_hidden = bool(share_hidden and isinstance(template, ElementwiseAtomwise))
        self.model_outputs: List[str] = list(getattr(template, "model_outputs", []))
        self.output_key = getattr(template, "output_key", None)
        per_atom = getattr(template, "per_atom_output_key", None)
        self.per_atom_keys: List[str] = [per_atom] if per_atom is not None else []
        self._active_head: Optional[str] = None
        self.active_head = active_head

    @property
    def active_head(self) -> Optional[str]:
        return self._active_head

    @active_head.setter
    def active_head(self, name: Optional[str]) -> None:
        if name is not None and name not in self.heads:
            raise KeyError(f"no head '{name}'; heads: {', '.join(self.task_names)}")
        self._active_head = name

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if self._active_head is not None:
            return self.heads[self._active_head](inputs)
        if properties.task not in inputs:
            raise RuntimeError(
                "this model has one output head per level of theory and the input names no level: "
                f"set the active head to one of {', '.join(self.task_names)} "
                "(spk_meta.atomistic.select_head(model, NAME), or MultiHead.active_head = NAME)"
            )
        task = inputs[properties.task].reshape(-1)
        present = torch.unique(task).tolist()
        for t in present:
            if not 0 <= int(t) < len(self.task_names):
                raise RuntimeError(f"task index {int(t)} has no head (heads: {', '.join(self.task_names)})")
        if len(present) == 1:
            return self.heads[self.task_names[int(present[0])]](inputs)
        # a batch mixing tasks: every head present runs on the batch, each molecule keeps its own
        idx_m = inputs[structure.idx_m]
        results = {}
        for t in present:
            out = self.heads[self.task_names[int(t)]](dict(inputs))
            results[int(t)] = {k: out[k] for k in self.model_outputs}
        for key in self.model_outputs:
            first = results[int(present[0])][key]
            select = task[idx_m] if key in self.per_atom_keys else task
            merged = torch.zeros_like(first)
            for t, out in results.items():
                mask = (select == t).reshape(-1, *([1] * (first.dim() - 1)))
                merged = torch.where(mask, out[key], merged)
            inputs[key] = merged
        return inputs

    def extra_repr(self) -> str:
        return f"heads={self.task_names}, share_hidden={self.share_hidden}, active_head={self._active_head!r}"


def find_multihead(model: nn.Module) -> Optional[MultiHead]:
    """The :class:`MultiHead` among a SchNetPack model's ``output_modules``, or ``None``."""
    for module in getattr(model, "output_modules", []):
        if isinstance(module, MultiHead):
            return module
    return None


def head_names(model: nn.Module) -> List[str]:
    """The heads of a multi-head model (empty for a single-head model)."""
    mh = find_multihead(model)
    return list(mh.task_names) if mh is not None else []


def select_head(model: nn.Module, name: str) -> nn.Module:
    """Replace the model's :class:`MultiHead` by a plain copy of head ``name``, in place.

    The result is an ordinary single-head SchNetPack model (fine-tuning, TorchScript export,
    ``SpkCalculator``). Returns ``model``.

    Raises:
        KeyError: no head ``name`` (the message lists the heads); ValueError: the model has
            no multi-head module.
    """
    for i, module in enumerate(model.output_modules):
        if isinstance(module, MultiHead):
            if name not in module.heads:
                raise KeyError(f"no head '{name}'; heads: {', '.join(module.task_names)}")
            model.output_modules[i] = copy.deepcopy(module.heads[name])
            return model
    raise ValueError("the model has no multi-head output module (nothing to select)")


def _reset_readout(module: nn.Module) -> None:
    """Re-initialise what a head owns alone: the last linear layer of each element network
    (``ElementwiseAtomwise``) or of the MLP (SchNetPack's ``Atomwise``)."""
    if isinstance(module, ElementwiseAtomwise):
        for net in module.atomics.values():
            net.final_layer.reset_parameters()
        return
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cannot re-initialise a {type(module).__name__} head: it has no linear layer")
    linears[-1].reset_parameters()


def choose_head(model: nn.Module, head: Optional[str]) -> nn.Module:
    """Fine-tuning a multi-head model: keep one head, in place.

    Args:
        head: a head's name; ``"fresh"``: the shared layers with a newly initialised readout
            (the first head's shape); ``"best"``: decided at set-up, on the target's training
            frames before any update (:func:`choose_best_head`, which the task calls);
            ``None``: only for a model without heads.

    Raises:
        ValueError: a model with heads and no choice (the message lists the heads), or a
            choice for a model without heads. KeyError: an unknown head.
    """
    mh = find_multihead(model)
    if mh is None:
        if head is not None:
            raise ValueError(f"head={head!r}: this model has a single output head; leave head unset")
        return model
    if head is None:
        raise ValueError(
            f"this model has one output head per level ({', '.join(mh.task_names)}): choose one with "
            "model.head=NAME, model.head=best (lowest loss on the target's training frames) or model.head=fresh"
        )
    if head == "best":
        mh.pending_choice = "best"
        return model
    if head == "fresh":
        i = next(j for j, module in enumerate(model.output_modules) if module is mh)
        select_head(model, mh.task_names[0])
        _reset_readout(model.output_modules[i])
        return model
    return select_head(model, head)


def best_head_pending(model: nn.Module) -> bool:
    """Whether the model's heads wait for ``model.head=best`` (:func:`choose_head`)."""
    mh = find_multihead(model)
    return mh is not None and getattr(mh, "pending_choice", None) == "best"


def choose_best_head(model: nn.Module, batches, predict, loss_fn) -> Optional[Tuple[str, Dict[str, float]]]:
    """If the model's heads wait for ``best`` (:func:`choose_head`), keep the head with the
    lowest mean ``loss_fn(predict(batch), batch)`` over ``batches``; return its name and
    every head's loss (``None`` if nothing waits). Nothing is trained.
    """
    if not best_head_pending(model):
        return None
    mh = find_multihead(model)
    batches = list(batches)
    if not batches:
        raise ValueError("model.head=best needs training frames to compare the heads on")
    losses = {}
    for name in mh.task_names:
        mh.active_head = name
        total = 0.0
        for batch in batches:
            pred = predict({k: v.clone() for k, v in batch.items()})
            total += float(loss_fn(pred, batch).detach())
        losses[name] = total / len(batches)
    mh.active_head = None
    best = min(losses, key=losses.get)
    select_head(model, best)
    return best, losses
