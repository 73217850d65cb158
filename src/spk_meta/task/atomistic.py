"""SchNetPack's ``AtomisticTask``, able to reload the run's own checkpoints under torch >= 2.6."""

from typing import Any, Optional

import schnetpack as spk
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from spk_meta.model.compat import (
    check_model_against_data,
    data_elements,
    restore_fitted_references,
    warn_untrained_elements,
)
from spk_meta.train.checkpoint import RunCheckpointIO, trusted_weights_only


class AtomisticTask(spk.task.AtomisticTask):
    """Drop-in for ``schnetpack.AtomisticTask`` (same arguments, same behaviour).

    Additions:

    - ``load_from_checkpoint``: a checkpoint this run wrote (see
      :mod:`spk_meta.train.checkpoint`) loads with ``weights_only=False``, which SchNetPack's
      hyperparameters (the model itself) need; others keep torch's safe default.
      ``spktrain`` calls this for its best checkpoint after training. A trainer without
      :class:`~spk_meta.train.RunCheckpointIO` (SchNetPack's stock trainer config) gets
      one at ``setup``, trusting only its checkpoint callback's directory.
    - ``setup("fit")`` checks the model against the data before the first step (neighbour
      list cutoff vs the model's cutoff, elements vs the model's element networks) and
      raises :class:`spk_meta.model.ModelDataMismatch` naming what does not fit; warns about
      elements a pre-trained model never saw, and records ``model.trained_elements``.
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
        super().setup(stage)

    def _use_run_checkpoint_io(self) -> None:
        """Without our checkpoint plugin in the trainer (a stock SchNetPack trainer
        config), install it, trusting only this trainer's checkpoint directory, so that
        ``trainer.test(ckpt_path="best")`` and resuming work under torch >= 2.6."""
        strategy = self.trainer.strategy
        current = getattr(strategy, "_checkpoint_io", None)
        callback = self.trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        if (current is None or type(current) is TorchCheckpointIO) and dirpath:
            strategy.checkpoint_io = RunCheckpointIO(run_dir=dirpath)

    @classmethod
    def load_from_checkpoint(
        cls, checkpoint_path: Any, *args: Any, weights_only: Optional[bool] = None, **kwargs: Any
    ):
        return super().load_from_checkpoint(
            checkpoint_path,
            *args,
            weights_only=trusted_weights_only(checkpoint_path, weights_only),
            **kwargs,
        )
