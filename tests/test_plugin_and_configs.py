"""The Hydra search-path plugin, the shipped configs, and `spkmeta info`."""

import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import run_cli
from spk_meta.configs_index import config_options, shadowed_configs, spk_meta_configs

OURS = spk_meta_configs()


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PWD", str(tmp_path))
    return tmp_path


@pytest.fixture
def spktrain_compose(empty_cwd):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="schnetpack.configs", version_base="1.2"):
        yield lambda overrides: compose(config_name="train", overrides=overrides)
    GlobalHydra.instance().clear()


def test_configs_ship_inside_the_installed_package():
    root = Path(str(resources.files("spk_meta.configs")))
    assert "site-packages" in str(root), "tests must run against the installed wheel"
    assert {"experiment", "data", "trainer"} <= set(OURS)
    assert "reptile_ani" in OURS["experiment"]


def test_no_config_shadows_schnetpack():
    assert shadowed_configs() == []
    theirs = config_options("schnetpack.configs")
    assert "md17" in theirs["experiment"]  # the comparison really sees SchNetPack's configs


def test_spktrain_finds_our_experiment_from_an_empty_folder(empty_cwd):
    result = run_cli(["spktrain", "--cfg", "job", "experiment=reptile_ani"], cwd=empty_cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = OmegaConf.create(result.stdout)
    assert cfg.run.experiment == "reptile_ani"
    assert cfg.trainer.plugins[0]._target_ == "spk_meta.train.RunCheckpointIO"
    assert cfg.task._target_ == "spk_meta.task.ReptileTask"
    assert cfg.data._target_ == "spk_meta.data.TaskDataModule"
    assert "ema" not in cfg.callbacks  # one EMA update per outer step would lag theta


@pytest.mark.parametrize("experiment", OURS["experiment"])
def test_every_experiment_composes(spktrain_compose, experiment, cache_root):
    cfg = spktrain_compose([f"experiment={experiment}"])
    assert cfg.run.experiment == experiment
    for key in ("model", "data", "task", "trainer"):
        assert "_target_" in cfg[key], f"experiment={experiment} leaves {key} without _target_"
    # resolving the data node runs our resolver: the embedded database path is absolute
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if "datapath" in data:
        assert Path(data["datapath"]).is_absolute() and Path(data["datapath"]).exists()


@pytest.mark.parametrize(
    "group,name", [(g, n) for g, names in OURS.items() if g and g != "experiment" for n in names]
)
def test_every_group_option_composes(spktrain_compose, group, name):
    base = ["experiment=reptile_ani"] if group.startswith("model") else []
    cfg = spktrain_compose([*base, f"{group}={name}"])
    node = OmegaConf.select(cfg, group.replace("/", "."))
    assert node is not None and "_target_" in node
    if group.startswith("model") and name != "pretrained":  # needs a file: test_finetune
        model = hydra.utils.instantiate(cfg.model)  # e.g. n_atom_basis must match the AEV
        assert isinstance(model, torch.nn.Module)


def test_spkmeta_info_lists_versions_and_shipped_groups(empty_cwd):
    result = run_cli(["spkmeta", "info"], cwd=empty_cwd)
    assert result.returncode == 0, result.stderr
    for pkg in ("spk-meta", "schnetpack", "torchani", "torch"):
        assert pkg in result.stdout
    for group, names in OURS.items():
        if group:
            line = next(l for l in result.stdout.splitlines() if l.strip().startswith(group + " "))
            assert all(n in line for n in names)


def test_spkmeta_info_fails_clearly_without_configs(tmp_path):
    """A wheel that lost its configs: info exits non-zero and says so."""
    pkg = Path(str(resources.files("spk_meta")))
    broken = tmp_path / "spk_meta"
    shutil.copytree(pkg, broken, ignore=shutil.ignore_patterns("configs", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "spk_meta.cli.main", "info"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "configs" in result.stderr and "reinstall" in result.stderr
