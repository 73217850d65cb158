"""Levels of theory and their slugs, the names tasks and task databases go by."""

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

#: the metadata key under which a task database stores its level of theory
METADATA_KEY = "level_of_theory"


def level_slug(name: str) -> str:
    """File- and config-safe name of a level of theory; used everywhere a task is named.

    Lower case; ``*`` becomes ``s`` (polarisation stars), ``+`` becomes ``p`` (diffuse
    functions), ``(x)`` becomes ``-x``, the method/basis ``/`` becomes ``_``; anything else
    that is not a letter, digit, ``-``, ``_`` or ``.`` becomes ``-``.

    >>> level_slug("wB97X/6-31g*")
    'wb97x_6-31gs'
    >>> level_slug("CCSD(T)/CBS")
    'ccsd-t_cbs'
    """
    s = name.strip().lower()
    if not s:
        raise ValueError("a level of theory needs a non-empty name")
    s = s.replace("*", "s").replace("+", "p").replace("/", "_")
    s = re.sub(r"\(([^)]*)\)", r"-\1", s)
    s = re.sub(r"[^a-z0-9_.-]+", "-", s)
    s = re.sub(r"-{2,}", "-", s).strip("-_")
    return s


@dataclass(frozen=True)
class LevelOfTheory:
    """A quantum-chemistry level of theory, e.g. ``LevelOfTheory.parse("MP2/6-31g*")``.

    Attributes:
        name: the full name as users write it, ``METHOD/BASIS`` (e.g. ``wB97X/6-31g*``).
        method: the electronic-structure method (e.g. ``wB97X``).
        basis: the basis set, or ``None`` when the name has none (e.g. ``GFN2-xTB``).
        code: the program (and version) that computed the labels, if known.
    """

    name: str
    method: str
    basis: Optional[str] = None
    code: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, name: str, code: Optional[str] = None, **extra: Any) -> "LevelOfTheory":
        """Split ``METHOD/BASIS`` at the first ``/``."""
        name = name.strip()
        method, _, basis = name.partition("/")
        if not method:
            raise ValueError(f"cannot parse level of theory {name!r}: expected METHOD/BASIS")
        return cls(name=name, method=method, basis=basis or None, code=code, extra=dict(extra))

    @property
    def slug(self) -> str:
        return level_slug(self.name)

    def to_metadata(self) -> Dict[str, Any]:
        md = asdict(self)
        md["slug"] = self.slug
        return md

    @classmethod
    def from_metadata(cls, md: Dict[str, Any]) -> "LevelOfTheory":
        return cls(
            name=md["name"],
            method=md["method"],
            basis=md.get("basis"),
            code=md.get("code"),
            extra=dict(md.get("extra", {})),
        )
