"""Multi-head output: each molecule is predicted by its own task's head (checked against the
head run alone), ANI heads share the hidden layers, no head is guessed at inference."""

import ase.io
import pytest
import torch
from schnetpack.atomistic import Atomwise, Forces, PairwiseDistances
from schnetpack.interfaces import AtomsConverter
from schnetpack.model import NeuralNetworkPotential
from schnetpack.representation import PaiNN
from schnetpack.nn import GaussianRBF, CosineCutoff
from schnetpack.transform import MatScipyNeighborList

from spk_meta import properties
from spk_meta.atomistic import ElementwiseAtomwise
from spk_meta.atomistic.multihead import MultiHead, head_names, select_head
from spk_meta.representation import ANI

TASKS = ["wb97x", "b3lyp", "hf"]


def ani_multihead(seed=0):
    torch.manual_seed(seed)
    rep = ANI(preset="ani1x", elements=["H", "C", "O"])
    template = ElementwiseAtomwise(n_in=rep.n_atom_basis, preset="ani1x", elements=["H", "C", "O"],
                                   per_atom_output_key="energy_atomic")
    model = NeuralNetworkPotential(
        representation=rep,
        input_modules=[PairwiseDistances()],
        output_modules=[MultiHead(template, TASKS), Forces()],
    )
    heads = model.output_modules[0].heads
    with torch.no_grad():  # distinct last layers, so a wrong head choice shows
        for i, name in enumerate(TASKS):
            for net in heads[name].atomics.values():
                net.final_layer.bias.fill_(float(i))
    return model.double()


@pytest.fixture(scope="module")
def frames(ethanol):
    return ase.io.read(ethanol["pretrain_wb97x_631gs_300K"].extxyz, ":4")


def inputs(frames, tasks=None):
    conv = AtomsConverter(neighbor_list=MatScipyNeighborList(5.2), dtype=torch.float64)
    x = conv(frames)
    if tasks is not None:
        x[properties.task] = torch.tensor(tasks)
    return x


def test_each_molecule_gets_its_own_heads_prediction(frames):
    model = ani_multihead()
    mixed = model(inputs(frames, [0, 2, 1, 2]))
    for i, t in enumerate([0, 2, 1, 2]):
        alone = model(inputs(frames[i : i + 1], [t]))
        assert torch.allclose(mixed["energy"][i], alone["energy"][0], atol=1e-10)
        assert torch.allclose(mixed["forces"][9 * i : 9 * i + 9], alone["forces"], atol=1e-10)
    # and the heads really differ: task 0 and task 2 on the same molecule
    a, b = model(inputs(frames[:1], [0])), model(inputs(frames[:1], [2]))
    assert not torch.allclose(a["energy"], b["energy"])


def test_ani_heads_share_hidden_layers_and_own_their_last_layer(frames):
    model = ani_multihead()
    mh = model.output_modules[0]
    h0, h1 = mh.heads["wb97x"].atomics["C"], mh.heads["b3lyp"].atomics["C"]
    assert h0.layers is h1.layers and h0.final_layer is not h1.final_layer
    out = model(inputs(frames[:2], [0, 0]))
    out["energy"].sum().backward()
    assert h0.layers[0].weight.grad.abs().sum() > 0
    assert h0.final_layer.weight.grad.abs().sum() > 0
    assert h1.final_layer.weight.grad is None  # the other task's readout is untouched
    # sharing survives a state-dict round trip into a fresh model
    fresh = ani_multihead(seed=1)
    fresh.load_state_dict(model.state_dict())
    e1 = fresh(inputs(frames[:2], [1, 2]))["energy"]
    e2 = model(inputs(frames[:2], [1, 2]))["energy"]
    assert torch.allclose(e1, e2)


def test_inference_needs_an_active_head(frames):
    model = ani_multihead()
    with pytest.raises(RuntimeError, match="wb97x, b3lyp, hf"):
        model(inputs(frames[:1]))
    mh = model.output_modules[0]
    mh.active_head = "hf"
    active = model(inputs(frames[:2]))["energy"]
    assert torch.allclose(active, model(inputs(frames[:2], [2, 2]))["energy"])
    with pytest.raises(KeyError, match="no head 'mp2'"):
        mh.active_head = "mp2"
    assert head_names(model) == TASKS
    single = select_head(model, "hf")
    assert head_names(single) == [] and isinstance(single.output_modules[0], ElementwiseAtomwise)
    assert torch.allclose(single(inputs(frames[:2]))["energy"], active)


