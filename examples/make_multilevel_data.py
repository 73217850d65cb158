"""Make multi-level data like the embedded ethanol set: xTB MD frames, PySCF single points.

1. Sample frames with GFN2-xTB Langevin MD (tblite's ASE calculator) at each requested
   temperature: ``--equilibrate`` steps, then one frame every ``--stride`` steps.
2. Label each trajectory at its level of theory with PySCF (energies and analytic
   gradients; HF/DFT with density fitting, MP2 on an RHF reference). Frames whose SCF does
   not converge are dropped and counted.
3. Write one extxyz per (level, temperature) in eV, eV/Ang and Ang, with
   ``level_of_theory`` in every frame's info line, plus ``MANIFEST.json`` (every setting,
   seed, code version and sha256) — the layout ``spk_meta.datasets`` ships.

Needs the ``datagen`` extra (``pip install 'spk-meta[datagen]'``: pyscf, tblite). Example
(the embedded set's recipe; hours on a laptop)::

    python examples/make_multilevel_data.py out/ --molecule CH3CH2OH \\
        --job "wB97X/6-31g*:300:200" --job "B3LYP/def2-svp:600:200" --job "HF/def2-svp:900:200" \\
        --job "MP2/6-31g*:300:150"

``--job LEVEL:TEMPERATURE:FRAMES``; each job runs its own trajectory (seed = ``--seed`` +
job index).
"""

import argparse
import hashlib
import json
import os
import tempfile
from importlib.metadata import version
from pathlib import Path

import ase.io
import numpy as np
from ase import units
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.units import Bohr, Hartree


def sample_md(atoms, temperature_K, n_frames, equilibrate, stride, seed, timestep_fs=0.5, friction=0.01):
    """GFN2-xTB Langevin MD; ``n_frames`` frames after ``equilibrate`` steps, every ``stride``."""
    from tblite.ase import TBLite

    atoms = atoms.copy()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=friction / units.fs, rng=rng)
    dyn.run(equilibrate)
    frames = []
    for _ in range(n_frames):
        dyn.run(stride)
        frames.append(atoms.copy())
    return frames


def pyscf_single_point(atoms, level):
    """Energy (eV) and forces (eV/Ang) at ``METHOD/BASIS``; ``None`` if the SCF fails."""
    from pyscf import dft, gto, mp, scf

    method, basis = level.split("/", 1)
    mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
                basis=basis, unit="Angstrom", verbose=0)
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
    return energy * Hartree, -np.asarray(grad) * Hartree / Bohr


def write_atomic(path: Path, frames) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".extxyz")
    os.close(fd)
    try:
        ase.io.write(tmp, frames, format="extxyz")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--molecule", default="CH3CH2OH", help="an ase.build.molecule name")
    parser.add_argument("--job", action="append", required=True, help="LEVEL:TEMPERATURE_K:FRAMES")
    parser.add_argument("--equilibrate", type=int, default=2000, help="MD steps before the first frame")
    parser.add_argument("--stride", type=int, default=40, help="MD steps between frames")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    start = molecule(args.molecule)
    manifest = {
        "molecule": args.molecule,
        "units": {"energy": "eV", "forces": "eV/Angstrom", "positions": "Angstrom"},
        "sampling": f"GFN2-xTB (tblite {version('tblite')}) Langevin MD in ASE {version('ase')}: 0.5 fs step, "
                    f"friction 0.01/fs, {args.equilibrate} steps equilibration, then one frame every {args.stride} steps",
        "labels": f"PySCF {version('pyscf')} single points: HF and DFT with density fitting, DFT grid level 2; "
                  "MP2 conventional on an RHF reference; forces = -analytic gradient; frames whose SCF did not converge were dropped",
        "files": [],
    }
    for i, job in enumerate(args.job):
        level, temperature, n = job.rsplit(":", 2)
        seed = args.seed + i
        frames = sample_md(start, float(temperature), int(n), args.equilibrate, args.stride, seed)
        labelled, dropped = [], 0
        for atoms in frames:
            result = pyscf_single_point(atoms, level)
            if result is None:
                dropped += 1
                continue
            energy, forces = result
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
            atoms.info["level_of_theory"] = level
            atoms.info["temperature_K"] = float(temperature)
            labelled.append(atoms)
        slug = level.lower().replace("/", "_").replace("*", "s").replace("-", "")
        path = args.outdir / f"{slug}_{int(float(temperature))}K.extxyz"
        write_atomic(path, labelled)
        energies = [a.get_potential_energy() for a in labelled]
        manifest["files"].append({
            "file": path.name, "frames": len(labelled), "dropped_unconverged": dropped, "level_of_theory": level,
            "temperature_K": float(temperature), "md_seed": seed,
            "energy_eV_min": min(energies) if energies else None, "energy_eV_max": max(energies) if energies else None,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        })
        print(f"{path}: {len(labelled)} frames ({dropped} dropped), {level} at {temperature} K")
    (args.outdir / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
