"""The embedded multi-level ethanol data and its on-demand SchNetPack databases."""

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Union

from spk_meta.data.level_of_theory import LevelOfTheory
from spk_meta.data.writer import extxyz_to_database

ENV_CACHE = "SPKMETA_CACHE"


def cache_dir(path: Optional[Union[str, Path]] = None) -> Path:
    """Absolute cache directory: ``path``, else ``$SPKMETA_CACHE``, else ``~/.cache/spk-meta``.

    Absolute because ``spktrain`` changes into its run directory before loading data.
    """
    if path is None:
        path = os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "spk-meta"
    return Path(path).expanduser().absolute()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class DatasetFile:
    """One file of an embedded dataset.

    Attributes:
        name: file stem, e.g. ``target_mp2_631gs_train_300K``.
        level_of_theory: the level the labels were computed at.
        temperature_K: temperature of the MD that sampled the frames; ``None`` for a
            temperature ramp or a rigid scan (see ``entry``).
        frames: number of frames.
        extxyz: absolute path of the shipped extxyz file (eV, eV/Ang, Ang).
        db: absolute path of the SchNetPack ``ASEAtomsData`` database built from it.
        entry: the file's record in ``MANIFEST.json`` (molecules, seeds, timing, ...).
    """

    name: str
    level_of_theory: LevelOfTheory
    temperature_K: Optional[float]
    frames: int
    extxyz: Path
    db: Path
    entry: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class EmbeddedDataset:
    """A shipped dataset: its manifest and its files, keyed by file stem."""

    name: str
    root: Path
    manifest: Dict[str, Any]
    files: Dict[str, DatasetFile]

    def __getitem__(self, name: str) -> DatasetFile:
        try:
            return self.files[name]
        except KeyError:
            raise KeyError(
                f"{self.name} has no file '{name}'; it has: {', '.join(sorted(self.files))}"
            ) from None

    def select(self, prefix: str) -> Dict[str, DatasetFile]:
        """Files whose name starts with ``prefix`` (e.g. ``"pretrain"``)."""
        return {k: v for k, v in self.files.items() if k.startswith(prefix)}


def _code_version(manifest: Dict[str, Any]) -> Optional[str]:
    match = re.search(r"PySCF [0-9.]+", manifest.get("labels", ""))
    return match.group(0) if match else None


def load_embedded(name: str, cache: Optional[Union[str, Path]] = None) -> EmbeddedDataset:
    """Load the embedded dataset ``name``, building its databases on first use.

    Every extxyz file is checked against the manifest's sha256. Databases live under
    ``<cache>/<name>/<sha256[:12]>/<stem>.db``, so a changed file never reuses a stale
    database; each is written to a temporary file and renamed, so concurrent processes
    never see a half-written one.
    """
    root = Path(str(resources.files("spk_meta.datasets") / name))
    manifest_path = root / "MANIFEST.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"embedded dataset '{name}': {manifest_path} is missing")
    manifest = json.loads(manifest_path.read_text())
    code = _code_version(manifest)
    files = {}
    for entry in manifest["files"]:
        extxyz = root / entry["file"]
        if not extxyz.is_file():
            raise FileNotFoundError(f"embedded dataset '{name}': {extxyz} is missing")
        digest = _sha256(extxyz)
        if digest != entry["sha256"]:
            raise ValueError(
                f"{extxyz}: sha256 {digest} does not match MANIFEST.json ({entry['sha256']})"
            )
        temperature = entry.get("temperature_K")
        temperature = float(temperature) if isinstance(temperature, (int, float)) else None
        level = LevelOfTheory.parse(entry["level_of_theory"], code=code, temperature_K=temperature)
        db = cache_dir(cache) / name / digest[:12] / (extxyz.stem + ".db")
        if not db.exists():
            try:
                extxyz_to_database(
                    extxyz,
                    db,
                    level,
                    metadata={"dataset": name, "sha256": digest},
                )
            except FileExistsError:
                pass  # another process finished the same database first: it is complete
        files[extxyz.stem] = DatasetFile(
            name=extxyz.stem,
            level_of_theory=level,
            temperature_K=temperature,
            frames=int(entry["frames"]),
            extxyz=extxyz,
            db=db,
            entry=dict(entry),
        )
    return EmbeddedDataset(name=name, root=root, manifest=manifest, files=files)


def ethanol_multilevel(cache_dir: Optional[Union[str, Path]] = None) -> EmbeddedDataset:
    """The embedded ethanol data: GFN2-xTB MD frames labelled at several levels of theory.

    Files (energies eV, forces eV/Ang): ``pretrain_wb97x_631gs_300K`` (wB97X/6-31g*),
    ``pretrain_b3lyp_def2svp_600K`` (B3LYP/def2-svp), ``pretrain_hf_def2svp_900K``
    (HF/def2-svp), 200 frames each; ``target_mp2_631gs_train_300K`` (MP2/6-31g*, 150
    frames) and ``target_mp2_631gs_test_{300,600,900}K`` (30 frames each). See
    ``PROVENANCE.md`` beside the data.
    """
    return load_embedded("ethanol_multilevel", cache_dir)


def organic_multilevel(cache_dir: Optional[Union[str, Path]] = None) -> EmbeddedDataset:
    """The embedded organic case: many small molecules at many levels, and a target none of
    them contains.

    Pre-training files, each its own level of theory, molecules and sampling (see
    ``MANIFEST.json`` and ``PROVENANCE.md`` beside the data):
    ``pretrain_ani1x_like_wb97x_631gs`` (wB97X/6-31g*: alcohols and amines, 300-600 K),
    ``pretrain_qm7x_like_pbe0_def2svp`` (PBE0/def2-svp: ethers, acids, amides, 500 K),
    ``pretrain_t1x_like_b3lyp_def2svp`` (B3LYP/def2-svp: small rings, ketene, acetonitrile at
    1000 K, 60 % with one bond stretched 1.1-1.6x), ``pretrain_carbonyls_hf_def2svp``
    (HF/def2-svp: carbonyls, 700 K). No pre-training molecule is C2H7N. Target: ethylamine
    at MP2/6-31g*: ``target_mp2_631gs_train_300K`` (150 frames),
    ``target_mp2_631gs_test_{300,600,900}K`` (30 each) and rigid scans
    ``scan_mp2_631gs_torsion_CCNH``, ``scan_mp2_631gs_stretch_NH``,
    ``scan_mp2_631gs_stretch_CH`` (scan coordinate in each frame's info).
    """
    return load_embedded("organic_multilevel", cache_dir)
