"""FOMAMLTask against a hand-written first-order MAML loop on the same batches, in one
process and over two (ReptileDDPStrategy), and its resume under two processes."""

import copy

import numpy as np
import pytest
import torch

from spk_meta.task import FOMAMLTask
from test_reptile import (  # noqa: F401
    fit_two_processes, make_dm, manual_loss, outputs, params, record_batches, tiny_model, trainer)


@pytest.mark.parametrize("tasks_per_step", [1, 2])
def test_outer_step_equals_hand_computed_fomaml(make_dm, tasks_per_step):
    k, lr, meta_lr, outer_steps = 3, 1e-2, 5e-3, 2
    model0 = tiny_model()
    dm = make_dm()
    seen = record_batches(dm)
    task = FOMAMLTask(copy.deepcopy(model0), outputs(), optimizer_args={"lr": lr}, inner_steps=k,
                      tasks_per_step=tasks_per_step, outer_lr=meta_lr, sampling_seed=1)
    trainer(max_steps=outer_steps * (k * tasks_per_step + 1)).fit(task, datamodule=dm)
    assert task.outer_step == outer_steps
    assert len(seen) == outer_steps * tasks_per_step * (k + 1)

    # by hand: the inner Adam keeps its state across tasks; from theta, k support steps,
    # then the query gradient at phi; theta <- outer Adam step with the mean query gradient
    model = copy.deepcopy(model0)
    inner = torch.optim.Adam(model.parameters(), lr=lr)
    outer = torch.optim.Adam(model.parameters(), lr=meta_lr)
    batches = iter(seen)
    for _ in range(outer_steps):
        theta = params(model)
        grads = [torch.zeros_like(t) for t in theta]
        names = []
        for _ in range(tasks_per_step):
            with torch.no_grad():
                for p, t in zip(model.parameters(), theta):
                    p.copy_(t)
            for _ in range(k):
                name, batch = next(batches)
                names.append(name)
                inner.zero_grad()
                manual_loss(model, batch).backward()
                inner.step()
            name, query = next(batches)
            names.append(name)
            g = torch.autograd.grad(manual_loss(model, query), list(model.parameters()), allow_unused=True)
            for acc, gi in zip(grads, g):
                if gi is not None:
                    acc += gi
        assert len(set(names[: k + 1])) == 1  # support and query come from one task
        with torch.no_grad():
            for p, t, acc in zip(model.parameters(), theta, grads):
                p.copy_(t)
                p.grad = acc / tasks_per_step
        outer.step()
    for got, want in zip(task.model.parameters(), model.parameters()):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(model0.parameters(), task.model.parameters()))


def hand_fomaml_over_ranks(make_dm, model0, world, seed, k, tasks_per_step, lr, meta_lr, outer_steps):
    """FOMAML over ``world`` ranks written out in one process: rank r has its own task
    sampler (seed + r), batch streams (stream rank r), weights and inner Adam; each outer
    step every rank starts from θ, takes k support steps per task and the query gradient
    at φ; θ takes one outer Adam step with the mean over ranks and tasks. Returns θ and
    the tasks drawn."""
    ranks = []
    for r in range(world):
        dm = make_dm()
        dm.setup("fit")
        dm.stream_rank = r
        model = copy.deepcopy(model0)
        ranks.append((dm, np.random.default_rng(seed + r), model, torch.optim.Adam(model.parameters(), lr=lr)))
    meta = copy.deepcopy(model0)  # holds θ
    outer = torch.optim.Adam(meta.parameters(), lr=meta_lr)
    drawn = []
    for _ in range(outer_steps):
        theta = params(meta)
        grads = [torch.zeros_like(t) for t in theta]
        for dm, rng, model, inner in ranks:
            weights = dm.task_sampling_weights()
            names = list(weights)
            for _ in range(tasks_per_step):
                name = names[int(rng.choice(len(names), p=np.array([weights[n] for n in names])))]
                drawn.append(name)
                with torch.no_grad():
                    for p, t in zip(model.parameters(), theta):
                        p.copy_(t)
                for _ in range(k):
                    inner.zero_grad()
                    manual_loss(model, dm.next_batch(name)).backward()
                    inner.step()
                query = dm.next_batch(name)
                g = torch.autograd.grad(manual_loss(model, query), list(model.parameters()), allow_unused=True)
                for acc, gi in zip(grads, g):
                    if gi is not None:
                        acc += gi
        for p, acc in zip(meta.parameters(), grads):
            p.grad = acc / (world * tasks_per_step)
        outer.step()
    return params(meta), drawn


