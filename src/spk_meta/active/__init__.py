"""Active learning by query-by-committee: ensembles of SchNetPack models and selection.

- :func:`train_ensemble` (``spkmeta ensemble``): M ``spktrain`` runs that differ in seed,
  recorded in ``ensemble.json`` (:mod:`spk_meta.active.manifest`).
- :func:`load_ensemble`: the committee: mean energy/forces, ``energy_std``,
  ``forces_std``, ANI's ``rho``; ``.calculator()`` for ASE.
- :func:`select` (``spkmeta select``): score a pool of frames by disagreement, streaming,
  and write the chosen frames as a new task; ``label=`` (``--label``) labels them with PySCF.
- :func:`check_level`, :func:`single_point`, :func:`label_frames`: quantum-chemistry labels
  for chosen frames (:mod:`spk_meta.active.label`; PySCF is imported only when used).

User documentation: ``docs/active_learning.md``.
"""

from spk_meta.active.ensemble import (
    CommitteeCalculator,
    CommitteePrediction,
    Ensemble,
    ensemble_from_models,
    load_ensemble,
)
from spk_meta.active.label import LabelError, Labels, check_level, label_frames, single_point
from spk_meta.active.manifest import MANIFEST, EnsembleError, Member, read_manifest, write_manifest
from spk_meta.active.selection import Selection, SelectionError, open_pool, score_pool, select
from spk_meta.active.train import train_ensemble

__all__ = [
    "MANIFEST", "CommitteeCalculator", "CommitteePrediction", "Ensemble", "EnsembleError", "LabelError", "Labels",
    "Member", "Selection", "SelectionError", "check_level", "ensemble_from_models", "label_frames", "load_ensemble",
    "open_pool", "read_manifest", "score_pool", "select", "single_point", "train_ensemble", "write_manifest",
]
