"""Shared fixtures. Tests use the data shipped inside the installed package only."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import ase.io
import pytest

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session", autouse=True)
def cache_root(tmp_path_factory) -> Iterator[Path]:
    """A per-session $SPKMETA_CACHE for every test and every subprocess it starts.

    Autouse, so no test (run alone or not) builds the embedded databases in the user's
    ``~/.cache/spk-meta``; the previous value is restored when the session ends.
    """
    root = tmp_path_factory.mktemp("spkmeta-cache")
    previous = os.environ.get("SPKMETA_CACHE")
    os.environ["SPKMETA_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("SPKMETA_CACHE", None)
    else:
        os.environ["SPKMETA_CACHE"] = previous


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test in its own tmp_path (relative paths and split files land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def ethanol(cache_root):
    from spk_meta.datasets import ethanol_multilevel

    return ethanol_multilevel()


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory, ethanol) -> Path:
    """40 MP2 ethanol frames as a SchNetPack database built here (eV, eV/Ang)."""
    from spk_meta.data import write_database

    frames = ase.io.read(ethanol["target_mp2_631gs_train_300K"].extxyz, ":40")
    out = tmp_path_factory.mktemp("tiny") / "tiny.db"
    return write_database(frames, out, "MP2/6-31g*", source="tiny")


def install_fake_spktrain(tmp_path: Path, monkeypatch, script: str, module) -> Callable[[], List[dict]]:
    """Make ``module.spktrain_executable`` start the Python ``script`` (a stand-in for
    SchNetPack's ``spktrain`` that appends one JSON line per call to
    ``$FAKE_SPKTRAIN_CALLS``); returns a reader of those calls."""
    path = tmp_path / "fake_spktrain.py"
    path.write_text(script)
    exe = tmp_path / "spktrain"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {path} \"$@\"\n")
    exe.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_SPKTRAIN_CALLS", str(calls))
    monkeypatch.setattr(module, "spktrain_executable", lambda: str(exe))
    return lambda: [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def run_cli(args: List[str], cwd: Path, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    """Run a console script of this venv in ``cwd`` with ``PWD`` set to it.

    SchNetPack's ``train.yaml`` also searches ``$PWD/configs``; running in an empty folder
    makes sure our configs are found through the plugin, not through the source tree.
    """
    exe = VENV_BIN / args[0]
    full_env = {**os.environ, "PWD": str(cwd), "HYDRA_FULL_ERROR": "1", **env}
    return subprocess.run(
        [str(exe), *args[1:]],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ani_potential(preset: str = "ani1x", postprocessors=(), seed: Optional[int] = None):
    """An untrained ANI ``NeuralNetworkPotential`` as our ``model=ani`` config builds it:
    ANI AEVs, one network per element summed to the energy (eV), forces by autograd.

    Args:
        preset: ``"ani1x"`` (H C N O) or ``"ani2x"``.
        postprocessors: SchNetPack postprocessors, e.g. an ``AddOffsets``.
        seed: ``torch.manual_seed`` before the weights are drawn (``None``: leave the RNG).
    """
    import torch
    from schnetpack.atomistic import Forces, PairwiseDistances
    from schnetpack.model import NeuralNetworkPotential

    from spk_meta.atomistic import ElementwiseAtomwise
    from spk_meta.representation import ANI

    if seed is not None:
        torch.manual_seed(seed)
    rep = ANI(preset=preset)
    return NeuralNetworkPotential(
        representation=rep,
        input_modules=[PairwiseDistances()],
        output_modules=[ElementwiseAtomwise(n_in=rep.n_atom_basis, preset=preset), Forces()],
        postprocessors=list(postprocessors),
    )
