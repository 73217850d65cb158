"""``TaskDataModule``: per-task splits, energy references, transforms and loaders.

The data side of multi-fidelity training. It opens each task
(:class:`~spk_meta.data.TaskDataset`: an ASE database, packed once into the cache, or a
packed store's label set), splits every task (the split is saved in the run
directory and reused on resume), fits each task's per-element energy reference on its
training split and subtracts it from that task's energies, applies SchNetPack transforms
per task (caching deterministic ones) and serves:

- ``train_dataloader()``: one task -> ordinary shuffled batches; several tasks -> joint
  epochs (every training frame once, each batch from one task, tasks interleaved);
- ``task_stream(name)``/``next_batch(name)``: endless batches of one task, reshuffled each
  pass, for episodic training (the training task picks the task and how many batches;
  this module serves; the contract is :class:`~spk_meta.data.EpisodicTaskData`);
- ``val_dataloader()``/``test_dataloader()``: one loader, task after task, each batch
  from one task (``batch["_task"]``), so per-task metrics need no ``dataloader_idx``.

For SchNetPack's ``AddOffsets``/``RemoveOffsets`` it exposes the statistics of one *active*
task (``train_dataset.atomrefs``, ``get_atomrefs``, ``get_stats``): the only task in
single-task mode, else ``active_task`` if set, else none, and the model then predicts
reference-subtracted energies.

Frames stay on disk (:mod:`spk_meta.data.store`; an ASE database is packed once into the
cache): only index arrays are resident, each sample is read when it is asked for, and
large tasks build their neighbour lists in DataLoader workers instead of caching them.

What an epoch is. Joint training (several tasks, no episodes): every training frame of
every task once. Episodic training (Reptile): one epoch is as many outer steps as make
their batches add up to one pass over all tasks' training batches, whatever tasks the
sampling picks; each task stream reshuffles when *it* has been read through, so with
``task_sampling: temperature`` a 5 k-frame task mixed with a 5 M-frame one is read through
many times per epoch while the big one is sampled without ever materialising its order (a
large task's pass order is a pseudo-random permutation computed batch by batch, see
:class:`~spk_meta.data.TaskBatchStream`). An epoch of such a mix is long (~5 M / batch
size batches): count training with ``trainer.max_steps`` (inner steps) rather than epochs,
and validate with ``val_check_interval``.

The saved split lives in :mod:`spk_meta.data.splits` (format, checks on reuse), the E0 fit
and its JSON in :mod:`spk_meta.data.atomrefs`; this module wires them to the tasks.
"""

import copy
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import numpy as np
import pytorch_lightning as pl
import torch
from schnetpack import properties as structure
from schnetpack.data import AtomsLoader
from schnetpack.transform import RemoveOffsets

from spk_meta.data.atomrefs import (
    AtomicEnergies,
    energy_references_as_dict,
    fit_split_reference_counts,
    save_energy_references,
)
from spk_meta.data.sampling import TaskBatchSampler, TaskBatchStream, task_sampling_weights
from spk_meta.data.splits import SPLIT_NAMES, load_or_draw_splits, split_counts
from spk_meta.data.task_dataset import (
    LARGE_TASK_FRAMES,
    PathLike,
    TaskDataError,
    TaskDataset,
    TaskSubset,
    start_directory,
)

log = logging.getLogger(__name__)

SplitValue = Optional[Union[int, float, Mapping[str, Union[int, float]]]]
SPLITS = SPLIT_NAMES
REFERENCE_MODES = ("fit", "none")


#: DataLoader workers of a data module with a large task when ``num_workers`` is not given
DEFAULT_WORKERS = 2

#: seed offset between the task streams of consecutive ranks (distributed training)
STREAM_RANK_STRIDE = 1_000_003


def _per_task(value: SplitValue, name: str, what: str):
    if hasattr(value, "items"):
        if name not in value:
            raise TaskDataError(f"{what} gives no value for task '{name}' (it has: {', '.join(value)})")
        return value[name]
    return value


