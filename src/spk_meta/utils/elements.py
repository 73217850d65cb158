"""Elements: one home for parsing element lists (ASE's ``ase.symbols.symbols2numbers``).

Used by the ANI representation, the element-wise output networks (with
:mod:`spk_meta.utils.species` for the tensor lookup) and the converters' ``--elements``
filter. No torch here, so the converters stay light.
"""

from typing import Iterable, List, Sequence, Tuple, Union

from ase.data import chemical_symbols
from ase.symbols import symbols2numbers

__all__ = ["atomic_numbers_of", "element_symbols"]

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
