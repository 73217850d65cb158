"""Catch model/data mismatches before training starts, with messages that name the culprit.

Three checks: the data's neighbour-list cutoff must reach the model's radial cutoff (else
the representation silently sees truncated environments), every element in the data
must have a network in the model (an element-wise model has no weights for the others),
and every property in the task's loss must be labelled in the data (energy-only data
trains on energies: the loss on forces is dropped, with a warning).
"""

import warnings
from typing import Iterable, List, Optional, Set

import torch
from ase.data import chemical_symbols
from ase.db import connect
from schnetpack.atomistic import Forces, Response
from schnetpack.task import UnsupervisedModelOutput
from schnetpack.transform import AddOffsets

from spk_meta.utils import schnetpack_compat


class ModelDataMismatch(ValueError):
    """The model cannot be trained on this data as configured."""


def _scalar(value) -> Optional[float]:
    """``value`` as a float if it is a number or a one-element tensor (a cutoff buffer)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        # a float32 buffer holds 5.2 as 5.19999981; cutoffs are never finer than 1e-6 Ang
        return round(float(value), 6)
    return None


def model_cutoff(model: torch.nn.Module) -> Optional[float]:
    """The largest ``cutoff`` (Ang) declared by a module of the model, if any declares one.

    A cutoff is a number or a one-element tensor buffer (SchNetPack's representations and
    :class:`~spk_meta.representation.ANI` keep it as a buffer).
    """
    cutoffs = [c for m in model.modules() if (c := _scalar(getattr(m, "cutoff", None))) is not None]
    cutoffs += [
        c
        for m in model.modules()
        if (c := _scalar(getattr(getattr(m, "cutoff_fn", None), "cutoff", None))) is not None
    ]
    return max(cutoffs) if cutoffs else None


def neighbor_list_cutoff(transforms: Optional[Iterable[torch.nn.Module]]) -> Optional[float]:
    """The cutoff (Ang) of the first SchNetPack neighbour-list transform, if any."""
    for t in transforms or []:
        cutoff = schnetpack_compat.neighbor_list_cutoff(t)
        if cutoff is not None:
            return cutoff
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
        if isinstance(pp, AddOffsets) and schnetpack_compat.offsets_property(pp) == key and not pp.add_atomrefs:
            warnings.warn(
                f"AddOffsets({key}) gets add_atomrefs=True: the data module subtracts each "
                "task's fitted per-element energies, and the model must add them back",
                stacklevel=2,
            )
            pp.add_atomrefs = True
            changed += 1
    return changed


def data_labels(datamodule) -> Optional[Set[str]]:
    """Properties labelled in at least one of the data module's databases.

    A :class:`~spk_meta.data.TaskDataModule` serves the energy of every task and forces
    of the tasks that have them; a SchNetPack ``AtomsDataModule`` serves its dataset's
    ``load_properties`` (all available properties unless restricted). ``None`` when the
    data module is neither (then nothing is checked).
    """
    if getattr(datamodule, "dataset", None) is None:
        return None  # not set up (yet)
    has_forces = getattr(datamodule, "task_has_forces", None)
    if callable(has_forces):
        labels = {datamodule.energy_key}
        if datamodule.forces_key and any(has_forces(n) for n in datamodule.task_names):
            labels.add(datamodule.forces_key)
        return labels
    dataset = getattr(datamodule, "dataset", None)
    dataset = getattr(dataset, "dataset", dataset)  # a torch Subset of an ASEAtomsData
    properties = getattr(dataset, "load_properties", None)
    return None if properties is None else set(properties)


def _data_description(datamodule) -> str:
    """The databases of a data module, for messages (without reading any rows)."""
    task_elements = getattr(datamodule, "task_elements", None)
    if callable(task_elements):
        return ", ".join(f"task '{n}' ({path})" for n, (path, _) in task_elements().items())
    dataset = getattr(datamodule, "dataset", None)
    return str(getattr(getattr(dataset, "dataset", dataset), "datapath", "the data"))


def derivative_outputs(model: torch.nn.Module) -> Set[str]:
    """Properties the model computes by differentiating its energy (SchNetPack's
    ``Forces``/``Response`` modules: forces, stress, ...). They stay predicted when
    the data has no labels for them; only their loss is dropped."""
    return {
        key
        for m in model.modules()
        if isinstance(m, (Forces, Response))
        for key in m.model_outputs
    }


def drop_unlabelled_outputs(task, datamodule) -> List[str]:
    """Train on what the data has: drop loss terms for derivative outputs nobody labelled.

    Energy-only data (e.g. the CCSD(T)/CBS database ``spkmeta convert ani1x`` writes) with
    a task whose loss includes forces: the ``ModelOutput`` for forces is removed from
    ``task.outputs`` (one warning naming the database), so the model trains on energies;
    its ``Forces`` module stays, and the trained model still predicts forces. With several
    tasks, an output is dropped only if no task has its labels (Reptile skips the loss
    per batch for tasks without them). Idempotent: a second call drops nothing.

    Args:
        task: a SchNetPack ``AtomisticTask`` (``task.outputs``, ``task.model``).
        datamodule: its data module, after ``setup()``; ``None`` checks nothing.

    Returns:
        the target properties whose loss was dropped.

    Raises:
        ModelDataMismatch: if the loss needs a property the data lacks that the model
            does not derive from its energy (e.g. the energy itself), naming it.
    """
    labels = data_labels(datamodule) if datamodule is not None else None
    if labels is None:
        return []
    derived = derivative_outputs(task.model)
    keep, dropped = [], []
    for output in task.outputs:
        target = output.target_property
        if isinstance(output, UnsupervisedModelOutput) or target in labels:
            keep.append(output)
        elif target in derived:
            dropped.append(target)
        else:
            raise ModelDataMismatch(
                f"the task's loss needs '{target}', but {_data_description(datamodule)} has "
                f"no '{target}' labels (it has: {', '.join(sorted(labels)) or 'none'}); "
                f"remove the '{output.name}' output from task.outputs or use labelled data"
            )
    if dropped:
        warnings.warn(
            f"{_data_description(datamodule)} has no {', '.join(repr(d) for d in dropped)} "
            f"labels: training on {', '.join(sorted(labels))} only (the model still "
            f"predicts {', '.join(dropped)}, from the gradient of its energy)",
            stacklevel=2,
        )
        task.outputs = torch.nn.ModuleList(keep)
    return dropped
