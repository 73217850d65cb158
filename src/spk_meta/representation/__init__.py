"""Representations (SchNetPack-compatible): ``ANI`` atomic environment vectors."""

from spk_meta.representation.ani import ANI

__all__ = ["ANI"]
