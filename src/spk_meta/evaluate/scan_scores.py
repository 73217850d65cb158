"""Surface quality on labelled rigid scans: a model's curve against the reference's (MP2).

A labelled scan file (extxyz) holds one rigid scan, a torsion or a bond stretch, with the
reference energy (eV) of every frame and ``atoms.info`` keys ``scan_coordinate`` (float),
``scan_kind`` (``"torsion"`` or ``"stretch"``), ``scan_atoms`` and ``scan_unit``.

Scores (each a small function below, :func:`score_scan` runs them all):

* ``aligned_rmse`` (eV): RMSE between the two curves after each is shifted to zero mean.
  Every frame of a scan has the same composition, so a constant offset (a per-element
  reference energy, a level's E0) carries no information about the surface's shape.
* ``roughness_ratio``: :func:`~spk_meta.evaluate.metrics.roughness` of the model curve over
  the reference's; 1 is as smooth as MP2, larger is rougher. Needs a uniform grid.
* ``spurious_barriers`` (count): local maxima the model has and the reference does not,
  ``max(0, model - reference)``, counted by :func:`barrier_count` with a drop of more than
  :data:`BARRIER_TOLERANCE` (5 meV) to the following minimum.
* ``plateau_error`` (eV, stretches only): the model's dissociation energy at the far end of
  the scan minus the reference's, each measured from its own minimum.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import ase.io
import numpy as np
import torch
from ase import Atoms

from spk_meta.evaluate.metrics import roughness, spurious_barriers

PathLike = Union[str, Path]

#: Score names of :func:`score_scan`, in the order tables show them.
SCAN_METRICS = ("aligned_rmse", "roughness_ratio", "spurious_barriers", "plateau_error")

#: ``atoms.info`` keys every frame of a labelled scan must have.
SCAN_KEYS = ("scan_coordinate", "scan_kind", "scan_atoms", "scan_unit")

SCAN_KINDS = ("torsion", "stretch")

#: eV. A maximum counts as a barrier only if the curve drops by more than this after it.
#: 5 meV (~0.1 kcal/mol, 0.2 kT at 300 K) rather than 1 meV: a model's total energy of a
#: small organic molecule (~ -4000 eV) is summed in float32, whose rounding steps are
#: ~0.5 meV there, so 1 meV (two steps) would count rounding noise on a flat plateau as
#: barriers; 5 meV is still far below any chemically meaningful barrier, and the
#: reference curves' real maxima (the torsion's, ~80 meV) are far above it.
BARRIER_TOLERANCE = 5e-3

#: Relative tolerance on the spacing of the scan grid for the roughness ratio.
GRID_TOLERANCE = 1e-6

#: Spellings of ``scan_unit`` shown as ``"Ang"``.
_ANGSTROM = ("ang", "angstrom", "å", "a")


@dataclass(frozen=True, eq=False)  # arrays: compare fields yourself
class LabelledScan:
    """One rigid scan with reference energies, sorted by its coordinate.

    Attributes:
        name: the file's stem, e.g. ``"scan_mp2_631gs_torsion_CCNH"``.
        kind: ``"torsion"`` or ``"stretch"``.
        unit: of the coordinate: ``"deg"``, ``"Ang"`` (``"Angstrom"`` in files), or as written.
        atoms_indices: ``scan_atoms``, the atoms defining the coordinate.
        coordinate: ``(n_points,)``, ascending (deg or Ang).
        reference: ``(n_points,)`` reference energies (eV).
        frames: the structures, in the same order, without calculators.
    """

    name: str
    kind: str
    unit: str
    atoms_indices: Tuple[int, ...]
    coordinate: np.ndarray
    reference: np.ndarray
    frames: List[Atoms]

    def __len__(self) -> int:
        return len(self.coordinate)


def _unit(text: str) -> str:
    return "Ang" if text.strip().lower() in _ANGSTROM else text.strip()


def read_scan(path: PathLike) -> LabelledScan:
    """Read a labelled scan file (any ASE-readable format; the shipped ones are extxyz).

    Raises:
        ValueError: naming the file, when a frame lacks a ``scan_*`` key or an energy,
            frames disagree on the kind, atoms or unit, the kind is unknown, a coordinate
            repeats, or there are fewer than 3 points.
    """
    path = Path(path)
    try:
        frames = ase.io.read(str(path), ":")
    except (OSError, ValueError, KeyError, IndexError, StopIteration) as err:
        raise ValueError(f"{path}: cannot read it as a scan file: {err}") from err
    if len(frames) < 3:
        raise ValueError(f"{path}: a scan needs at least 3 points, the file has {len(frames)}")
    coordinate, reference = [], []
    for n, atoms in enumerate(frames):
        missing = [k for k in SCAN_KEYS if k not in atoms.info]
        if missing:
            raise ValueError(f"{path}: frame {n} has no {', '.join(missing)} in its info (a labelled scan "
                             f"needs {', '.join(SCAN_KEYS)})")
        try:
            reference.append(float(atoms.get_potential_energy()))
        except Exception as err:  # noqa: BLE001 - no calculator, or one without an energy
            raise ValueError(f"{path}: frame {n} has no energy ({type(err).__name__}: {err})") from err
        coordinate.append(float(atoms.info["scan_coordinate"]))
    first = frames[0].info

    def same(key: str, value) -> None:
        for n, atoms in enumerate(frames):
            if np.asarray(atoms.info[key]).tolist() != np.asarray(value).tolist():
                raise ValueError(f"{path}: mixed {key}: frame 0 has {value!r}, frame {n} {atoms.info[key]!r}")

    same("scan_kind", first["scan_kind"])
    same("scan_unit", first["scan_unit"])
    same("scan_atoms", first["scan_atoms"])
    kind = str(first["scan_kind"])
    if kind not in SCAN_KINDS:
        raise ValueError(f"{path}: scan_kind {kind!r} is none of {', '.join(SCAN_KINDS)}")
    order = np.argsort(coordinate, kind="stable")
    x = np.asarray(coordinate, dtype=np.float64)[order]
    if np.any(np.diff(x) == 0):
        raise ValueError(f"{path}: scan_coordinate {x[1:][np.diff(x) == 0][0]} appears twice")
    return LabelledScan(
        name=path.stem, kind=kind, unit=_unit(str(first["scan_unit"])),
        atoms_indices=tuple(int(i) for i in np.atleast_1d(first["scan_atoms"])),
        coordinate=x, reference=np.asarray(reference, dtype=np.float64)[order],
        frames=[frames[i].copy() for i in order],  # Atoms.copy drops the calculator
    )


# -- scores: each on arrays in eV, model and reference on the same grid ------------------------


def aligned_rmse(energies: Sequence[float], reference: Sequence[float]) -> float:
    """RMSE (eV) of ``(E - mean E) - (E_ref - mean E_ref)``, both ``(n,)`` in eV."""
    e, r = np.asarray(energies, np.float64), np.asarray(reference, np.float64)
    return float(np.sqrt(np.mean(((e - e.mean()) - (r - r.mean())) ** 2)))


def check_uniform_grid(coordinate: Sequence[float], what: str = "scan") -> None:
    """Raise ``ValueError`` unless every step of ``coordinate`` equals the mean step within
    :data:`GRID_TOLERANCE` relative (roughness compares second differences, which only
    mean curvature on a uniform grid)."""
    steps = np.diff(np.asarray(coordinate, np.float64))
    if steps.size == 0:
        return
    mean = steps.mean()
    if np.max(np.abs(steps - mean)) > GRID_TOLERANCE * abs(mean):
        raise ValueError(f"{what}: the coordinate grid is not uniform (steps from {steps.min():g} to "
                         f"{steps.max():g}); the roughness ratio needs evenly spaced points")


def roughness_ratio(energies: Sequence[float], reference: Sequence[float],
                    coordinate: Optional[Sequence[float]] = None) -> float:
    """``roughness(E) / roughness(E_ref)`` (dimensionless) on the same grid.

    With ``coordinate``, the grid is checked to be uniform first (:func:`check_uniform_grid`).
    A straight reference (roughness 0) gives ``inf``, or 1.0 if the model is straight too.
    """
    if coordinate is not None:
        check_uniform_grid(coordinate)
    model, ref = roughness(energies), roughness(reference)
    if ref == 0.0:
        return 1.0 if model == 0.0 else float("inf")
    return model / ref


def is_full_circle(coordinate: Sequence[float], unit: str = "deg") -> bool:
    """Whether a torsion grid (deg, or rad if ``unit`` says so) closes the circle: the
    next step after the last point, or the last point itself, reaches first + 360 deg."""
    x = np.asarray(coordinate, np.float64)
    period = 2 * np.pi if unit.lower().startswith("rad") else 360.0
    step = np.diff(x).mean()
    return x[-1] - x[0] >= period - step * (1 + 1e-6)


def barrier_count(energies: Sequence[float], tolerance: float = BARRIER_TOLERANCE,
                  periodic: bool = False) -> int:
    """Local maxima of a curve, ``(n,)`` eV on an ascending grid, that the curve drops more
    than ``tolerance`` (eV) from before its next minimum (away from the global minimum).

    Not periodic: the maxima on both sides of the global minimum, each side counted by
    :func:`~spk_meta.evaluate.metrics.spurious_barriers` walking away from the minimum.
    Periodic (a full torsion; a last point that repeats the first, 360 = 0 deg, is dropped
    by the caller): the curve is rotated to start at its global minimum and closed with
    it, so every maximum lies "past the minimum" and is counted once.
    """
    e = np.asarray(energies, np.float64)
    lowest = int(np.argmin(e))
    if periodic:
        closed = np.concatenate([e[lowest:], e[:lowest], e[lowest:lowest + 1]])
        return spurious_barriers(np.arange(closed.size), closed, tolerance)
    after = spurious_barriers(np.arange(e.size - lowest), e[lowest:], tolerance)
    before = spurious_barriers(np.arange(lowest + 1), e[: lowest + 1][::-1], tolerance)
    return after + before


def extra_barriers(energies: Sequence[float], reference: Sequence[float], kind: str,
                   coordinate: Optional[Sequence[float]] = None, unit: str = "deg",
                   tolerance: float = BARRIER_TOLERANCE) -> int:
    """Spurious barriers: ``max(0, model's count - reference's count)``.

    Stretch: maxima past each curve's own minimum (towards dissociation), as
    :func:`~spk_meta.evaluate.metrics.spurious_barriers` counts them. Torsion: all maxima
    of the curve (:func:`barrier_count`, periodic when the grid covers the full circle,
    its duplicated 360 deg point dropped). Counting relative to the reference keeps a
    physical barrier (a torsion's three, or one the reference has on a stretch) from
    being charged to the model.
    """
    e, r = np.asarray(energies, np.float64), np.asarray(reference, np.float64)
    x = np.arange(e.size, dtype=np.float64) if coordinate is None else np.asarray(coordinate, np.float64)
    if kind == "stretch":
        model, ref = spurious_barriers(x, e, tolerance), spurious_barriers(x, r, tolerance)
    elif kind == "torsion":
        periodic = coordinate is not None and is_full_circle(x, unit)
        if periodic and np.isclose(x[-1] - x[0], 2 * np.pi if unit.lower().startswith("rad") else 360.0):
            e, r = e[:-1], r[:-1]  # the last point is the first again
        model, ref = barrier_count(e, tolerance, periodic), barrier_count(r, tolerance, periodic)
    else:
        raise ValueError(f"unknown scan kind {kind!r} (expected one of {', '.join(SCAN_KINDS)})")
    return max(0, model - ref)


def plateau_error(energies: Sequence[float], reference: Sequence[float]) -> float:
    """Signed error (eV) of the dissociation plateau, each curve measured from its minimum:
    ``(E[-1] - min E) - (E_ref[-1] - min E_ref)``, the last point the most stretched.
    Positive: the model's curve ends higher above its minimum than the reference's
    (it overbinds at the stretched end)."""
    e, r = np.asarray(energies, np.float64), np.asarray(reference, np.float64)
    return float((e[-1] - e.min()) - (r[-1] - r.min()))


def score_scan(scan: LabelledScan, energies: Sequence[float],
               tolerance: float = BARRIER_TOLERANCE) -> Dict[str, Any]:
    """Scores of model ``energies`` ``(n_points,)`` (eV, in ``scan``'s order) against the
    reference: ``{"aligned_rmse", "roughness_ratio", "spurious_barriers", "plateau_error",
    "n_points"}`` (``plateau_error`` ``None`` for torsions). See the module docstring.

    Raises:
        ValueError: the shape does not match, an energy is not finite, or the grid is not
            uniform; naming the scan.
    """
    e = np.asarray(energies, dtype=np.float64).reshape(-1)
    if e.shape != scan.reference.shape:
        raise ValueError(f"{scan.name}: {e.size} energies for {len(scan)} scan points")
    if not np.all(np.isfinite(e)):
        raise ValueError(f"{scan.name}: the model's energies are not all finite")
    check_uniform_grid(scan.coordinate, scan.name)
    return {
        "aligned_rmse": aligned_rmse(e, scan.reference),
        "roughness_ratio": roughness_ratio(e, scan.reference),
        "spurious_barriers": extra_barriers(e, scan.reference, scan.kind, scan.coordinate, scan.unit, tolerance),
        "plateau_error": plateau_error(e, scan.reference) if scan.kind == "stretch" else None,
        "n_points": len(scan),
    }


def predict_scan(model: torch.nn.Module, scan: LabelledScan, batch_size: int = 32) -> np.ndarray:
    """The model's energies ``(n_points,)`` (eV) on ``scan.frames``
    (:func:`~spk_meta.evaluate.predict.predict`; a model file is loaded first)."""
    from spk_meta.evaluate.predict import load_model, predict

    if not isinstance(model, torch.nn.Module):
        model = load_model(model)
    energies, _ = predict(model, scan.frames, batch_size)
    return np.asarray(energies, dtype=np.float64)


# -- figure ------------------------------------------------------------------------------------


def coordinate_label(scan: LabelledScan) -> str:
    """E.g. ``"torsion C0-C1-N2-H8 (deg)"`` from the scan's atoms and unit."""
    symbols = scan.frames[0].get_chemical_symbols()
    atoms = "-".join(f"{symbols[i]}{i}" if 0 <= i < len(symbols) else str(i) for i in scan.atoms_indices)
    return f"{scan.kind} {atoms} ({scan.unit})"


def scan_figure(scan: LabelledScan, curves: Mapping[str, Any], reference_label: str = "MP2"):
    """One axes: the reference (dashed black) and each model curve against the coordinate.

    Args:
        curves: ``{label: energies}`` with energies ``(n_points,)`` eV, or ``(mean, std)``
            (each ``(n_points,)``; the std is drawn as a band, e.g. an ensemble's spread).

    Energies are relative to the reference's minimum; each model curve is shifted so its
    mean equals the reference's (the y label says so), as ``aligned_rmse`` compares them.
    Returns a :class:`matplotlib.figure.Figure` drawn by Agg (no pyplot, no display).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x, ref = scan.coordinate, scan.reference - scan.reference.min()
    for label, curve in curves.items():
        if isinstance(curve, tuple) and len(curve) == 2:
            mean, std = (np.asarray(c, np.float64).reshape(-1) for c in curve)
        else:
            mean, std = np.asarray(curve, np.float64).reshape(-1), None
        if mean.shape != x.shape or (std is not None and std.shape != x.shape):
            raise ValueError(f"{scan.name}: curve {label!r} has {mean.size} points, the scan {x.size}")
        y = mean - mean.mean() + ref.mean()
        (line,) = ax.plot(x, y, "-", marker=".", label=str(label))
        if std is not None:
            ax.fill_between(x, y - std, y + std, color=line.get_color(), alpha=0.25, linewidth=0)
    ax.plot(x, ref, "--", color="black", label=reference_label)
    ax.set_xlabel(coordinate_label(scan))
    ax.set_ylabel(f"E - min E({reference_label}) (eV)\nmodels shifted to {reference_label}'s mean")
    ax.set_title(scan.name)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig
