"""FOMAMLTask against a hand-written first-order MAML loop on the same batches."""

import copy

import pytest
import torch

from spk_meta.task import FOMAMLTask
from test_reptile import make_dm, manual_loss, outputs, params, record_batches, tiny_model, trainer  # noqa: F401


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
