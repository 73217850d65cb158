"""Make multi-level data like the embedded ethanol set: xTB MD frames, PySCF single points.

1. Sample frames with GFN2-xTB Langevin MD (tblite's ASE calculator): one trajectory per
   molecule of a job (own seed), ``--equilibrate`` steps, then one frame every ``--stride``
   steps. A temperature range ``LO-HI`` ramps the thermostat from LO to HI over the frames.
   Optionally (``stretch=LO-HI``) one random bond of a frame is stretched by a random factor
   before labelling (reactive, Transition1x-like frames; recorded in the frame's info).
   ``--scan`` makes rigid torsion or bond scans of the GFN2-optimised ``--scan-molecule``.
2. Label each frame at its job's level of theory with PySCF (energies and analytic
   gradients; HF/DFT with density fitting, MP2 on an RHF reference). Frames whose SCF does
   not converge (or whose single point raises) are dropped and counted.
3. Write one extxyz per job in eV, eV/Ang and Ang, with ``level_of_theory`` in every frame's
   info line, plus ``MANIFEST.json`` (every setting, seed, code version, timing, sha256) —
   the layout ``spk_meta.datasets`` ships.

Jobs (``--job``, or ``--target-job`` for target data exempt from ``--exclude-formula``)::

    [NAME=]LEVEL:TEMPERATURE_K:FRAMES[:MOL1,MOL2,...][:stretch=1.1-1.6][:stretch_fraction=0.5]

``TEMPERATURE_K`` is a number or a ramp ``300-600``; frames are split evenly over the
molecules (``--molecule`` if none are given) and interleaved (frame i is molecule
i % n_molecules), so a partial file covers every molecule. Molecule m of job j is sampled
with seed ``--seed + j + 1000 m``. The output is ``NAME.extxyz`` (default
``LEVEL_TK.extxyz``, the embedded set's names). Scans (``--scan``, at ``--scan-level``)::

    [NAME=]torsion:I,J,K,L:START_DEG:STOP_DEG:N    rotate the L side of the J-K bond
    [NAME=]stretch:I,J:START_ANG:STOP_ANG:N        pull J (and its side of the bond) from I

with ``N`` points from START to STOP inclusive; the coordinate is ``scan_coordinate`` in
each frame's info. Every labelled frame is appended to ``OUTDIR/partial/NAME.labels.jsonl``
(sampled geometries in ``NAME.geometries.extxyz``), so rerunning a killed run with the same
arguments continues where it stopped; a partial made with other arguments is refused
(``--overwrite`` starts again). Frames are labelled round-robin over the jobs, in proportion
to their sizes, and outputs plus manifest are rewritten every ``--flush-every`` frames, so
every dataset is usable (``"complete": false``) long before the run ends.

Bad input stops the run before any expensive work: an unknown ASE molecule name, a level
PySCF cannot parse (functional or basis, tried on each molecule), a molecule whose formula
is in ``--exclude-formula``, a scan on atoms that are not bonded, an output that exists
(unless ``--overwrite``).

Needs the ``datagen`` extra (``pip install 'spk-meta[datagen]'``: pyscf, tblite). Example
(the embedded ethanol set's recipe; hours on a laptop)::

    python examples/make_multilevel_data.py out/ --molecule CH3CH2OH \\
        --job "wB97X/6-31g*:300:200" --job "B3LYP/def2-svp:600:200" --job "HF/def2-svp:900:200" \\
        --job "MP2/6-31g*:300:150"

and ``examples/make_organic_data.sh`` for many molecules, reactive frames and scans.
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import List, Optional, Tuple

import ase.io
import numpy as np
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.collections import g2
from ase.formula import Formula
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from spk_meta.active.label import LabelError, run_single_point
from spk_meta.active.label import check_level as check_level_of_elements
from spk_meta.evaluate.scans import bond_scan, bonded_side, torsion_scan


class InputError(ValueError):
    """Bad command-line input, found before any expensive work."""


# ---------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """MD-sampled frames of one or more molecules at one level of theory.

    Attributes:
        temperature: thermostat temperature (K); ``(lo, hi)`` ramps over the frames.
        stretch: ``(lo, hi)`` factor range for one random bond per stretched frame.
    """

    name: str
    level: str
    temperature: Tuple[float, float]
    frames: int
    molecules: List[str]
    seeds: List[int]
    role: str = "job"
    stretch: Optional[Tuple[float, float]] = None
    stretch_fraction: float = 1.0
    equilibrate: int = 2000
    stride: int = 40
    kind: str = "md"

    def frames_per_molecule(self) -> List[int]:
        n, m = divmod(self.frames, len(self.molecules))
        return [n + (i < m) for i in range(len(self.molecules))]

    def settings(self) -> dict:
        """Everything that determines this job's frames (compared on resume)."""
        return asdict(self)


