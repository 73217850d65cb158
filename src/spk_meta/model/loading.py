"""Load model files and checkpoints without running code from them.

A SchNetPack ``best_model`` is a whole pickled ``nn.Module`` and a Lightning checkpoint of
a SchNetPack task pickles the model in its hyperparameters, so SchNetPack loads both with
``torch.load(weights_only=False)``: unpickling such a file can run any code it names. Here
every file is first loaded with ``weights_only=True`` and an allow-list computed for that
file: the classes it names must be ``nn.Module`` subclasses of the packages a SchNetPack
model is built from (``torch.nn``, SchNetPack's model/representation/output/transform
modules, ``spk_meta``'s, torchani's AEVs and networks, torchmetrics), plus the handful of
functions, optimisers and containers (omegaconf, Lightning's ``AttributeDict``) that
SchNetPack's models and checkpoints hold. Anything else (``os.system``, ``builtins.exec``,
a class from another package) is refused, naming the file and the offending names.

Full unpickling is a decision of the caller, made per call: ``trust=True`` (``spkmeta
evaluate --trust``, ``+trust_checkpoint=true`` for ``spktrain``) or a checkpoint the same
:class:`~spk_meta.train.RunCheckpointIO` wrote; it logs one warning naming the file. The
allow-list is handed to torch for one ``torch.load`` only (``torch.serialization.safe_globals``),
never added to torch's process-wide list.
"""

import importlib
import inspect
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, List, Optional, Union

import torch

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: ``nn.Module`` subclasses defined below these module prefixes may be rebuilt.
MODULE_PACKAGES = (
    "torch.nn.modules.",
    "schnetpack.model.",
    "schnetpack.atomistic.",
    "schnetpack.nn.",
    "schnetpack.representation.",
    "schnetpack.transform.",
    "schnetpack.task.",
    "spk_meta.atomistic.",
    "spk_meta.representation.",
    "torchani.aev.",
    "torchani.nn.",
    "torchani.neighbors.",
    "torchani.cutoffs.",
    # SchNetPack's metrics; not all of torchmetrics (some metrics download networks when built)
    "torchmetrics.regression.",
    "torchmetrics.aggregation.",
)
#: Module classes that do more than hold tensors when built (a neighbour-list cache
#: creates and copies folders): never rebuilt from a file.
EXCLUDED = frozenset({"schnetpack.transform.neighborlist.CachedNeighborList"})
#: Plain functions from these modules (activations, initialisers, metric reductions).
FUNCTION_MODULES = (
    "torch.nn.functional",
    "torch._C._nn",  # builtin activations (softplus, gelu)
    "torch.nn.init",
    "schnetpack.nn.activations",
    "torchmetrics.utilities.data",
)
#: Other names SchNetPack's checkpoints hold: hyperparameter containers, builtin types.
NAMED = frozenset({
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.set", "builtins.int",
    "builtins.float", "builtins.str", "builtins.bool", "collections.defaultdict", "typing.Any",
    "lightning_fabric.utilities.data.AttributeDict",
    "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
    "omegaconf.base.Metadata", "omegaconf.base.ContainerMetadata",
    "omegaconf.nodes.AnyNode", "omegaconf.nodes.StringNode", "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode", "omegaconf.nodes.BooleanNode",
    "torchmetrics.metric.jit_distributed_available",
})
#: Optimiser and learning-rate scheduler classes (a checkpoint names the class it uses).
OPTIMIZER_PACKAGES = ("torch.optim.", "schnetpack.train.lr_scheduler")


