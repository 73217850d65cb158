"""Catch model/data mismatches before training starts, with messages that name the culprit.

Two checks: the data's neighbour-list cutoff must reach the model's radial cutoff (else
the representation silently sees truncated environments), and every element in the data
must have a network in the model (an element-wise model has no weights for the others).
"""

import warnings
from typing import Iterable, Optional, Set

import torch
from ase.data import chemical_symbols
from ase.db import connect
from schnetpack.transform import AddOffsets
from schnetpack.transform.neighborlist import NeighborListTransform


class ModelDataMismatch(ValueError):
    """The model cannot be trained on this data as configured."""


def model_cutoff(model: torch.nn.Module) -> Optional[float]:
    """The largest ``cutoff`` (Ang) declared by a module of the model, if any declares one."""
    cutoffs = [float(m.cutoff) for m in model.modules() if isinstance(getattr(m, "cutoff", None), (int, float))]
    cutoffs += [
        float(m.cutoff_fn.cutoff)
        for m in model.modules()
        if hasattr(getattr(m, "cutoff_fn", None), "cutoff")
    ]
    return max(cutoffs) if cutoffs else None


def neighbor_list_cutoff(transforms: Optional[Iterable[torch.nn.Module]]) -> Optional[float]:
    """The cutoff (Ang) of the first SchNetPack neighbour-list transform, if any."""
    for t in transforms or []:
        if isinstance(t, NeighborListTransform):
            return float(t._cutoff)
    return None


def model_elements(model: torch.nn.Module) -> Optional[Set[int]]:
    """Atomic numbers the model has weights for; ``None`` if it handles any element."""
    supported: Optional[Set[int]] = None
    for m in model.modules():
        elements = getattr(m, "supported_atomic_numbers", None)
        if elements is not None:
            z = {int(e) for e in elements}
            supported = z if supported is None else supported & z
    return supported


def dataset_elements(dataset) -> Set[int]:
    """Atomic numbers in a SchNetPack ``ASEAtomsData`` (or a subset of one).

    Uses the ``elements`` our writer stores in the metadata; otherwise reads the numbers
    of every row once (no positions or labels).
    """
    md = getattr(dataset, "metadata", {}) or {}
    if "elements" in md:
        return {int(z) for z in md["elements"]}
    with connect(dataset.datapath, use_lock_file=False) as conn:
        return {int(z) for row in conn.select(columns=["numbers"]) for z in row.numbers}


def _symbols(zs: Iterable[int]) -> str:
    return ", ".join(chemical_symbols[z] for z in sorted(zs))


def check_model_against_data(model: torch.nn.Module, datamodule, elements=None) -> None:
    """Raise :class:`ModelDataMismatch` if the data cannot feed the model.

    Args:
        model: a SchNetPack model (e.g. ``NeuralNetworkPotential``).
        datamodule: a SchNetPack ``AtomsDataModule`` or a
            :class:`~spk_meta.data.TaskDataModule` after ``setup()``.
        elements: ``data_elements(datamodule)`` if the caller has it already (reading
            the elements of a database without metadata reads every row).
    """
    needed = model_cutoff(model)
    transforms = getattr(datamodule, "train_transforms", None)
    have = neighbor_list_cutoff(transforms)
    if needed is not None and have is not None and have + 1e-9 < needed:
        raise ModelDataMismatch(
            f"the data's neighbour list uses cutoff {have} Ang but the model needs {needed} Ang "
            f"(its radial cutoff); set the neighbour-list transform's cutoff >= {needed}"
        )
    supported = model_elements(model)
    if supported is None:
        return
    for where, found in elements if elements is not None else data_elements(datamodule):
        unknown = found - supported
        if unknown:
            raise ModelDataMismatch(
                f"{where} contains element(s) {_symbols(unknown)} that the model does not "
                f"support (supported: {_symbols(supported)}); choose a model with these "
                "elements (e.g. model/representation=ani2x) or filter the data"
            )


def data_elements(datamodule):
    """``(description, atomic numbers)`` per database the data module reads."""
    task_elements = getattr(datamodule, "task_elements", None)
    if callable(task_elements):
        return [(f"task '{name}' ({path})", z) for name, (path, z) in task_elements().items()]
    dataset = getattr(datamodule, "dataset", None)
    if dataset is None:
        return []
    return [(getattr(dataset, "datapath", "the dataset"), dataset_elements(dataset))]


def warn_untrained_elements(model: torch.nn.Module, datamodule, elements=None) -> Set[int]:
    """Warn, naming them, about elements in the data that the model was never trained on.

    A model trained through spk-meta's tasks records ``model.trained_elements``; a
    pre-trained model fine-tuned on data with other elements has untrained networks for
    them. Returns those atomic numbers (empty if none or if the model records nothing).
    """
    trained = getattr(model, "trained_elements", None)
    if trained is None:
        return set()
    new = set()
    for where, found in elements if elements is not None else data_elements(datamodule):
        extra = set(found) - {int(z) for z in trained}
        if extra:
            warnings.warn(
                f"{where} contains {_symbols(extra)}, which the pre-trained model never saw "
                f"(trained on {_symbols(trained)}): their weights start untrained",
                stacklevel=2,
            )
            new |= extra
    return new


def restore_fitted_references(model: torch.nn.Module, datamodule) -> int:
    """Make the model's ``AddOffsets`` add back the per-element E0 the data module subtracted.

    A :class:`~spk_meta.data.TaskDataModule` with ``reference_energies="fit"`` trains on
    ``E - sum_i E0[Z_i]``; an ``AddOffsets(add_mean=True)`` alone (as in SchNetPack's
    experiments) would add a mean per atom instead, which is wrong for every composition
    but the mean one. Such postprocessors get ``add_atomrefs=True``, with a warning.
    Returns the number changed.
    """
    if getattr(datamodule, "reference_energies", None) != "fit":
        return 0
    key = getattr(datamodule, "energy_key", None)
    changed = 0
    for pp in getattr(model, "postprocessors", []):
        if isinstance(pp, AddOffsets) and pp._property == key and not pp.add_atomrefs:
            warnings.warn(
                f"AddOffsets({key}) gets add_atomrefs=True: the data module subtracts each "
                "task's fitted per-element energies, and the model must add them back",
                stacklevel=2,
            )
            pp.add_atomrefs = True
            changed += 1
    return changed
