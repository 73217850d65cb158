"""A short NVT run as a stability check of a potential (ASE Langevin dynamics)."""

import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution


def md_stability(atoms, calc, steps: int = 200, temperature_K: float = 300.0, timestep_fs: float = 0.5,
                 friction: float = 0.01, max_distance: float = 10.0, seed: int = 0) -> dict:
    """Run NVT Langevin MD and report whether the molecule stayed together.

    Returns ``{"stable", "max_distance_from_centre" (Ang), "energy_drift" (eV/ps, slope of
    the total energy), "mean_temperature" (K), "steps"}``; ``stable`` is False when an
    atom ended up further than ``max_distance`` from the centre of mass or an energy
    became non-finite.
    """
    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=friction / units.fs,
                   rng=np.random.default_rng(seed + 1))
    energies, temps, far = [], [], 0.0
    stable = True
    for _ in range(steps):
        dyn.run(1)
        e = atoms.get_total_energy()
        far = max(far, float(np.linalg.norm(atoms.positions - atoms.get_center_of_mass(), axis=1).max()))
        if not np.isfinite(e) or far > max_distance:
            stable = False
            break
        energies.append(e)
        temps.append(atoms.get_temperature())
    t_ps = np.arange(len(energies)) * timestep_fs / 1000.0
    drift = float(np.polyfit(t_ps, energies, 1)[0]) if len(energies) > 2 else float("nan")
    return {"stable": stable, "max_distance_from_centre": far, "energy_drift": drift,
            "mean_temperature": float(np.mean(temps)) if temps else float("nan"), "steps": len(energies)}
