"""Training utilities that plug into SchNetPack's ``spktrain`` flow."""

from spk_meta.train.checkpoint import RunCheckpointIO, is_trusted_checkpoint, trust_directory
from spk_meta.train.ddp import ReptileDDPStrategy

__all__ = ["ReptileDDPStrategy", "RunCheckpointIO", "is_trusted_checkpoint", "trust_directory"]
