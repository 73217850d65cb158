"""Output modules (SchNetPack-compatible): ``ElementwiseAtomwise`` element-specific MLPs and
``MultiHead``, one output head per level of theory on a shared representation."""

from spk_meta.atomistic.elementwise import ElementwiseAtomwise, copy_element_weights
from spk_meta.atomistic.multihead import (
    MultiHead,
    choose_best_head,
    choose_head,
    find_multihead,
    head_names,
    select_head,
)

__all__ = [
    "ElementwiseAtomwise",
    "copy_element_weights",
    "MultiHead",
    "choose_best_head",
    "choose_head",
    "find_multihead",
    "head_names",
    "select_head",
]
