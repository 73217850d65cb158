"""Reptile meta-learning (Nichol et al. 2018; Allen et al. 2024) as a SchNetPack task.

One **outer step** (one Lightning ``training_step``):

1. remember the meta-weights θ;
2. for each of ``tasks_per_step`` tasks t, drawn with the data module's task weights:
   start from θ and take ``inner_steps`` (k) optimiser steps on k consecutive batches of
   task t (SchNetPack's weighted loss over the properties t has), reaching φ_t;
3. θ ← θ + ε · mean_t(φ_t − θ)  (under DDP the mean also runs over ranks).

k = 1, ε = 1, one task per step is joint training: exactly the SGD sequence SchNetPack's
``AtomisticTask`` runs on the same batches.

What a "step" is (Lightning manual optimisation):

- ``trainer.global_step`` counts **inner** optimiser steps, so ``max_steps`` and
  ``warmup_steps`` count inner steps;
- one training batch of the Lightning loop is one **outer** step, so
  ``val_check_interval`` (int) and ``limit_train_batches`` count outer steps; an epoch is
  the number of outer steps whose inner steps add up to one pass over all tasks'
  training batches (at least one);
- the data module's training loader yields only outer-step indices (the task draws its
  batches itself with ``next_batch``): the contract is
  :class:`spk_meta.data.EpisodicTaskData`, checked at set-up;
- validation, checkpoints and callbacks (EMA) run between outer steps and see θ, never φ;
- learning-rate schedulers are stepped by this task: ``ReduceLROnPlateau`` after each
  validation on its monitored value (``val_loss``), others once per epoch.

The inner optimiser is the one ``configure_optimizers`` builds (SchNetPack's
``optimizer_cls``/``optimizer_args``); its state is kept across tasks unless
``reset_optimizer=True``; ``inner_beta1`` overrides Adam's β1 (the Reptile paper uses 0).
Gradient clipping is ``gradient_clip_val`` here, since Lightning refuses the trainer's
in manual optimisation.
"""

import math
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from schnetpack.task import UnsupervisedModelOutput
from torch.optim.lr_scheduler import ReduceLROnPlateau

from spk_meta import properties
from spk_meta.data.contract import EpisodicTaskData, missing_members
from spk_meta.task.atomistic import AtomisticTask


def outer_lr_at(step: int, start: float, final: Optional[float], anneal_steps: Optional[int]) -> float:
    """ε at outer step ``step``: linear from ``start`` to ``final`` over ``anneal_steps``, then flat."""
    if final is None or not anneal_steps:
        return float(start)
    frac = min(1.0, max(0, step) / float(anneal_steps))
    return float(start + (final - start) * frac)


