"""Train an ensemble: M ``spktrain`` runs of one experiment that differ only in ``seed``.

Member ``i`` runs ``spktrain experiment=EXPERIMENT seed=<base_seed + i> OVERRIDES...
logger=csv run.path=OUT/members run.id=m<i>`` in the directory the command was started
in (relative paths in the overrides mean what they mean for ``spktrain``), with its log in
``OUT/logs/m<i>.log``. Each run carries the record of :mod:`spk_meta.experiment.record`
(``spkmeta_run.json``): a rerun reuses a finished member only when its overrides (and the
SHA-256 of a ``pretrained=`` model) are the same, resumes an interrupted one from
SchNetPack's ``last.ckpt``, and redoes any other. When every member has finished,
``OUT/ensemble.json`` is written (atomically) with each member's ``best_model``.
"""

from pathlib import Path
from typing import Callable, Dict, List, Sequence, Union

from spk_meta.active.manifest import EnsembleError, describe_model, write_manifest
from spk_meta.experiment.launch import train_recorded
from spk_meta.experiment.record import RunSpec, sha256
from spk_meta.experiment.runner import output_lock, spktrain_executable

PathLike = Union[str, Path]

#: Overrides the ensemble sets itself, per member.
RESERVED = ("experiment", "seed", "run.path", "run.id")


def override_key(override: str) -> str:
    """The config key of a Hydra override, without its ``+``/``~`` prefix."""
    return override.split("=", 1)[0].lstrip("+~")


def check_overrides(overrides: Sequence[str]) -> List[str]:
    """The user's Hydra overrides, checked: ``key=value`` each, none of :data:`RESERVED`,
    and an absolute ``data.split_file`` must exist (its SHA-256 is part of every member's
    record, so it cannot be drawn by the first member and hashed only from then on).

    Raises:
        EnsembleError: naming the offending override.
    """
    out = []
    for o in overrides:
        if "=" not in o:
            raise EnsembleError(f"override {o!r} is not KEY=VALUE (spktrain overrides follow the experiment)")
        if override_key(o) in RESERVED:
            raise EnsembleError(f"override {o!r}: {override_key(o)} is set by spkmeta ensemble for each member")
        if override_key(o) == "data.split_file":
            path = Path(o.split("=", 1)[1]).expanduser()
            if path.is_absolute() and not path.is_file():
                raise EnsembleError(
                    f"override {o!r}: {path} does not exist. Members share an absolute split file only if it "
                    "exists before they train (write one with spk_meta.data.save_splits); a relative name is "
                    "each member's own split in its run directory")
        out.append(o)
    return out


def member_overrides(experiment: str, seed: int, overrides: Sequence[str]) -> List[str]:
    """The ``spktrain`` overrides that define member runs (without ``run.path``/``run.id``)."""
    extra = [] if any(override_key(o) == "logger" for o in overrides) else ["logger=csv"]
    return [f"experiment={experiment}", f"seed={seed}", *overrides, *extra]


#: overrides naming input files whose content defines a member: key -> record name
HASHED_INPUTS = {"pretrained": "pretrained_sha256", "data.split_file": "split_file_sha256"}


def input_hashes(overrides: Sequence[str]) -> Dict[str, str]:
    """SHA-256 of the files members start from: a ``pretrained=`` model and an existing
    ``data.split_file=`` (a split the data module reuses), so that members are redone when
    the model was retrained or the split rewritten with other frames under the same name."""
    out = {}
    for o in overrides:
        if override_key(o) in HASHED_INPUTS:
            path = Path(o.split("=", 1)[1]).expanduser()
            if override_key(o) == "data.split_file" and not path.is_absolute():
                continue  # each member's own file in its run directory (see check_overrides)
            if path.is_file():
                out[HASHED_INPUTS[override_key(o)]] = sha256(path)
    return out


def _train_member(name: str, root: Path, overrides: List[str], inputs: Dict[str, str], log: Callable) -> Path:
    """Run (or reuse, resume, redo) member ``name``; returns its ``best_model``.

    Raises:
        RunFailed: ``spktrain`` failed or wrote no ``best_model`` (names the log).
    """
    run = root / "members" / name
    log_path = root / "logs" / f"{name}.log"
    train_recorded(run, RunSpec(overrides, inputs), spktrain_executable(), log_path, Path.cwd(), log=log,
                   label="ensemble member", on_reuse=f"{name}: finished with the same settings, reused",
                   on_start=f"{name}: training ({' '.join(overrides)}); log {log_path}")
    return run / "best_model"


def train_ensemble(experiment: str, members: int, out: PathLike, overrides: Sequence[str] = (),
                   base_seed: int = 0, log: Callable[[str], None] = print, trust: bool = False) -> Path:
    """Train (or reuse) ``members`` runs of ``experiment`` and write ``out/ensemble.json``.

    Args:
        experiment: an ``spktrain`` experiment config (``scratch_ani``, ``finetune_ani``, ...).
        members: M >= 2.
        out: the ensemble folder (``members/m<i>``, ``logs/``, ``ensemble.json``).
        overrides: further Hydra overrides, the same for every member.
        base_seed: member ``i`` trains with ``seed = base_seed + i``.
        log: where progress lines go.
        trust: passed to ``load_model`` when the finished models are described.

    Returns:
        The manifest path.

    Raises:
        EnsembleError: fewer than 2 members or a bad override (before any training), or
            members whose models differ in cutoff or elements (after it).
        RunFailed: a member's ``spktrain`` failed.
        OutputBusy: another ``spkmeta`` process holds ``out``.
    """
    from spk_meta.model.loading import load_model

    if members < 2:
        raise EnsembleError(f"an ensemble needs at least 2 members, got --members {members}")
    overrides = check_overrides(overrides)
    root = Path(out).absolute()
    if root.exists() and not root.is_dir():
        raise EnsembleError(f"{root} is a file, not a folder")
    inputs = input_hashes(overrides)
    with output_lock(root):
        described = []
        for i in range(members):
            seed = base_seed + i
            run_overrides = member_overrides(experiment, seed, overrides)
            model_file = _train_member(f"m{i}", root, run_overrides, inputs, log)
            described.append(describe_model(load_model(model_file, trust=trust), f"m{i}", model_file, root,
                                            seed=seed, overrides=run_overrides))
        return write_manifest(root, described, experiment=experiment, overwrite=True)
