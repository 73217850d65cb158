"""The data configs build neighbour lists with SchNetPack's VesinNeighborList (2x faster per
sample than MatScipyNeighborList here, see benchmarks/scale.py): it must find exactly the
pairs MatScipy finds, for molecules and periodic cells, so models see the same inputs."""

import ase.build
import ase.io
import numpy as np
import pytest
import torch
from schnetpack import properties as P
from schnetpack.transform import MatScipyNeighborList, VesinNeighborList


def _inputs(atoms):
    return {
        P.Z: torch.tensor(atoms.numbers),
        P.R: torch.tensor(atoms.positions),
        P.cell: torch.tensor(atoms.cell.array).view(1, 3, 3),
        P.pbc: torch.tensor(atoms.pbc),
        P.n_atoms: torch.tensor([len(atoms)]),
        P.idx: torch.tensor([0]),
    }


def _pairs(nl, atoms):
    out = nl(_inputs(atoms))
    offsets = np.round(out[P.offsets].numpy(), 6)
    return sorted(zip(out[P.idx_i].tolist(), out[P.idx_j].tolist(), map(tuple, offsets)))


@pytest.mark.parametrize("cutoff", [3.0, 5.2])
def test_vesin_finds_the_pairs_matscipy_finds(ethanol, cutoff):
    frames = ase.io.read(ethanol["pretrain_hf_def2svp_900K"].extxyz, ":5")
    periodic = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    periodic.rattle(0.05, seed=1)
    for atoms in frames + [periodic]:
        ref = _pairs(MatScipyNeighborList(cutoff), atoms)
        assert len(ref) > 0
        assert _pairs(VesinNeighborList(cutoff), atoms) == ref


def test_the_data_configs_use_vesin():
    from importlib import resources

    text = (resources.files("spk_meta.configs") / "data" / "tasks.yaml").read_text()
    assert "schnetpack.transform.VesinNeighborList" in text
