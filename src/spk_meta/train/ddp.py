"""A DDP strategy for Reptile: one process per device, no gradient synchronisation.

Under Reptile each rank adapts the meta-weights θ to its *own* sampled task for k inner
steps, so gradients must not be averaged across ranks (DDP's all-reduce would mix the
tasks after every inner step, and its reducer refuses k backward passes in one step).
:class:`ReptileDDPStrategy` is Lightning's ``DDPStrategy`` without the
``DistributedDataParallel`` wrapper: it starts the processes and the process group,
broadcasts θ from rank 0 when fitting starts, and leaves the only communication, the
all-reduce of ``φ − θ`` per outer step, to :class:`~spk_meta.task.ReptileTask`.

Use it with ``use_distributed_sampler=False`` (each rank draws its own tasks and batches)::

    trainer:
      devices: 4
      use_distributed_sampler: false
      strategy:
        _target_: spk_meta.train.ReptileDDPStrategy
"""

from pytorch_lightning.overrides.distributed import _sync_module_states
from pytorch_lightning.strategies import DDPStrategy


class ReptileDDPStrategy(DDPStrategy):
    """``DDPStrategy`` (same arguments) that does not wrap the module in DDP."""

    strategy_name = "reptile_ddp"

    def configure_ddp(self) -> None:
        # identical θ on every rank, as DDP's constructor would have ensured
        _sync_module_states(self.model)
