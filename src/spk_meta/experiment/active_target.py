"""Target structures chosen by a pre-trained committee vs at random (issue #15, item 4).

For a finished comparison folder ``root`` (``spkmeta experiment``) with Reptile k = K
pre-trainings and fine-tunings on N random target structures for some seeds,
:func:`run_active_target`:

1. builds a committee from the pre-trained models of all seeds
   (``runs/pre_<arch>_k<K>_s<seed>/best_model``, which differ only in seed) in
   ``root/active/committee`` (:func:`~spk_meta.active.ensemble_from_models`);
2. scores every target training structure by the committee's **force spread** (the largest
   per-atom spread of the predicted forces, eV/Ang). Not ``rho``: a multi-level
   pre-training has no active level, so its energies are reference-subtracted with the E0
   each seed fitted on its own training split; the members' energies differ by
   composition-dependent constants that say nothing about disagreement, while forces do
   not depend on E0 at all;
3. per seed, takes the N highest-scoring rows of the target training database that are not
   in that seed's random run's validation rows (:func:`~spk_meta.active.ranking.rank`), and
   writes the split train = those rows, val = the random run's validation rows, test = the
   random run's test rows not selected (topped up at random from the rows left, so the
   counts are the random run's);
4. fine-tunes ``runs/ft_<arch>_k<K>_n<N>_s<seed>_active`` with the random run's recorded
   ``spktrain`` overrides plus ``data.split_file=<that split>`` (through
   :func:`~spk_meta.experiment.launch.train_recorded`: a rerun reuses or resumes it), checks
   in its log that the data module reused the split, copies the split into the run
   directory as ``task_splits.npz``, and evaluates it like the comparison
   (:meth:`~spk_meta.experiment.runner.Runner.evaluate`);
5. tabulates force and energy RMSE per test temperature, active vs random, mean ± std over
   seeds, and the mean committee force spread of each run's training structures, in
   ``root/active/results.md`` and ``results.csv``.

Why the split lives in ``root/active/splits`` and not only in the run directory: a run
directory without a finished record is removed before ``spktrain`` starts
(:func:`~spk_meta.experiment.record.decide`), so a split placed there beforehand would be
deleted and a random one drawn. ``data.split_file`` names the file the data module reuses
after checking its counts and database fingerprint (:func:`~spk_meta.data.load_or_draw_splits`),
and its SHA-256 is an input of the run record: a changed selection redoes the run.
"""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple, Union

import numpy as np

from spk_meta.active import EnsembleError, ensemble_from_models, load_ensemble, read_manifest
from spk_meta.active.ranking import rank
from spk_meta.active.selection import Pool, check_elements, score_pool
from spk_meta.data.splits import TaskSplit, load_splits, save_splits
from spk_meta.experiment import runner as runner_module
from spk_meta.experiment.launch import split_reuse_line, train_recorded
from spk_meta.experiment.plan import CASES, Case, FinetuneRun, Preset, PretrainRun, Variant
from spk_meta.experiment.record import RunSpec, read_record, sha256
from spk_meta.experiment.results import write_csv_and_markdown
from spk_meta.experiment.runner import Runner, claim_for_case, output_lock
from spk_meta.utils import atomic_path

PathLike = Union[str, Path]

#: the committee's score: the largest per-atom force spread of a structure (eV/Ang)
CRITERION = "force_spread"
#: where the committee, the splits and the tables go, inside the comparison folder
ACTIVE_DIR = "active"
SELECTIONS = ("active", "random")


class ActiveTargetError(RuntimeError):
    """The comparison folder cannot be used as asked; the message names the run and file."""


@dataclass(frozen=True)
class ActiveRun:
    """The fine-tuning on the committee's structures (what ``Runner.evaluate`` needs of a run)."""

    name: str