def test_two_process_ddp_equals_hand_computed_fomaml(make_dm):
    """2 CPU processes (gloo, spawn): each rank adapts to its own tasks and computes its
    query gradients; one all-reduce averages them and every rank takes the same outer
    Adam step (FOMAML with 2 x tasks_per_step tasks per outer step)."""
    from spk_meta.train import ReptileDDPStrategy

    k, tasks_per_step, lr, meta_lr, outer_steps, world, seed = 2, 2, 1e-2, 5e-3, 2, 2, 5
    model0 = tiny_model()
    task = FOMAMLTask(copy.deepcopy(model0), outputs(), optimizer_args={"lr": lr}, inner_steps=k,
                      tasks_per_step=tasks_per_step, outer_lr=meta_lr, sampling_seed=seed)
    strategy = ReptileDDPStrategy(start_method="spawn", process_group_backend="gloo")
    trainer(max_steps=outer_steps * (k * tasks_per_step + 1), devices=world, strategy=strategy,
            use_distributed_sampler=False).fit(task, datamodule=make_dm())

    theta, drawn = hand_fomaml_over_ranks(make_dm, model0, world, seed, k, tasks_per_step, lr, meta_lr, outer_steps)
    # the ranks really trained on different levels in the same outer step
    assert set(drawn[:tasks_per_step]) != set(drawn[tasks_per_step : 2 * tasks_per_step])
    for got, want in zip(task.model.parameters(), theta):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # three 2-process fits; the DDP update itself is checked by the test above
def test_two_process_ddp_resume_equals_uninterrupted(make_dm, tmp_path):
    """Every rank's inner Adam, sampler and batch streams are in the checkpoint, the outer
    Adam too (Lightning's second optimiser state): stop after one epoch, resume, and land
    on the weights of the uninterrupted run."""
    def run(max_epochs, dirpath, ckpt=None):
        task = FOMAMLTask(tiny_model(), outputs(), optimizer_args={"lr": 1e-2}, inner_steps=2,
                          outer_lr=5e-3, sampling_seed=2)
        return fit_two_processes(task, make_dm, max_epochs, dirpath, tmp_path, ckpt)

    straight = run(2, tmp_path / "a")
    run(1, tmp_path / "b")
    ckpt = torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)
    ranks = ckpt["reptile"]["ranks"]
    assert len(ranks) == 2 and ranks[0]["rng"] != ranks[1]["rng"]
    # per rank: the inner Adam (its moments differ between ranks); Lightning: both optimisers
    inner0, inner1 = (r["optimizer"]["state"][0]["exp_avg"] for r in ranks)
    assert not torch.equal(inner0, inner1)
    assert len(ckpt["optimizer_states"]) == 2 and ckpt["optimizer_states"][1]["state"]
    # 9 training batches per pass / ((k=2 + 1 query) x 1 task) -> 3 outer steps per epoch
    assert ckpt["reptile"]["outer_step"] == 3
    resumed = run(2, tmp_path / "b", ckpt=str(tmp_path / "b" / "last.ckpt"))
    for run_dir in ("a", "b"):  # (spawn hands back the weights only, not outer_step)
        assert torch.load(tmp_path / run_dir / "last.ckpt", weights_only=False)["reptile"]["outer_step"] == 6
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
