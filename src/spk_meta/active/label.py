"""Quantum-chemistry labels for chosen frames: PySCF single points, resumable.

- :func:`check_level`: refuse a level PySCF cannot compute for some element, cheaply (no SCF).
- :func:`single_point`: energy (eV) and forces (eV/Ang) of one frame at ``METHOD/BASIS``.
- :func:`label_frames`: single points of many frames with a progress bar; every result is
  appended to a partial JSONL file as soon as it is known, so a killed run continues where
  it stopped.

Methods: ``HF`` (restricted, density fitting), ``MP2`` (conventional, on an RHF reference),
or any exchange-correlation functional libxc parses (restricted Kohn-Sham, density fitting,
grid level 2). Closed-shell molecules only (no periodic cells): a frame with an odd number
of electrons fails and is reported as failed. Needs the ``datagen`` extra (PySCF).
"""

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from ase.data import chemical_symbols
from ase.units import Bohr, Hartree
from tqdm.auto import tqdm

from spk_meta.utils import atomic_path

PathLike = Union[str, Path]

DATAGEN_HINT = "needs the datagen extra: pip install 'spk-meta[datagen]'"
PARTIAL_FORMAT = "spk-meta labels partial"
PARTIAL_VERSION = 1
#: the units of every label this module returns
UNITS = {"energy": "eV", "forces": "eV/Ang", "positions": "Ang"}


class LabelError(ValueError):
    """Labelling cannot start; the message names the level, element or file at fault."""


def _pyscf():
    try:
        import pyscf
    except ImportError:
        raise LabelError(f"labelling with PySCF {DATAGEN_HINT}") from None
    return pyscf


def code_version() -> str:
    """``"PySCF <version>"``: the program that computes the labels."""
    return f"PySCF {_pyscf().__version__}"


def parse_level(level: str) -> Tuple[str, str]:
    """``"MP2/6-31g*"`` -> ``("MP2", "6-31g*")``; LabelError unless METHOD/BASIS."""
    method, sep, basis = level.strip().partition("/")
    if not sep or not method.strip() or not basis.strip():
        raise LabelError(f"level {level!r} is not METHOD/BASIS (e.g. 'MP2/6-31g*')")
    return method.strip(), basis.strip()


def check_level(level: str, elements: Iterable[int]) -> None:
    """Refuse ``level`` unless PySCF can compute it for every atomic number in ``elements``.

    The method must be HF, MP2 or a functional libxc parses; the basis must be defined for
    each element (read from PySCF's basis library, no SCF: milliseconds).

    Raises:
        LabelError: naming the level and the functional, or the basis and the element;
            or PySCF is not installed.
    """
    method, basis = parse_level(level)
    _pyscf()
    from pyscf import dft, gto

    if method.upper() not in ("HF", "MP2"):
        try:
            dft.libxc.parse_xc(method)
        except Exception as err:  # KeyError for unknown names, others for bad expressions
            raise LabelError(f"level {level!r}: PySCF/libxc does not know the functional {method!r} "
                             f"(use HF, MP2 or a libxc functional) ({err})") from None
    for z in sorted({int(z) for z in elements}):
        symbol = chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PySCF's "try basis-set-exchange" hint
            try:
                shells, reason = gto.basis.load(basis, symbol), "empty"
            except Exception as err:
                shells, reason = None, f"{type(err).__name__}: {err}".strip().splitlines()[0]
        if not shells:
            raise LabelError(f"level {level!r}: PySCF has no basis {basis!r} for {symbol} (Z={z}), an element "
                             f"of the frames to label ({reason})")


def _molecule(numbers: np.ndarray, positions_ang: np.ndarray, basis: str):
    from pyscf import gto

    atoms = [(chemical_symbols[int(z)], tuple(float(x) for x in p)) for z, p in zip(numbers, positions_ang)]
    return gto.M(atom=atoms, basis=basis, unit="Angstrom", verbose=0)


