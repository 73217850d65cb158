"""Elements: one home for parsing element lists and mapping atomic numbers to network indices.

Used by the ANI representation, the element-wise output networks and the converters'
``--elements`` filter. Parsing is ASE's (``ase.symbols.symbols2numbers``); the lookup is
TorchScript-compatible (``spkdeploy``).
"""

from typing import Iterable, List, Sequence, Tuple, Union

import torch
from ase.data import chemical_symbols
from ase.symbols import symbols2numbers

__all__ = ["atomic_numbers_of", "element_symbols", "species_lookup_table", "lookup_species"]

Element = Union[int, str]


def atomic_numbers_of(elements: Union[str, Iterable[Element]]) -> List[int]:
    """``"H,C,N,O"``, ``["H", 6, "7"]`` -> atomic numbers, in order.

    Raises:
        ValueError: naming an unknown symbol or atomic number.
    """
    if isinstance(elements, str):
        elements = [e for e in elements.split(",") if e.strip()]
    out = []
    for e in elements:
        if isinstance(e, str):
            e = e.strip()
            if e.isdigit():
                e = int(e)
        if isinstance(e, str):
            try:
                (z,) = symbols2numbers([e])
            except KeyError:
                z = 0
            if z == 0:  # ASE knows "X" as the dummy atom; no element for us
                raise ValueError(f"Unknown chemical symbol {e!r}")
        else:
            z = int(e)
            if not 0 < z < len(chemical_symbols):
                raise ValueError(f"Unknown atomic number {z}")
        out.append(int(z))
    return out


def element_symbols(elements: Sequence[Element]) -> Tuple[str, ...]:
    """Atomic numbers and/or symbols -> chemical symbols, in order.

    Raises:
        ValueError: unknown elements, duplicates, or an empty list.
    """
    numbers = atomic_numbers_of(elements)
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"Duplicate elements in {list(elements)}")
    if not numbers:
        raise ValueError("At least one element is required")
    return tuple(chemical_symbols[z] for z in numbers)


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

