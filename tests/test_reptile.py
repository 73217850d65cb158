"""ReptileTask against hand-computed steps and against SchNetPack's AtomisticTask."""

import copy
from collections import Counter

import numpy as np
import pytest
import pytorch_lightning as pl
import schnetpack as spk
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from schnetpack import transform as T

from spk_meta.data import TaskDataModule
from spk_meta.task import ReptileTask, outer_lr_at
from spk_meta.train import RunCheckpointIO

CUTOFF = 5.2
LEVELS = {
    "wb97x_6-31gs": "pretrain_wb97x_631gs_300K",
    "b3lyp_def2-svp": "pretrain_b3lyp_def2svp_600K",
    "hf_def2-svp": "pretrain_hf_def2svp_900K",
}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    rep = spk.representation.SchNet(
        n_atom_basis=8,
        n_interactions=1,
        radial_basis=spk.nn.GaussianRBF(n_rbf=8, cutoff=CUTOFF),
        cutoff_fn=spk.nn.CosineCutoff(CUTOFF),
    )
    return spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=8, output_key="energy"), spk.atomistic.Forces()],
    )


def outputs():
    return [
        spk.task.ModelOutput("energy", loss_fn=torch.nn.MSELoss(), loss_weight=0.5, metrics={}),
        spk.task.ModelOutput("forces", loss_fn=torch.nn.MSELoss(), loss_weight=0.5, metrics={}),
    ]


def manual_loss(model, batch):
    pred = model({k: v.clone() for k, v in batch.items()})
    return 0.5 * torch.nn.functional.mse_loss(pred["energy"], batch["energy"]) + 0.5 * torch.nn.functional.mse_loss(
        pred["forces"], batch["forces"]
    )


@pytest.fixture
def make_dm(ethanol, tmp_path):
    def make(num_train=24, **kw):
        tasks = {name: ethanol[stem].db for name, stem in LEVELS.items()}
        kw.setdefault("stream_seed", 0)
        dm = TaskDataModule(
            tasks, batch_size=8, num_train=num_train, num_val=8, num_test=8, split_seed=0,
            split_file=str(tmp_path / "split.npz"), references_file=None,
            transforms=[T.MatScipyNeighborList(CUTOFF), T.CastTo32()], **kw,
        )
        return dm
    return make


def record_batches(dm):
    """Wrap ``dm.next_batch`` to keep a copy of every batch and its task."""
    seen = []
    original = dm.next_batch

    def spy(name):
        batch = original(name)
        seen.append((name, {k: v.clone() for k, v in batch.items()}))
        return batch

    dm.next_batch = spy
    return seen


def trainer(**kw):
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, **kw,
    )


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_joint_k1_equals_schnetpack_atomistic_task_on_the_same_batches(make_dm):
    model0 = tiny_model()
    dm = make_dm()
    seen = record_batches(dm)
    joint = ReptileTask(copy.deepcopy(model0), outputs(), optimizer_args={"lr": 1e-2}, inner_steps=1, outer_lr=1.0, sampling_seed=3)
    trainer(max_steps=12).fit(joint, datamodule=dm)
    assert joint.global_step == 12 and len(seen) == 12
    assert len({name for name, _ in seen}) > 1  # several levels were visited

    plain = spk.task.AtomisticTask(copy.deepcopy(model0), outputs(), optimizer_args={"lr": 1e-2})
    loader = torch.utils.data.DataLoader([b for _, b in seen], batch_size=None, collate_fn=lambda b: b)
    trainer(max_epochs=1).fit(plain, train_dataloaders=loader)
    for a, b in zip(joint.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(model0.parameters(), joint.model.parameters()))


