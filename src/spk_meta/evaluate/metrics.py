"""Error and smoothness metrics on arrays: nothing here knows about models."""

from typing import Dict, Sequence

import numpy as np


def error_metrics(predicted, reference) -> Dict[str, float]:
    """RMSE and MAE of ``predicted - reference`` over all elements (any matching shapes)."""
    p, r = np.asarray(predicted, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if p.shape != r.shape:
        raise ValueError(f"predicted shape {p.shape} != reference shape {r.shape}")
    d = (p - r).reshape(-1)
    return {"rmse": float(np.sqrt(np.mean(d**2))), "mae": float(np.mean(np.abs(d)))}


def roughness(values: Sequence[float]) -> float:
    """RMS of the second difference of a curve on a uniform grid (its unit, e.g. eV).

    A smooth curve sampled finely has small second differences; noise or kinks make
    them large. Compare curves sampled on the same grid only.
    """
    y = np.asarray(values, dtype=np.float64)
    if y.size < 3:
        raise ValueError("roughness needs at least 3 points")
    return float(np.sqrt(np.mean(np.diff(y, n=2) ** 2)))


def gradient_error(x: Sequence[float], y: Sequence[float], x_ref: Sequence[float], y_ref: Sequence[float]) -> float:
    """RMSE between the slopes of a predicted curve and a reference curve.

    Slopes are central finite differences (``np.gradient``) of each curve, the
    predicted one interpolated linearly at the reference points. Units: y per x.
    """
    gx = np.interp(np.asarray(x_ref, float), np.asarray(x, float), np.gradient(np.asarray(y, float), np.asarray(x, float)))
    gr = np.gradient(np.asarray(y_ref, float), np.asarray(x_ref, float))
    return float(np.sqrt(np.mean((gx - gr) ** 2)))


def spurious_barriers(distances: Sequence[float], energies: Sequence[float], tolerance: float = 1e-3) -> int:
    """Local maxima beyond the minimum of a dissociation curve higher than ``tolerance``.

    A physical bond-stretching curve rises monotonically from its minimum to the
    dissociation limit; each bump on the way (a maximum more than ``tolerance`` above
    the following minimum) is a spurious barrier.
    """
    e = np.asarray(energies, dtype=np.float64)[np.argsort(distances)]
    e = e[int(np.argmin(e)):]
    count, i = 0, 1
    while i < len(e) - 1:
        if e[i] > e[i - 1] and e[i] >= e[i + 1]:
            j = i + 1
            while j < len(e) - 1 and e[j + 1] <= e[j]:
                j += 1
            if e[i] - e[j] > tolerance:
                count += 1
            i = j
        i += 1
    return count