@dataclass
class ScanJob:
    """A rigid scan of one coordinate of a GFN2-optimised molecule."""

    name: str
    level: str
    scan: str  # "torsion" or "stretch"
    indices: List[int]
    start: float
    stop: float
    points: int
    molecules: List[str] = field(default_factory=list)
    role: str = "scan"
    kind: str = "scan"

    @property
    def frames(self) -> int:
        return self.points

    def settings(self) -> dict:
        return asdict(self)


def level_slug(level: str) -> str:
    return level.lower().replace("/", "_").replace("*", "s").replace("-", "")


def _range(text: str, what: str) -> Tuple[float, float]:
    """``"300"`` -> (300, 300); ``"300-600"`` -> (300, 600)."""
    try:
        parts = [float(x) for x in text.split("-")]
    except ValueError:
        raise InputError(f"{what}: {text!r} is not a number or a range LO-HI") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or parts[0] > parts[1] or parts[0] <= 0:
        raise InputError(f"{what}: {text!r} is not a positive number or a range LO-HI with LO <= HI")
    return parts[0], parts[1]


def _split_name(spec: str) -> Tuple[Optional[str], str]:
    head, sep, rest = spec.partition("=")
    if sep and "/" not in head and ":" not in head:
        if not head or not all(c.isalnum() or c in "_-." for c in head):
            raise InputError(f"{spec!r}: the name {head!r} must be letters, digits, '_', '-' or '.'")
        return head, rest
    return None, spec


def parse_job(spec: str, default_molecule: str, index: int, args, role: str) -> Job:
    """``[NAME=]LEVEL:T:FRAMES[:MOLS][:key=value...]`` -> :class:`Job`."""
    name, body = _split_name(spec)
    parts = body.split(":")
    if len(parts) < 3:
        raise InputError(f"job {spec!r}: expected [NAME=]LEVEL:TEMPERATURE_K:FRAMES[:MOL1,MOL2,...][:key=value]")
    level, temperature, frames = parts[:3]
    molecules, options = None, {}
    for extra in parts[3:]:
        if "=" in extra:
            key, _, value = extra.partition("=")
            if key not in ("stretch", "stretch_fraction"):
                raise InputError(f"job {spec!r}: unknown option {key!r} (stretch, stretch_fraction)")
            options[key] = value
        elif molecules is None:
            molecules = [m.strip() for m in extra.split(",") if m.strip()]
        else:
            raise InputError(f"job {spec!r}: molecules given twice")
    molecules = molecules or [default_molecule]
    try:
        frames = int(frames)
    except ValueError:
        raise InputError(f"job {spec!r}: FRAMES {frames!r} is not an integer") from None
    if frames < len(molecules):
        raise InputError(f"job {spec!r}: {frames} frames for {len(molecules)} molecules")
    t = _range(temperature, f"job {spec!r} temperature")
    stretch = _range(options["stretch"], f"job {spec!r} stretch") if "stretch" in options else None
    fraction = float(options.get("stretch_fraction", 1.0))
    if not 0 < fraction <= 1:
        raise InputError(f"job {spec!r}: stretch_fraction must be in (0, 1]")
    if name is None:
        name = f"{level_slug(level)}_{int(t[0])}K" + (f"-{int(t[1])}K" if t[1] != t[0] else "")
    seeds = [args.seed + index + 1000 * m for m in range(len(molecules))]
    return Job(name=name, level=level, temperature=t, frames=frames, molecules=molecules, seeds=seeds, role=role,
               stretch=stretch, stretch_fraction=fraction, equilibrate=args.equilibrate, stride=args.stride)


