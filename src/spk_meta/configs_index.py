"""What spk-meta's shipped Hydra configs add to SchNetPack's (read from the files)."""

from importlib import resources
from pathlib import Path
from typing import Dict, List


class MissingConfigsError(RuntimeError):
    """The configs that should ship inside the package are not there (a broken install)."""


def _package_dir(package: str) -> Path:
    try:
        return Path(str(resources.files(package)))
    except ModuleNotFoundError as err:
        raise MissingConfigsError(
            f"the config package '{package}' is not installed; reinstall spk-meta "
            "(pip install --force-reinstall spk-meta) - its wheel must contain spk_meta/configs"
        ) from err


def config_options(package: str) -> Dict[str, List[str]]:
    """Map config group (``"experiment"``, ``"model/representation"``, ...) to option names.

    Top-level primary configs (e.g. SchNetPack's ``train``) are listed under ``""``.
    """
    root = _package_dir(package)
    groups: Dict[str, List[str]] = {}
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root)
        group = rel.parent.as_posix() if rel.parent != Path(".") else ""
        groups.setdefault(group, []).append(rel.stem)
    return groups


def spk_meta_configs() -> Dict[str, List[str]]:
    """Config groups and options spk-meta adds; raises :class:`MissingConfigsError` if none ship."""
    groups = config_options("spk_meta.configs")
    if not groups:
        raise MissingConfigsError(
            f"no Hydra configs found in {_package_dir('spk_meta.configs')}; the spk-meta install "
            "is broken (its wheel must contain spk_meta/configs/**.yaml): reinstall it"
        )
    return groups


def shadowed_configs() -> List[str]:
    """Our ``group/name`` entries that SchNetPack also ships (must be empty)."""
    ours = spk_meta_configs()
    theirs = config_options("schnetpack.configs")
    return sorted(
        f"{group}/{name}" if group else name
        for group, names in ours.items()
        for name in names
        if name in theirs.get(group, [])
    )
