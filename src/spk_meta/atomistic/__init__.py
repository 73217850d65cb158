"""Output modules (SchNetPack-compatible): ``ElementwiseAtomwise`` element-specific MLPs."""

from spk_meta.atomistic.elementwise import ElementwiseAtomwise, copy_element_weights

__all__ = ["ElementwiseAtomwise", "copy_element_weights"]