@dataclass
class SeedSelection:
    """One seed's selection.

    Attributes:
        seed: the comparison seed.
        split: train (selected) / val / test database rows, with the database identity.
        selected_spread, random_spread: ``(N,)`` committee force spread (eV/Ang) of the
            selected and of the random run's training structures.
        n_pool: rows the committee chose from.
    """

    seed: int
    split: TaskSplit
    selected_spread: np.ndarray
    random_spread: np.ndarray
    n_pool: int


@dataclass
class ActiveTargetResult:
    """What :func:`run_active_target` measured and wrote.

    Attributes:
        rows: one per (selection, seed, T): errors on the test file of temperature T.
        summary: one per (selection, T): mean and std over seeds.
        spread: per selection: mean (and std over seeds) of the training structures' mean
            committee force spread (eV/Ang).
        markdown: the tables of ``results.md``.
        paths: the files written.
    """

    rows: List[Dict]
    summary: List[Dict]
    spread: Dict[str, Tuple[float, float]]
    markdown: str
    selections: List[SeedSelection] = field(default_factory=list)
    paths: List[Path] = field(default_factory=list)


# -- names -----------------------------------------------------------------------------


def random_run(architecture: str, k: int, n: int, seed: int) -> FinetuneRun:
    """The comparison's fine-tuning of the Reptile k pre-training on ``n`` random structures."""
    return FinetuneRun(architecture, Variant("reptile", k), n, seed)


def active_run(architecture: str, k: int, n: int, seed: int) -> ActiveRun:
    """``ft_<arch>_k<K>_n<N>_s<seed>_active``: the same fine-tuning on the committee's structures."""
    return ActiveRun(random_run(architecture, k, n, seed).name + "_active")


# -- the committee ---------------------------------------------------------------------


def build_committee(runner: Runner, architecture: str, k: int, seeds: Sequence[int],
                    log: Callable[[str], None] = print) -> Path:
    """``root/active/committee/ensemble.json`` over the finished pre-trainings of ``seeds``;
    reused when its members are these files with these SHA-256, else written again.

    Raises:
        RunFailed: a pre-training has not finished.
        EnsembleError: fewer than 2 seeds, or members that cannot form a committee.
    """
    files, digests = [], []
    for seed in seeds:
        model, digest = runner.finished_model(PretrainRun(architecture, Variant("reptile", k), seed).name)
        files.append(model)
        digests.append(digest)
    out = runner.root / ACTIVE_DIR / "committee"
    try:
        file, _, members = read_manifest(out)
        current = [(m.file(file.parent), m.sha256) for m in members]
        if current == list(zip(files, digests)):
            return file
        log(f"{out}: the pre-trained models changed since the committee was written; writing it again")
    except EnsembleError:  # no manifest yet, or one whose files changed since: write it
        pass
    return ensemble_from_models(files, out, seeds=list(seeds), overwrite=True)


def task_data(runner: Runner):
    """The target task as the data module serves it (``data=<case.target_data>``): the same
    database, keys and frames, hence the same :meth:`~spk_meta.data.TaskData.identity`."""
    from spk_meta.data.task_dataset import TaskData

    return TaskData(runner.case.target_task, runner.data[runner.case.target_train].db)