def parse_scan(spec: str, mol_name: str, level: str) -> ScanJob:
    """``[NAME=]torsion:I,J,K,L:START:STOP:N`` or ``[NAME=]stretch:I,J:START:STOP:N``."""
    name, body = _split_name(spec)
    parts = body.split(":")
    if len(parts) != 5 or parts[0] not in ("torsion", "stretch"):
        raise InputError(f"scan {spec!r}: expected [NAME=]torsion:I,J,K,L:START:STOP:N or stretch:I,J:START:STOP:N")
    kind = parts[0]
    try:
        indices = [int(i) for i in parts[1].split(",")]
        start, stop, n = float(parts[2]), float(parts[3]), int(parts[4])
    except ValueError:
        raise InputError(f"scan {spec!r}: atom indices and N must be integers, START and STOP numbers") from None
    if len(indices) != (4 if kind == "torsion" else 2) or n < 2:
        raise InputError(f"scan {spec!r}: a {kind} needs {4 if kind == 'torsion' else 2} atom indices and N >= 2")
    if kind == "stretch" and min(start, stop) <= 0:
        raise InputError(f"scan {spec!r}: bond lengths must be positive")
    if name is None:
        name = f"scan_{kind}_{'-'.join(map(str, indices))}_{level_slug(level)}"
    return ScanJob(name=name, level=level, scan=kind, indices=indices, start=start, stop=stop, points=n,
                   molecules=[mol_name])


# ---------------------------------------------------------------------------- checks


def check_molecule(name: str) -> Atoms:
    if name not in g2.names:
        raise InputError(f"unknown molecule {name!r}: not an ase.build.molecule (ase.collections.g2) name")
    return molecule(name)


def check_level(level: str, molecules: List[Atoms], where: str) -> None:
    """The method and the basis of every element (spk_meta.active.label.check_level), then
    each molecule built in PySCF (closed shell, restricted); no SCF."""
    from pyscf import gto

    try:
        check_level_of_elements(level, {int(z) for atoms in molecules for z in atoms.numbers})
    except LabelError as err:
        raise InputError(f"{where}: {err}") from None
    basis = level.partition("/")[2].strip()
    for atoms in molecules:
        try:
            gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)], basis=basis,
                  unit="Angstrom", verbose=0)
        except Exception as err:
            raise InputError(f"{where}: PySCF cannot build {atoms.get_chemical_formula()} with basis {basis!r} "
                             f"(closed shell, restricted) ({type(err).__name__}: {err})") from None


def hill(formula: str) -> str:
    try:
        return Formula(formula).format("hill")
    except Exception:
        raise InputError(f"--exclude-formula {formula!r} is not a chemical formula") from None


# ---------------------------------------------------------------------------- sampling


def sample_md(atoms, temperature_K, n_frames, equilibrate, stride, seed, timestep_fs=0.5, friction=0.01):
    """GFN2-xTB Langevin MD; ``n_frames`` frames after ``equilibrate`` steps, every ``stride``.

    ``temperature_K`` is a number or ``(lo, hi)``: the thermostat then ramps linearly from
    ``lo`` (equilibration and first frame) to ``hi`` (last frame). Each frame's target
    temperature is ``info["temperature_K"]``.
    """
    from tblite.ase import TBLite

    lo, hi = (temperature_K, temperature_K) if np.isscalar(temperature_K) else temperature_K
    atoms = atoms.copy()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=lo, rng=rng)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=lo, friction=friction / units.fs, rng=rng)
    dyn.run(equilibrate)
    frames = []
    for f in range(n_frames):
        t = lo + (hi - lo) * f / max(n_frames - 1, 1)
        if hi != lo:
            dyn.set_temperature(temperature_K=t)
        dyn.run(stride)
        frame = Atoms(atoms.numbers, atoms.positions)
        frame.info["temperature_K"] = float(t)
        frames.append(frame)
    return frames


