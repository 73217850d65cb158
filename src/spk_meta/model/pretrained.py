"""Load a pre-trained SchNetPack model for fine-tuning or transfer learning."""

import logging
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import torch

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
) -> torch.nn.Module:
    """A trained model from ``path``, ready to be trained further.

    Args:
        path: SchNetPack's ``best_model`` (a ``torch.save``'d model) or a Lightning
            checkpoint (``.ckpt``) of a SchNetPack task. Either holds pickled Python
            objects, so it is loaded with ``weights_only=False``: only pass files you
            trust (naming the file is that decision).
        postprocessors: replace the model's postprocessors (fine-tuning: a fresh
            ``AddOffsets`` that takes the new level's energy reference from the data).
        freeze: parameter-name prefixes to keep fixed (transfer learning), e.g.
            ``["output_modules.0.atomics.H.layers.0"]``; see ``model.named_parameters()``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no SchNetPack model, or a prefix matches nothing.
    """
    path = _absolute(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pre-trained model (a best_model file or a .ckpt)")
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        model = obj.model if hasattr(obj, "model") and hasattr(obj, "outputs") else obj
    elif isinstance(obj, dict) and "state_dict" in obj and "model" in obj.get("hyper_parameters", {}):
        model = obj["hyper_parameters"]["model"]
        state = {k[len("model."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(state)
    else:
        raise ValueError(f"{path}: not a SchNetPack model or task checkpoint")
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
