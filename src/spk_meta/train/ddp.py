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

import multiprocessing

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy


@torch.no_grad()
def broadcast_module_state(module: torch.nn.Module, src: int = 0) -> int:
    """Overwrite every rank's parameters and buffers with those of rank ``src``, in place.

    What ``DistributedDataParallel``'s constructor does, with public ``torch.distributed``
    calls only: one ``broadcast`` per tensor of ``module.state_dict()``, in the state
    dict's order (identical on every rank, since every rank builds the same module). The
    state dict's tensors share storage with the parameters and buffers, so the broadcast
    writes into the module itself. Tensors that a collective cannot take directly
    (non-contiguous, ``bool``) travel as a contiguous copy and are copied back.

    A no-op outside an initialised process group. Returns the number of tensors sent.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    sent = 0
    seen = set()
    for tensor in module.state_dict().values():
        if not isinstance(tensor, torch.Tensor) or tensor.numel() == 0:
            continue  # e.g. a module's non-tensor extra state
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if key in seen:  # tied weights appear once per name
            continue
        seen.add(key)
        if tensor.is_contiguous() and tensor.dtype != torch.bool:
            dist.broadcast(tensor, src)
        else:
            wire = tensor.to(torch.uint8 if tensor.dtype == torch.bool else tensor.dtype).contiguous()
            dist.broadcast(wire, src)
            tensor.copy_(wire.to(tensor.dtype))
        sent += 1
    return sent


class ReptileDDPStrategy(DDPStrategy):
    """``DDPStrategy`` (same arguments) that does not wrap the module in DDP."""

    strategy_name = "reptile_ddp"

    def configure_ddp(self) -> None:
        # identical θ on every rank, as DDP's constructor would have ensured
        broadcast_module_state(self.model)

    def teardown(self) -> None:
        super().teardown()
        if multiprocessing.parent_process() is not None and dist.is_available() and dist.is_initialized():
            # A worker started by Lightning's multiprocessing launcher (start_method spawn or
            # fork) returns to the launcher and exits right after this; leaving its gloo
            # process group to the interpreter's exit occasionally aborted the process
            # ("terminate called without an active exception") after a finished fit.
            # Processes started as scripts (spktrain's DDP) keep theirs for trainer.test.
            dist.destroy_process_group()
