"""SchNetPack's ``AtomisticTask``, able to reload its checkpoints under torch >= 2.6 without
running code from them."""

import logging
import os
from typing import Any, Optional

import schnetpack as spk
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from spk_meta.atomistic.multihead import best_head_pending, choose_best_head
from spk_meta.model.preflight import (
    check_model_against_data,
    data_elements,
    drop_unlabelled_outputs,
    restore_fitted_references,
    warn_untrained_elements,
)
from spk_meta.model.loading import file_safe_globals
from spk_meta.train.checkpoint import TRUST_HINT, RunCheckpointIO


log = logging.getLogger(__name__)


class AtomisticTask(spk.task.AtomisticTask):
    """Drop-in for ``schnetpack.AtomisticTask`` (same arguments, same behaviour).

    Additions:

    - ``load_from_checkpoint``: loads weights-only with the allow-list of
      :mod:`spk_meta.model.loading` (SchNetPack's hyperparameters hold the model itself, so
      torch's bare weights-only load fails); a file that names anything else is refused
      unless the caller passes ``weights_only=False``. ``spktrain`` calls this for its best
      checkpoint after training. A trainer without :class:`~spk_meta.train.RunCheckpointIO`
      (SchNetPack's stock trainer config) gets one at ``setup``.
    - ``setup("fit")`` checks the model against the data before the first step (neighbour
      list cutoff vs the model's cutoff, elements vs the model's element networks) and
      raises :class:`spk_meta.model.ModelDataMismatch` naming what does not fit; warns about
      elements a pre-trained model never saw, and records ``model.trained_elements`` and
      ``model.energy_level``: the level of theory whose energy reference the model adds
      back, ``None`` for a multi-level model with no active level (it predicts
      reference-subtracted energies; ``spkmeta evaluate`` then reports no energy errors).
    """

    def setup(self, stage=None):
        self._use_run_checkpoint_io()
        dm = self.trainer.datamodule
        if stage == "fit" and dm is not None:
            elements = data_elements(dm)  # once: without metadata it reads every row
            check_model_against_data(self.model, dm, elements)
            warn_untrained_elements(self.model, dm, elements)
            restore_fitted_references(self.model, dm)
            # recorded in the saved model, so that fine-tuning can warn about new elements
            seen = {int(z) for z in getattr(self.model, "trained_elements", [])}
            for _, found in elements:
                seen |= set(found)
            self.model.trained_elements = sorted(seen)
            self._record_energy_level(dm)
        drop_unlabelled_outputs(self, dm)  # energy-only data: no loss on forces, one warning
        if stage == "fit" and dm is not None and best_head_pending(self.model):
            self._choose_best_head(dm)
        super().setup(stage)

    def _choose_best_head(self, dm) -> None:
        """``model.head=best`` on a multi-head pre-trained model: keep the head with the lowest
        loss on the target's training batches, before any update (logged)."""
        chosen = choose_best_head(self.model, dm.train_dataloader(), self.predict_without_postprocessing, self.loss_fn)
        if chosen is not None:
            best, losses = chosen
            log.info("model.head=best: '%s' (training-frame loss per head: %s)", best,
                     ", ".join(f"{k} {v:.4g}" for k, v in losses.items()))

    def _record_energy_level(self, dm) -> None:
        """``model.energy_level``: the active task of a :class:`~spk_meta.data.TaskDataModule`
        (its only task in single-task mode), ``None`` with several and none active."""
        if hasattr(dm, "task_names") and hasattr(dm, "active_task"):
            level = dm.active_task
            self.model.energy_level = None if level is None else str(level)
        else:  # another data module says nothing about levels: drop a pre-trained model's
            self.model.__dict__.pop("energy_level", None)

    def _use_run_checkpoint_io(self) -> None:
        """Without our checkpoint plugin in the trainer (a stock SchNetPack trainer
        config: Lightning's plain ``TorchCheckpointIO``), install one, so that
        ``trainer.test(ckpt_path="best")`` and resuming work under torch >= 2.6."""
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = RunCheckpointIO()

    @classmethod
    def load_from_checkpoint(
        cls, checkpoint_path: Any, *args: Any, weights_only: Optional[bool] = None, **kwargs: Any
    ):
        local = isinstance(checkpoint_path, (str, os.PathLike)) and not str(checkpoint_path).startswith(
            ("http://", "https://")
        )
        if weights_only is not None or not local:  # the caller's choice; torch's safe default
            return super().load_from_checkpoint(checkpoint_path, *args, weights_only=weights_only, **kwargs)
        allowed = file_safe_globals(checkpoint_path, trust=False, hint=TRUST_HINT)
        with torch.serialization.safe_globals(allowed):
            return super().load_from_checkpoint(checkpoint_path, *args, weights_only=True, **kwargs)
