"""How batches are drawn from tasks: sampling weights, endless per-task streams, joint epochs."""

import math
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch
from schnetpack.data import AtomsLoader

TASK_SAMPLING = ("uniform", "size", "temperature")


def task_sampling_weights(
    sizes: Mapping[str, int], scheme: str = "uniform", temperature: float = 1.0
) -> Dict[str, float]:
    """Probability of drawing each task for an episode (they sum to 1).

    Args:
        sizes: training frames per task.
        scheme: ``"uniform"`` (every task alike), ``"size"`` (proportional to its
            frames) or ``"temperature"`` (``p ~ n ** (1 / temperature)``, as in
            multi-dataset pre-training: ``temperature=1`` is ``"size"``, large
            temperatures approach ``"uniform"``).
        temperature: the temperature of ``"temperature"`` sampling (> 0).
    """
    if scheme not in TASK_SAMPLING:
        raise ValueError(f"task_sampling must be one of {TASK_SAMPLING}, got {scheme!r}")
    if not sizes:
        raise ValueError("no tasks to sample from")
    names = list(sizes)
    n = np.array([float(sizes[k]) for k in names])
    if (n <= 0).any():
        empty = [k for k in names if sizes[k] <= 0]
        raise ValueError(f"task(s) with no training frames cannot be sampled: {', '.join(empty)}")
    if scheme == "uniform":
        w = np.ones_like(n)
    elif scheme == "size":
        w = n
    else:
        if not temperature > 0:
            raise ValueError(f"sampling temperature must be > 0, got {temperature}")
        w = n ** (1.0 / temperature)
    w = w / w.sum()
    return {k: float(v) for k, v in zip(names, w)}


class TaskBatchStream:
    """Endless batches of one task: a fresh shuffle each pass, so any number can be drawn.

    Args:
        dataset: the task's training split (a :class:`~spk_meta.data.TaskSubset`).
        batch_size: structures per batch; the last batch of a pass may be smaller.
        seed: seed of the stream's own generator (independent of the global RNG).
        collate_fn: how samples become a batch; ``None``: SchNetPack's, through an
            ``AtomsLoader`` whose batch sampler is this stream (no worker, no prefetch:
            each batch is drawn when it is asked for).

    ``state_dict()``/``load_state_dict()`` capture the position, so a resumed run
    continues with exactly the batches an uninterrupted one would have drawn.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        seed: int = 0,
        collate_fn: Optional[Callable] = None,
    ):
        if len(dataset) == 0:
            raise ValueError(f"task '{getattr(dataset, 'name', '?')}' has no training frames")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.collate_fn = collate_fn
        self._batches: Optional[Iterator[Dict[str, torch.Tensor]]] = None
        self.generator = torch.Generator().manual_seed(int(seed))
        self.passes = 0
        self._order: List[int] = []
        self._pos = 0

    def __iter__(self) -> "TaskBatchStream":
        return self

    def next_indices(self) -> List[int]:
        """Indices (into the dataset) of the next batch."""
        if self._pos >= len(self._order):
            if self._order:
                self.passes += 1
            self._order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
            self._pos = 0
        idx = self._order[self._pos : self._pos + self.batch_size]
        self._pos += len(idx)
        return idx

    def __next__(self) -> Dict[str, torch.Tensor]:
        if self.collate_fn is not None:
            return self.collate_fn([self.dataset[i] for i in self.next_indices()])
        if self._batches is None:
            self._batches = iter(AtomsLoader(self.dataset, batch_sampler=_Endless(self)))
        return next(self._batches)

    @property
    def batches_per_pass(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "passes": self.passes,
            "order": list(self._order),
            "pos": self._pos,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.passes = int(state["passes"])
        self._order = list(state["order"])
        self._pos = int(state["pos"])


class _Endless:
    """The batch sampler of a stream's loader: the stream's next indices, on demand."""

    def __init__(self, stream: TaskBatchStream):
        self.stream = stream

    def __iter__(self) -> Iterator[List[int]]:
        while True:
            yield self.stream.next_indices()


class TaskBatchSampler(torch.utils.data.Sampler):
    """Joint-training epochs over a ``ConcatDataset`` of tasks: every batch from one task.

    Each epoch shuffles every task's frames, cuts them into batches and visits all batches
    of all tasks in a random order, so one epoch sees every training frame once and no
    batch mixes levels of theory (whose energies are not comparable).

    Args:
        sizes: frames per task, in the order of the ``ConcatDataset``.
        batch_size: structures per batch.
        seed: seed of the sampler's generator; epoch ``e`` uses ``seed + e``.
        shuffle: ``False`` for evaluation: task by task, frames in order.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True):
        self.sizes = [int(n) for n in sizes]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def __len__(self) -> int:
        return sum(math.ceil(n / self.batch_size) for n in self.sizes)

    def __iter__(self) -> Iterator[List[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = []
        offset = 0
        for n in self.sizes:
            order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
            perm = (order + offset).tolist()
            batches += [perm[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
            offset += n
        if not self.shuffle:
            yield from batches
            return
        self.epoch += 1
        for b in torch.randperm(len(batches), generator=g).tolist():
            yield batches[b]