@pytest.mark.parametrize("tasks_per_step,reset", [(1, False), (2, False), (2, True)])
def test_outer_step_equals_hand_computed_reptile(make_dm, tasks_per_step, reset):
    k, eps, lr = 4, 0.5, 1e-2
    model0 = tiny_model()
    dm = make_dm()
    seen = record_batches(dm)
    task = ReptileTask(copy.deepcopy(model0), outputs(), optimizer_args={"lr": lr}, inner_steps=k,
                       outer_lr=eps, tasks_per_step=tasks_per_step, reset_optimizer=reset,
                       inner_beta1=0.0 if reset else None, sampling_seed=1)
    trainer(max_steps=k * tasks_per_step).fit(task, datamodule=dm)
    assert task.outer_step == 1 and len(seen) == k * tasks_per_step
    for m in range(tasks_per_step):
        assert len({name for name, _ in seen[m * k : (m + 1) * k]}) == 1  # an episode is one task

    # by hand: Adam from theta on each task's k batches (state kept across tasks, or a
    # fresh Adam with beta1 = 0 per task), then theta + eps * mean(phi - theta)
    model = copy.deepcopy(model0)
    theta = params(model)
    betas = (0.0, 0.999) if reset else (0.9, 0.999)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    deltas = [torch.zeros_like(t) for t in theta]
    for m in range(tasks_per_step):
        if reset:
            opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
        with torch.no_grad():
            for p, t in zip(model.parameters(), theta):
                p.copy_(t)
        for _, batch in seen[m * k : (m + 1) * k]:
            opt.zero_grad()
            manual_loss(model, batch).backward()
            opt.step()
        for d, p, t in zip(deltas, model.parameters(), theta):
            d += p.detach() - t
    expected = [t + eps * d / tasks_per_step for t, d in zip(theta, deltas)]
    for got, want, start in zip(task.model.parameters(), expected, theta):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    # and it is not simply the adapted weights
    assert not torch.allclose(task.model.representation.embedding.weight, model.representation.embedding.weight)


def test_outer_lr_annealing_follows_its_schedule(make_dm):
    assert outer_lr_at(0, 1.0, 0.2, 4) == 1.0
    assert outer_lr_at(2, 1.0, 0.2, 4) == pytest.approx(0.6)
    assert outer_lr_at(4, 1.0, 0.2, 4) == pytest.approx(0.2)
    assert outer_lr_at(100, 1.0, 0.2, 4) == pytest.approx(0.2)
    assert outer_lr_at(7, 0.3, None, None) == 0.3
    dm = make_dm()
    task = ReptileTask(tiny_model(), outputs(), inner_steps=2, outer_lr=1.0, outer_lr_final=0.0,
                       outer_lr_anneal_steps=4, sampling_seed=0)
    used = []
    original = task.current_outer_lr
    task.current_outer_lr = lambda: used.append(original()) or used[-1]
    trainer(max_steps=12).fit(task, datamodule=dm)
    assert used == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])


@pytest.mark.parametrize("limit, k, expected_outer", [
    (dict(max_steps=24), 3, 8),          # max_steps counts inner steps: 24 / k outer steps
    (dict(max_steps=-1, max_epochs=2), 2, None),  # epochs of outer steps
])
def test_outer_lr_anneals_over_the_whole_run_by_default(make_dm, limit, k, expected_outer):
    """Without outer_lr_anneal_steps, ε reaches outer_lr_final at the run's last outer step
    (the horizon is counted in outer steps, not in Lightning's inner stepping batches)."""
    dm = make_dm()
    task = ReptileTask(tiny_model(), outputs(), inner_steps=k, outer_lr=1.0, outer_lr_final=0.0, sampling_seed=0)
    used = []
    original = task.current_outer_lr
    task.current_outer_lr = lambda: used.append(original()) or used[-1]
    trainer(**limit).fit(task, datamodule=dm)
    n = len(used)
    if expected_outer is not None:
        assert n == expected_outer
    else:
        assert n == 2 * task.trainer.num_training_batches
    assert task.outer_steps_in_run() == n
    # linear from 1 at the first outer step towards 0 at the end of the run
    assert used == pytest.approx([1.0 - i / n for i in range(n)])


def test_task_sampling_follows_the_data_modules_weights(make_dm):
    """Training draws its episodes from the task sampler (same seed -> same task sequence),
    and the sampler's frequencies follow the data module's weights (size: 100/20/20)."""
    dm = make_dm(num_train={"wb97x_6-31gs": 100, "b3lyp_def2-svp": 20, "hf_def2-svp": 20},
                 task_sampling="size")
    seen = record_batches(dm)
    task = ReptileTask(tiny_model(), outputs(), inner_steps=1, sampling_seed=0)
    trainer(max_steps=30).fit(task, datamodule=dm)
    twin = ReptileTask(tiny_model(), outputs(), inner_steps=1, sampling_seed=0)
    trainer(max_steps=1).fit(twin, datamodule=dm)  # sets the sampler up and draws once
    expected = [seen[30][0]] + [twin.sample_task() for _ in range(29)]
    assert [name for name, _ in seen[:30]] == expected
    counts = Counter(task.sample_task() for _ in range(5000))
    assert counts["wb97x_6-31gs"] / 5000 == pytest.approx(100 / 140, abs=0.025)
    assert counts["hf_def2-svp"] / 5000 == pytest.approx(20 / 140, abs=0.02)


