"""SchNetPack's private attributes that spk-meta reads, through its one adapter module.

If a SchNetPack release renames ``_cutoff`` or ``_property``, these tests fail (the
adapter raises a message that names the attribute) instead of the model/data checks
silently finding no cutoff or no offsets."""

import pytest
import torch
from schnetpack.transform import (
    AddOffsets,
    ASENeighborList,
    CachedNeighborList,
    CastTo32,
    MatScipyNeighborList,
    RemoveOffsets,
    SkinNeighborList,
)

from spk_meta.utils.schnetpack_compat import neighbor_list_cutoff, offsets_property


@pytest.mark.parametrize("cls", [MatScipyNeighborList, ASENeighborList])
def test_neighbor_list_cutoff_reads_the_real_transform(cls):
    assert neighbor_list_cutoff(cls(5.0)) == 5.0
    assert neighbor_list_cutoff(cls(cutoff=3.25)) == 3.25


def test_neighbor_list_cutoff_of_wrappers_and_other_transforms(tmp_path):
    cached = CachedNeighborList(str(tmp_path / "cache"), MatScipyNeighborList(4.5))
    assert neighbor_list_cutoff(cached) == 4.5
    skin = SkinNeighborList(MatScipyNeighborList(5.0), cutoff_skin=0.3)
    assert neighbor_list_cutoff(skin) == 5.0  # the physical cutoff, not cutoff + skin
    assert neighbor_list_cutoff(CastTo32()) is None


def test_offsets_property_reads_the_real_transform():
    add = AddOffsets("energy", add_mean=True, property_mean=torch.tensor(-1.0))
    assert offsets_property(add) == "energy"
    assert offsets_property(RemoveOffsets("energy_U0", remove_mean=True, property_mean=torch.tensor(0.5))) == "energy_U0"
    with pytest.raises(TypeError, match="AddOffsets or RemoveOffsets, got CastTo32"):
        offsets_property(CastTo32())


def test_a_renamed_attribute_is_named_in_the_error():
    """What users see if SchNetPack renames the attribute: the attribute and the module to fix."""
    nl = MatScipyNeighborList(5.0)
    del nl._cutoff
    with pytest.raises(AttributeError, match=r"MatScipyNeighborList has no attribute '_cutoff' in schnetpack .*schnetpack_compat"):
        neighbor_list_cutoff(nl)
    add = AddOffsets("energy")
    del add._property
    with pytest.raises(AttributeError, match=r"AddOffsets has no attribute '_property'"):
        offsets_property(add)
