"""ANI atomic environment vectors (AEVs) as a SchNetPack representation.

The physics (radial/angular symmetry functions, cutoff function, angular triples)
is torchani's own ``torchani.aev.AEVComputer``; this module only adapts SchNetPack's
flat batch format to torchani's neighbour-list entry point
``AEVComputer.compute_from_neighbors(elem_idxs, coords, neighbors)``.

Contract differences bridged here (SchNetPack -> torchani):

* SchNetPack lists every pair in both directions, ``(i, j, +offset)`` and
  ``(j, i, -offset)``; torchani wants each pair once (it adds every radial term to
  both atoms and builds angular triples from both ends of each pair). We keep
  ``i < j``; for a periodic self-image (``i == j``, non-zero offset) we keep the
  one of ``+offset`` / ``-offset`` whose vector is lexicographically positive.
* torchani's radial terms assume pairs beyond the radial cutoff were already removed
  (the cosine cutoff is *not* zero beyond it), so pairs with ``|r_ij| >= cutoff``
  are dropped. The smaller angular cutoff is applied by torchani itself
  (``discard_outside_cutoff`` inside ``compute_from_neighbors``).
* torchani's difference vectors point ``j -> i`` (``r_i - r_j``); SchNetPack's
  ``Rij`` points ``i -> j`` (``r_j - r_i + offset``), so the sign is flipped.
* torchani indexes elements 0..n_species-1, not atomic numbers.

Distances and vectors are taken from SchNetPack's ``_Rij`` (computed by
``schnetpack.atomistic.PairwiseDistances`` from positions and cell offsets), so
periodic cells go through SchNetPack's neighbour list and forces/stress reach
``_positions``/strain through autograd.
"""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from ase.data import atomic_numbers as _ATOMIC_NUMBERS
from ase.data import chemical_symbols as _SYMBOLS
from schnetpack import properties
from torch import nn
from torchani.aev import AEVComputer
from torchani.neighbors import Neighbors

from spk_meta.utils.elements import element_symbols
from spk_meta.utils.species import lookup_species, species_lookup_table

__all__ = ["ANI", "PRESETS", "element_symbols", "half_neighbor_mask", "lookup_species"]

#: Preset name -> (torchani constructor, default elements, in torchani's order).
PRESETS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "ani1x": ("like_1x", ("H", "C", "N", "O")),
    "ani2x": ("like_2x", ("H", "C", "N", "O", "S", "F", "Cl")),
}

#: Names of the radial/angular AEV parameters (keyword names of
#: ``AEVComputer.like_1x``/``like_2x``). Lengths in Å.
AEV_PARAMETERS = (
    "radial_start",
    "radial_cutoff",
    "radial_eta",
    "radial_num_shifts",
    "angular_start",
    "angular_cutoff",
    "angular_eta",
    "angular_zeta",
    "angular_num_shifts",
    "angular_num_sections",
)