class ConcatTaskSubsets(torch.utils.data.ConcatDataset):
    """Several tasks' splits as one dataset; ``atomrefs`` are zeros (no single level)."""

    def __init__(self, subsets: Sequence[TaskSubset], energy_key: str):
        super().__init__(list(subsets))
        self.energy_key = energy_key

    @property
    def atomrefs(self) -> Dict[str, torch.Tensor]:
        return {self.energy_key: torch.zeros(100, dtype=torch.float64)}


class TaskDataModule(pl.LightningDataModule):
    """Lightning data module over one task per level of theory, read lazily from disk.

    Args:
        tasks: ``{name: task}`` (names are task names, conventionally level-of-theory
            slugs) or a list of tasks (named by the slug of their level); a task is an ASE
            database, a packed store, ``"STORE@LABELS"`` or ``{path: STORE, labels:
            LABELS}`` (:func:`~spk_meta.data.parse_task_source`).
        batch_size: structures per batch (every batch holds one task).
        num_train, num_val, num_test: per task, an ``int`` count or a ``float`` fraction;
            or a mapping ``{task: value}``. ``num_test=None``: the remaining frames.
        tasks: relative database paths are taken from the directory the run was started
            in (Hydra's original working directory under ``spktrain``), not the run directory.
        split_file: where the per-task split is saved (relative: the working directory,
            i.e. ``spktrain``'s run directory); reused if it exists and matches the
            requested counts and the databases (else :class:`TaskSplitMismatch`, see
            :mod:`spk_meta.data.splits`). ``None``: don't save.
        split_seed: seed for drawing the split; ``None`` uses NumPy's global RNG, which
            ``spktrain`` seeds with ``seed``.
        reference_energies: ``"fit"``: least-squares per-element E0 on each task's
            training split, subtracted from that task's energies (a RemoveOffsets
            transform is then dropped, with a warning); ``"none"``: energies as stored.
        references_file: where the fitted references are written (JSON, keyed by task).
        active_task: the task whose references and statistics ``AddOffsets`` sees;
            defaults to the only task in single-task mode.
        transforms: SchNetPack transforms for every split (copied per task and split);
            ``train_transforms``/``val_transforms``/``test_transforms`` override them.
        cache_transformed: cache transformed samples in memory; ``None`` = when every
            transform is deterministic.
        task_sampling, sampling_temperature: how tasks are weighted for episodes (see
            :func:`~spk_meta.data.task_sampling_weights`).
        energy_key, forces_key: property names in the databases.
        distance_unit, energy_unit: one unit system for all tasks (forces in
            ``energy_unit/distance_unit``).
        property_units: SchNetPack's spelling of the same, ``{energy_key: unit,
            forces_key: unit}`` (as SchNetPack experiments set it); overrides
            ``energy_unit`` and the forces unit.
        nan_policy: ``"fail"`` or ``"skip"`` frames with NaN/inf labels.
        num_workers, num_val_workers, num_test_workers, pin_memory: as in SchNetPack's
            ``AtomsDataModule``; the training workers also serve the episodic task
            streams. ``num_workers=None``: 2 when a task has more than 50 000 frames
            (neighbour lists built in parallel, per sample, no cache), else 0 (small
            tasks are served from the cache of transformed samples); the val/test ones
            default to ``num_workers``.
        train_sampler_cls, train_sampler_args: a sampler for the training split, as
            ``spktrain`` passes it (single-task mode only).
        stream_seed: seed of the per-task streams (task ``i`` on rank ``r`` uses
            ``stream_seed + i + STREAM_RANK_STRIDE * r``); ``None``: drawn from torch's
            global RNG at setup (seeded by ``spktrain``).
    """

    def __init__(
        self,
        tasks: Union[Mapping[str, PathLike], Sequence[PathLike]],
        batch_size: int = 16,
        num_train: SplitValue = 0.8,
        num_val: SplitValue = 0.1,
        num_test: SplitValue = None,
        split_file: Optional[str] = "task_splits.npz",
        split_seed: Optional[int] = None,
        reference_energies: str = "fit",
        references_file: Optional[str] = "energy_references.json",
        active_task: Optional[str] = None,
        transforms: Optional[List[torch.nn.Module]] = None,
        train_transforms: Optional[List[torch.nn.Module]] = None,
        val_transforms: Optional[List[torch.nn.Module]] = None,
        test_transforms: Optional[List[torch.nn.Module]] = None,
        cache_transformed: Optional[bool] = None,
        task_sampling: str = "uniform",
        sampling_temperature: float = 1.0,
        energy_key: str = structure.energy,
        forces_key: Optional[str] = structure.forces,
        distance_unit: str = "Ang",
        energy_unit: str = "eV",
        property_units: Optional[Mapping[str, str]] = None,
        nan_policy: str = "fail",
        num_workers: Optional[int] = None,
        num_val_workers: Optional[int] = None,
        num_test_workers: Optional[int] = None,
        pin_memory: bool = False,
        train_sampler_cls: Optional[Type] = None,
        train_sampler_args: Optional[Dict[str, Any]] = None,
        stream_seed: Optional[int] = None,
        progress: Optional[bool] = None,
        **kwargs: Any,
    ):
        super().__init__()
        if reference_energies not in REFERENCE_MODES:
            raise ValueError(f"reference_energies must be one of {REFERENCE_MODES}, got {reference_energies!r}")
        if kwargs:
            log.info("TaskDataModule ignores SchNetPack data options %s", sorted(kwargs))
        self.tasks_config = tasks
        #: where relative task paths start: taken now, in the process Hydra started (a
        #: spawned DDP worker sets up the data without Hydra's original directory)
        self.start_dir = start_directory()
        self.batch_size = int(batch_size)
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.split_file = split_file
        self.split_seed = split_seed
        self.reference_energies = reference_energies
        self.references_file = references_file
        self._active_task = active_task
        transforms = list(transforms or [])
        self.train_transforms = list(train_transforms) if train_transforms is not None else copy.deepcopy(transforms)
        self.val_transforms = list(val_transforms) if val_transforms is not None else copy.deepcopy(transforms)
        self.test_transforms = list(test_transforms) if test_transforms is not None else copy.deepcopy(transforms)
        self.cache_transformed = cache_transformed
        self.task_sampling = task_sampling
        self.sampling_temperature = float(sampling_temperature)
        self.energy_key = energy_key
        self.forces_key = forces_key
        self.distance_unit = distance_unit
        property_units = dict(property_units or {})
        self.energy_unit = property_units.pop(energy_key, energy_unit)
        self.forces_unit = property_units.pop(forces_key, None) if forces_key else None
        if property_units:
            raise TaskDataError(
                f"property_units: only '{energy_key}' and '{forces_key}' are served by "
                f"TaskDataModule, not {', '.join(property_units)}"
            )
        self.nan_policy = nan_policy
        #: ``None`` until setup picks it from the task sizes (see :meth:`_default_workers`)
        self.num_workers = None if num_workers is None else int(num_workers)
        self.num_val_workers = None if num_val_workers is None else int(num_val_workers)
        self.num_test_workers = None if num_test_workers is None else int(num_test_workers)
        self.pin_memory = pin_memory
        self.train_sampler_cls = train_sampler_cls
        self.train_sampler_args = dict(train_sampler_args or {})
        self.stream_seed = stream_seed
        self.progress = progress

        self.dataset: Optional[TaskDataset] = None
        self.splits: Dict[str, Dict[str, np.ndarray]] = {}
        self.energy_references: Dict[str, AtomicEnergies] = {}
        self.subsets: Dict[str, Dict[str, TaskSubset]] = {}
        self._streams: Dict[str, TaskBatchStream] = {}
        self._pending_stream_state: Dict[str, dict] = {}
        self._joint_sampler: Optional[TaskBatchSampler] = None
        #: batches per outer step of an episodic task (ReptileTask: k x tasks per step),
        #: set through serve_episodes(): the training loader then yields outer-step indices
        #: and the task draws its batches with next_batch()
        self.episode_steps: Optional[int] = None
        #: rank whose streams this module serves; None: the attached trainer's global rank
        self.stream_rank: Optional[int] = None
        if self.reference_energies == "fit":
            self._drop_remove_offsets()

    def _drop_remove_offsets(self) -> None:
        """The fitted references replace SchNetPack's RemoveOffsets: drop it, loudly, so an
        existing SchNetPack experiment (which removes the mean) works with one override."""
        dropped = []
        for split in SPLITS:
            kept = []
            for t in getattr(self, f"{split}_transforms"):
                if isinstance(t, RemoveOffsets):
                    dropped.append(split)
                else:
                    kept.append(t)
            setattr(self, f"{split}_transforms", kept)
        if dropped:
            warnings.warn(
                f"TaskDataModule drops the RemoveOffsets transform ({'/'.join(dropped)}): each "
                "task's fitted per-element energy reference is subtracted on the data side "
                "instead (reference_energies='fit'; set 'none' to keep RemoveOffsets)",
                stacklevel=3,
            )

    # -- setup ---------------------------------------------------------------------------

    def setup(self, stage: Optional[str] = None) -> None:
        if self.dataset is not None:
            return
        self.dataset = TaskDataset(
            self.tasks_config,
            energy_key=self.energy_key,
            forces_key=self.forces_key,
            distance_unit=self.distance_unit,
            energy_unit=self.energy_unit,
            forces_unit=self.forces_unit,
            nan_policy=self.nan_policy,
            progress=self.progress,
            base_dir=self.start_dir,
        )
        self._log_tasks()
        self._default_workers()
        if self._active_task is not None and self._active_task not in self.dataset:
            raise TaskDataError(
                f"active_task '{self._active_task}' is not a task (tasks: {', '.join(self.dataset)})"
            )
        self.splits = self._load_or_make_splits()
        if self.reference_energies == "fit":
            self._fit_references()
        for name, data in self.dataset.items():
            self.subsets[name] = {
                split: TaskSubset(
                    data,
                    self.splits[name][split],
                    copy.deepcopy(getattr(self, f"{split}_transforms")),
                    cache=self.cache_transformed,
                )
                for split in SPLITS
            }
        # SchNetPack transforms may read statistics from the data module (like in
        # AtomsDataModule.setup); plain nn.Modules have no such hook
        every = self.train_transforms + self.val_transforms + self.test_transforms
        every += [t for n in self.dataset for s in SPLITS for t in self.subsets[n][s].transforms]
        for t in every:
            if callable(getattr(t, "datamodule", None)):
                t.datamodule(self)
        if self.stream_seed is None:
            self.stream_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        self._joint_sampler = TaskBatchSampler(
            [len(self.subsets[n]["train"]) for n in self.task_names], self.batch_size, seed=self.stream_seed
        )

    def _default_workers(self) -> None:
        """``num_workers=None``: :data:`DEFAULT_WORKERS` DataLoader workers when a task has
        more than :data:`~spk_meta.data.task_dataset.LARGE_TASK_FRAMES` frames (neighbour
        lists are then built per sample, in parallel, and not cached), else 0 (small tasks
        are served from the cache of transformed samples, where workers only add start-up)."""
        large = max(len(d) for d in self.dataset.values()) > LARGE_TASK_FRAMES
        if self.num_workers is None:
            self.num_workers = DEFAULT_WORKERS if large else 0
            log.info("num_workers=%d (%s tasks)", self.num_workers, "large" if large else "small")
        if self.num_val_workers is None:
            self.num_val_workers = self.num_workers
        if self.num_test_workers is None:
            self.num_test_workers = self.num_workers

    def _log_tasks(self) -> None:
        """One INFO line per task: what was loaded from where (duplicate task names in a
        YAML mapping are merged by the config system before they get here)."""
        log.info("%d task(s) loaded: %s", len(self.dataset), ", ".join(self.dataset))
        for name, data in self.dataset.items():
            skipped = f", {data.n_skipped} skipped (NaN/inf)" if data.n_skipped else ""
            log.info(
                "task '%s': %d frames%s from %s (%s)",
                name, len(data), skipped, data.path, "energy+forces" if data.has_forces else "energy only",
            )

    def _requested_counts(self, name: str) -> Tuple[int, int, int]:
        data = self.dataset[name]
        return split_counts(
            len(data),
            _per_task(self.num_train, name, "num_train"),
            _per_task(self.num_val, name, "num_val"),
            _per_task(self.num_test, name, "num_test"),
            f"task '{name}' ({data.path})",
        )

    def _load_or_make_splits(self) -> Dict[str, Dict[str, np.ndarray]]:
        """Positions (into each task's frames) per split: the saved split, checked against
        this run, or a new one (saved only once every task's split could be drawn)."""
        counts = {name: self._requested_counts(name) for name in self.dataset}
        rng = np.random.default_rng(self.split_seed) if self.split_seed is not None else np.random
        return load_or_draw_splits(
            self.split_file,
            {name: data.db_index for name, data in self.dataset.items()},
            {name: data.identity() for name, data in self.dataset.items()},
            counts,
            rng,
        )

    def _fit_references(self) -> None:
        for name, data in self.dataset.items():
            train = self.splits[name]["train"]
            counts = data.element_counts(train, data.elements)  # (n_train, n_elements), read in chunks
            ref = fit_split_reference_counts(counts, data.energies[train], data.elements, f"task '{name}' ({data.path})")
            del counts
            data.set_reference(ref)
            self.energy_references[name] = ref
        if self.references_file:
            self.write_references(self.references_file)

    def _reference_info(self) -> Dict[str, Dict[str, Any]]:
        info = {}
        for name in self.energy_references:
            level = self.dataset[name].level_of_theory
            info[name] = {"level_of_theory": level.name if level else None, "database": str(self.dataset[name].path)}
        return info

    def references_as_dict(self) -> Dict[str, Any]:
        """The fitted references, JSON-ready: ``{task: {elements, values, unit, ...}}``."""
        return energy_references_as_dict(self.energy_references, self.energy_unit, self._reference_info())

    def write_references(self, path: Union[str, Path]) -> Path:
        """Write the fitted references (atomically; see :func:`~spk_meta.data.load_energy_references`)."""
        return save_energy_references(path, self.energy_references, self.energy_unit, self._reference_info())

    # -- tasks ---------------------------------------------------------------------------

    def _require_setup(self):
        if self.dataset is None:
            raise RuntimeError("TaskDataModule.setup() has not been called yet")

    @property
    def task_names(self) -> List[str]:
        self._require_setup()
        return self.dataset.names

    @property
    def single_task(self) -> bool:
        self._require_setup()
        return len(self.dataset) == 1

    @property
    def active_task(self) -> Optional[str]:
        if self._active_task is not None:
            return self._active_task
        if self.dataset is not None and len(self.dataset) == 1:
            return self.dataset.names[0]
        return None

    @active_task.setter
    def active_task(self, name: Optional[str]) -> None:
        if name is not None and self.dataset is not None and name not in self.dataset:
            raise TaskDataError(f"active_task '{name}' is not a task (tasks: {', '.join(self.dataset)})")
        self._active_task = name

    def task_sampling_weights(self) -> Dict[str, float]:
        """Probability of each task per episode, from ``task_sampling``."""
        sizes = {n: len(self.subsets[n]["train"]) for n in self.task_names}
        return task_sampling_weights(sizes, self.task_sampling, self.sampling_temperature)

    def task_elements(self) -> Dict[str, Tuple[Path, set]]:
        """``{task: (database, atomic numbers)}``: what each task needs a model to support."""
        self._require_setup()
        return {n: (d.path, set(d.elements)) for n, d in self.dataset.items()}

    def task_has_forces(self, name: str) -> bool:
        self._require_setup()
        return self.dataset[name].has_forces

    # -- datasets ------------------------------------------------------------------------

    def _split_dataset(self, split: str):
        self._require_setup()
        if self.active_task is not None:
            return self.subsets[self.active_task][split]
        return self._concat(split)

    def _concat(self, split: str) -> ConcatTaskSubsets:
        """All tasks' ``split`` as one dataset, in task order."""
        return ConcatTaskSubsets([self.subsets[n][split] for n in self.task_names], self.energy_key)

    @property
    def train_dataset(self):
        """The active task's training split (all tasks concatenated if none is active)."""
        return self._split_dataset("train")

    @property
    def val_dataset(self):
        return self._split_dataset("val")

    @property
    def test_dataset(self):
        return self._split_dataset("test")

    def get_atomrefs(self, property: str, is_extensive: bool = True) -> Dict[str, torch.Tensor]:
        """The active task's fitted E0 as SchNetPack atomrefs ``{property: (100,)}``."""
        self._check_property(property)
        return self.train_dataset.atomrefs

    def get_stats(
        self, property: str, divide_by_atoms: bool, remove_atomref: bool
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the active task's training energies (all tasks if none is active).

        ``remove_atomref=True``: of the energies as served (reference subtracted);
        ``False``: of the total energies. ``divide_by_atoms``: per atom. With several
        tasks and none active, always of the served energies: totals of different levels
        have no common mean, and a pre-trained model predicts reference-subtracted energies.
        """
        self._check_property(property)
        names = [self.active_task] if self.active_task is not None else self.task_names
        subtract = remove_atomref or self.active_task is None
        values = []
        for name in names:
            data = self.dataset[name]
            idx = self.subsets[name]["train"].indices
            e = data.energies[idx] - (data.reference_energies[idx] if subtract else 0.0)
            if divide_by_atoms:
                e = e / data.n_atoms()[idx]
            values.append(e)
        v = torch.from_numpy(np.concatenate(values))
        return v.mean(), v.std()

    def _check_property(self, property: str) -> None:
        self._require_setup()
        if property != self.energy_key:
            raise KeyError(
                f"TaskDataModule provides statistics and references for '{self.energy_key}' "
                f"only, not '{property}'"
            )

    # -- loaders -------------------------------------------------------------------------

    def _loader(self, dataset, workers: int, shuffle: bool = False, **kw) -> AtomsLoader:
        return AtomsLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            **kw,
        )

    def serve_episodes(self, batches_per_step: Optional[int]) -> None:
        """Episodic training: ``train_dataloader()`` yields outer-step indices, each
        standing for ``batches_per_step`` batches the task draws with :meth:`next_batch`
        (see :mod:`spk_meta.data.contract`). ``None``: ordinary training batches again."""
        if batches_per_step is not None and int(batches_per_step) < 1:
            raise ValueError(f"batches_per_step must be >= 1, got {batches_per_step}")
        self.episode_steps = None if batches_per_step is None else int(batches_per_step)

    def train_dataloader(self):
        self._require_setup()
        if self.episode_steps:
            return self.outer_step_loader()
        if self.single_task:
            train = self.subsets[self.task_names[0]]["train"]
            if self.train_sampler_cls is not None:
                sampler = self.train_sampler_cls(data_source=train, **self.train_sampler_args)
                return self._loader(train, self.num_workers, sampler=sampler)
            return self._loader(train, self.num_workers, shuffle=True)
        if self.train_sampler_cls is not None:
            raise TaskDataError(
                "train_sampler_cls applies to single-task data only; with several tasks the "
                "batches come from TaskDataModule's own per-task sampling"
            )
        return self._task_batches("train", self._joint_sampler, self.num_workers)

    def _task_batches(self, split: str, sampler: TaskBatchSampler, workers: int) -> AtomsLoader:
        return AtomsLoader(
            self._concat(split),
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
        )

    def outer_step_loader(self) -> torch.utils.data.DataLoader:
        """Outer-step indices ``0 .. n-1`` for an episodic task (plain ints, no data): one
        epoch = as many outer steps as make their batches (``episode_steps`` each) add up
        to one pass over all tasks' training batches, at least one."""
        total = sum(self.task_stream(n).batches_per_pass for n in self.task_names)
        steps = max(1, math.ceil(total / self.episode_steps))
        return torch.utils.data.DataLoader(range(steps), batch_size=None)

    def _evaluation_loader(self, split: str, workers: int):
        """All tasks' ``split`` in one loader, task by task; batches never mix tasks and
        carry their task index (``batch["_task"]``) for per-task metrics."""
        self._require_setup()
        if self.single_task:
            return self._loader(self.subsets[self.task_names[0]][split], workers)
        sizes = [len(self.subsets[n][split]) for n in self.task_names]
        return self._task_batches(split, TaskBatchSampler(sizes, self.batch_size, shuffle=False), workers)

    def val_dataloader(self):
        return self._evaluation_loader("val", self.num_val_workers)

    def test_dataloader(self):
        return self._evaluation_loader("test", self.num_test_workers)

    def task_stream(self, name: str) -> TaskBatchStream:
        """Endless batches of task ``name``'s training split (one stream per task)."""
        self._require_setup()
        if name not in self._streams:
            data = self.dataset[name]
            seed = self.stream_seed + data.index + STREAM_RANK_STRIDE * self._rank()
            stream = TaskBatchStream(self.subsets[name]["train"], self.batch_size, seed=seed, num_workers=self.num_workers)
            if name in self._pending_stream_state:
                stream.load_state_dict(self._pending_stream_state.pop(name))
            self._streams[name] = stream
        return self._streams[name]

    def _rank(self) -> int:
        if self.stream_rank is not None:
            return int(self.stream_rank)
        trainer = getattr(self, "trainer", None)
        return int(getattr(trainer, "global_rank", 0) or 0)

    def next_batch(self, name: str) -> Dict[str, torch.Tensor]:
        """The next batch of task ``name`` (CPU tensors)."""
        return next(self.task_stream(name))

    # -- state for checkpoints -----------------------------------------------------------

    def stream_state(self) -> Dict[str, Any]:
        """Position of every task stream (drawn from or pending), ``{task: state}``."""
        streams = {n: s.state_dict() for n, s in self._streams.items()}
        streams.update({n: s for n, s in self._pending_stream_state.items() if n not in streams})
        return streams

    def load_stream_state(self, state: Mapping[str, Any]) -> None:
        """Continue the task streams from :meth:`stream_state` (applied when each is next used)."""
        self._streams.clear()
        self._pending_stream_state = dict(state or {})

    def state_dict(self) -> Dict[str, Any]:
        return {
            "stream_seed": self.stream_seed,
            "streams": self.stream_state(),
            "joint_epoch": self._joint_sampler.epoch if self._joint_sampler else 0,
            "energy_references": self.references_as_dict() if self.dataset is not None else {},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("stream_seed") is not None:
            self.stream_seed = int(state["stream_seed"])
        if self._joint_sampler is not None:
            self._joint_sampler.seed = self.stream_seed
            self._joint_sampler.epoch = int(state.get("joint_epoch", 0))
        self.load_stream_state(state.get("streams", {}))

