"""Atomic numbers -> indices of a model's element list, as tensors (TorchScript-compatible,
so ``spkdeploy`` can export the ANI representation and the element-wise networks)."""

from typing import List, Sequence

import torch
from ase.data import chemical_symbols

from spk_meta.utils.elements import atomic_numbers_of

__all__ = ["species_lookup_table", "lookup_species"]


def species_lookup_table(symbols: Sequence[str]) -> torch.Tensor:
    """Long tensor ``(119,)`` mapping atomic number -> element index, -1 if unsupported."""
    table = torch.full((len(chemical_symbols),), -1, dtype=torch.long)
    for idx, z in enumerate(atomic_numbers_of(list(symbols))):
        table[z] = idx
    return table


def lookup_species(
    atomic_numbers: torch.Tensor,
    table: torch.Tensor,
    supported: List[str],
    symbols: List[str],
    who: str,
) -> torch.Tensor:
    """Map atomic numbers to element indices via ``table``; TorchScript-compatible.

    Args:
        atomic_numbers: ``(n_atoms,)`` integer tensor.
        table: ``(119,)`` long tensor from :func:`species_lookup_table`.
        supported: supported chemical symbols (for the error message).
        symbols: all chemical symbols indexed by atomic number (``ase.data``).
        who: module name for the error message.

    Returns:
        ``(n_atoms,)`` long tensor of element indices.

    Raises:
        ValueError: naming every unsupported element, e.g. ``Si (Z=14)``.
    """
    z = atomic_numbers.long()
    n = table.shape[0]
    idx = table[z.clamp(0, n - 1)]
    bad = (idx < 0) | (z < 0) | (z >= n)
    if bool(bad.any()):
        bad_z: List[int] = torch.unique(z[bad]).tolist()
        names: List[str] = []
        for b in bad_z:
            if 0 < b < len(symbols):
                names.append("{} (Z={})".format(symbols[b], b))
            else:
                names.append("Z={}".format(b))
        raise ValueError(
            "{} does not support element(s) {}; supported elements: {}".format(
                who, ", ".join(names), ", ".join(supported)
            )
        )
    return idx

