"""What a model file may name: the allow-list of spk_meta.model.loading, and the trust
switch of the `pretrained` model config (spktrain ... +trust_checkpoint=true)."""

import os
from importlib.resources import files

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from spk_meta.model.loading import allowed_global


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("name", [
    "posix.system", "builtins.exec", "builtins.eval", "subprocess.Popen", "os.system",
    "torchani.models.ANI1x",  # a module, but building it downloads parameters
    "schnetpack.transform.neighborlist.CachedNeighborList",  # builds folders
    "schnetpack.data.ASEAtomsData",  # not a module: opens a database
    "torch.nn.modules.module.register_module_forward_hook",  # a function, not a class
    "torch.load",
    "torchmetrics.image.fid.FrechetInceptionDistance",  # downloads a network when built
    "torch.nn.functional.handle_torch_function",  # imported there: calls what it is given
])
def test_allow_list_refuses_code_and_side_effects(name):
    assert allowed_global(name) is None


@pytest.mark.parametrize("name", [
    "schnetpack.model.base.NeuralNetworkPotential", "spk_meta.representation.ani.ANI",
    "torchani.aev._computer.AEVComputer", "torch.nn.modules.linear.Linear",
    "schnetpack.nn.activations.shifted_softplus", "torch.optim.adamw.AdamW",
    "schnetpack.task.ModelOutput", "torchmetrics.regression.mae.MeanAbsoluteError",
    "torchani.neighbors.AllPairs", "torchani.cutoffs.CutoffCosine",
    "torch.nn.functional.silu", "torch._C._nn.softplus",
])
def test_allow_list_admits_model_parts(name):
    assert allowed_global(name) is not None


def _pretrained_config(path, **top):
    cfg = OmegaConf.create({**top, "model": OmegaConf.load(files("spk_meta") / "configs" / "model" / "pretrained.yaml")})
    cfg.model.path = str(path)
    return cfg.model


def test_pretrained_config_trusts_only_when_asked(tmp_path):
    marker = tmp_path / "marker"
    crafted = tmp_path / "best_model"
    torch.save(_RunsCode(marker), crafted)
    with pytest.raises(InstantiationException, match=r"UntrustedModelFile.*best_model.*trust_checkpoint=true"):
        instantiate(_pretrained_config(crafted))
    assert not marker.exists()
    with pytest.raises(InstantiationException, match="holds no SchNetPack model"):
        instantiate(_pretrained_config(crafted, trust_checkpoint=True))
    assert marker.exists()  # trusted: the file was unpickled, and its code ran
