"""The one place that reads SchNetPack's private attributes.

SchNetPack 2.2 exposes neither a neighbour-list transform's cutoff nor the property an
``AddOffsets``/``RemoveOffsets`` acts on; both live in private attributes (``_cutoff``,
``_property``). Everything in spk-meta that needs them calls these functions, and
``tests/test_schnetpack_adapter.py`` builds the real transforms, so a SchNetPack release
that renames them fails that test (and these functions raise a message naming the
attribute and the SchNetPack version) instead of silently skipping a check.
"""

from typing import Optional

import torch
from schnetpack.transform import AddOffsets, RemoveOffsets
from schnetpack.transform.neighborlist import CachedNeighborList, NeighborListTransform, SkinNeighborList

__all__ = ["neighbor_list_cutoff", "offsets_property"]


def _private(obj: torch.nn.Module, name: str):
    try:
        return getattr(obj, name)
    except AttributeError:
        import schnetpack

        raise AttributeError(
            f"{type(obj).__name__} has no attribute {name!r} in schnetpack {schnetpack.__version__}: "
            "spk_meta.utils.schnetpack_compat must be updated for this SchNetPack release"
        ) from None


def neighbor_list_cutoff(transform: torch.nn.Module) -> Optional[float]:
    """The cutoff (Ang) of a SchNetPack neighbour-list transform; ``None`` for any other transform.

    Handles the plain lists (``ASENeighborList``, ``MatScipyNeighborList``, ...),
    ``CachedNeighborList`` (the cutoff of the list it caches) and ``SkinNeighborList``
    (its own cutoff, without the skin).
    """
    if isinstance(transform, SkinNeighborList):
        return float(transform.cutoff)
    if isinstance(transform, CachedNeighborList):
        return neighbor_list_cutoff(transform.neighbor_list)
    if isinstance(transform, NeighborListTransform):
        return float(_private(transform, "_cutoff"))
    return None


def offsets_property(offsets: torch.nn.Module) -> str:
    """The property key an ``AddOffsets`` or ``RemoveOffsets`` transform acts on (e.g. ``"energy"``)."""
    if not isinstance(offsets, (AddOffsets, RemoveOffsets)):
        raise TypeError(f"expected SchNetPack's AddOffsets or RemoveOffsets, got {type(offsets).__name__}")
    return str(_private(offsets, "_property"))
