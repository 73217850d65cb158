"""First-order MAML (Finn et al. 2017; Nichol et al. 2018) over levels of theory.

One outer step, for each of ``tasks_per_step`` tasks t drawn with the data module's
weights:

1. φ ← θ; k inner optimiser steps on k *support* batches of t (the configured optimiser,
   as in Reptile);
2. g_t = ∇ L_t(φ) on a fresh *query* batch of t (first order: the gradient at φ is used as
   the gradient at θ);

then θ is restored and the outer optimiser (Adam with its own learning rate ``outer_lr``)
takes one step with mean_t(g_t). Unlike Reptile, θ moves along the query gradient at the
adapted weights rather than towards the adapted weights. ``trainer.global_step`` counts
k inner steps per task plus one outer step.

Several processes (``trainer=reptile_ddp``, :class:`spk_meta.train.ReptileDDPStrategy`):
each rank draws its own ``tasks_per_step`` tasks and batches and adapts with its own inner
optimiser; the ranks' mean query gradients are averaged with one all-reduce, and every
rank takes the same outer Adam step, so θ and the outer Adam stay identical on all ranks.
N processes are FOMAML with N × ``tasks_per_step`` tasks per outer step. Checkpoints keep
every rank's inner optimiser state (it differs per rank, see
:meth:`ReptileTask.on_save_checkpoint`); Lightning keeps the outer Adam's.
"""

from typing import List, Optional, Tuple

import torch
from lightning_fabric.utilities.apply_func import move_data_to_device

from spk_meta.task.reptile import ReptileTask

__all__ = ["FOMAMLTask"]


class FOMAMLTask(ReptileTask):
    """First-order MAML as a SchNetPack task (``task=fomaml``).

    Args:
        outer_lr: learning rate of the outer Adam (not Reptile's ε).
        outer_betas: its betas.
        inner_steps, tasks_per_step, reset_optimizer, inner_beta1, gradient_clip_val,
            sampling_seed, and SchNetPack's task arguments: as :class:`ReptileTask` (the
            configured optimiser is the inner one).
    """

    def __init__(self, *args, outer_lr: float = 1e-3, outer_betas: Tuple[float, float] = (0.9, 0.999), **kwargs):
        kwargs.pop("outer_lr_final", None)
        kwargs.pop("outer_lr_anneal_steps", None)
        super().__init__(*args, outer_lr=1.0, **kwargs)
        self.meta_lr = float(outer_lr)
        self.outer_betas = (float(outer_betas[0]), float(outer_betas[1]))

    def setup(self, stage: Optional[str] = None):
        super().setup(stage)
        if stage == "fit":
            # k support batches + 1 query batch per task
            self.datamodule.serve_episodes((self.inner_steps + 1) * self.tasks_per_step)

    def optimizer_steps_per_outer_step(self) -> int:
        return self.inner_steps * self.tasks_per_step + 1

    def _inner_optimizer(self):
        """The inner optimiser (``optimizers()`` is ``[inner, outer]``); the outer Adam is the
        same on every rank and saved by Lightning."""
        return self.optimizers()[0]

    def configure_optimizers(self):
        conf = super().configure_optimizers()
        outer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad], lr=self.meta_lr, betas=self.outer_betas
        )
        if isinstance(conf, tuple):
            optimizers, schedulers = conf
            return [*optimizers, outer], schedulers
        return [conf, outer]

    def training_step(self, batch, batch_idx):
        inner, outer = self.optimizers()
        params = [p for p in self.model.parameters() if p.requires_grad]
        theta = [p.detach().clone() for p in params]
        grads = [torch.zeros_like(p) for p in params]
        losses = []
        for _ in range(self.tasks_per_step):
            task = self.sample_task()
            with torch.no_grad():
                for p, t in zip(params, theta):
                    p.copy_(t)
            if self.reset_optimizer:
                inner.optimizer.state.clear()
            for _ in range(self.inner_steps):
                self._inner_step(inner, self.datamodule.next_batch(task))
            query = move_data_to_device(self.datamodule.next_batch(task), self.device)
            _, _, loss = self._predict_with_loss(query)
            task_grads = torch.autograd.grad(loss, params, allow_unused=True)
            for g, tg in zip(grads, task_grads):
                if tg is not None:
                    g.add_(tg)
            losses.append(loss.detach())
            self.log(f"train_loss_{task}", loss.detach(), on_step=True, on_epoch=False)
        with torch.no_grad():
            for p, t in zip(params, theta):
                p.copy_(t)
            if self.trainer.world_size > 1:
                grads = self._mean_over_ranks([g / self.tasks_per_step for g in grads])
                for p, g in zip(params, grads):
                    p.grad = g
            else:
                for p, g in zip(params, grads):
                    p.grad = g / self.tasks_per_step
        outer.step()
        outer.zero_grad()
        self.outer_step += 1
        loss = torch.stack(losses).mean()
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _mean_over_ranks(self, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
        """Element-wise mean of ``tensors`` over all ranks: one all-reduce of their
        concatenation (same shapes and order on every rank), split back into their shapes."""
        flat = torch.cat([t.reshape(-1) for t in tensors])
        flat = self.trainer.strategy.reduce(flat, reduce_op="mean")
        parts = torch.split(flat, [t.numel() for t in tensors])
        return [part.view_as(t) for part, t in zip(parts, tensors)]
