"""Batches of frames as SchNetPack model inputs, built without ASE ``Atoms``.

SchNetPack's ``AtomsConverter`` builds one dict of tensors per ``Atoms`` and collates
them (about 800 frames/s for ethanol); scoring millions of frames needs the batch built
from arrays: :func:`read_store_batch` gathers a batch of frames from a
:class:`~spk_meta.data.store.PackedStore`'s memory maps, :func:`atoms_batch` from ASE
``Atoms``, and :func:`model_inputs` adds the neighbour list and returns the flat inputs
dict a SchNetPack ``NeuralNetworkPotential`` reads (``_atomic_numbers``, ``_positions``,
``_idx_m``, ``_idx_i``, ``_idx_j``, ``_offsets``, ...), as the converter would.

Neighbour lists: every pair ``i != j`` of a frame closer than the cutoff, in both orders
(a full list, as SchNetPack's transforms build it). Frames without periodic boundaries
and up to :data:`BLOCK_MAX_ATOMS` atoms get all their pairs at once, a whole batch in a
few NumPy calls; periodic (or larger) frames go through vesin, frame by frame, as
SchNetPack's ``VesinNeighborList`` does.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from ase import Atoms
from schnetpack import properties

#: Largest frame (atoms) whose pairs are enumerated all at once (n^2 pairs per frame).
BLOCK_MAX_ATOMS = 256


@dataclass
class FrameBatch:
    """Frames one after another (atoms of frame k at ``starts[k] : starts[k] + n_atoms[k]``).

    Attributes:
        numbers: ``(n_atoms_total,)`` int64 atomic numbers.
        positions: ``(n_atoms_total, 3)`` float64, Ang.
        n_atoms: ``(n_frames,)`` int64, each >= 1.
        cell: ``(n_frames, 3, 3)`` float64, Ang (zeros without a cell).
        pbc: ``(n_frames, 3)`` bool.
    """

    numbers: np.ndarray
    positions: np.ndarray
    n_atoms: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray

    def __len__(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.n_atoms)[:-1]]).astype(np.int64)


def atom_indices(offsets: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Indices into the per-atom arrays of the atoms of ``frames`` (in frame order).

    Args:
        offsets: ``(n_frames_store + 1,)`` atom offsets of every frame.
        frames: ``(n,)`` frame indices.
    """
    lo, hi = offsets[frames], offsets[frames + 1]
    n = hi - lo
    return np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()))


def read_store_batch(store, frames: np.ndarray, distance_factor: float = 1.0) -> FrameBatch:
    """Frames ``frames`` (ascending store indices) of a packed store, positions in Ang.

    A contiguous run of frames is read as one slice of each memory map; otherwise the
    atoms are gathered by index.

    Args:
        store: a :class:`~spk_meta.data.store.PackedStore`.
        frames: ``(n,)`` ascending frame indices.
        distance_factor: store distance unit -> Ang.
    """
    frames = np.asarray(frames, dtype=np.int64)
    first, last = int(frames[0]), int(frames[-1])
    offsets = np.asarray(store.offsets[first : last + 2])
    if last - first + 1 == len(frames):  # contiguous: slices
        atoms = slice(int(offsets[0]), int(offsets[-1]))
        n_atoms = np.diff(offsets)
        cell = np.asarray(store.cell[first : last + 1])
        pbc = np.asarray(store.pbc[first : last + 1])
    else:
        atoms = atom_indices(offsets, frames - first)  # offsets hold absolute atom indices
        n_atoms = offsets[frames - first + 1] - offsets[frames - first]
        cell = np.asarray(store.cell[frames])
        pbc = np.asarray(store.pbc[frames])
    return FrameBatch(
        numbers=np.asarray(store.numbers_all[atoms], dtype=np.int64),
        positions=np.asarray(store.positions_all[atoms], dtype=np.float64) * distance_factor,
        n_atoms=n_atoms.astype(np.int64),
        cell=cell * distance_factor,
        pbc=pbc.astype(bool),
    )


def atoms_batch(frames: Sequence[Atoms]) -> FrameBatch:
    """ASE ``Atoms`` (positions and cells in Ang) as one batch."""
    if not frames:
        raise ValueError("no frames")
    return FrameBatch(
        numbers=np.concatenate([a.numbers for a in frames]).astype(np.int64),
        positions=np.concatenate([a.positions for a in frames]).astype(np.float64),
        n_atoms=np.array([len(a) for a in frames], dtype=np.int64),
        cell=np.stack([a.cell.array for a in frames]).astype(np.float64),
        pbc=np.stack([a.pbc for a in frames]).astype(bool),
    )


