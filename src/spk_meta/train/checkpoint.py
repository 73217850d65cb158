"""Load the run's own Lightning checkpoints under torch >= 2.6.

torch >= 2.6 makes ``torch.load(weights_only=True)`` the default. SchNetPack's
``AtomisticTask`` saves its model and outputs (``nn.Module`` objects) as hyperparameters,
so its checkpoints only unpickle with ``weights_only=False``; SchNetPack 2.2 never passes
that flag, and ``spktrain`` fails in ``trainer.test(ckpt_path="best")`` after training.

The fix here is narrow: checkpoints that *this run* wrote (saved by this process, or
lying in a directory the run registered as its own: its run directory) load with
``weights_only=False``; every other checkpoint keeps torch's safe default. The global
default of ``torch.load`` is never changed.

- :class:`RunCheckpointIO` is a Lightning checkpoint-IO plugin: it covers
  ``trainer.test(ckpt_path="best")`` and resuming with ``trainer.fit(ckpt_path=...)``.
- :class:`spk_meta.task.AtomisticTask` consults the same registry in
  ``load_from_checkpoint``, which Lightning runs without the trainer's plugin.
"""

import os
from pathlib import Path
from typing import Any, Optional, Set, Union

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

_trusted_dirs: Set[Path] = set()
_trusted_files: Set[Path] = set()

PathLike = Union[str, Path]


def _resolve(path: PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def trust_directory(directory: PathLike) -> None:
    """Treat every checkpoint below ``directory`` as written by this run."""
    _trusted_dirs.add(_resolve(directory))


def is_trusted_checkpoint(path: Any) -> bool:
    """True if ``path`` is a local file this run saved or lying below a trusted directory."""
    if not isinstance(path, (str, Path)) or str(path).startswith(("http://", "https://")):
        return False
    p = _resolve(path)
    return p in _trusted_files or any(p.is_relative_to(d) for d in _trusted_dirs)


def trusted_weights_only(path: Any, weights_only: Optional[bool]) -> Optional[bool]:
    """The ``weights_only`` to load ``path`` with: an explicit choice wins; else
    ``False`` for the run's own checkpoints and torch's default otherwise."""
    if weights_only is None and is_trusted_checkpoint(path):
        return False
    return weights_only


class RunCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` that reloads the run's own checkpoints with
    ``weights_only=False`` and leaves everything else to torch's safe default.

    Args:
        run_dir: the run's directory; checkpoints below it count as the run's own.
            Default: the working directory when the plugin is built (``spktrain`` has
            already changed into the run directory then).

    Use in a trainer config::

        trainer:
          plugins:
            - _target_: spk_meta.train.RunCheckpointIO
    """

    def __init__(self, run_dir: Optional[PathLike] = None):
        super().__init__()
        self.run_dir = _resolve(run_dir if run_dir is not None else os.getcwd())
        trust_directory(self.run_dir)

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        _trusted_files.add(_resolve(path))

    def __setstate__(self, state):
        # a spawned process unpickles the plugin without running __init__: re-trust
        self.__dict__.update(state)
        trust_directory(self.run_dir)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        kwargs = {} if map_location is None else {"map_location": map_location}
        return super().load_checkpoint(
            path, weights_only=trusted_weights_only(path, weights_only), **kwargs
        )
