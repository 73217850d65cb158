"""Load a pre-trained SchNetPack model for fine-tuning or transfer learning."""

import logging
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import torch

from spk_meta.atomistic.multihead import choose_head

from spk_meta.model.loading import load_model

log = logging.getLogger(__name__)


def _absolute(path: Union[str, Path]) -> Path:
    """``spktrain`` runs in its run directory: resolve relative paths against the
    directory it was started from."""
    path = Path(str(path)).expanduser()
    if path.is_absolute():
        return path
    try:
        from hydra.utils import to_absolute_path

        return Path(to_absolute_path(str(path)))
    except ValueError:  # Hydra not initialised: plain Python use
        return path.absolute()


def load_pretrained(
    path: Union[str, Path],
    postprocessors: Optional[Sequence[torch.nn.Module]] = None,
    freeze: Optional[Iterable[str]] = None,
    trust: bool = False,
    head: Optional[str] = None,
) -> torch.nn.Module:
    """A trained model from ``path``, ready to be trained further.

    Args:
        path: SchNetPack's ``best_model`` (a ``torch.save``'d model) or a Lightning
            checkpoint (``.ckpt``) of a SchNetPack task. Loaded weights-only with the
            allow-list of :mod:`spk_meta.model.loading`, which every model and checkpoint
            SchNetPack and spk-meta write passes; a file that names other code is refused.
        postprocessors: replace the model's postprocessors (fine-tuning: a fresh
            ``AddOffsets`` that takes the new level's energy reference from the data).
        freeze: parameter-name prefixes to keep fixed (transfer learning), e.g.
            ``["output_modules.0.atomics.H.layers.0"]``; see ``model.named_parameters()``.
        trust: unpickle a file the allow-list refuses (it can run code; a warning names
            the file). ``spktrain ... +trust_checkpoint=true``.
        head: for a multi-head model (``task=multihead``), the head to fine-tune: a level's
            name, ``"best"`` (lowest loss on the target's training frames before any update,
            chosen at set-up) or ``"fresh"`` (shared layers, new readout); see
            :func:`spk_meta.atomistic.choose_head`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        NotAModelFile: not a model file (truncated or another format).
        UntrustedModelFile: the file names code outside the allow-list and ``trust`` is False.
        ValueError: the file holds no SchNetPack model, or a prefix matches nothing.
    """
    path = _absolute(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pre-trained model (a best_model file or a .ckpt)")
    model = load_model(path, trust=trust).train()
    choose_head(model, head)
    if postprocessors is not None:
        model.postprocessors = torch.nn.ModuleList(list(postprocessors))
    for prefix in list(freeze or []):
        matched = [n for n, p in model.named_parameters() if n.startswith(prefix)]
        if not matched:
            raise ValueError(f"freeze: no parameter of {path.name} starts with '{prefix}'")
        for name, p in model.named_parameters():
            if name.startswith(prefix):
                p.requires_grad_(False)
        log.info("frozen: %d tensors under '%s'", len(matched), prefix)
    return model


def frozen_parameters(model: torch.nn.Module) -> List[str]:
    """Names of the parameters that will not be trained."""
    return [n for n, p in model.named_parameters() if not p.requires_grad]
