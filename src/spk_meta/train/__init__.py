"""Training utilities that plug into SchNetPack's ``spktrain`` flow."""

from spk_meta.train.checkpoint import RunCheckpointIO, is_trusted_checkpoint, trust_directory

__all__ = ["RunCheckpointIO", "is_trusted_checkpoint", "trust_directory"]