class NotAModelFile(ValueError):
    """The file is not a ``torch.save``'d model or checkpoint (truncated, another format)."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        super().__init__(f"not a SchNetPack model file (truncated or another format): {path}")


class UntrustedModelFile(pickle.UnpicklingError):
    """The file names code outside the allow-list; it loads only when trusted."""

    def __init__(self, path: PathLike, names: List[str], hint: str):
        self.path, self.names = Path(path), list(names)
        shown = ", ".join(self.names[:5]) + (f" and {len(self.names) - 5} more" if len(self.names) > 5 else "")
        super().__init__(
            f"{path}: refusing to unpickle {shown}: not part of a SchNetPack model, and "
            f"unpickling it could run code. Only if you trust this file: {hint}"
        )


TRUST_HINT = "pass trust=True (spkmeta evaluate --trust; spktrain +trust_checkpoint=true)"


def _lookup(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def allowed_global(name: str) -> Optional[Any]:
    """The object a pickle may reference as ``name`` (``module.qualname``), or None.

    Modules are imported only when the name lies below an allowed package.
    """
    if name in EXCLUDED:
        return None
    if name in NAMED:
        return _lookup(name)
    module = name.rpartition(".")[0]
    if name.startswith(MODULE_PACKAGES):
        obj = _lookup(name)
        if inspect.isclass(obj) and issubclass(obj, torch.nn.Module) and obj.__module__ == module:
            return obj
    if module in FUNCTION_MODULES:
        obj = _lookup(name)
        # defined there, not imported (torch.nn.functional holds torch's dispatch helpers too)
        if (inspect.isfunction(obj) or inspect.isbuiltin(obj)) and obj.__module__ == module:
            return obj
    if name.startswith(OPTIMIZER_PACKAGES):
        obj = _lookup(name)
        bases = (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler,
                 torch.optim.lr_scheduler.ReduceLROnPlateau)
        if inspect.isclass(obj) and issubclass(obj, bases):
            return obj
    return None


def _file_globals(path: Path) -> List[str]:
    """The names the file's pickle references beyond torch's own safe set."""
    if not zipfile.is_zipfile(path):
        raise NotAModelFile(path)
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:  # a damaged archive or pickle: whatever torch raises
        raise NotAModelFile(path) from err


def file_safe_globals(path: PathLike, trust: bool = False, hint: str = TRUST_HINT) -> Optional[List[Any]]:
    """The allow-listed objects to load ``path`` weights-only with (for
    ``torch.serialization.safe_globals``); ``None`` if it needs full unpickling and ``trust``
    (a warning naming the file is logged).

    Raises:
        FileNotFoundError: no such file.
        NotAModelFile: not a ``torch.save`` archive, or a damaged one.
        UntrustedModelFile: the file needs names outside the allow-list and ``trust`` is False.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    allowed = {n: allowed_global(n) for n in _file_globals(path)}
    refused = sorted(n for n, obj in allowed.items() if obj is None)
    if not refused:
        return list(allowed.values())
    if not trust:
        raise UntrustedModelFile(path, refused, hint)
    log.warning("trusted: fully unpickling %s (it names %s)", path, ", ".join(refused))
    return None


def load_file(path: PathLike, trust: bool = False, map_location: Any = "cpu",
              hint: str = TRUST_HINT) -> Any:
    """``torch.load`` of ``path`` that runs no code from the file unless ``trust``.

    Args:
        path: a ``torch.save``'d file (``best_model``, a ``.ckpt``).
        trust: if the file needs names outside the allow-list, unpickle it fully (with a
            warning naming the file) instead of refusing.
        map_location: as for ``torch.load``.
        hint: how the user can trust the file, for the error message.

    Raises:
        FileNotFoundError, NotAModelFile, UntrustedModelFile: see :func:`file_safe_globals`.
    """
    allowed = file_safe_globals(path, trust, hint)
    try:
        if allowed is None:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise NotAModelFile(path) from err


def model_from_object(obj: Any, path: PathLike) -> torch.nn.Module:
    """The SchNetPack model in what ``torch.load`` returned: a ``best_model`` (the module),
    a pickled task (its ``model``) or a Lightning checkpoint of a task (the model in the
    hyperparameters, with the checkpoint's weights)."""
    if isinstance(obj, torch.nn.Module):
        return obj.model if hasattr(obj, "model") and hasattr(obj, "outputs") else obj
    if isinstance(obj, dict) and "state_dict" in obj and "model" in obj.get("hyper_parameters", {}):
        model = obj["hyper_parameters"]["model"]
        state = {k[len("model."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(state)
        return model
    raise ValueError(f"{path}: holds no SchNetPack model (a best_model file or a task's .ckpt)")


def load_model(path: PathLike, trust: bool = False, device: str = "cpu") -> torch.nn.Module:
    """A SchNetPack model from ``path`` (``best_model`` or a task's ``.ckpt``), in eval mode.

    Loads weights-only with the allow-list of :mod:`spk_meta.model.loading`; files that
    need more unpickle only with ``trust=True``. Used by ``spkmeta evaluate``, the
    experiment runner, ``pretrained=`` and every other place that reads a model file.

    Raises:
        FileNotFoundError, NotAModelFile, UntrustedModelFile: see :func:`load_file`.
        ValueError: the file holds something other than a SchNetPack model.
    """
    return model_from_object(load_file(path, trust=trust, map_location=device), path).eval()

