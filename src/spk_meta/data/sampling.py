"""How batches are drawn from tasks: sampling weights, endless per-task streams, joint epochs."""

import math
from collections import deque
from typing import Callable, Deque, Dict, Iterator, List, Mapping, Optional, Sequence

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


#: Training splits up to this size draw each pass's order with ``torch.randperm`` (kept as
#: an int64 tensor, 8 bytes a frame); larger ones use :class:`PseudoRandomPermutation`.
MATERIALISED_ORDER_MAX = 1 << 20


class PseudoRandomPermutation:
    """A random permutation of ``range(n)`` evaluated index by index, in O(1) memory.

    A 4-round Feistel network on the smallest even number of bits covering ``n`` (a
    bijection of ``[0, 2**bits)``), restricted to ``[0, n)`` by cycle walking (values
    ``>= n`` are encrypted again; ``2**bits < 4 n``, so a few rounds on average). Keys
    come from the caller's generator, so a pass is reproducible from the generator state.

    Args:
        n: size of the permuted range.
        keys: four round keys (non-negative integers below ``2**62``).
    """

    _MULT = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, n: int, keys: Sequence[int]):
        self.n = int(n)
        bits = max(2, int(self.n - 1).bit_length())
        bits += bits % 2
        self.half = np.uint64(bits // 2)
        self.mask = np.uint64((1 << (bits // 2)) - 1)
        self.keys = [np.uint64(int(k)) for k in keys]

    def __len__(self) -> int:
        return self.n

    def _round(self, r: np.ndarray, key: np.uint64) -> np.ndarray:
        h = (r ^ key) * self._MULT  # wraps modulo 2**64
        h ^= h >> np.uint64(31)
        h = h * self._MULT
        return (h >> np.uint64(29)) & self.mask

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << self.half) | right

    def __getitem__(self, positions) -> np.ndarray:
        """The permuted values at ``positions`` (a slice or an index array), int64."""
        if isinstance(positions, slice):
            positions = np.arange(*positions.indices(self.n))
        x = self._encrypt(np.asarray(positions, dtype=np.uint64))
        n = np.uint64(self.n)
        out_of_range = x >= n
        while out_of_range.any():
            x[out_of_range] = self._encrypt(x[out_of_range])
            out_of_range = x >= n
        return x.astype(np.int64)


class TaskBatchStream:
    """Endless batches of one task: a fresh shuffle each pass, so any number can be drawn.

    A pass's order is ``torch.randperm`` for up to :data:`MATERIALISED_ORDER_MAX` frames
    (the same batches as always on small data) and a :class:`PseudoRandomPermutation`
    above, so a task of millions of frames never materialises its order.

    Args:
        dataset: the task's training split (a :class:`~spk_meta.data.TaskSubset`).
        batch_size: structures per batch; the last batch of a pass may be smaller.
        seed: seed of the stream's own generator (independent of the global RNG).
        collate_fn: how samples become a batch; ``None``: SchNetPack's, through an
            ``AtomsLoader`` whose batch sampler is this stream.
        num_workers: workers of that loader (samples and neighbour lists are then built in
            worker processes, a few batches ahead; ``0``: each batch when asked for).

    ``state_dict()``/``load_state_dict()`` capture the position of the last batch handed
    out (batches prefetched by workers but not yet taken are drawn again after a resume),
    so a resumed run continues with exactly the batches an uninterrupted one would have
    drawn. The state holds the generator's state at the start of the pass, not the order.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        seed: int = 0,
        collate_fn: Optional[Callable] = None,
        num_workers: int = 0,
    ):
        if len(dataset) == 0:
            raise ValueError(f"task '{getattr(dataset, 'name', '?')}' has no training frames")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.collate_fn = collate_fn
        self.num_workers = int(num_workers)
        self._batches: Optional[Iterator[Dict[str, torch.Tensor]]] = None
        self.generator = torch.Generator().manual_seed(int(seed))
        self.passes = 0
        self._order = None  # tensor, PseudoRandomPermutation, or a list (old checkpoints)
        self._pos = 0
        self._pass_start = None  # generator state before this pass's order was drawn
        self._legacy_order = False
        self._in_flight: Deque[dict] = deque()
        self._consumed = self._cursor()

    def __iter__(self) -> "TaskBatchStream":
        return self

    def _draw_order(self) -> None:
        n = len(self.dataset)
        self._pass_start = self.generator.get_state()
        if n <= MATERIALISED_ORDER_MAX:
            self._order = torch.randperm(n, generator=self.generator)
        else:
            keys = torch.randint(0, 2**62, (4,), generator=self.generator).tolist()
            self._order = PseudoRandomPermutation(n, keys)
        self._legacy_order = False
        self._pos = 0

    def _cursor(self) -> dict:
        state = {
            "generator": self.generator.get_state(),
            "passes": self.passes,
            "pos": self._pos,
            "pass_start": self._pass_start,
        }
        if self._legacy_order:
            state["order"] = list(self._order)
        return state

    def next_indices(self) -> List[int]:
        """Indices (into the dataset) of the next batch."""
        if self._order is None or self._pos >= len(self._order):
            if self._order is not None:
                self.passes += 1
            self._draw_order()
        idx = self._order[self._pos : self._pos + self.batch_size]
        idx = idx.tolist() if hasattr(idx, "tolist") else list(idx)
        self._pos += len(idx)
        self._in_flight.append(self._cursor())
        return idx

    def __next__(self) -> Dict[str, torch.Tensor]:
        if self.collate_fn is not None:
            batch = self.collate_fn([self.dataset[i] for i in self.next_indices()])
        else:
            if self._batches is None:
                self._batches = iter(
                    AtomsLoader(
                        self.dataset,
                        batch_sampler=_Endless(self),
                        num_workers=self.num_workers,
                        persistent_workers=self.num_workers > 0,
                    )
                )
            batch = next(self._batches)
        self._consumed = self._in_flight.popleft()
        return batch

    @property
    def batches_per_pass(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def state_dict(self) -> dict:
        """Position after the last batch handed out (picklable; no per-frame data)."""
        return dict(self._consumed)

    def load_state_dict(self, state: dict) -> None:
        self._batches = None  # a prefetching loader would be ahead of the new position
        self._in_flight.clear()
        self.passes = int(state["passes"])
        if "order" in state:  # a checkpoint of spk-meta before the store: the order itself
            self.generator.set_state(state["generator"])
            self._order = list(state["order"]) or None
            self._pass_start = state.get("pass_start")
            self._legacy_order = self._order is not None
        elif state.get("pass_start") is not None:
            self.generator.set_state(state["pass_start"])
            self._draw_order()  # the same order again, and the generator where it was
        else:
            self.generator.set_state(state["generator"])
            self._order = None
        self._pos = int(state["pos"])
        self._consumed = self._cursor()


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
    batch mixes levels of theory (whose energies are not comparable). Batches are cut when
    they are due: an epoch holds one int per batch plus each task's order (a tensor up to
    :data:`MATERIALISED_ORDER_MAX` frames, a :class:`PseudoRandomPermutation` above), never
    per-frame lists.

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
        orders = []  # per task: its frames' order this epoch (a tensor, or lazily permuted)
        for n in self.sizes:
            if not self.shuffle:
                orders.append(None)
            elif n <= MATERIALISED_ORDER_MAX:
                orders.append(torch.randperm(n, generator=g))
            else:
                orders.append(PseudoRandomPermutation(n, torch.randint(0, 2**62, (4,), generator=g).tolist()))
        counts = [math.ceil(n / self.batch_size) for n in self.sizes]
        first_batch = np.cumsum([0] + counts)  # global batch number of each task's first batch
        offsets = np.cumsum([0] + self.sizes)
        if self.shuffle:
            self.epoch += 1
            sequence = torch.randperm(int(first_batch[-1]), generator=g)  # one int per batch
        else:
            sequence = torch.arange(int(first_batch[-1]))
        for b in sequence.numpy():  # int64 array: 8 bytes a batch, not a Python list
            b = int(b)
            task = int(np.searchsorted(first_batch, b, side="right") - 1)
            lo = (b - int(first_batch[task])) * self.batch_size
            hi = min(lo + self.batch_size, self.sizes[task])
            order = orders[task]
            idx = np.arange(lo, hi) if order is None else order[lo:hi]
            yield (np.asarray(idx, dtype=np.int64) + int(offsets[task])).tolist()
