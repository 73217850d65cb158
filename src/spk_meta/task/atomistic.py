"""SchNetPack's ``AtomisticTask``, able to reload the run's own checkpoints under torch >= 2.6."""

from typing import Any, Optional

import schnetpack as spk

from spk_meta.model.compat import check_model_against_data, data_elements, warn_untrained_elements
from spk_meta.train.checkpoint import trusted_weights_only


class AtomisticTask(spk.task.AtomisticTask):
    """Drop-in for ``schnetpack.AtomisticTask`` (same arguments, same behaviour).

    Two additions:

    - ``load_from_checkpoint``: a checkpoint this run wrote (see
      :mod:`spk_meta.train.checkpoint`) loads with ``weights_only=False``, which SchNetPack's
      hyperparameters (the model itself) need; others keep torch's safe default.
      ``spktrain`` calls this for its best checkpoint after training.
    - ``setup("fit")`` checks the model against the data before the first step (neighbour
      list cutoff vs the model's cutoff, elements vs the model's element networks) and
      raises :class:`spk_meta.model.ModelDataMismatch` naming what does not fit; warns about
      elements a pre-trained model never saw, and records ``model.trained_elements``.
    """

    def setup(self, stage=None):
        dm = self.trainer.datamodule
        if stage == "fit" and dm is not None:
            check_model_against_data(self.model, dm)
            warn_untrained_elements(self.model, dm)
            # recorded in the saved model, so that fine-tuning can warn about new elements
            seen = {int(z) for z in getattr(self.model, "trained_elements", [])}
            for _, elements in data_elements(dm):
                seen |= set(elements)
            self.model.trained_elements = sorted(seen)
        super().setup(stage)

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