def stretch_random_bond(frame: Atoms, topology: Atoms, factor_range, rng) -> Atoms:
    """Stretch one random bond (of ``topology``'s covalent graph) by a factor in ``factor_range``.

    The smaller side of the bond (for an X-H bond, the H) moves rigidly along the bond; a
    ring bond moves only its second atom. Records ``stretched_bond``, ``stretch_factor``.
    """
    from ase.neighborlist import build_neighbor_list, natural_cutoffs

    nl = build_neighbor_list(topology, cutoffs=natural_cutoffs(topology), self_interaction=False, bothways=False)
    bonds = [(i, int(j)) for i in range(len(topology)) for j in nl.get_neighbors(i)[0]]
    a, b = bonds[rng.integers(len(bonds))]
    factor = float(rng.uniform(*factor_range))
    try:
        side_b, side_a = bonded_side(topology, a, b), bonded_side(topology, b, a)
        if len(side_a) < len(side_b):
            a, b, side_b = b, a, side_a
    except ValueError:  # ring bond
        side_b = [b]
    out = frame.copy()
    out.set_distance(a, b, factor, fix=0, indices=side_b, add=True, factor=True)
    out.info["stretched_bond"] = np.array([a, b])
    out.info["stretch_factor"] = factor
    return out


def optimise_gfn2(atoms: Atoms, fmax: float = 0.005) -> Atoms:
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    atoms = atoms.copy()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=1000)
    return Atoms(atoms.numbers, atoms.positions)


def sample_job(job) -> List[Atoms]:
    """The job's unlabelled frames, with their info (everything but the labels)."""
    if job.kind == "scan":
        start = optimise_gfn2(molecule(job.molecules[0]))
        coords = np.linspace(job.start, job.stop, job.points)
        scan = (torsion_scan(start, job.indices, coords) if job.scan == "torsion"
                else bond_scan(start, job.indices, coords))
        frames = []
        for x, frame in zip(coords, scan.frames):
            frame = Atoms(frame.numbers, frame.positions)
            frame.info.update(molecule=job.molecules[0], scan_kind=job.scan, scan_atoms=np.array(job.indices),
                              scan_coordinate=float(x), scan_unit="deg" if job.scan == "torsion" else "Angstrom",
                              geometry="GFN2-xTB optimised, rigid scan")
            frames.append(frame)
        return frames
    per_molecule = []
    for m, (name, n, seed) in enumerate(zip(job.molecules, job.frames_per_molecule(), job.seeds)):
        start = molecule(name)
        t = job.temperature if job.temperature[0] != job.temperature[1] else job.temperature[0]
        frames = sample_md(start, t, n, job.equilibrate, job.stride, seed)
        rng = np.random.default_rng([seed, 12345])
        for f, frame in enumerate(frames):
            frame.info.update(molecule=name, md_seed=seed, md_frame=f)
            if job.stretch is not None:
                if rng.random() < job.stretch_fraction:
                    frame = stretch_random_bond(frame, start, job.stretch, rng)
                else:
                    frame.info.update(stretched_bond=np.array([-1, -1]), stretch_factor=1.0)
                frames[f] = frame
        per_molecule.append(frames)
    # interleave: frame i is molecule i % n_molecules while all have frames left
    out = []
    for f in range(max(len(p) for p in per_molecule)):
        out.extend(p[f] for p in per_molecule if f < len(p))
    return out


# ---------------------------------------------------------------------------- labels


def pyscf_single_point(atoms, level):
    """Energy (eV) and forces ``(n_atoms, 3)`` (eV/Ang) of ``atoms`` (Ang) at ``METHOD/BASIS``;
    ``None`` if the SCF does not converge; other failures raise (the caller records them).
    The PySCF code is spk_meta.active.label's (also behind ``spkmeta select --label``)."""
    return run_single_point(atoms.numbers, atoms.positions, level)