def test_energy_only_task_trains_on_energies(ethanol, tmp_path):
    import ase.io

    from spk_meta.data import write_database

    frames = ase.io.read(ethanol["pretrain_hf_def2svp_900K"].extxyz, ":30")
    db = write_database(frames, tmp_path / "e.db", "CCSD(T)/CBS", forces_key=None)
    dm = TaskDataModule({"ccsd-t_cbs": db, "wb97x_6-31gs": ethanol["pretrain_wb97x_631gs_300K"].db},
                        batch_size=8, num_train=20, num_val=5, num_test=5, split_file=None,
                        references_file=None, transforms=[T.MatScipyNeighborList(CUTOFF), T.CastTo32()])
    task = ReptileTask(tiny_model(), outputs(), inner_steps=2, sampling_seed=0)
    trainer(max_steps=20).fit(task, datamodule=dm)
    assert task.global_step == 20


def test_resume_equals_uninterrupted(make_dm, tmp_path):
    def run(max_epochs, ckpt=None, dirpath=None):
        dm = make_dm(stream_seed=7)
        task = ReptileTask(tiny_model(), outputs(), optimizer_args={"lr": 1e-2}, inner_steps=2,
                           outer_lr=0.5, tasks_per_step=2, sampling_seed=11)
        cb = ModelCheckpoint(dirpath=dirpath, save_last=True, save_on_train_epoch_end=True)
        t = trainer(max_epochs=max_epochs, enable_checkpointing=True, callbacks=[cb],
                    plugins=[RunCheckpointIO(tmp_path)], default_root_dir=tmp_path)
        t.fit(task, datamodule=dm, ckpt_path=ckpt)
        return task

    straight = run(4, dirpath=tmp_path / "a")
    run(2, dirpath=tmp_path / "b")
    resumed = run(4, ckpt=str(tmp_path / "b" / "last.ckpt"), dirpath=tmp_path / "b")
    # 9 training batches per pass / (k=2 x 2 tasks) -> 3 outer steps per epoch
    assert resumed.outer_step == straight.outer_step == 4 * 3
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reptile_needs_a_task_data_module(tiny_db, tmp_path):
    dm = spk.data.AtomsDataModule(str(tiny_db), batch_size=8, num_train=24, num_val=8, num_test=8,
                                  split_file=str(tmp_path / "s.npz"), transforms=[T.MatScipyNeighborList(CUTOFF), T.CastTo32()],
                                  num_workers=0)
    task = ReptileTask(tiny_model(), outputs(), inner_steps=2)
    with pytest.raises(TypeError, match=r"got AtomsDataModule \(it lacks: task_names, task_sampling_weights, "
                                        r"next_batch, serve_episodes, stream_state, load_stream_state\)"):
        trainer(max_steps=2).fit(task, datamodule=dm)


