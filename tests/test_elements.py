"""Element helpers (one home for parsing and lookup) and ANI layer sizes read from torchani."""

import pytest
import torch

from spk_meta.atomistic.elementwise import preset_layout
from spk_meta.utils.elements import atomic_numbers_of, element_symbols
from spk_meta.utils.species import lookup_species, species_lookup_table


def test_parsing_symbols_numbers_and_strings():
    assert atomic_numbers_of("H, C,7 ,O") == [1, 6, 7, 8]
    assert atomic_numbers_of(["Cl", 1, "16"]) == [17, 1, 16]
    assert element_symbols([8, "H"]) == ("O", "H")
    for bad, msg in (("Xx", "Unknown chemical symbol 'Xx'"), ("X", "Unknown chemical symbol 'X'"), (200, "Unknown atomic number 200")):
        with pytest.raises(ValueError, match=msg):
            atomic_numbers_of([bad])
    with pytest.raises(ValueError, match="Duplicate"):
        element_symbols(["H", 1])


def test_lookup_maps_numbers_and_names_unsupported_ones():
    table = species_lookup_table(["H", "C", "O"])
    assert lookup_species(torch.tensor([8, 1, 6, 1]), table, ["H", "C", "O"], [], "x").tolist() == [2, 0, 1, 0]
    from ase.data import chemical_symbols

    with pytest.raises(ValueError, match=r"net does not support element\(s\) N \(Z=7\); supported elements: H, C, O"):
        lookup_species(torch.tensor([1, 7]), table, ["H", "C", "O"], list(chemical_symbols), "net")


def test_ani_layer_sizes_come_from_torchani():
    """The ANI-1x sizes published by Smith et al. (and ANI-2x's), as torchani builds them."""
    n_in, layout = preset_layout("ani1x")
    assert n_in == 384
    assert layout == {"H": (160, 128, 96), "C": (144, 112, 96), "N": (128, 112, 96), "O": (128, 112, 96)}
    n_in, layout = preset_layout("ani2x")
    assert n_in == 1008 and layout["H"] == (256, 192, 160) and layout["Cl"] == (160, 128, 96)


def test_the_converters_do_not_import_torch():
    """`spkmeta convert` needs no torch or Lightning (seconds per call); the writer spells
    SchNetPack's property keys, which must agree with SchNetPack's."""
    import subprocess
    import sys

    code = ("import sys, spk_meta.convert, spk_meta.data.writer, spk_meta.data.store; "
            "print(sorted(m for m in ('torch', 'pytorch_lightning', 'schnetpack') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from schnetpack import properties

    from spk_meta.data.writer import ENERGY, FORCES

    assert (ENERGY, FORCES) == (properties.energy, properties.forces)
