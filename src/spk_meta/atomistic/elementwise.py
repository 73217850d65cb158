"""Element-wise atomic networks (ANI-style) as a SchNetPack output module.

``ElementwiseAtomwise`` is the SchNetPack counterpart of torchani's ``ANINetworks``:
one MLP per element, selected by the atomic number, applied to the atom's
representation (e.g. the ANI AEV); the atomic outputs are summed per molecule.
Each element network *is* a ``torchani.nn.AtomicNetwork`` stored in a
``ModuleDict`` called ``atomics`` keyed by chemical symbol, so the parameter names
are the same as in ``ANINetworks`` (``atomics.H.layers.0.weight``, ...,
``atomics.H.final_layer.bias``) and state dicts can be exchanged directly;
``copy_element_weights`` copies by symbol and layer order, also from legacy
``torchani.nn.ANIModel`` containers made of ``torch.nn.Sequential``.
"""

import copy
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from ase.data import atomic_numbers, chemical_symbols
from schnetpack import properties
from schnetpack.nn import scatter_add
from torch import nn
from torchani.nn import ANINetworks, AtomicNetwork, parse_activation

from spk_meta.utils.elements import element_symbols
from spk_meta.utils.species import lookup_species, species_lookup_table

__all__ = ["ElementwiseAtomwise", "copy_element_weights", "OUTPUT_PRESETS"]

#: Preset -> torchani's ``ANINetworks`` constructor; the layer sizes are read from the
#: networks it builds, so they follow torchani (CELU(alpha=0.1), biases).
OUTPUT_PRESETS = {"ani1x": ANINetworks.like_1x, "ani2x": ANINetworks.like_2x}


def preset_layout(preset: str, symbols: Optional[Sequence[str]] = None) -> Tuple[int, Dict[str, Tuple[int, ...]]]:
    """``(input width, {symbol: hidden sizes})`` of torchani's preset networks.

    Args:
        preset: ``"ani1x"`` or ``"ani2x"``.
        symbols: elements to size (torchani's default sizes for elements outside the
            preset); default: the preset's own elements.
    """
    build = OUTPUT_PRESETS[preset]
    nets = build() if symbols is None else build(symbols=tuple(symbols))
    layout, n_in = {}, None
    for symbol, net in nets.atomics.items():
        dims = [layer.weight.shape for layer in _linear_layers(net)]
        n_in = int(dims[0][1])
        layout[symbol] = tuple(int(d[0]) for d in dims[:-1])
    return n_in, layout


def _resolve_layout(
    preset: Optional[str],
    elements: Optional[Sequence[Union[int, str]]],
    hidden: Optional[Mapping[str, Sequence[int]]],
    n_in: Optional[int],
) -> Tuple[int, Dict[str, Tuple[int, ...]]]:
    """Return ``(n_in, {symbol: hidden sizes})`` from preset, elements and overrides."""
    if preset is None:
        preset_n_in, preset_hidden = None, {}
    elif preset in OUTPUT_PRESETS:
        preset_n_in, preset_hidden = preset_layout(preset)
    else:
        raise ValueError(f"Unknown preset {preset!r}; use one of {list(OUTPUT_PRESETS)} or None")
    symbols = element_symbols(list(preset_hidden) if elements is None else elements)
    hidden = {str(k): tuple(int(n) for n in v) for k, v in (hidden or {}).items()}
    extra = sorted(set(hidden) - set(symbols))
    if extra:
        raise ValueError(f"`hidden` given for {extra}, which are not in elements {list(symbols)}")
    layout = {}
    for s in symbols:
        if s in hidden:
            layout[s] = hidden[s]
        elif s in preset_hidden:
            layout[s] = preset_hidden[s]
        else:
            raise ValueError(
                f"No hidden layer sizes for element {s}: not in preset {preset!r}; "
                f"pass hidden={{'{s}': [...]}}"
            )
    n_in = preset_n_in if n_in is None else int(n_in)
    if n_in is None:
        raise ValueError("`n_in` is required when preset=None")
    return n_in, layout


