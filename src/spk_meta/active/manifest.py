"""The ensemble manifest: which model files make a committee, and the checks on them.

``ensemble.json`` (written by ``spkmeta ensemble`` or :func:`write_manifest`)::

    {"format": "spk-meta ensemble", "version": 1,
     "experiment": "scratch_ani",              # or null for models given by hand
     "members": [
       {"name": "m0", "path": "members/m0/best_model",   # relative to the manifest's folder
        "sha256": "...", "seed": 0,
        "overrides": ["experiment=scratch_ani", "seed=0", ...],   # the member's spktrain run
        "cutoff": 5.2,                      # Ang, the model's own (largest) cutoff
        "elements": [1, 6, 7, 8]},          # atomic numbers it has networks for; null: any
       ...]}

:func:`check_members` refuses, naming the members and values, a committee of fewer than
two members, members with different cutoffs or element sets, and (``verify_files``)
members whose file is missing or whose SHA-256 changed since the manifest was written.
All of it reads only the manifest and hashes files: no model is loaded.
"""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from ase.data import chemical_symbols

from spk_meta.experiment.record import sha256
from spk_meta.utils import atomic_path

PathLike = Union[str, Path]

MANIFEST = "ensemble.json"
FORMAT = "spk-meta ensemble"
VERSION = 1


class EnsembleError(ValueError):
    """The ensemble cannot be used as a committee; the message names members and values."""


@dataclass(frozen=True)
class Member:
    """One committee member as the manifest records it.

    Attributes:
        name: e.g. ``"m0"``.
        path: the model file, relative to the manifest's folder (or absolute).
        sha256: of the model file when the manifest was written.
        cutoff: the model's cutoff (Ang).
        elements: atomic numbers the model has networks for; ``None``: any element.
        seed: the training seed, if known.
        overrides: the ``spktrain`` overrides of its run, if trained by ``spkmeta ensemble``.
    """

    name: str
    path: str
    sha256: str
    cutoff: float
    elements: Optional[Tuple[int, ...]]
    seed: Optional[int] = None
    overrides: Tuple[str, ...] = field(default_factory=tuple)

    def file(self, root: Path) -> Path:
        """The model file; a relative path is taken from ``root`` (lexically, as written)."""
        return Path(os.path.normpath(Path(root) / self.path))

    def to_json(self) -> dict:
        d = asdict(self)
        d["elements"] = None if self.elements is None else list(self.elements)
        d["overrides"] = list(self.overrides)
        return d

    @classmethod
    def from_json(cls, d: dict, where: str) -> "Member":
        try:
            elements = d.get("elements")
            return cls(name=str(d["name"]), path=str(d["path"]), sha256=str(d["sha256"]),
                       cutoff=float(d["cutoff"]),
                       elements=None if elements is None else tuple(int(z) for z in elements),
                       seed=None if d.get("seed") is None else int(d["seed"]),
                       overrides=tuple(str(o) for o in d.get("overrides", ())))
        except (KeyError, TypeError, ValueError) as err:
            raise EnsembleError(f"{where}: a member entry is malformed ({type(err).__name__}: {err}): {d}") from None


def symbols(elements: Optional[Sequence[int]]) -> str:
    """``[1, 6]`` -> ``"H C"``; ``None`` -> ``"any element"``."""
    return "any element" if elements is None else " ".join(chemical_symbols[z] for z in elements)


def describe_model(model, name: str, path: PathLike, root: PathLike, seed: Optional[int] = None,
                   overrides: Sequence[str] = ()) -> Member:
    """A :class:`Member` for a loaded SchNetPack ``model`` saved at ``path``.

    Raises:
        EnsembleError: the model declares no cutoff.
    """
    from spk_meta.model.preflight import model_cutoff, model_elements

    cutoff = model_cutoff(model)
    if cutoff is None:
        raise EnsembleError(f"member {name} ({path}): the model declares no cutoff")
    elements = model_elements(model)
    rel = os.path.relpath(Path(path).absolute(), Path(root).absolute())
    return Member(name=name, path=Path(rel).as_posix(), sha256=sha256(Path(path)), cutoff=float(cutoff),
                  elements=None if elements is None else tuple(sorted(elements)), seed=seed,
                  overrides=tuple(overrides))


def check_members(members: Sequence[Member], root: PathLike, where: str = "ensemble",
                  verify_files: bool = True) -> None:
    """Refuse a committee that cannot work (see the module docstring); reads no model.

    Raises:
        EnsembleError: naming the members and the values that differ.
    """
    if len(members) < 2:
        raise EnsembleError(f"{where}: an ensemble needs at least 2 members, it has {len(members)}")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise EnsembleError(f"{where}: member names repeat: {names}")
    cutoffs = {m.name: m.cutoff for m in members}
    if len(set(cutoffs.values())) > 1:
        listed = ", ".join(f"{n}: {c:g} Ang" for n, c in cutoffs.items())
        raise EnsembleError(f"{where}: members have different cutoffs ({listed}); a committee must share one")
    elements = {m.name: m.elements for m in members}
    if len(set(elements.values())) > 1:
        listed = "; ".join(f"{n}: {symbols(e)}" for n, e in elements.items())
        raise EnsembleError(f"{where}: members have networks for different elements ({listed})")
    if verify_files:
        for m in members:
            file = m.file(Path(root))
            if not file.is_file():
                raise EnsembleError(f"{where}: member {m.name}: model file {file} is missing")
            digest = sha256(file)
            if digest != m.sha256:
                raise EnsembleError(
                    f"{where}: member {m.name}: {file} changed since the manifest was written "
                    f"(SHA-256 {digest[:12]}, recorded {m.sha256[:12]}); retrain the ensemble or "
                    "write the manifest again"
                )


def manifest_path(path: PathLike) -> Path:
    """``path`` if it is a file, else ``path/ensemble.json``."""
    path = Path(path)
    return path / MANIFEST if path.is_dir() else path


def write_manifest(root: PathLike, members: Sequence[Member], experiment: Optional[str] = None,
                   overwrite: bool = False) -> Path:
    """Check ``members`` and write ``root/ensemble.json`` atomically.

    Raises:
        EnsembleError: see :func:`check_members`.
        FileExistsError: the manifest exists and ``overwrite`` is false.
    """
    root = Path(root).absolute()
    out = root / MANIFEST
    check_members(members, root, where=str(out))
    manifest = {"format": FORMAT, "version": VERSION, "experiment": experiment,
                "members": [m.to_json() for m in members]}
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def read_manifest(path: PathLike, verify_files: bool = True) -> Tuple[Path, dict, List[Member]]:
    """``(manifest file, manifest dict, members)`` of the ensemble at ``path`` (the json or
    its folder), checked with :func:`check_members`.

    Raises:
        EnsembleError: not a manifest, another version, or a committee that cannot work.
    """
    file = manifest_path(path).absolute()
    if not file.is_file():
        raise EnsembleError(f"{path}: no ensemble manifest ({MANIFEST}); create one with spkmeta ensemble")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EnsembleError(f"{file}: unreadable ensemble manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EnsembleError(f"{file}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise EnsembleError(f"{file}: manifest version {manifest.get('version')}, this spk-meta reads {VERSION}")
    entries = manifest.get("members")
    if not isinstance(entries, list):
        raise EnsembleError(f"{file}: 'members' must be a list")
    members = [Member.from_json(d if isinstance(d, dict) else {}, str(file)) for d in entries]
    check_members(members, file.parent, where=str(file), verify_files=verify_files)
    return file, manifest, members
