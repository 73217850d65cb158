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
