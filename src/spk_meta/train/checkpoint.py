"""Reload SchNetPack task checkpoints under torch >= 2.6 without trusting foreign files.

torch >= 2.6 makes ``torch.load(weights_only=True)`` the default. SchNetPack's
``AtomisticTask`` saves its model and outputs (``nn.Module`` objects) as hyperparameters,
so a plain weights-only load of its checkpoints fails, and SchNetPack 2.2 never passes
``weights_only=False``: ``spktrain`` would fail in ``trainer.test(ckpt_path="best")``.

Here a checkpoint is loaded weights-only with the allow-list of
:mod:`spk_meta.model.loading` (the model's classes, optimisers, hyperparameter
containers), which covers every checkpoint SchNetPack and spk-meta write. Full unpickling
is left for:

- checkpoints this plugin object saved itself (this process, this trainer);
- ``trust=True`` (``spktrain +trust_checkpoint=true``), with a warning naming the file;
- an explicit ``weights_only=False`` from the caller.

A crafted ``last.ckpt`` in a run directory therefore runs no code on automatic resume.
Trust belongs to one plugin object (one trainer); there is no process-wide list, and no
directory is trusted. The global default of ``torch.load`` is never changed.

:class:`spk_meta.task.AtomisticTask` installs this plugin in a trainer that lacks it, and
loads ``load_from_checkpoint`` through the same allow-list.
"""

import os
from pathlib import Path
from typing import Any, Optional, Set, Union

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from spk_meta.model.loading import load_file


PathLike = Union[str, Path]

TRUST_HINT = "add +trust_checkpoint=true to the spktrain command (trainer plugin: trust=true)"


def _resolve(path: PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def _is_local(path: Any) -> bool:
    return isinstance(path, (str, Path)) and not str(path).startswith(("http://", "https://"))


class RunCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` that loads SchNetPack task checkpoints weights-only with
    an allow-list, and fully unpickles only its own checkpoints or, if ``trust``, any.

    Args:
        run_dir: accepted for older configs and code; no directory is trusted.
        trust: fully unpickle checkpoints that need names outside the allow-list (with a
            warning naming the file). Set it only for checkpoints you trust.

    Use in a trainer config::

        trainer:
          plugins:
            - _target_: spk_meta.train.RunCheckpointIO
              trust: ${oc.select:trust_checkpoint,false}
    """

    def __init__(self, run_dir: Optional[PathLike] = None, trust: bool = False):
        super().__init__()
        self.run_dir = None if run_dir is None else _resolve(run_dir)
        self.trust = bool(trust)
        self._written: Set[Path] = set()

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        self._written.add(_resolve(path))

    def wrote(self, path: Any) -> bool:
        """True if this plugin object saved ``path`` (and so may fully unpickle it)."""
        return _is_local(path) and _resolve(path) in self._written

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        if weights_only is not None or not _is_local(path):
            # an explicit choice by the caller, or a URL: torch's own handling
            kwargs = {} if map_location is None else {"map_location": map_location}
            return super().load_checkpoint(path, weights_only=weights_only, **kwargs)
        if self.wrote(path):
            return torch.load(path, map_location=map_location, weights_only=False)
        return load_file(path, trust=self.trust, map_location=map_location, hint=TRUST_HINT)