def run_single_point(numbers: np.ndarray, positions_ang: np.ndarray,
                     level: str) -> Optional[Tuple[float, np.ndarray]]:
    """Energy and forces of one closed-shell molecule at ``level``; ``None`` if the SCF
    does not converge. Errors (an odd number of electrons, ...) are raised.

    Args:
        numbers: ``(n_atoms,)`` atomic numbers.
        positions_ang: ``(n_atoms, 3)`` positions (Ang).

    Returns:
        ``(energy, forces)``: total energy (eV, a float) and ``(n_atoms, 3)`` forces
        (eV/Ang) = minus the analytic gradient.
    """
    _pyscf()
    from pyscf import dft, mp, scf

    method, basis = parse_level(level)
    mol = _molecule(np.asarray(numbers), np.asarray(positions_ang, dtype=np.float64), basis)
    if method.upper() == "MP2":
        mf = scf.RHF(mol).run()
        if not mf.converged:
            return None
        post = mp.MP2(mf).run()
        energy, grad = post.e_tot, post.nuc_grad_method().kernel()
    else:
        if method.upper() == "HF":
            mf = scf.RHF(mol).density_fit()
        else:
            mf = dft.RKS(mol).density_fit()
            mf.xc = method
            mf.grids.level = 2
        mf.run()
        if not mf.converged:
            return None
        energy, grad = mf.e_tot, mf.nuc_grad_method().kernel()
    # Hartree -> eV; gradient Hartree/Bohr -> forces eV/Ang
    return float(energy) * Hartree, -np.asarray(grad, dtype=np.float64) * Hartree / Bohr


def single_point(numbers: np.ndarray, positions_ang: np.ndarray,
                 level: str) -> Optional[Tuple[float, np.ndarray]]:
    """:func:`run_single_point`, with ``None`` (and a warning) also when it raises: one
    frame that cannot be computed is a dropped frame, not a dead run."""
    try:
        return run_single_point(numbers, positions_ang, level)
    except LabelError:
        raise
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0]
        warnings.warn(f"single point at {level} of a {len(numbers)}-atom frame failed: {type(err).__name__}: {reason}",
                      stacklevel=2)
        return None


# -- resumable labelling -------------------------------------------------------------------------


def _write_text_durably(path: Path, text: str) -> None:
    """``text`` to ``path`` atomically (:func:`~spk_meta.utils.atomic_path`) and synced to disk
    before the rename: the partial labels are what a killed run resumes from."""
    with atomic_path(path, overwrite=True) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