def test_painn_heads_are_independent_atomwise_readouts(frames):
    torch.manual_seed(0)
    rep = PaiNN(n_atom_basis=16, n_interactions=2, radial_basis=GaussianRBF(10, 5.0), cutoff_fn=CosineCutoff(5.0))
    model = NeuralNetworkPotential(
        representation=rep,
        input_modules=[PairwiseDistances()],
        output_modules=[MultiHead(Atomwise(n_in=16, output_key="energy"), ["a", "b"]), Forces()],
    ).double()
    mh = model.output_modules[0]
    assert not mh.share_hidden
    assert mh.heads["a"].outnet is not mh.heads["b"].outnet
    mixed = model(inputs(frames[:2], [1, 0]))["energy"]
    assert torch.allclose(mixed[0], model(inputs(frames[:1], [1]))["energy"][0])
    assert torch.allclose(mixed[1], model(inputs(frames[1:2], [0]))["energy"][0])


# -- task=multihead ------------------------------------------------------------------------


def test_multihead_task_is_joint_sgd_with_each_batch_on_its_own_head(ethanol, tmp_path):
    """MultiHeadTask = SGD over sampled tasks' batches where each batch's loss uses its own
    task's head: replayed by hand on the recorded batches with Adam on the same model."""
    import copy

    from test_reptile import LEVELS, manual_loss, outputs, record_batches, tiny_model, trainer
    from schnetpack import transform as T

    from spk_meta.data import TaskDataModule
    from spk_meta.task import MultiHeadTask, add_heads

    dm = TaskDataModule(
        {name: ethanol[stem].db for name, stem in LEVELS.items()}, batch_size=8, num_train=24, num_val=8,
        num_test=8, split_seed=0, split_file=str(tmp_path / "split.npz"), references_file=None,
        transforms=[T.MatScipyNeighborList(5.2), T.CastTo32()], stream_seed=0,
    )
    model0 = tiny_model()
    seen = record_batches(dm)
    task = MultiHeadTask(copy.deepcopy(model0), outputs(), optimizer_args={"lr": 1e-2}, sampling_seed=3)
    trainer(max_steps=12).fit(task, datamodule=dm)
    mh = task.model.output_modules[0]
    assert isinstance(mh, MultiHead) and mh.task_names == list(LEVELS)
    assert len(seen) == 12 and len({name for name, _ in seen}) > 1

    by_hand = copy.deepcopy(model0)
    add_heads(by_hand, list(LEVELS), ["energy", "forces"])
    opt = torch.optim.Adam(by_hand.parameters(), lr=1e-2)
    for _, batch in seen:  # batches carry their task index: the model picks the head
        opt.zero_grad()
        manual_loss(by_hand, batch).backward()
        opt.step()
    for (name, a), b in zip(task.model.named_parameters(), by_hand.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # a head whose task was never drawn keeps its initial weights; drawn ones moved
    drawn = {name for name, _ in seen}
    start = add_heads(copy.deepcopy(model0), list(LEVELS), ["energy", "forces"])
    for name in LEVELS:
        same = all(torch.equal(p, q) for p, q in zip(mh.heads[name].parameters(), start.heads[name].parameters()))
        assert same == (name not in drawn)


def test_heads_must_match_the_tasks():
    from spk_meta.task import add_heads
    from test_reptile import tiny_model

    model = tiny_model()
    add_heads(model, ["a", "b"], ["energy"])
    assert add_heads(model, ["a", "b"], ["energy"]) is model.output_modules[0]
    with pytest.raises(ValueError, match=r"heads \['a', 'b'\] are not this data's tasks \['a', 'c'\]"):
        add_heads(model, ["a", "c"], ["energy"])
    with pytest.raises(ValueError, match="cannot find the output head"):
        add_heads(tiny_model(), ["a"], ["dipole_moment"])


@pytest.mark.slow
def test_multihead_ani_end_to_end(tmp_path, ethanol):
    """spktrain experiment=multihead_ani: per-level metrics, a saved model with one head per
    level that refuses to guess a level, and a selected head that predicts."""
    from conftest import run_cli
    from spk_meta.model.loading import load_model

    result = run_cli(["spktrain", "experiment=multihead_ani", "trainer.max_epochs=1", "logger=csv",
                      "data.batch_size=8", "data.num_train=40", "data.num_val=8", "data.num_test=8",
                      "run.id=mh"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for level in LEVEL_NAMES:
        assert f"test_{level}_forces_rmse" in result.stdout
    model = load_model(tmp_path / "runs" / "mh" / "best_model")
    assert head_names(model) == LEVEL_NAMES
    frames = ase.io.read(ethanol["target_mp2_631gs_test_300K"].extxyz, ":2")
    model = model.double()
    with pytest.raises(RuntimeError, match="wb97x_6-31gs, b3lyp_def2-svp, hf_def2-svp"):
        model(inputs(frames))
    single = select_head(model, "hf_def2-svp")
    assert torch.isfinite(single(inputs(frames))["energy"]).all()

    # fine-tuning asks which head, and model.head=best picks one on the target's frames
    quick = ["trainer.max_epochs=1", "logger=csv", "data.batch_size=8", "data.num_train=16", "data.num_val=4",
             "data.num_test=4", "pretrained=runs/mh/best_model"]
    refused = run_cli(["spktrain", "experiment=finetune_ani", *quick, "run.id=ft0"], cwd=tmp_path)
    assert refused.returncode != 0 and "model.head=NAME" in refused.stdout + refused.stderr
    tuned = run_cli(["spktrain", "experiment=finetune_ani", *quick, "model.head=best", "run.id=ft"], cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stdout[-3000:] + tuned.stderr[-3000:]
    assert "model.head=best: '" in tuned.stdout + tuned.stderr
    assert head_names(load_model(tmp_path / "runs" / "ft" / "best_model")) == []


LEVEL_NAMES = ["wb97x_6-31gs", "b3lyp_def2-svp", "hf_def2-svp"]


# -- fine-tuning a multi-head model: which head --------------------------------------------


def test_choose_head_by_name_fresh_or_not_at_all(frames):
    from spk_meta.atomistic import choose_head

    x = inputs(frames[:2])
    ref = ani_multihead()
    want = select_head(ani_multihead(), "b3lyp")(inputs(frames[:2]))["energy"]
    assert torch.allclose(choose_head(ani_multihead(), "b3lyp")(x)["energy"], want)
    with pytest.raises(ValueError, match="one output head per level \\(wb97x, b3lyp, hf\\).*model.head=NAME"):
        choose_head(ani_multihead(), None)
    with pytest.raises(KeyError, match="no head 'mp2'"):
        choose_head(ani_multihead(), "mp2")
    with pytest.raises(ValueError, match="single output head"):
        choose_head(select_head(ani_multihead(), "hf"), "hf")

    fresh = choose_head(ani_multihead(), "fresh")
    head = fresh.output_modules[0]
    assert isinstance(head, ElementwiseAtomwise)
    old = ref.output_modules[0].heads
    for symbol, net in head.atomics.items():  # shared layers kept, readout new
        for a, b in zip(net.layers.parameters(), old["wb97x"].atomics[symbol].layers.parameters()):
            assert torch.equal(a, b)
        for name in TASKS:
            assert not torch.equal(net.final_layer.weight, old[name].atomics[symbol].final_layer.weight)


def test_best_head_has_the_lowest_loss_on_the_target_frames(frames):
    """choose_best_head keeps the argmin of the loss, computed here head by head."""
    from spk_meta.atomistic import choose_best_head, choose_head

    batches = [inputs(frames[:2]), inputs(frames[2:4])]
    target = select_head(ani_multihead(), "hf")(inputs(frames[:4]))["energy"].detach() + 0.01
    targets = [target[:2], target[2:]]

    def loss(pred, batch):
        i = 0 if torch.equal(batch["_positions"], batches[0]["_positions"]) else 1
        return ((pred["energy"] - targets[i]) ** 2).mean()

    by_hand = {}
    for name in TASKS:
        single = select_head(ani_multihead(), name)
        by_hand[name] = sum(float(loss(single(dict(b)), b)) for b in batches) / 2
    model = choose_head(ani_multihead(), "best")
    best, losses = choose_best_head(model, batches, model, loss)
    assert best == min(by_hand, key=by_hand.get) == "hf"
    assert losses == pytest.approx(by_hand)
    assert head_names(model) == []  # a plain single-head model now
    assert choose_best_head(model, batches, model, loss) is None
