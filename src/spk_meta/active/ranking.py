"""Which frames to take, given one disagreement score per frame (pure NumPy, no models).

Positions are indices into the pool (``0 .. n_pool - 1``). Ties are broken by position,
so a selection is reproducible; NaN scores rank below every number.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class Ranking:
    """The chosen positions: by the committee (``committee``) and uniformly at random from
    the rest (``random``); both ascending and disjoint."""

    committee: np.ndarray
    random: np.ndarray

    @property
    def all(self) -> np.ndarray:
        return np.union1d(self.committee, self.random)


def _rankable(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(scores), -np.inf, scores)


def top_k(scores: np.ndarray, k: int, positions: Optional[np.ndarray] = None) -> np.ndarray:
    """The ``k`` highest-scoring positions, best first (ties: lower position first).

    Args:
        scores: ``(n,)`` scores of the pool.
        k: how many (``<= len(positions)``).
        positions: candidate positions (ascending); default all.
    """
    positions = np.arange(len(scores)) if positions is None else np.asarray(positions, dtype=np.int64)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    s = _rankable(scores)[positions]
    if k < len(positions):  # only the best k + ties at the boundary need sorting
        kth = np.partition(s, len(s) - k)[len(s) - k]
        keep = s >= kth
        positions, s = positions[keep], s[keep]
    order = np.lexsort((positions, -s))
    return positions[order[:k]]


def proportional_quotas(group_sizes: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over groups in proportion to their sizes (largest remainders).

    Args:
        group_sizes: ``(G,)`` frames per group.
        total: ``<= group_sizes.sum()``.

    Returns:
        ``(G,)`` quotas summing to ``total``, each ``<= its group's size``; equal remainders
        go to the larger group, then the lower group index.
    """
    sizes = np.asarray(group_sizes, dtype=np.int64)
    if total > sizes.sum():
        raise ValueError(f"{total} frames asked of groups holding {int(sizes.sum())}")
    exact = sizes * (total / sizes.sum()) if sizes.sum() else np.zeros(len(sizes))
    quotas = np.minimum(np.floor(exact).astype(np.int64), sizes)
    left = total - int(quotas.sum())
    if left:
        order = np.lexsort((np.arange(len(sizes)), -sizes, -(exact - quotas)))
        order = order[quotas[order] < sizes[order]]
        quotas[order[:left]] += 1
    return quotas


def stratified_top(scores: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """The top frames of each group, ``k`` in all, each group's share of ``k`` proportional
    to its share of the pool (:func:`proportional_quotas`).

    Args:
        scores: ``(n,)``; groups: ``(n,)`` integer group of each position.

    Returns:
        Ascending positions.
    """
    labels, inverse, sizes = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    quotas = proportional_quotas(sizes, k)
    order = np.argsort(inverse, kind="stable")  # positions grouped, ascending within a group
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    chosen = [top_k(scores, int(q), order[bounds[g] : bounds[g + 1]]) for g, q in enumerate(quotas) if q]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def random_from_rest(n_pool: int, taken: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` positions drawn uniformly without replacement from those not in ``taken``.

    Draws ranks among the remaining positions and maps them back, without building the
    list of remaining positions. Returns ascending positions.
    """
    taken = np.unique(np.asarray(taken, dtype=np.int64))
    rest = n_pool - len(taken)
    if k > rest:
        raise ValueError(f"{k} random frames asked of the {rest} not already selected")
    ranks = np.sort(rng.choice(rest, size=k, replace=False)) if k else np.zeros(0, dtype=np.int64)
    # the r-th free position u satisfies u - #(taken <= u) = r
    return ranks + np.searchsorted(taken - np.arange(len(taken)), ranks, side="right")


def rank(scores: np.ndarray, n: Optional[int] = None, threshold: Optional[float] = None,
         groups: Optional[np.ndarray] = None, random_fraction: float = 0.0, seed: int = 0) -> Ranking:
    """The selection: ``n`` frames, or every frame scoring above ``threshold``, plus random ones.

    With ``n``: ``round(random_fraction * n)`` frames are drawn at random from the frames
    the committee did not pick, the other ones are the top scores (per group when
    ``groups`` is given). With ``threshold``: every frame with ``score > threshold``, plus
    enough random ones that they are ``random_fraction`` of the output.
    """
    n_pool = len(scores)
    if (n is None) == (threshold is None):
        raise ValueError("give exactly one of n and threshold")
    if not 0.0 <= random_fraction <= 1.0 or (threshold is not None and random_fraction == 1.0):
        raise ValueError(f"random_fraction must lie in [0, 1] (in [0, 1) with a threshold), got {random_fraction}")
    if n is not None:
        if not 0 <= n <= n_pool:
            raise ValueError(f"n = {n} frames asked of a pool of {n_pool}")
        n_random = int(round(random_fraction * n))
        n_top = n - n_random
        committee = np.sort(top_k(scores, n_top)) if groups is None else stratified_top(scores, groups, n_top)
    else:
        if groups is not None:
            raise ValueError("stratification needs a number of frames (n), not a threshold")
        committee = np.flatnonzero(_rankable(scores) > threshold)
        n_random = int(round(random_fraction * len(committee) / (1.0 - random_fraction)))
        n_random = min(n_random, n_pool - len(committee))
    rng = np.random.default_rng(seed)
    return Ranking(committee=committee.astype(np.int64), random=random_from_rest(n_pool, committee, n_random, rng))