class ElementwiseAtomwise(nn.Module):
    """Element-specific MLPs summed per molecule (ANI energy head) for SchNetPack.

    Reads ``inputs["scalar_representation"]`` ``(n_atoms, n_in)`` and
    ``_atomic_numbers`` ``(n_atoms,)``; writes the per-molecule sum, shape
    ``(n_molecules,)``, to ``inputs[output_key]`` and, if ``per_atom_output_key`` is
    set, the atomic contributions ``(n_atoms,)`` to ``inputs[per_atom_output_key]``.
    Molecules are given by ``_idx_m``; the molecule count is ``len(_n_atoms)`` (or
    ``_idx_m[-1] + 1``), as in ``schnetpack.atomistic.Atomwise`` with
    ``aggregation_mode="sum"``. Units are those of the training target (torchani's
    pretrained networks output Hartree). Compatible with ``schnetpack.atomistic.Forces``
    (including stress) and ``schnetpack.transform.AddOffsets``.

    Args:
        n_in: input width (the representation's ``n_atom_basis``); default: the
            preset's AEV length (384 for ``ani1x``, 1008 for ``ani2x``).
        elements: atomic numbers or symbols; default: the preset's elements.
        preset: ``"ani1x"`` (H 160-128-96, C 144-112-96, N/O 128-112-96),
            ``"ani2x"`` (H 256-192-160, C 224-192-160, N/O 192-160-128,
            S/F/Cl 160-128-96) or ``None`` (then ``hidden`` and ``n_in`` are required).
        hidden: per-element hidden sizes, ``{symbol: [int, ...]}``; overrides the preset.
        activation: ``"celu"`` (CELU with alpha=0.1, as ANI), ``"gelu"``, or a module.
        output_key: key of the per-molecule sum (default ``"energy"``).
        per_atom_output_key: optional key of the atomic contributions.
        aggregation_mode: ``"sum"`` (default) or ``"avg"`` (sum divided by ``_n_atoms``).
    """

    def __init__(
        self,
        n_in: Optional[int] = None,
        elements: Optional[Sequence[Union[int, str]]] = None,
        preset: Optional[str] = "ani1x",
        hidden: Optional[Mapping[str, Sequence[int]]] = None,
        activation: Union[str, nn.Module] = "celu",
        output_key: str = properties.energy,
        per_atom_output_key: Optional[str] = None,
        aggregation_mode: str = "sum",
    ):
        super().__init__()
        if aggregation_mode not in ("sum", "avg"):
            raise ValueError(f"aggregation_mode must be 'sum' or 'avg', got {aggregation_mode!r}")
        n_in, layout = _resolve_layout(preset, elements, hidden, n_in)
        self.n_in = n_in
        self.elements: Tuple[str, ...] = tuple(layout)
        self._supported: List[str] = list(self.elements)
        self.supported_atomic_numbers: List[int] = [atomic_numbers[s] for s in self.elements]
        self._symbols: List[str] = list(chemical_symbols)
        self.atomics = nn.ModuleDict(
            {
                s: AtomicNetwork(
                    layer_dims=(n_in, *dims, 1),
                    activation=parse_activation(copy.deepcopy(activation)),
                    bias=True,
                )
                for s, dims in layout.items()
            }
        )
        self.register_buffer("species_index", species_lookup_table(self.elements), persistent=False)
        self.output_key = output_key
        self.per_atom_output_key = per_atom_output_key
        self.aggregation_mode = aggregation_mode
        self.model_outputs: List[str] = [output_key]
        if per_atom_output_key is not None:
            self.model_outputs.append(per_atom_output_key)

    def species_indices(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Map atomic numbers ``(n_atoms,)`` to network indices; ValueError if unsupported."""
        return lookup_species(
            atomic_numbers,
            self.species_index,
            self._supported,
            self._symbols,
            "ElementwiseAtomwise",
        )

    def atomic_outputs(self, elem_idxs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Apply each element's network to its atoms.

        Args:
            elem_idxs: ``(n_atoms,)`` network indices.
            x: ``(n_atoms, n_in)`` representation.

        Returns:
            ``(n_atoms,)`` atomic outputs.
        """
        y = x.new_zeros(x.shape[0])
        for i, net in enumerate(self.atomics.values()):
            selected = (elem_idxs == i).nonzero().view(-1)
            if selected.shape[0] > 0:
                y = y.index_add(0, selected, net(x.index_select(0, selected)).view(-1))
        return y

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Write per-molecule sums ``(n_molecules,)`` (and optional atomic values)."""
        elem_idxs = self.species_indices(inputs[properties.Z])
        y = self.atomic_outputs(elem_idxs, inputs["scalar_representation"])
        if self.per_atom_output_key is not None:
            inputs[self.per_atom_output_key] = y

        idx_m = inputs[properties.idx_m]
        if properties.n_atoms in inputs:
            n_molecules = inputs[properties.n_atoms].shape[0]
        else:
            n_molecules = int(idx_m[-1]) + 1
        y_mol = scatter_add(y, idx_m, dim_size=n_molecules)
        if self.aggregation_mode == "avg":
            y_mol = y_mol / inputs[properties.n_atoms]
        inputs[self.output_key] = y_mol
        return inputs

    @torch.jit.unused
    def to_torchani(self) -> ANINetworks:
        """A torchani ``ANINetworks`` with copies of these networks (same element order)."""
        return ANINetworks({s: copy.deepcopy(net) for s, net in self.atomics.items()})

    def extra_repr(self) -> str:
        return (
            f"n_in={self.n_in}, elements={list(self.elements)}, "
            f"output_key={self.output_key!r}, aggregation_mode={self.aggregation_mode!r}"
        )


def _element_networks(module: nn.Module) -> Dict[str, nn.Module]:
    """``{symbol: network}`` of an ``ElementwiseAtomwise``, ``ANINetworks``/``ANIModel``
    or a ``ModuleDict`` keyed by symbol."""
    atomics = getattr(module, "atomics", module)
    if isinstance(atomics, (nn.ModuleDict, dict)):
        return dict(atomics.items())
    raise TypeError(f"Cannot find element networks in {type(module).__name__}")


def _linear_layers(net: nn.Module) -> List[nn.Linear]:
    """The ``nn.Linear`` layers of an element network, input to output."""
    return [m for m in net.modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def copy_element_weights(source: nn.Module, target: nn.Module) -> nn.Module:
    """Copy element-network weights from ``source`` to ``target``, matched by symbol.

    Either side may be an ``ElementwiseAtomwise``, a torchani ``ANINetworks`` /
    ``ANIModel`` (including legacy ``Sequential`` element networks) or a
    ``ModuleDict`` keyed by chemical symbol. Every element of ``target`` must exist
    in ``source`` with the same layer shapes (the element order may differ).

    Returns:
        ``target``.
    """
    src, dst = _element_networks(source), _element_networks(target)
    missing = [s for s in dst if s not in src]
    if missing:
        raise ValueError(f"Source has no network for element(s) {missing}")
    for symbol, net in dst.items():
        src_layers, dst_layers = _linear_layers(src[symbol]), _linear_layers(net)
        if [l.weight.shape for l in src_layers] != [l.weight.shape for l in dst_layers]:
            raise ValueError(f"Layer shapes differ for element {symbol}")
        for s_layer, d_layer in zip(src_layers, dst_layers):
            d_layer.weight.copy_(s_layer.weight)
            if (s_layer.bias is None) != (d_layer.bias is None):
                raise ValueError(f"Bias mismatch for element {symbol}")
            if d_layer.bias is not None:
                d_layer.bias.copy_(s_layer.bias)
    return target