def write_atomic(path: Path, frames) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".extxyz")
    os.close(fd)
    try:
        ase.io.write(tmp, frames, format="extxyz")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; data files are for everyone
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Partial:
    """A job's resumable state: sampled geometries + one JSONL line per labelled frame.

    ``NAME.labels.jsonl``: a header ``{"settings": ..., "sample_wall_s": ...}``, then
    ``{"index", "energy", "forces", "wall_s", "cpu_s"}`` or ``{"index", "failed", ...}``.
    A torn last line (a killed write) is ignored.
    """

    def __init__(self, outdir: Path, job):
        self.job = job
        self.geometries_path = outdir / "partial" / f"{job.name}.geometries.extxyz"
        self.labels_path = outdir / "partial" / f"{job.name}.labels.jsonl"
        self.header = None
        self.records = {}

    def read_header(self) -> Optional[dict]:
        if not self.labels_path.exists():
            return None
        with open(self.labels_path) as f:
            try:
                return json.loads(f.readline())
            except json.JSONDecodeError:
                return None

    def matches(self) -> bool:
        header = self.read_header()
        return header is not None and header.get("settings") == json.loads(json.dumps(self.job.settings()))

    def remove(self) -> None:
        for p in (self.geometries_path, self.labels_path):
            p.unlink(missing_ok=True)

    def load_or_sample(self) -> List[Atoms]:
        if self.matches() and self.geometries_path.exists():
            frames = ase.io.read(self.geometries_path, ":")
            if len(frames) == self.job.frames:
                self.header = self.read_header()
                with open(self.labels_path) as f:
                    lines = f.read().split("\n")[1:]
                for line in lines:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # torn or empty last line
                    self.records[rec["index"]] = rec
                self._rewrite_if_torn(lines)
                return frames
        self.geometries_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        frames = sample_job(self.job)
        sample_s = time.time() - t0
        write_atomic(self.geometries_path, frames)
        self.header = {"settings": self.job.settings(), "sample_wall_s": sample_s}
        write_text_atomic(self.labels_path, json.dumps(self.header) + "\n")
        self.records = {}
        return frames

    def _rewrite_if_torn(self, lines) -> None:
        if lines and lines[-1].strip():  # killed mid-line: drop the fragment so appends stay parseable
            keep = [json.dumps(self.header)] + [json.dumps(self.records[i]) for i in sorted(self.records)]
            write_text_atomic(self.labels_path, "\n".join(keep) + "\n")

    def append(self, record: dict) -> None:
        with open(self.labels_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record["index"]] = record


def labelled_frames(job, frames, records) -> Tuple[List[Atoms], int]:
    out, failed = [], 0
    for i, frame in enumerate(frames):
        rec = records.get(i)
        if rec is None:
            continue
        if rec.get("failed"):
            failed += 1
            continue
        atoms = frame.copy()
        atoms.calc = SinglePointCalculator(atoms, energy=rec["energy"], forces=np.array(rec["forces"]))
        atoms.info["level_of_theory"] = job.level
        if job.kind == "md" and job.temperature[0] == job.temperature[1]:
            atoms.info["temperature_K"] = float(job.temperature[0])
        out.append(atoms)
    return out, failed


