"""ReptileDDPStrategy gives every rank rank 0's weights with public torch.distributed calls.

Two real gloo processes, forked (not spawned) so they inherit this process's imports and
the test takes seconds; the full 2-process Reptile fits are in tests/test_reptile.py (slow).
"""

import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import ani_potential
from spk_meta.train import ReptileDDPStrategy
from spk_meta.train.ddp import broadcast_module_state


def _model(seed: int) -> torch.nn.Module:
    """A real ANI potential with an AddOffsets buffer, plus the awkward tensor kinds."""
    from schnetpack.transform import AddOffsets

    offsets = AddOffsets("energy", add_mean=True, property_mean=torch.tensor(-400.0 - seed))
    model = ani_potential(postprocessors=[offsets], seed=seed)
    model.register_buffer("flags", torch.rand(5) > 0.5)  # bool: gloo cannot send it as is
    model.transposed = torch.nn.Parameter(torch.randn(4, 3).t())  # non-contiguous
    return model


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = _model(seed=rank)  # different weights on every rank, as after independent init
        strategy = ReptileDDPStrategy()
        strategy.model = model
        strategy.configure_ddp()
        torch.save(model.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_configure_ddp_broadcasts_rank0_state_to_every_rank(tmp_path):
    procs = mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                               join=False, start_method="fork")
    deadline = time.monotonic() + 120
    while not procs.join(timeout=5):
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.terminate()
            pytest.fail("the two gloo processes did not finish within 120 s")
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    own1 = _model(seed=1).state_dict()
    assert rank0.keys() == rank1.keys() == own1.keys()
    differed = [k for k in own1 if not torch.equal(own1[k], rank0[k])]
    # the ranks really started apart: weights, the AddOffsets mean, the bool buffer, the
    # non-contiguous parameter
    assert any("representation" not in k and "weight" in k for k in differed)
    assert {"postprocessors.0.mean", "flags", "transposed"} <= set(differed)
    for key in rank0:
        assert torch.equal(rank1[key], rank0[key]), key
    # rank 0 kept its own state
    own0 = _model(seed=0).state_dict()
    for key in rank0:
        assert torch.equal(rank0[key], own0[key]), key


def test_broadcast_is_a_no_op_without_a_process_group():
    model = _model(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert broadcast_module_state(model) == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