def block_pairs(positions: np.ndarray, n_atoms: np.ndarray, starts: np.ndarray, cutoff: float):
    """Full neighbour list of frames without periodic boundaries: every ordered pair
    ``(i, j)``, ``i != j``, of atoms of one frame closer than ``cutoff``.

    Args:
        positions: ``(n_atoms_total, 3)`` Ang (the whole batch).
        n_atoms: ``(k,)`` atoms of the frames to pair; starts: ``(k,)`` their first atom.
        cutoff: Ang.

    Returns:
        ``(idx_i, idx_j)``, int64 indices into ``positions``, ordered by frame, then i, then j.
    """
    squares = n_atoms * n_atoms  # candidate pairs per frame
    frame = np.repeat(np.arange(len(n_atoms)), squares)
    within = np.arange(int(squares.sum())) - np.repeat(np.cumsum(squares) - squares, squares)
    n = n_atoms[frame]
    idx_i = starts[frame] + within // n
    idx_j = starts[frame] + within % n
    distinct = idx_i != idx_j
    idx_i, idx_j = idx_i[distinct], idx_j[distinct]
    d = positions[idx_i] - positions[idx_j]
    close = np.einsum("ij,ij->i", d, d) < cutoff * cutoff
    return idx_i[close], idx_j[close]


def vesin_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """Full neighbour list of one frame with vesin (SchNetPack's ``VesinNeighborList``).

    Returns ``(idx_i, idx_j, shifts)``: local atom indices and integer cell shifts ``(n_pairs, 3)``.

    Raises:
        ValueError: periodic in some directions only (vesin handles all or none).
    """
    from vesin import NeighborList

    if pbc.all():
        periodic = True
    elif not pbc.any():
        periodic = False
    else:
        raise ValueError(f"periodic boundaries in some directions only ({pbc.tolist()}) are not supported")
    i, j, shifts = NeighborList(cutoff=float(cutoff), full_list=True).compute(
        points=positions, box=cell, periodic=periodic, quantities="ijS"
    )
    return np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64), np.asarray(shifts, dtype=np.float64)


def neighbor_pairs(batch: FrameBatch, cutoff: float):
    """``(idx_i, idx_j, offsets)`` of the whole batch: indices into the batch's atoms and
    the Cartesian image offsets ``(n_pairs, 3)`` (Ang; zeros without periodic boundaries)."""
    starts = batch.starts
    blockable = ~batch.pbc.any(axis=1) & (batch.n_atoms <= BLOCK_MAX_ATOMS)
    parts_i, parts_j, parts_off = [], [], []
    if blockable.any():
        i, j = block_pairs(batch.positions, batch.n_atoms[blockable], starts[blockable], cutoff)
        parts_i.append(i)
        parts_j.append(j)
        parts_off.append(np.zeros((len(i), 3)))
    for k in np.flatnonzero(~blockable):
        a, n = int(starts[k]), int(batch.n_atoms[k])
        try:
            i, j, shifts = vesin_pairs(batch.positions[a : a + n], batch.cell[k], batch.pbc[k], cutoff)
        except ValueError as err:
            raise ValueError(f"frame {k} of the batch: {err}") from None
        parts_i.append(i + a)
        parts_j.append(j + a)
        parts_off.append(shifts @ batch.cell[k])
    if not parts_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3))
    return np.concatenate(parts_i), np.concatenate(parts_j), np.concatenate(parts_off)


def model_inputs(batch: FrameBatch, cutoff: float, dtype: torch.dtype = torch.float32,
                 device: Optional[torch.device] = None) -> Dict[str, torch.Tensor]:
    """The SchNetPack inputs dict of ``batch`` with a full neighbour list within ``cutoff`` (Ang).

    Real-valued tensors get ``dtype`` (the model's), as SchNetPack's ``CastTo32`` would.
    """
    idx_i, idx_j, offsets = neighbor_pairs(batch, cutoff)
    n_frames = len(batch)
    inputs = {
        properties.Z: torch.from_numpy(batch.numbers),
        properties.R: torch.from_numpy(batch.positions).to(dtype),
        properties.cell: torch.from_numpy(batch.cell).to(dtype),
        properties.pbc: torch.from_numpy(batch.pbc),
        properties.n_atoms: torch.from_numpy(batch.n_atoms),
        properties.idx: torch.arange(n_frames),
        properties.idx_m: torch.repeat_interleave(torch.arange(n_frames), torch.from_numpy(batch.n_atoms)),
        properties.idx_i: torch.from_numpy(idx_i),
        properties.idx_j: torch.from_numpy(idx_j),
        properties.offsets: torch.from_numpy(offsets).to(dtype),
    }
    if device is not None:
        inputs = {k: v.to(device) for k, v in inputs.items()}
    return inputs