def half_neighbor_mask(
    idx_i: torch.Tensor,
    idx_j: torch.Tensor,
    Rij: torch.Tensor,
    rij: torch.Tensor,
    cutoff: float,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Select each unordered pair of a full (both-directions) neighbour list once.

    Keeps pair ``k`` if ``rij[k] < cutoff`` and either ``idx_i < idx_j`` or
    ``idx_i == idx_j`` (periodic self-image) with ``Rij[k]`` lexicographically
    positive (first component of magnitude > ``tol`` Å is positive; self-image
    vectors are lattice vectors, so smaller components are rounding-noise zeros).
    Of the SchNetPack entries ``(i, j, +o)`` and ``(j, i, -o)`` exactly one survives;
    this includes the two entries ``(i, i, +o)``/``(i, i, -o)`` of a self-image.

    Args:
        idx_i, idx_j: ``(n_pairs,)`` atom indices.
        Rij: ``(n_pairs, 3)`` vectors ``r_j - r_i + offset`` in Å.
        rij: ``(n_pairs,)`` their norms in Å.
        cutoff: radial cutoff in Å.
        tol: zero tolerance (Å) for the lexicographic sign.

    Returns:
        Bool tensor ``(n_pairs,)``.
    """
    v = Rij.detach()
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    positive = (x > tol) | ((x.abs() <= tol) & ((y > tol) | ((y.abs() <= tol) & (z > tol))))
    one_direction = (idx_i < idx_j) | ((idx_i == idx_j) & positive)
    return one_direction & (rij.detach() < cutoff)


class ANI(nn.Module):
    """ANI atomic environment vectors (torchani ``AEVComputer``) for SchNetPack.

    Reads SchNetPack's flat batch (``_atomic_numbers`` ``(n_atoms,)``, ``_idx_i``,
    ``_idx_j`` ``(n_pairs,)``, ``_Rij`` ``(n_pairs, 3)`` in Å from
    ``schnetpack.atomistic.PairwiseDistances``) and writes the AEVs, shape
    ``(n_atoms, n_atom_basis)``, to ``inputs["scalar_representation"]``.

    The neighbour list must be a full list (both directions, as every SchNetPack
    neighbour-list transform produces) with a cutoff >= ``self.cutoff``; longer
    pairs are ignored. Angular triples are built internally by torchani, so no
    ``CollectAtomTriples`` transform is needed.

    Args:
        elements: supported elements as atomic numbers or symbols; their order is the
            torchani element order (AEV layout). Default: the preset's elements
            (ANI-1x: H, C, N, O; ANI-2x: H, C, N, O, S, F, Cl).
        preset: ``"ani1x"`` (radial cutoff 5.2 Å, angular 3.5 Å, 384 features for
            4 elements), ``"ani2x"`` (5.1 Å / 3.5 Å, 1008 features for 7 elements), or
            ``None`` for custom parameters (then all ``radial_*``/``angular_*`` args
            are required).
        radial_start, radial_cutoff: first radial shift and radial cutoff (Å).
        radial_eta: radial Gaussian width parameter (Å^-2).
        radial_num_shifts: number of radial shifts (evenly spaced in [start, cutoff)).
        angular_start, angular_cutoff: first angular radial shift and angular
            cutoff (Å); ``angular_cutoff`` must be smaller than ``radial_cutoff``.
        angular_eta: angular radial Gaussian width (Å^-2).
        angular_zeta: angular exponent.
        angular_num_shifts: number of angular radial shifts.
        angular_num_sections: number of angle sections in [0, pi).
        cutoff_fn: torchani cutoff function name (``"cosine"``, ``"smooth"``, ...).
        Any of these left ``None`` takes the preset's value.
        n_atom_basis: optional expected AEV length (what configs interpolate as
            ``${model.representation.n_atom_basis}``); a mismatch raises ``ValueError``.

    Attributes:
        cutoff: radial cutoff (Å), the minimal neighbour-list cutoff, as a 0-dim tensor
            buffer like SchNetPack's representations (``spkdeploy`` reads it).
        radial_cutoff: the same as an exact Python float.
        n_atom_basis: AEV length.
        elements: tuple of supported chemical symbols, in element-index order.
        supported_atomic_numbers: the same as atomic numbers (read by
            :func:`spk_meta.model.check_model_against_data`).
        aev_computer: the wrapped ``torchani.aev.AEVComputer``.
    """

    def __init__(
        self,
        elements: Optional[Sequence[Union[int, str]]] = None,
        preset: Optional[str] = "ani1x",
        radial_start: Optional[float] = None,
        radial_cutoff: Optional[float] = None,
        radial_eta: Optional[float] = None,
        radial_num_shifts: Optional[int] = None,
        angular_start: Optional[float] = None,
        angular_cutoff: Optional[float] = None,
        angular_eta: Optional[float] = None,
        angular_zeta: Optional[float] = None,
        angular_num_shifts: Optional[int] = None,
        angular_num_sections: Optional[int] = None,
        cutoff_fn: Optional[str] = None,
        n_atom_basis: Optional[int] = None,
    ):
        super().__init__()
        params = {
            "radial_start": radial_start,
            "radial_cutoff": radial_cutoff,
            "radial_eta": radial_eta,
            "radial_num_shifts": radial_num_shifts,
            "angular_start": angular_start,
            "angular_cutoff": angular_cutoff,
            "angular_eta": angular_eta,
            "angular_zeta": angular_zeta,
            "angular_num_shifts": angular_num_shifts,
            "angular_num_sections": angular_num_sections,
        }
        self.aev_computer, symbols = self._build_aev_computer(elements, preset, params, cutoff_fn)
        self.elements: Tuple[str, ...] = symbols
        self._supported: List[str] = list(symbols)
        self._symbols: List[str] = list(_SYMBOLS)
        self.preset = preset
        self._set_cutoff(float(self.aev_computer.radial.cutoff))
        self.n_atom_basis: int = int(self.aev_computer.out_dim)
        if n_atom_basis is not None and int(n_atom_basis) != self.n_atom_basis:
            raise ValueError(
                f"n_atom_basis={n_atom_basis} does not match the AEV length "
                f"{self.n_atom_basis} of these AEV settings and elements; "
                f"set n_atom_basis: {self.n_atom_basis} (or leave it out)"
            )
        self.supported_atomic_numbers: List[int] = [_ATOMIC_NUMBERS[s] for s in symbols]
        self.register_buffer("species_index", species_lookup_table(symbols), persistent=False)

    def _set_cutoff(self, cutoff: float) -> None:
        """Keep the radial cutoff (Å) twice: exact, as the float the pair mask uses (as
        torchani does), and as the tensor buffer ``cutoff`` that SchNetPack's tools read
        like every SchNetPack representation's (``spkdeploy`` writes
        ``representation.cutoff.item()`` into the TorchScript file for LAMMPS). Not
        persistent: it follows from the constructor arguments, so state dicts are
        unchanged."""
        self.radial_cutoff: float = cutoff
        self.register_buffer("cutoff", torch.tensor(cutoff, dtype=torch.float64), persistent=False)

    def __setstate__(self, state: Dict) -> None:
        """Unpickle models saved before ``cutoff`` became a buffer (a float attribute)."""
        super().__setstate__(state)
        old = self.__dict__.get("cutoff")
        if isinstance(old, (int, float)):
            del self.__dict__["cutoff"]
            self._set_cutoff(float(old))

    @staticmethod
    def _build_aev_computer(
        elements: Optional[Sequence[Union[int, str]]],
        preset: Optional[str],
        params: Dict[str, Optional[float]],
        cutoff_fn: Optional[str],
    ) -> Tuple[AEVComputer, Tuple[str, ...]]:
        """Create the torchani ``AEVComputer`` from a preset and/or explicit params."""
        given = {k: v for k, v in params.items() if v is not None}
        if cutoff_fn is not None:
            given["cutoff_fn"] = cutoff_fn
        if preset is None:
            missing = [k for k in AEV_PARAMETERS if k not in given]
            if missing:
                raise ValueError(f"preset=None requires all AEV parameters; missing {missing}")
            if elements is None:
                raise ValueError("preset=None requires `elements`")
            constructor = "like_1x"  # only its parametrisation is used: all args given
            default_elements: Tuple[str, ...] = ()
        elif preset in PRESETS:
            constructor, default_elements = PRESETS[preset]
        else:
            raise ValueError(f"Unknown preset {preset!r}; use one of {list(PRESETS)} or None")
        symbols = element_symbols(default_elements if elements is None else elements)
        for k in ("radial_num_shifts", "angular_num_shifts", "angular_num_sections"):
            if k in given:
                given[k] = int(given[k])
        # "pyaev" (pure PyTorch): cuAEV would route gradients to `coords` instead of
        # the pair vectors, bypassing SchNetPack's periodic offsets and strain.
        computer = getattr(AEVComputer, constructor)(
            num_species=len(symbols), strategy="pyaev", **given
        )
        return computer, symbols

    def species_indices(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Map atomic numbers ``(n_atoms,)`` to element indices ``(n_atoms,)``.

        Raises:
            ValueError: naming any element not in ``self.elements``.
        """
        return lookup_species(
            atomic_numbers,
            self.species_index,
            self._supported,
            self._symbols,
            "ANI representation",
        )

    def half_neighbors(
        self, idx_i: torch.Tensor, idx_j: torch.Tensor, Rij: torch.Tensor
    ) -> Neighbors:
        """Convert SchNetPack's full pair list to torchani ``Neighbors`` (each pair once).

        Args:
            idx_i, idx_j: ``(n_pairs,)`` atom indices into the flat batch.
            Rij: ``(n_pairs, 3)`` vectors ``r_j - r_i + offset`` (Å).

        Returns:
            ``Neighbors(indices (2, P), distances (P,), diff_vectors (P, 3))`` with
            torchani's sign convention ``diff = r_i - r_j(image)``.
        """
        rij = torch.linalg.vector_norm(Rij, dim=-1)
        keep = half_neighbor_mask(idx_i, idx_j, Rij, rij, self.radial_cutoff).nonzero().view(-1)
        indices = torch.stack([idx_i.index_select(0, keep), idx_j.index_select(0, keep)])
        return Neighbors(indices, rij.index_select(0, keep), -Rij.index_select(0, keep))

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Compute AEVs ``(n_atoms, n_atom_basis)`` into ``inputs["scalar_representation"]``."""
        elem_idxs = self.species_indices(inputs[properties.Z])
        neighbors = self.half_neighbors(
            inputs[properties.idx_i].long(),
            inputs[properties.idx_j].long(),
            inputs[properties.Rij],
        )
        # torchani treats the flat batch as one "molecule" of n_atoms atoms; molecules
        # stay separate because the neighbour list has no inter-molecule pairs. The
        # coordinates are not used by the pure-PyTorch strategy (only pairs are).
        aev = self.aev_computer.compute_from_neighbors(
            elem_idxs.unsqueeze(0), inputs[properties.R].unsqueeze(0), neighbors
        )
        inputs["scalar_representation"] = aev.squeeze(0)
        return inputs

    def extra_repr(self) -> str:
        return (
            f"elements={list(self.elements)}, preset={self.preset!r}, "
            f"cutoff={self.radial_cutoff}, n_atom_basis={self.n_atom_basis}"
        )
