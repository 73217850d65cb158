"""Training utilities that plug into SchNetPack's ``spktrain`` flow."""

from spk_meta.train.checkpoint import RunCheckpointIO
from spk_meta.train.ddp import ReptileDDPStrategy

__all__ = ["ReptileDDPStrategy", "RunCheckpointIO"]