# ---------------------------------------------------------------------------- main


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("pyscf", "tblite", "ase", "numpy", "spk-meta"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = None
    return out


def build_jobs(args) -> List:
    """Parse and check every job and scan; raises :class:`InputError` (no expensive work)."""
    jobs = []
    for role, specs in (("job", args.job), ("target", args.target_job)):
        for spec in specs:
            jobs.append(parse_job(spec, args.molecule, len(jobs), args, role))
    if args.scan:
        if not args.scan_level:
            raise InputError("--scan needs --scan-level")
        mol_name = args.scan_molecule or args.molecule
        scan_mol = check_molecule(mol_name)
        for spec in args.scan:
            scan = parse_scan(spec, mol_name, args.scan_level)
            if max(scan.indices) >= len(scan_mol) or min(scan.indices) < 0:
                raise InputError(f"scan {spec!r}: {mol_name} has atoms 0..{len(scan_mol) - 1}")
            try:
                if scan.scan == "torsion":
                    i, j, k, l = scan.indices
                    if l not in bonded_side(scan_mol, j, k):
                        raise ValueError(f"atom {l} is not on atom {k}'s side of the {j}-{k} bond, so it would not move")
                else:
                    bonded_side(scan_mol, *scan.indices)
            except ValueError as err:
                raise InputError(f"scan {spec!r} on {mol_name}: {err}") from None
            jobs.append(scan)
    if not jobs:
        raise InputError("nothing to do: give --job, --target-job or --scan")
    names = [j.name for j in jobs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"two jobs write {dup[0]}.extxyz: give them names with NAME=...")
    excluded = {hill(f): f for f in args.exclude_formula}
    for job in jobs:
        mols = [check_molecule(m) for m in job.molecules]
        for name, atoms in zip(job.molecules, mols):
            formula = atoms.get_chemical_formula("hill")
            if job.role == "job" and formula in excluded:
                raise InputError(f"job {job.name}: molecule {name} is {formula}, excluded by --exclude-formula")
        check_level(job.level, mols, f"job {job.name}")
    return jobs


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--molecule", default="CH3CH2OH", help="ase.build.molecule name for jobs that name none")
    parser.add_argument("--job", action="append", default=[], help="[NAME=]LEVEL:TEMPERATURE_K:FRAMES[:MOLS][:opts]")
    parser.add_argument("--target-job", action="append", default=[],
                        help="like --job, for target data (exempt from --exclude-formula)")
    parser.add_argument("--scan", action="append", default=[], help="[NAME=]torsion:I,J,K,L:START:STOP:N or "
                                                                     "[NAME=]stretch:I,J:START:STOP:N")
    parser.add_argument("--scan-molecule", help="molecule of the scans (default --molecule)")
    parser.add_argument("--scan-level", help="level of theory of the scans")
    parser.add_argument("--exclude-formula", action="append", default=[],
                        help="refuse a --job molecule with this formula (e.g. C2H7N)")
    parser.add_argument("--equilibrate", type=int, default=2000, help="MD steps before the first frame")
    parser.add_argument("--stride", type=int, default=40, help="MD steps between frames")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs and partial state")
    parser.add_argument("--flush-every", type=int, default=10, help="rewrite outputs every N labelled frames")
    return parser


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        jobs = build_jobs(args)
    except InputError as err:
        parser.error(str(err))

    args.outdir.mkdir(parents=True, exist_ok=True)
    partials = [Partial(args.outdir, job) for job in jobs]
    recipe = hashlib.sha256(json.dumps([j.settings() for j in jobs], sort_keys=True).encode()).hexdigest()
    manifest_path = args.outdir / "MANIFEST.json"
    for job, partial in zip(jobs, partials):
        out = args.outdir / f"{job.name}.extxyz"
        if args.overwrite:
            partial.remove()
        elif partial.labels_path.exists() and not partial.matches():
            parser.error(f"{partial.labels_path} was made with other arguments for job {job.name}; "
                         "rerun with the same arguments to resume, or --overwrite to start again")
        elif out.exists() and not partial.matches():
            parser.error(f"{out} exists (not from this recipe's partial state): use --overwrite to replace it")
    if manifest_path.exists() and not args.overwrite:
        old = json.loads(manifest_path.read_text())
        if old.get("recipe_sha256") != recipe:
            parser.error(f"{manifest_path} exists from another recipe: use --overwrite or another directory")

    manifest = {
        "molecule": args.molecule if all(j.molecules == [args.molecule] for j in jobs) else None,
        "molecules": {m: molecule(m).get_chemical_formula("hill") for j in jobs for m in j.molecules},
        "units": {"energy": "eV", "forces": "eV/Angstrom", "positions": "Angstrom"},
        "sampling": f"GFN2-xTB (tblite {version('tblite')}) Langevin MD in ASE {version('ase')}: 0.5 fs step, "
                    f"friction 0.01/fs, {args.equilibrate} steps equilibration, then one frame every {args.stride} "
                    "steps; one trajectory per molecule and job (numpy default_rng(md_seed)); a range LO-HI K ramps "
                    "the thermostat over the frames; stretched frames: one random covalent bond scaled by "
                    "stretch_factor, its smaller side moved rigidly; scans: GFN2-xTB BFGS-optimised geometry "
                    "(fmax 0.005 eV/A), rigid torsion/stretch",
        "labels": f"PySCF {version('pyscf')} single points: HF and DFT with density fitting, DFT grid level 2; "
                  "MP2 conventional on an RHF reference; forces = -analytic gradient; frames whose SCF did not "
                  "converge were dropped",
        "excluded_formulas": sorted(hill(f) for f in args.exclude_formula),
        "excluded_formulas_apply_to": "--job (pre-training) molecules; not --target-job or --scan",
        "recipe_sha256": recipe,
        "command": [Path(sys.argv[0]).name] + list(sys.argv[1:] if argv is None else argv),
        "run": {"cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "nice": os.nice(0), "versions": versions()},
        "files": [],
    }

    def write_outputs(final: bool) -> None:
        entries = []
        for job, partial, frames in zip(jobs, partials, all_frames):
            labelled, failed = labelled_frames(job, frames, partial.records)
            path = args.outdir / f"{job.name}.extxyz"
            if labelled or final:
                write_atomic(path, labelled)
            energies = [a.get_potential_energy() for a in labelled]
            recs = list(partial.records.values())
            label_s = sum(r["wall_s"] for r in recs)
            entry = {
                "file": path.name, "role": job.role, "frames": len(labelled), "dropped_unconverged": failed,
                "requested": job.frames, "complete": len(partial.records) == len(frames),
                "level_of_theory": job.level, "molecules": job.molecules,
            }
            if job.kind == "md":
                entry.update(temperature_K=job.temperature[0] if job.temperature[0] == job.temperature[1]
                             else list(job.temperature), md_seed=job.seeds[0] if len(job.seeds) == 1 else job.seeds,
                             frames_per_molecule=dict(zip(job.molecules, job.frames_per_molecule())))
                if job.stretch:
                    entry.update(stretch_factor_range=list(job.stretch), stretch_fraction=job.stretch_fraction)
            else:
                entry.update(scan=job.scan, scan_atoms=job.indices, scan_range=[job.start, job.stop],
                             scan_points=job.points)
            entry.update(
                energy_eV_min=min(energies) if energies else None, energy_eV_max=max(energies) if energies else None,
                timing={"sample_wall_s": round(partial.header["sample_wall_s"], 1), "label_wall_s": round(label_s, 1),
                        "label_cpu_s": round(sum(r["cpu_s"] for r in recs), 1),
                        "s_per_frame": round(label_s / len(recs), 2) if recs else None},
                sha256=hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None,
            )
            entries.append(entry)
        manifest["files"] = entries
        manifest["generation_wall_s"] = round(sum(e["timing"]["sample_wall_s"] + e["timing"]["label_wall_s"]
                                                  for e in entries), 1)
        manifest["complete"] = all(e["complete"] for e in entries)
        write_text_atomic(manifest_path, json.dumps(manifest, indent=1))

    all_frames = []
    for job, partial in zip(jobs, partials):
        t0 = time.time()
        all_frames.append(partial.load_or_sample())
        print(f"{job.name}: {len(all_frames[-1])} frames sampled ({time.time() - t0:.0f} s), "
              f"{len(partial.records)} already labelled", flush=True)

    # round-robin in proportion to job sizes, so every dataset grows together
    order = sorted(((i / len(frames), j, i) for j, frames in enumerate(all_frames) for i in range(len(frames))))
    todo = [(j, i) for _, j, i in order if i not in partials[j].records]
    total, done_before = sum(len(f) for f in all_frames), sum(len(p.records) for p in partials)
    started, since_flush = time.time(), 0
    for n, (j, i) in enumerate(todo, 1):
        job, partial = jobs[j], partials[j]
        t0, c0 = time.time(), time.process_time()
        try:
            result = pyscf_single_point(all_frames[j][i], job.level)
            error = None if result is not None else "SCF not converged"
        except Exception as err:  # a crashing single point is a dropped frame, not a dead run
            result, error = None, f"{type(err).__name__}: {err}"
        record = {"index": i, "wall_s": time.time() - t0, "cpu_s": time.process_time() - c0}
        if result is None:
            record.update(failed=True, error=error)
        else:
            record.update(energy=float(result[0]), forces=np.asarray(result[1]).round(10).tolist())
        partial.append(record)
        rate = (time.time() - started) / n
        print(f"{job.name} {len(partial.records)}/{len(all_frames[j])} | all {done_before + n}/{total} | "
              f"{record['wall_s']:.1f} s/frame (mean {rate:.1f}) | ETA {rate * (len(todo) - n) / 60:.0f} min"
              + (f" | DROPPED: {error}" if error else ""), flush=True)
        since_flush += 1
        if since_flush >= args.flush_every:
            write_outputs(final=False)
            since_flush = 0
    write_outputs(final=True)
    for e in manifest["files"]:
        print(f"{args.outdir / e['file']}: {e['frames']} frames ({e['dropped_unconverged']} dropped), "
              f"{e['level_of_theory']}")


if __name__ == "__main__":
    main()