def score_rows(ensemble, data, batch_size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
    """Committee force spread of every frame the task serves.

    Returns:
        ``(rows, scores)``: database rows ``(n,)`` ascending and their scores ``(n,)`` (eV/Ang).
    """
    pool = Pool(Path(data.path), "db", data.store, [data.label_set], frames=np.asarray(data.store_index))
    check_elements(pool, ensemble)
    scores, _ = score_pool(ensemble, pool, CRITERION, batch_size=batch_size)
    return np.asarray(data.db_index, dtype=np.int64), scores.astype(np.float64)


# -- the split ---------------------------------------------------------------------------


def choose_split(rows: np.ndarray, scores: np.ndarray, random_split: TaskSplit, n: int,
                 seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / val / test rows for the committee's run (ascending each).

    Args:
        rows: ``(n_rows,)`` database rows the task serves; scores: their scores.
        random_split: the random run's split (its ``val`` is kept, its test count too).
        n: structures to select (the random run's training count).
        seed: draws the test rows that replace selected ones.

    Train: the ``n`` top-scoring rows outside the validation rows (ties: lower row). Test:
    the random run's test rows not selected, then rows neither selected nor validation,
    drawn uniformly, up to the random run's test count.
    """
    val = np.asarray(random_split.val, dtype=np.int64)
    pool = ~np.isin(rows, val)
    pool_rows = rows[pool]
    if n > len(pool_rows):
        raise ActiveTargetError(f"{n} structures asked of a pool of {len(pool_rows)} (rows outside validation)")
    train = np.sort(pool_rows[rank(scores[pool], n=n).committee])
    test = np.setdiff1d(random_split.test, train)
    missing = len(random_split.test) - len(test)
    if missing:
        rest = np.setdiff1d(pool_rows, np.union1d(train, test))
        test = np.sort(np.concatenate([test, np.random.default_rng(seed).choice(rest, missing, replace=False)]))
    return train, val, test


def read_random_run(runner: Runner, run: FinetuneRun) -> Tuple[TaskSplit, Dict]:
    """The random run's split of the target task and its recorded spec.

    Raises:
        ActiveTargetError: no split file, a split for another training count, or a run
            fine-tuned from another pre-trained model than the one there now.
        RunFailed: the run or its pre-training has not finished.
    """
    runner.finished_model(run.name)
    _, pretrained = runner.finished_model(run.pretrain.name)
    path = runner.run_dir(run.name) / "task_splits.npz"
    if not path.is_file():
        raise ActiveTargetError(f"{path}: the random run {run.name} has no split file")
    splits = load_splits(path)
    task = runner.case.target_task
    if task not in splits:
        raise ActiveTargetError(f"{path}: no task '{task}' (tasks: {', '.join(splits)})")
    split, spec = splits[task], read_record(runner.run_dir(run.name))["spec"]
    if len(split.train) != run.n or f"data.num_train={run.n}" not in spec["overrides"]:
        raise ActiveTargetError(f"{path}: {run.name} trained on {len(split.train)} structures, not N = {run.n}")
    if spec.get("inputs", {}).get("pretrained_sha256") != pretrained:
        raise ActiveTargetError(f"{run.name} was fine-tuned from another {run.pretrain.name}/best_model than the one "
                                "there now: rerun the comparison first")
    return split, spec


def check_identity(path: Path, saved: TaskSplit, identity) -> None:
    """The random split must be of the database the data module serves now."""
    if saved.identity is None or (saved.identity.n_frames, saved.identity.fingerprint) != (
            identity.n_frames, identity.fingerprint):
        raise ActiveTargetError(
            f"{path}: drawn from {saved.identity} but the target task is now {identity}; the random run "
            "was trained on other data: rerun the comparison before comparing with it"
        )


def write_split(path: Path, task: str, train, val, test, identity, log: Callable[[str], None]) -> Path:
    """Save the split (atomically); an existing file with the same rows and identity is kept."""
    split = TaskSplit(train, val, test, identity=identity)
    if path.is_file():
        old = load_splits(path).get(task)
        if old is not None and old.identity == identity and all(
                np.array_equal(old[s], split[s]) for s in ("train", "val", "test")):
            return path
        log(f"{path}: the selection changed (another committee); writing it again (its run is redone)")
    return save_splits(path, {task: split})


# -- training and evaluation -----------------------------------------------------------------


def finetune_active(runner: Runner, run: ActiveRun, random_spec: Dict, split_file: Path,
                    log: Callable[[str], None] = print) -> Path:
    """Fine-tune ``run`` with the random run's overrides and ``data.split_file=split_file``;
    check that the data module reused that split; put it in the run directory.

    Raises:
        RunFailed: ``spktrain`` failed.
        ActiveTargetError: the run's log does not say that the split was reused.
    """
    root = runner.root
    rel = split_file.relative_to(root).as_posix()
    overrides = [o for o in random_spec["overrides"] if not o.startswith("data.split_file=")]
    spec = RunSpec([*overrides, f"data.split_file={rel}"],
                   {**random_spec.get("inputs", {}), "active_split_sha256": sha256(split_file)})
    run_dir, log_path = runner.run_dir(run.name), root / "logs" / f"{run.name}.log"
    train_recorded(run_dir, spec, runner_module.spktrain_executable(), log_path, root, log=log,
                   on_start=f"{run.name}: fine-tuning on the committee's structures",
                   overrides=runner_module.absolute_overrides(spec.overrides, root))
    missing = split_reuse_line(log_path, split_file)
    if missing:
        raise ActiveTargetError(f"{log_path}: no line '{missing}': {run.name} may not have trained on the "
                                "selected structures; delete its run directory and rerun")
    inside = run_dir / "task_splits.npz"
    if not inside.is_file() or sha256(inside) != sha256(split_file):
        with atomic_path(inside, overwrite=True) as tmp:
            shutil.copyfile(split_file, tmp)
    return run_dir


# -- tables ------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and standard deviation over seeds (ddof = 0, as the comparison's tables; NaN
    values, e.g. energy errors a model cannot report, are left out)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())


def eval_rows(selection: str, seed: int, result: Dict, spread: float) -> List[Dict]:
    """One row per test temperature of an ``eval.json``."""
    rows = []
    for t, errs in sorted(result["test"].items(), key=lambda kv: int(kv[0])):
        rows.append({"selection": selection, "seed": seed, "T": int(t),
                     **{m: (np.nan if errs.get(m) is None else float(errs[m]))
                        for m in ("forces_rmse", "energy_rmse", "forces_mae", "energy_mae")},
                     "train_force_spread": spread})
    return rows


def summarise(rows: List[Dict]) -> List[Dict]:
    """Per (T, selection): mean and std over seeds of the force and energy RMSE."""
    out = []
    for t in sorted({r["T"] for r in rows}):
        for sel in SELECTIONS:
            rs = [r for r in rows if r["T"] == t and r["selection"] == sel]
            if not rs:
                continue
            f, f_std = mean_std([r["forces_rmse"] for r in rs])
            e, e_std = mean_std([r["energy_rmse"] for r in rs])
            out.append({"T": t, "selection": sel, "seeds": len(rs), "forces_rmse": f, "forces_rmse_std": f_std,
                        "energy_rmse": e, "energy_rmse_std": e_std})
    return out


def _cell(mean: float, std: float, digits: int = 4) -> str:
    return "–" if not np.isfinite(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(summary: List[Dict], spread: Dict[str, Tuple[float, float]], k: int, n: int) -> str:
    """Errors per temperature (active vs random) and the training structures' spread."""
    by = {(s["T"], s["selection"]): s for s in summary}
    seeds = max((s["seeds"] for s in summary), default=0)
    lines = [f"Fine-tuned from Reptile k={k} on N = {n} MP2 structures chosen by the committee's force spread "
             f"(active) or at random; mean ± std over {seeds} seeds.", "",
             "| T (K) | force RMSE active (eV/Å) | force RMSE random (eV/Å) | energy RMSE active (eV) "
             "| energy RMSE random (eV) |", "|---|---|---|---|---|"]
    for t in sorted({s["T"] for s in summary}):
        a, r = by.get((t, "active")), by.get((t, "random"))
        cells = [_cell(x[m], x[m + "_std"]) if x else "–"
                 for m in ("forces_rmse", "energy_rmse") for x in (a, r)]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "| training structures | mean committee force spread (eV/Å) |", "|---|---|"]
    lines += [f"| {sel} | {_cell(*spread[sel])} |" for sel in SELECTIONS if sel in spread]
    return "\n".join(lines) + "\n"


# -- the whole comparison ------------------------------------------------------------------


def run_active_target(root: PathLike, k: int, n: int = 25, seeds: Sequence[int] = (0, 1, 2),
                      architecture: str = "ani", case: Union[str, Case] = "ethanol", device: str = "cpu",
                      batch_size: int = 64, log: Callable[[str], None] = print) -> ActiveTargetResult:
    """Committee-chosen vs random target structures for the comparison in ``root``
    (see the module docstring). Holds the comparison folder's lock throughout.

    Args:
        root: a comparison folder with finished ``pre_<arch>_k<K>_s<seed>`` and
            ``ft_<arch>_k<K>_n<N>_s<seed>`` runs for every seed.
        k, n: the Reptile k and the number of target structures.
        seeds: at least 2 (the committee has one member per seed).
        device: where the committee scores (``spktrain`` picks its own device).
        batch_size: structures per committee call.

    Raises:
        OutputBusy: another ``spkmeta experiment`` holds ``root``.
        RunFailed: a run it needs has not finished, or a fine-tuning failed.
        ActiveTargetError, EnsembleError: see the helpers.
    """
    case = CASES[case] if isinstance(case, str) else case
    root = Path(root).absolute()
    seeds = [int(s) for s in seeds]
    if not (root / "runs").is_dir():
        raise ActiveTargetError(f"{root}: not a comparison folder (no runs/)")
    with output_lock(root):
        claim_for_case(root, case)
        runner = Runner(root, Preset(), log=log, case=case)
        committee = build_committee(runner, architecture, k, seeds, log)
        data = task_data(runner)
        identity = data.identity()
        rows_all, scores = score_rows(load_ensemble(committee, device=device), data, batch_size)
        spread_of = dict(zip(rows_all.tolist(), scores.tolist()))
        rows, selections, spread = [], [], {sel: [] for sel in SELECTIONS}
        for seed in seeds:
            rnd = random_run(architecture, k, n, seed)
            split, spec = read_random_run(runner, rnd)
            check_identity(runner.run_dir(rnd.name) / "task_splits.npz", split, identity)
            train, val, test = choose_split(rows_all, scores, split, n, seed)
            act = active_run(architecture, k, n, seed)
            split_file = write_split(root / ACTIVE_DIR / "splits" / f"{act.name}.npz", case.target_task,
                                     train, val, test, identity, log)
            chosen = SeedSelection(seed, TaskSplit(train, val, test, identity),
                                   np.array([spread_of[r] for r in train]),
                                   np.array([spread_of[int(r)] for r in split.train]), int(len(rows_all) - len(val)))
            selections.append(chosen)
            write_selection_record(split_file.with_suffix(".json"), chosen, committee)
            finetune_active(runner, act, spec, split_file, log)
            for sel, run, s in (("active", act, chosen.selected_spread), ("random", rnd, chosen.random_spread)):
                spread[sel].append(float(s.mean()))
                rows += eval_rows(sel, seed, runner.evaluate(run), float(s.mean()))
        summary = summarise(rows)
        spread_ms = {sel: mean_std(v) for sel, v in spread.items()}
        text = markdown(summary, spread_ms, k, n)
        paths = write_csv_and_markdown(root / ACTIVE_DIR, rows, text)
    return ActiveTargetResult(rows, summary, spread_ms, text, selections, paths)


def write_selection_record(path: Path, chosen: SeedSelection, committee: Path) -> Path:
    """What the committee chose for one seed, and why (JSON, atomically)."""
    record = {"criterion": CRITERION, "unit": "eV/Ang", "committee": str(committee),
              "committee_sha256": sha256(committee), "seed": chosen.seed, "n_pool": chosen.n_pool,
              "train_rows": chosen.split.train.tolist(), "train_spread": chosen.selected_spread.tolist(),
              "val_rows": chosen.split.val.tolist(), "test_rows": chosen.split.test.tolist(),
              "random_train_spread": chosen.random_spread.tolist()}
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return path
