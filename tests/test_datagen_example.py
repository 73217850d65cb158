"""examples/make_multilevel_data.py on two frames at a cheap level (HF/STO-3G water)."""

import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

pyscf = pytest.importorskip("pyscf")
pytest.importorskip("tblite")

SCRIPT = Path(__file__).parents[1] / "examples" / "make_multilevel_data.py"


def test_generator_labels_md_frames_with_pyscf(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--molecule", "H2O", "--job", "HF/sto-3g:300:2",
         "--equilibrate", "4", "--stride", "3", "--seed", "7"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    (entry,) = manifest["files"]
    assert entry["frames"] == 2 and entry["md_seed"] == 7 and "PySCF" in manifest["labels"]
    frames = ase.io.read(tmp_path / entry["file"], ":")
    assert len(frames) == 2 and frames[0].info["level_of_theory"] == "HF/sto-3g"
    assert not np.allclose(frames[0].positions, frames[1].positions)  # MD moved the atoms

    # the labels are PySCF's: energy and a finite-difference check of one force component
    from ase.units import Hartree
    from pyscf import gto, scf

    atoms = frames[0]

    def energy(positions):
        mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), positions)], basis="sto-3g",
                    unit="Angstrom", verbose=0)
        return scf.RHF(mol).density_fit().run().e_tot * Hartree

    assert atoms.get_potential_energy() == pytest.approx(energy(atoms.positions), abs=1e-6)
    h = 1e-3
    shifted = atoms.positions.copy()
    shifted[1, 0] += h
    back = atoms.positions.copy()
    back[1, 0] -= h
    numeric = -(energy(shifted) - energy(back)) / (2 * h)
    assert atoms.get_forces()[1, 0] == pytest.approx(numeric, abs=2e-3)