class PartialLabels:
    """``PATH``: one JSON header line, then one line per labelled frame,
    ``{"key", "geometry", "energy", "forces", "wall_s"}`` or ``{"key", "geometry", "failed":
    true, "wall_s"}`` (eV, eV/Ang, exact float round trip; ``geometry``:
    :func:`geometry_hash`). A torn last line (a killed write) is dropped.

    Args:
        path: the JSONL file.
        header: what the labels are (level, code); a file with another header is
            another labelling.
    """

    def __init__(self, path: PathLike, header: Dict):
        self.path = Path(path)
        self.header = json.loads(json.dumps({"format": PARTIAL_FORMAT, "version": PARTIAL_VERSION, **header}))
        self.records: Dict[int, Dict] = {}

    def read_header(self) -> Optional[Dict]:
        try:
            with open(self.path) as f:
                return json.loads(f.readline())
        except (OSError, json.JSONDecodeError):
            return None

    def differences(self, ignore: Sequence[str] = ()) -> List[str]:
        """Header fields in which the file on disk differs from this one (``[]``: same)."""
        old = self.read_header()
        if not isinstance(old, dict):
            return ["header (unreadable)"]
        keys = sorted((set(old) | set(self.header)) - set(ignore))
        return [k for k in keys if old.get(k) != self.header.get(k)]

    def check(self, overwrite: bool, ignore: Sequence[str] = ()) -> None:
        """Refuse an existing file made for another labelling, unless ``overwrite``."""
        if not self.path.exists() or overwrite:
            return
        diff = self.differences(ignore)
        if diff:
            shown = ", ".join(f"{k} ({self._short(k)})" if k in ("level", "code") else k for k in diff)
            raise LabelError(f"{self.path}: partial labels of another labelling (it differs in {shown}); "
                             "rerun the same command to resume it, or pass --overwrite to start again")

    def _short(self, key: str) -> str:
        old = self.read_header() or {}
        return f"{old.get(key)!r} there, {self.header.get(key)!r} now"

    def open(self, overwrite: bool) -> None:
        """Load a matching file's records, or start a new file (``overwrite`` replaces one
        made for another labelling)."""
        self.check(overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not self.differences():
            with open(self.path) as f:
                lines = f.read().split("\n")[1:]
            for line in lines:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # an empty or torn last line
                self.records[int(rec["key"])] = rec
            if lines and lines[-1].strip():  # torn: rewrite without it so appends stay parseable
                self._rewrite()
            return
        self.records = {}
        self._rewrite()

    def _rewrite(self) -> None:
        lines = [json.dumps(self.header)] + [json.dumps(self.records[k]) for k in sorted(self.records)]
        _write_text_durably(self.path, "\n".join(lines) + "\n")

    def append(self, record: Dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[int(record["key"])] = record

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class Labels:
    """What :func:`label_frames` computed, in the order of the frames given.

    Attributes:
        level: ``METHOD/BASIS``; code: ``"PySCF <version>"``.
        energy: ``(n_frames,)`` eV; NaN where the single point failed.
        forces: per frame ``(n_atoms, 3)`` eV/Ang, ``None`` where it failed.
        failed: ``(n_failed,)`` positions (in the frames given) whose single point failed.
        seconds: wall seconds of all single points, those of a resumed partial included.
        n_resumed: frames whose labels were read from the partial file.
    """

    level: str
    code: str
    energy: np.ndarray
    forces: List[Optional[np.ndarray]]
    failed: np.ndarray
    seconds: float
    n_resumed: int = 0

    @property
    def ok(self) -> np.ndarray:
        """Positions of the labelled frames (ascending)."""
        return np.flatnonzero(np.isfinite(self.energy))


def geometry_hash(numbers: np.ndarray, positions_ang: np.ndarray) -> str:
    """SHA-256 (hex, 16 characters) of a frame's atomic numbers and exact float64 positions
    (Ang): a saved label is reused only for the very geometry it was computed for."""
    h = hashlib.sha256(np.ascontiguousarray(numbers, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(positions_ang, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def label_frames(frames: Sequence[Tuple[np.ndarray, np.ndarray]], level: str, *,
                 keys: Optional[Sequence[int]] = None, partial: Optional[PathLike] = None,
                 header: Optional[Dict] = None, overwrite: bool = False, progress: bool = False) -> Labels:
    """Single points at ``level`` of ``frames``: ``(numbers (n_atoms,), positions (n_atoms, 3) Ang)``.

    Args:
        keys: an integer per frame naming it in the partial file (default 0..n-1; e.g.
            the frames' source indices).
        partial: append every result to this JSONL file (see :class:`PartialLabels`);
            a rerun with the same header (``header`` + level, code) reuses every saved
            label whose key and geometry (:func:`geometry_hash`) are those of a frame
            asked for, and computes the others.
        header: what else identifies this labelling.
        overwrite: start again when ``partial`` was made for another labelling
            (otherwise LabelError).
        progress: show a progress bar.

    The caller removes the partial file once the labels are safely written elsewhere.
    """
    keys = list(range(len(frames))) if keys is None else [int(k) for k in keys]
    if len(keys) != len(frames) or len(set(keys)) != len(keys):
        raise LabelError(f"label_frames: {len(frames)} frames need as many distinct keys, got {len(keys)}")
    code = code_version()
    store = None
    if partial is not None:
        store = PartialLabels(partial, {**(header or {}), "level": level, "code": code})
        store.open(overwrite)
    geometry = [geometry_hash(numbers, positions) for numbers, positions in frames]
    saved = store.records if store else {}
    # a saved label is reused only for the same key AND the same atoms and positions
    records = {k: saved[k] for k, g in zip(keys, geometry) if k in saved and saved[k].get("geometry") == g}
    n_resumed = len(records)
    n_failed = sum(bool(r.get("failed")) for r in records.values())
    with tqdm(total=len(frames), initial=n_resumed, unit="frame", desc=f"labelling {level}",
              disable=not progress) as bar:
        for key, g, (numbers, positions) in zip(keys, geometry, frames):
            if key in records:
                continue
            t0 = time.time()
            result = single_point(numbers, positions, level)
            record = {"key": key, "geometry": g, "wall_s": time.time() - t0}
            if result is None or not (np.isfinite(result[0]) and np.isfinite(result[1]).all()):
                record["failed"] = True
                n_failed += 1
            else:
                record.update(energy=float(result[0]), forces=np.asarray(result[1], dtype=np.float64).tolist())
            if store is not None:
                store.append(record)
            records[key] = record
            bar.update(1)
            bar.set_postfix(failed=n_failed)
    energy = np.full(len(frames), np.nan)
    forces: List[Optional[np.ndarray]] = [None] * len(frames)
    for i, key in enumerate(keys):
        rec = records[key]
        if not rec.get("failed"):
            energy[i] = rec["energy"]
            forces[i] = np.asarray(rec["forces"], dtype=np.float64).reshape(len(frames[i][0]), 3)
    return Labels(level=level, code=code, energy=energy, forces=forces, failed=np.flatnonzero(np.isnan(energy)),
                  seconds=float(sum(records[k]["wall_s"] for k in keys)), n_resumed=n_resumed)