class ReptileTask(AtomisticTask):
    """SchNetPack ``AtomisticTask`` trained by Reptile over the tasks of a ``TaskDataModule``.

    Args:
        model, outputs, optimizer_cls, optimizer_args, scheduler_cls, scheduler_args,
            scheduler_monitor, warmup_steps: as in ``schnetpack.task.AtomisticTask``
            (``warmup_steps`` counts inner steps).
        inner_steps: k, optimiser steps on one task per episode.
        outer_lr: ε, the step from θ towards the adapted weights (1 = jump to them).
        outer_lr_final: anneal ε linearly to this value (``None``: constant).
        outer_lr_anneal_steps: outer steps of the annealing (``None``: the whole run).
        tasks_per_step: tasks adapted from the same θ and averaged per outer step
            (batched Reptile).
        reset_optimizer: clear the inner optimiser's state before each task.
        inner_beta1: override β1 of Adam-like inner optimisers (e.g. 0).
        gradient_clip_val: clip the gradient norm of each inner step (``None``: off).
        sampling_seed: seed of the task sampler (``None``: from torch's seed, which
            ``spktrain`` sets with ``seed``); rank r uses ``seed + r``.
    """

    def __init__(
        self,
        model,
        outputs,
        optimizer_cls=torch.optim.Adam,
        optimizer_args: Optional[Dict[str, Any]] = None,
        scheduler_cls=None,
        scheduler_args: Optional[Dict[str, Any]] = None,
        scheduler_monitor: Optional[str] = None,
        warmup_steps: int = 0,
        inner_steps: int = 10,
        outer_lr: float = 1.0,
        outer_lr_final: Optional[float] = None,
        outer_lr_anneal_steps: Optional[int] = None,
        tasks_per_step: int = 1,
        reset_optimizer: bool = False,
        inner_beta1: Optional[float] = None,
        gradient_clip_val: Optional[float] = None,
        sampling_seed: Optional[int] = None,
    ):
        optimizer_args = dict(optimizer_args or {"lr": 1e-3})
        if inner_beta1 is not None:
            betas = list(optimizer_args.get("betas", (0.9, 0.999)))
            optimizer_args["betas"] = (float(inner_beta1), float(betas[1]))
        super().__init__(
            model=model,
            outputs=outputs,
            optimizer_cls=optimizer_cls,
            optimizer_args=optimizer_args,
            scheduler_cls=scheduler_cls,
            scheduler_args=scheduler_args,
            scheduler_monitor=scheduler_monitor,
            warmup_steps=warmup_steps,
        )
        if int(inner_steps) < 1:
            raise ValueError(f"inner_steps (k) must be >= 1, got {inner_steps}")
        if int(tasks_per_step) < 1:
            raise ValueError(f"tasks_per_step must be >= 1, got {tasks_per_step}")
        self.automatic_optimization = False
        self.inner_steps = int(inner_steps)
        self.outer_lr = float(outer_lr)
        self.outer_lr_final = None if outer_lr_final is None else float(outer_lr_final)
        self.outer_lr_anneal_steps = outer_lr_anneal_steps
        self.tasks_per_step = int(tasks_per_step)
        self.reset_optimizer = bool(reset_optimizer)
        self.gradient_clip_val = gradient_clip_val
        self.sampling_seed = sampling_seed
        self.outer_step = 0
        self._rng: Optional[np.random.Generator] = None
        self._sampling: Optional[tuple] = None  # (task names, probabilities)
        self._eval: Dict[str, Dict[str, Dict[str, float]]] = {}

    # -- set-up ---------------------------------------------------------------------------

    @property
    def datamodule(self) -> EpisodicTaskData:
        dm = getattr(self.trainer, "datamodule", None)
        if not isinstance(dm, EpisodicTaskData):
            got = type(dm).__name__ if dm is not None else "no data module"
            lacking = f" (it lacks: {', '.join(missing_members(dm))})" if dm is not None else ""
            raise TypeError(
                "ReptileTask draws its batches per task from a data module with the "
                "spk_meta.data.EpisodicTaskData members, such as spk_meta.data.TaskDataModule "
                f"(data=tasks, data=ethanol_multilevel, ...); got {got}{lacking}"
            )
        return dm

    def setup(self, stage=None):
        if stage == "fit":
            # the training loader now yields outer-step indices; batches come from next_batch
            self.datamodule.serve_episodes(self.inner_steps * self.tasks_per_step)
            self._sampling = None  # weights of this data module
        super().setup(stage)

    def on_fit_start(self):
        if self._rng is None:
            seed = self.sampling_seed if self.sampling_seed is not None else torch.initial_seed()
            self._rng = np.random.default_rng(int(seed) % 2**63 + self.global_rank)

    def on_train_start(self):
        # after Lightning's restore, which gave every rank rank 0's optimiser and streams
        state = getattr(self, "_rank_state_to_restore", None)
        if state is not None:
            if state.get("optimizer") is not None:
                self._inner_optimizer().optimizer.load_state_dict(state["optimizer"])
            self.datamodule.load_stream_state(state.get("streams") or {})
            self._rank_state_to_restore = None

    def _inner_optimizer(self):
        """The (Lightning-wrapped) inner optimiser, whose state differs between ranks."""
        return self.optimizers()

    def _rank_state(self) -> Dict[str, Any]:
        dm = getattr(self.trainer, "datamodule", None)
        return {
            "rng": None if self._rng is None else self._rng.bit_generator.state,
            "streams": dm.stream_state() if isinstance(dm, EpisodicTaskData) else {},
            "optimizer": self._inner_optimizer().optimizer.state_dict() if self.trainer.world_size > 1 else None,
        }

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """θ and rank 0's optimiser are saved by Lightning; the sampler RNG, the task
        streams and (distributed) every rank's inner optimiser state are saved here, per rank."""
        mine = self._rank_state()
        if self.trainer.world_size > 1:
            ranks = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        checkpoint["reptile"] = {"outer_step": self.outer_step, "ranks": ranks}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        state = checkpoint.get("reptile", {})
        self.outer_step = int(state.get("outer_step", 0))
        ranks = state.get("ranks") or []
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if not ranks or not fitting:  # loading weights (test, load_from_checkpoint): no state
            return
        rank = self.global_rank
        if len(ranks) != self.trainer.world_size:
            raise RuntimeError(
                f"the checkpoint was written by {len(ranks)} process(es); resume a Reptile "
                "run with the same number of processes so every rank continues its own tasks"
            )
        mine = ranks[rank]
        if mine.get("rng") is not None:
            self._rng = np.random.default_rng()
            self._rng.bit_generator.state = mine["rng"]
        self._rank_state_to_restore = mine

    # -- the outer step ------------------------------------------------------------------

    def outer_steps_in_run(self) -> Optional[int]:
        """Outer steps the whole run will take, or ``None`` if the trainer sets no limit.

        ``trainer.max_steps`` counts inner optimiser steps (``inner_steps × tasks_per_step``
        per outer step); ``max_epochs`` counts epochs of ``num_training_batches`` outer
        steps. The smaller limit wins, as in Lightning. (Lightning's
        ``estimated_stepping_batches`` mixes the two units in manual optimisation.)
        """
        if self._trainer is None:
            return None
        trainer = self.trainer
        limits = []
        if trainer.max_steps is not None and trainer.max_steps > 0:
            limits.append(math.ceil(trainer.max_steps / self.optimizer_steps_per_outer_step()))
        per_epoch = trainer.num_training_batches
        if trainer.max_epochs is not None and trainer.max_epochs > 0 and math.isfinite(per_epoch):
            limits.append(int(trainer.max_epochs) * int(per_epoch))
        return min(limits) if limits else None

    def optimizer_steps_per_outer_step(self) -> int:
        """Optimiser steps (``trainer.global_step`` increments) in one outer step."""
        return self.inner_steps * self.tasks_per_step

    def current_outer_lr(self) -> float:
        """ε of the current outer step; annealed over ``outer_lr_anneal_steps`` outer steps,
        or over the whole run (:meth:`outer_steps_in_run`) when that is unset."""
        anneal = self.outer_lr_anneal_steps
        if anneal is None and self.outer_lr_final is not None:
            anneal = self.outer_steps_in_run()
        return outer_lr_at(self.outer_step, self.outer_lr, self.outer_lr_final, anneal)

    def sample_task(self) -> str:
        """The next task, drawn with the data module's weights (fixed once it is set up)."""
        if self._sampling is None:
            weights = self.datamodule.task_sampling_weights()
            self._sampling = (list(weights), np.array(list(weights.values())))
        names, p = self._sampling
        return names[int(self._rng.choice(len(names), p=p))]

    def _targets(self, batch):
        targets = {
            o.target_property: batch[o.target_property]
            for o in self.outputs
            if not isinstance(o, UnsupervisedModelOutput) and o.target_property in batch
        }
        if "considered_atoms" in batch:
            targets["considered_atoms"] = batch["considered_atoms"]
        return targets

    def task_loss(self, pred, targets) -> torch.Tensor:
        """SchNetPack's weighted loss over the outputs whose targets the batch has."""
        loss = 0.0
        for o in self.outputs:
            if isinstance(o, UnsupervisedModelOutput) or o.target_property in targets:
                loss = loss + o.calculate_loss(pred, targets)
        return loss

    def _predict_with_loss(self, batch):
        """Predictions, targets and the task's loss for one batch (no postprocessing)."""
        targets = self._targets(batch)
        pred = self.predict_without_postprocessing(batch)
        pred, targets = self.apply_constraints(pred, targets)
        return pred, targets, self.task_loss(pred, targets)

    def _inner_step(self, optimizer, batch) -> torch.Tensor:
        _, _, loss = self._predict_with_loss(move_data_to_device(batch, self.device))
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        if self.global_step < self.warmup_steps:
            scale = min(1.0, float(self.global_step + 1) / self.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = scale * self.lr
        optimizer.step()
        return loss.detach()

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        params = [p for p in self.model.parameters() if p.requires_grad]
        epsilon = self.current_outer_lr()
        plain = epsilon == 1.0 and self.tasks_per_step == 1 and self.trainer.world_size == 1
        theta = None if plain else [p.detach().clone() for p in params]
        delta_sum = None
        losses = []
        for m in range(self.tasks_per_step):
            task = self.sample_task()
            if m > 0:
                with torch.no_grad():
                    for p, t in zip(params, theta):
                        p.copy_(t)
            if self.reset_optimizer:
                optimizer.optimizer.state.clear()
            task_losses = [self._inner_step(optimizer, self.datamodule.next_batch(task)) for _ in range(self.inner_steps)]
            mean_loss = torch.stack(task_losses).mean()
            losses.append(mean_loss)
            self.log(f"train_loss_{task}", mean_loss, on_step=True, on_epoch=False)
            if not plain:
                with torch.no_grad():
                    delta = [p.detach() - t for p, t in zip(params, theta)]
                    if delta_sum is None:
                        delta_sum = delta
                    else:
                        for s, d in zip(delta_sum, delta):
                            s.add_(d)
        if not plain:
            with torch.no_grad():
                scale = epsilon / self.tasks_per_step
                if self.trainer.world_size > 1:
                    flat = torch.cat([d.reshape(-1) for d in delta_sum])
                    flat = self.trainer.strategy.reduce(flat, reduce_op="mean")
                    delta_sum = list(torch.split(flat, [d.numel() for d in delta_sum]))
                    delta_sum = [d.view_as(p) for d, p in zip(delta_sum, params)]
                for p, t, d in zip(params, theta, delta_sum):
                    t.add_(d, alpha=scale)
                    p.copy_(t)
        self.outer_step += 1
        loss = torch.stack(losses).mean()
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("outer_lr", epsilon, on_step=True, on_epoch=False)
        return loss

    # -- validation and test: per task, on θ ---------------------------------------------

    def _evaluate(self, batch, subset: str):
        torch.set_grad_enabled(self.grad_enabled)
        names = self.datamodule.task_names
        task = names[int(batch[properties.task][0])]
        pred, targets, loss = self._predict_with_loss(batch)
        n = len(batch["_idx"])
        acc = self._eval.setdefault(subset, {}).setdefault(task, {"loss": 0.0, "n": 0})
        acc["loss"] += float(loss.detach()) * n
        acc["n"] += n
        for o in self.outputs:
            if o.target_property not in targets:
                continue
            err = (pred[o.name].detach() - targets[o.target_property]).double()
            acc[f"{o.name}_abs"] = acc.get(f"{o.name}_abs", 0.0) + float(err.abs().sum())
            acc[f"{o.name}_sq"] = acc.get(f"{o.name}_sq", 0.0) + float((err**2).sum())
            acc[f"{o.name}_count"] = acc.get(f"{o.name}_count", 0) + err.numel()
        return loss

    def _log_evaluation(self, subset: str) -> Optional[float]:
        per_task = self._eval.pop(subset, {})
        if not per_task:
            return None
        task_losses = []
        for task, acc in per_task.items():
            task_loss = acc["loss"] / max(acc["n"], 1)
            task_losses.append(task_loss)
            self.log(f"{subset}_{task}_loss", task_loss, sync_dist=True)
            for o in self.outputs:
                count = acc.get(f"{o.name}_count", 0)
                if count:
                    self.log(f"{subset}_{task}_{o.name}_mae", acc[f"{o.name}_abs"] / count, sync_dist=True)
                    self.log(f"{subset}_{task}_{o.name}_rmse", math.sqrt(acc[f"{o.name}_sq"] / count), sync_dist=True)
        mean = float(np.mean(task_losses))
        self.log(f"{subset}_loss", mean, prog_bar=True, sync_dist=True)
        return mean

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return {"val_loss": self._evaluate(batch, "val")}

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return {"test_loss": self._evaluate(batch, "test")}

    def on_validation_epoch_start(self):
        self._eval.pop("val", None)

    def on_test_epoch_start(self):
        self._eval.pop("test", None)

    def on_validation_epoch_end(self):
        val_loss = self._log_evaluation("val")
        if val_loss is None or self.trainer.sanity_checking:
            return
        for scheduler in self._schedulers():
            if isinstance(scheduler, ReduceLROnPlateau):
                scheduler.step(val_loss)

    def on_test_epoch_end(self):
        self._log_evaluation("test")

    def on_train_epoch_end(self):
        for scheduler in self._schedulers():
            if not isinstance(scheduler, ReduceLROnPlateau):
                scheduler.step()

    def _schedulers(self) -> List:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]