class OnlyTheContract(pl.LightningDataModule):
    """A data module that is not a TaskDataModule: the EpisodicTaskData members (here by
    delegation), and Lightning's loaders. Reptile must run on it exactly as on the original."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def setup(self, stage=None):
        self.inner.setup(stage)

    @property
    def task_names(self):
        return self.inner.task_names

    def task_sampling_weights(self):
        return self.inner.task_sampling_weights()

    def next_batch(self, name):
        return self.inner.next_batch(name)

    def serve_episodes(self, batches_per_step):
        self.inner.serve_episodes(batches_per_step)

    def stream_state(self):
        return self.inner.stream_state()

    def load_stream_state(self, state):
        self.inner.load_stream_state(state)

    def train_dataloader(self):
        return self.inner.train_dataloader()


def test_the_contract_is_all_reptile_needs(make_dm):
    from spk_meta.data import EpisodicTaskData, missing_members

    assert isinstance(make_dm(), EpisodicTaskData) and missing_members(make_dm()) == []
    runs = []
    for wrap in (False, True):
        dm = make_dm()
        task = ReptileTask(tiny_model(), outputs(), optimizer_args={"lr": 1e-2}, inner_steps=2,
                           outer_lr=0.5, tasks_per_step=2, sampling_seed=4)
        trainer(max_epochs=1).fit(task, datamodule=OnlyTheContract(dm) if wrap else dm)
        # one epoch: 9 training batches per pass / (k=2 x 2 tasks) -> 3 outer steps
        assert task.outer_step == 3 and task.global_step == 12
        runs.append(params(task.model))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_two_process_ddp_equals_hand_computed_batched_reptile(make_dm):
    """2 CPU processes (gloo, spawn): each rank adapts to its own task, the outer update
    averages phi - theta over ranks. Reference: the same per-rank task draws, batches
    and Adam states computed in this process."""
    from spk_meta.train import ReptileDDPStrategy

    k, eps, lr, outer_steps, world, seed = 3, 0.5, 1e-2, 2, 2, 5
    model0 = tiny_model()
    task = ReptileTask(copy.deepcopy(model0), outputs(), optimizer_args={"lr": lr}, inner_steps=k,
                       outer_lr=eps, sampling_seed=seed)
    strategy = ReptileDDPStrategy(start_method="spawn", process_group_backend="gloo")
    trainer(max_steps=k * outer_steps, devices=world, strategy=strategy,
            use_distributed_sampler=False).fit(task, datamodule=make_dm())

    ranks = []
    for r in range(world):
        dm = make_dm()
        dm.setup("fit")
        dm.stream_rank = r
        model = copy.deepcopy(model0)
        ranks.append((dm, np.random.default_rng(seed + r), model, torch.optim.Adam(model.parameters(), lr=lr)))
    theta = params(model0)
    drawn = []
    for _ in range(outer_steps):
        delta = [torch.zeros_like(t) for t in theta]
        for dm, rng, model, opt in ranks:
            with torch.no_grad():
                for p, t in zip(model.parameters(), theta):
                    p.copy_(t)
            weights = dm.task_sampling_weights()
            names = list(weights)
            name = names[int(rng.choice(len(names), p=np.array([weights[n] for n in names])))]
            drawn.append(name)
            for _ in range(k):
                opt.zero_grad()
                manual_loss(model, dm.next_batch(name)).backward()
                opt.step()
            for d, p, t in zip(delta, model.parameters(), theta):
                d += p.detach() - t
        theta = [t + eps * d / world for t, d in zip(theta, delta)]
    assert len(set(drawn)) > 1  # the ranks really trained on different levels
    for got, want in zip(task.model.parameters(), theta):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def fit_two_processes(task, make_dm, max_epochs, dirpath, root, ckpt=None):
    """Fit ``task`` in 2 CPU processes (gloo, spawn) with a last checkpoint in ``dirpath``
    after every epoch, resuming from ``ckpt`` if given; returns the task."""
    from spk_meta.train import ReptileDDPStrategy

    cb = ModelCheckpoint(dirpath=dirpath, save_last=True, save_on_train_epoch_end=True)
    t = trainer(max_epochs=max_epochs, devices=2, use_distributed_sampler=False,
                strategy=ReptileDDPStrategy(start_method="spawn", process_group_backend="gloo"),
                enable_checkpointing=True, callbacks=[cb], plugins=[RunCheckpointIO(root)], default_root_dir=root)
    t.fit(task, datamodule=make_dm(stream_seed=3), ckpt_path=ckpt)
    return task


@pytest.mark.slow  # three 2-process fits; the DDP update itself is checked by the test above
def test_two_process_ddp_resume_equals_uninterrupted(make_dm, tmp_path):
    """Every rank's optimiser, sampler and batch streams are in the checkpoint."""
    def run(max_epochs, dirpath, ckpt=None):
        task = ReptileTask(tiny_model(), outputs(), optimizer_args={"lr": 1e-2}, inner_steps=3,
                           outer_lr=0.5, sampling_seed=2)
        return fit_two_processes(task, make_dm, max_epochs, dirpath, tmp_path, ckpt)

    straight = run(2, tmp_path / "a")
    run(1, tmp_path / "b")
    resumed = run(2, tmp_path / "b", ckpt=str(tmp_path / "b" / "last.ckpt"))
    ckpt = torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)
    assert len(ckpt["reptile"]["ranks"]) == 2
    assert ckpt["reptile"]["ranks"][0]["rng"] != ckpt["reptile"]["ranks"][1]["rng"]
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
