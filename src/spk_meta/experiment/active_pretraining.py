"""Active vs random selection of pre-training frames: the query-by-committee loop (issue #15, item 3).

The seed paper pre-trains on *subsets* of public datasets chosen by active learning. This
module runs that loop on a case's multi-level pre-training tasks and compares it with random
selection of the same size:

1. every task gets a fixed validation set (checkpoint choice) and a fixed test set (the
   learning curve), drawn once with ``split_seed`` and shared by every seed and strategy;
   the other frames are the candidates;
2. round 0: ``n_start`` random candidates per task (per seed; shared by both strategies);
3. each round trains an ensemble of ``members`` ``spktrain`` runs of ``experiment`` that differ
   only in seed (:func:`~spk_meta.active.train_ensemble`) on the frames chosen so far, through
   a split file (``data.split_file``): train = chosen, val / test = the fixed sets;
4. it is evaluated on the fixed test frames (force RMSE per member and of the committee mean,
   per task);
5. ``n_add`` more frames per task are chosen from the candidates not yet chosen: ``active``
   takes the committee's highest scores (force spread by default, optionally stratified),
   ``random`` draws uniformly (seeded by seed and round); go to 3 for ``rounds`` rounds.

Selection is per task, so every task keeps the same number of frames and Reptile's uniform
task sampling means the same in both strategies. Forces only: a multi-level pre-training has
no active level of theory, so its energies are reference-subtracted with E0 fitted on each
member's own training split and cannot be compared between rounds.

Layout of ``out``::

    settings.json                     the loop's settings (a rerun with others is refused)
    s<seed>/r0/                        round 0 (both strategies start here)
    s<seed>/<strategy>/r<round>/       later rounds
        task_splits.npz                train / val / test database rows per task
        selection.json                 what was added to the previous round's frames, and why
        ensemble/                      spkmeta ensemble (members, logs, ensemble.json)
        eval.json                      test errors of this round's ensemble
    results.csv, results.md, learning_curve.png

A rerun reuses every finished member whose overrides and split file (SHA-256) are unchanged
(:mod:`spk_meta.active.train`), and every ``eval.json`` of an unchanged ensemble.
"""

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from spk_meta.active import load_ensemble, train_ensemble
from spk_meta.active.ranking import rank
from spk_meta.active.train import override_key
from spk_meta.active.selection import CRITERIA, STRATIFY, Pool, check_elements, score_pool
from spk_meta.experiment.plan import CASES
from spk_meta.experiment.launch import split_reuse_line
from spk_meta.experiment.record import sha256
from spk_meta.experiment.results import write_csv_and_markdown
from spk_meta.utils import atomic_path

PathLike = Union[str, Path]

STRATEGIES = ("active", "random")
SETTINGS_FILE = "settings.json"
#: overrides the loop sets for every member (a user override would silently replace them)
LOOP_KEYS = ("data", "data.split_file", "data.num_train", "data.num_val", "data.num_test", "trainer.max_steps",
             "trainer.max_epochs")


class ActivePretrainingError(ValueError):
    """The loop cannot run as asked; the message names the option or file at fault."""


@dataclass(frozen=True)
class LoopSettings:
    """Everything that defines the loop's runs (``settings.json``).

    Attributes:
        case: ``ethanol`` or ``organic`` (:data:`~spk_meta.experiment.plan.CASES`): its
            pre-training data config is used.
        members: committee size M (>= 2).
        rounds: selection rounds after round 0.
        n_start: frames per task in round 0.
        n_add: frames added per task per round.
        n_val, n_test: fixed validation / test frames per task.
        steps: optimiser steps of every training (``trainer.max_steps``), the same in
            every round and strategy.
        experiment: the ``spktrain`` experiment of every member.
        overrides: further Hydra overrides of every member.
        criterion: ``force_spread`` (eV/Ang) or ``rho`` (:data:`~spk_meta.active.selection.CRITERIA`).
        stratify: ``none``, ``elements`` or ``size`` (within each task).
        split_seed: draws the fixed validation and test frames.
    """

    case: str = "organic"
    members: int = 3
    rounds: int = 3
    n_start: int = 16
    n_add: int = 16
    n_val: int = 20
    n_test: int = 20
    steps: int = 1000
    experiment: str = "joint_ani"
    overrides: Tuple[str, ...] = ()
    criterion: str = "force_spread"
    stratify: str = "none"
    split_seed: int = 1234

    def __post_init__(self):
        object.__setattr__(self, "overrides", tuple(self.overrides))

    def check(self) -> None:
        """Refuse settings that cannot work (ActivePretrainingError naming the option)."""
        if self.case not in CASES:
            raise ActivePretrainingError(f"--case {self.case!r}: use one of {', '.join(CASES)}")
        if self.members < 2:
            raise ActivePretrainingError(f"--members must be >= 2 (a committee), got {self.members}")
        for name in ("rounds", "n_add", "n_val", "n_test"):
            least = 0 if name == "rounds" else 1
            if getattr(self, name) < least:
                raise ActivePretrainingError(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(self, name)}")
        for o in self.overrides:
            key = override_key(o)
            if key in LOOP_KEYS:
                raise ActivePretrainingError(f"override {o!r}: the loop sets {key} for every member "
                                             "(its split file, counts and step budget)")
        if self.n_start < 1 or self.steps < 1:
            raise ActivePretrainingError(f"--n-start and --steps must be >= 1, got {self.n_start}, {self.steps}")
        if self.criterion not in CRITERIA:
            raise ActivePretrainingError(f"--criterion {self.criterion!r}: use one of {', '.join(CRITERIA)}")
        if self.stratify not in STRATIFY:
            raise ActivePretrainingError(f"--stratify {self.stratify!r}: use one of {', '.join(STRATIFY)}")

    def frames_per_task(self, round_: int) -> int:
        """Training frames per task in round ``round_``."""
        return self.n_start + round_ * self.n_add

    def to_json(self) -> Dict:
        return {**asdict(self), "overrides": list(self.overrides)}


# -- the tasks --------------------------------------------------------------------------


@dataclass
class TaskPool:
    """One pre-training task: its frames and their fixed roles (positions into ``data``).

    Attributes:
        name: the task (level-of-theory slug).
        data: the :class:`~spk_meta.data.TaskData` the data module serves for it.
        val, test: fixed validation and test positions (ascending).
        candidates: every other position (ascending): what selection chooses from.
    """

    name: str
    data: object
    val: np.ndarray
    test: np.ndarray
    candidates: np.ndarray

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Database rows of ``positions`` (what a split file holds)."""
        return np.asarray(self.data.db_index, dtype=np.int64)[np.asarray(positions, dtype=np.int64)]

    @cached_property
    def test_frames(self) -> list:
        """The fixed test frames as labelled ASE ``Atoms`` (eV, eV/Ang), read once for every round."""
        from spk_meta.evaluate import read_labelled

        frames = read_labelled(self.data.path)  # position i is frame i of self.data
        return [frames[int(i)] for i in self.test]


def data_config_tasks(name: str) -> Dict[str, str]:
    """``{task: database path}`` of the shipped data config ``configs/data/<name>.yaml``
    (its ``${spkmeta.*_db:...}`` resolved: the embedded databases are built on first use)."""
    from importlib import resources

    from omegaconf import OmegaConf

    from spk_meta.resolvers import register

    register()
    path = Path(str(resources.files("spk_meta.configs"))) / "data" / f"{name}.yaml"
    if not path.is_file():
        raise ActivePretrainingError(f"no data config {path}")
    tasks = OmegaConf.to_container(OmegaConf.load(path).tasks, resolve=True)
    return {str(k): str(v) for k, v in tasks.items()}


def open_tasks(settings: LoopSettings) -> List[TaskPool]:
    """The case's pre-training tasks with their fixed validation and test frames.

    Raises:
        ActivePretrainingError: a task too small for val + test + every round's frames.
    """
    from spk_meta.data.task_dataset import TaskData

    rng = np.random.default_rng(settings.split_seed)
    need = settings.n_val + settings.n_test + settings.frames_per_task(settings.rounds)
    pools = []
    for name, db in data_config_tasks(CASES[settings.case].pretrain_data).items():
        data = TaskData(name, db)
        if len(data) < need:
            raise ActivePretrainingError(
                f"task '{name}' ({db}) has {len(data)} frames; {settings.n_val} val + {settings.n_test} test + "
                f"{settings.frames_per_task(settings.rounds)} training frames after {settings.rounds} rounds "
                f"need {need}")
        order = rng.permutation(len(data))
        val = np.sort(order[: settings.n_val])
        test = np.sort(order[settings.n_val : settings.n_val + settings.n_test])
        pools.append(TaskPool(name, data, val, test, np.sort(order[settings.n_val + settings.n_test :])))
    return pools


def initial_subset(pools: Sequence[TaskPool], n: int, seed: int) -> Dict[str, np.ndarray]:
    """``n`` random candidates of every task (positions, ascending), drawn with ``seed``."""
    rng = np.random.default_rng([seed, 0])
    return {p.name: np.sort(rng.choice(p.candidates, n, replace=False)) for p in pools}


# -- one round --------------------------------------------------------------------------------


def write_split(path: Path, pools: Sequence[TaskPool], train: Dict[str, np.ndarray]) -> Path:
    """``task_splits.npz`` for the data module: train = ``train`` positions, val / test =
    the fixed sets, as database rows with each database's identity (atomically; an identical
    file is left untouched so its runs are reused)."""
    from spk_meta.data.splits import TaskSplit, load_splits, save_splits

    splits = {p.name: TaskSplit(p.rows(train[p.name]), p.rows(p.val), p.rows(p.test), identity=p.data.identity())
              for p in pools}
    if path.is_file():
        old = load_splits(path)
        if sorted(old) == sorted(splits) and all(
                old[t].identity == s.identity and all(np.array_equal(old[t][k], s[k]) for k in ("train", "val", "test"))
                for t, s in splits.items()):
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_splits(path, splits)


def member_overrides(settings: LoopSettings, split_file: Path, n_train: int) -> List[str]:
    """The ``spktrain`` overrides of every member of a round (``seed`` is set per member)."""
    return [f"data={CASES[settings.case].pretrain_data}", f"data.split_file={split_file}",
            f"data.num_train={n_train}", f"data.num_val={settings.n_val}", f"data.num_test={settings.n_test}",
            f"+trainer.max_steps={settings.steps}", "trainer.max_epochs=-1", *settings.overrides]


def train_round(round_dir: Path, settings: LoopSettings, pools: Sequence[TaskPool], train: Dict[str, np.ndarray],
                seed: int, log: Callable[[str], None]) -> Path:
    """Write the round's split and train (or reuse) its ensemble; returns the manifest.

    Members ``i`` train with ``seed = 100 * seed + i`` in every round and strategy, so the
    two strategies differ only in their frames."""
    split = write_split(round_dir / "task_splits.npz", pools, train)
    n_train = {len(v) for v in train.values()}
    if len(n_train) != 1:
        raise ActivePretrainingError(f"{round_dir}: tasks have different training counts {sorted(n_train)}")
    manifest = train_ensemble(settings.experiment, settings.members, round_dir / "ensemble",
                              member_overrides(settings, split, n_train.pop()), base_seed=100 * seed, log=log)
    check_split_reused(round_dir / "ensemble", settings.members, split)
    return manifest


def check_split_reused(ensemble_dir: Path, members: int, split: Path) -> None:
    """Every member's log must say that its data module reused ``split`` (else it drew its
    own split and may have trained on the fixed test frames).

    Raises:
        ActivePretrainingError: naming the log.
    """
    for i in range(members):
        log_path = ensemble_dir / "logs" / f"m{i}.log"
        missing = split_reuse_line(log_path, split)
        if missing:
            raise ActivePretrainingError(f"{log_path}: no line '{missing}': member m{i} may not have trained on "
                                         f"the loop's frames; delete {ensemble_dir} and rerun")


def force_rmse(pred: np.ndarray, ref: np.ndarray) -> float:
    """Root mean square over every force component (eV/Ang); ``pred``, ``ref``: ``(n_atoms, 3)``."""
    return float(np.sqrt(np.mean((np.asarray(pred, dtype=np.float64) - ref) ** 2)))


def heldout_errors(ensemble, pools: Sequence[TaskPool]) -> Dict[str, Dict]:
    """Per task: force RMSE (eV/Ang) of every member and of the committee mean on the
    fixed test frames."""
    out = {}
    for p in pools:
        chosen = p.test_frames
        pred = ensemble.predict(chosen)
        ref = np.concatenate([a.get_forces() for a in chosen])  # (n_atoms_total, 3) eV/Ang
        out[p.name] = {"member_forces_rmse": [force_rmse(f, ref) for f in pred.member_forces],
                       "committee_forces_rmse": force_rmse(pred.forces, ref), "n_frames": len(chosen)}
    return out


def evaluate_round(round_dir: Path, manifest: Path, pools: Sequence[TaskPool]) -> Dict[str, Dict]:
    """:func:`heldout_errors` of the round's ensemble, cached in ``eval.json`` for this manifest."""
    path, digest = round_dir / "eval.json", sha256(manifest)
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
        if cached.get("ensemble_sha256") == digest:
            return cached["tasks"]
    tasks = heldout_errors(load_ensemble(manifest), pools)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps({"ensemble_sha256": digest, "tasks": tasks}, indent=1) + "\n")
    return tasks


def score_candidates(ensemble, pool: TaskPool, positions: np.ndarray, criterion: str, stratify: str
                     ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Committee scores ``(n,)`` (and stratification groups) of ``positions`` of ``pool``,
    streamed in batches from its packed store."""
    data = pool.data
    frames = np.asarray(data.store_index, dtype=np.int64)[positions]
    view = Pool(Path(data.path), "db", data.store, [data.label_set], frames=frames)
    check_elements(view, ensemble)
    scores, groups = score_pool(ensemble, view, criterion, batch_size=64, stratify=stratify)
    return scores.astype(np.float64), groups


def choose_next(strategy: str, ensemble, pools: Sequence[TaskPool], train: Dict[str, np.ndarray],
                settings: LoopSettings, seed: int, round_: int) -> Tuple[Dict[str, np.ndarray], Dict]:
    """The next round's training positions per task and a record of what was added.

    Both strategies score the remaining candidates with the committee (the record reports
    the mean score of the frames each added); ``active`` adds the ``n_add`` highest,
    ``random`` ``n_add`` uniformly drawn ones (``seed``, ``round_``)."""
    rng = np.random.default_rng([seed, round_, 1])
    nxt, record = {}, {"strategy": strategy, "criterion": settings.criterion, "unit": CRITERIA[settings.criterion],
                       "stratify": settings.stratify, "tasks": {}}
    for p in pools:
        remaining = np.setdiff1d(p.candidates, train[p.name])
        scores, groups = score_candidates(ensemble, p, remaining, settings.criterion, settings.stratify)
        if strategy == "active":
            picked = rank(scores, n=settings.n_add, groups=groups).committee
        else:
            picked = np.sort(rng.choice(len(remaining), settings.n_add, replace=False))
        added = remaining[picked]
        nxt[p.name] = np.sort(np.concatenate([train[p.name], added]))
        record["tasks"][p.name] = {"added_rows": p.rows(added).tolist(), "added_scores": scores[picked].tolist(),
                                   "mean_added_score": float(scores[picked].mean()),
                                   "mean_remaining_score": float(np.nanmean(scores))}
    return nxt, record


def write_json(path: Path, data: Dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
    return path


# -- results ------------------------------------------------------------------------------------


def result_rows(seed: int, strategy: str, round_: int, n_per_task: int, errors: Dict[str, Dict]) -> List[Dict]:
    """One row per task of a round's ``eval.json`` (member mean and committee force RMSE)."""
    return [{"seed": seed, "strategy": strategy, "round": round_, "frames_per_task": n_per_task,
             "frames_total": n_per_task * len(errors), "task": task,
             "member_forces_rmse": float(np.mean(e["member_forces_rmse"])),
             "committee_forces_rmse": float(e["committee_forces_rmse"])} for task, e in errors.items()]


def summarise(rows: List[Dict], metric: str = "member_forces_rmse") -> List[Dict]:
    """Per (task or ``mean`` over tasks, strategy, round): mean and std (ddof 0) over seeds."""
    out = []
    tasks = sorted({r["task"] for r in rows})
    for strategy in STRATEGIES:
        for round_ in sorted({r["round"] for r in rows}):
            rs = [r for r in rows if r["strategy"] == strategy and r["round"] == round_]
            if not rs:
                continue
            seeds = sorted({r["seed"] for r in rs})
            per_seed_mean = [np.mean([r[metric] for r in rs if r["seed"] == s]) for s in seeds]
            groups = [("mean", per_seed_mean)] + [(t, [r[metric] for r in rs if r["task"] == t]) for t in tasks]
            for task, values in groups:
                out.append({"task": task, "strategy": strategy, "round": round_,
                            "frames_per_task": rs[0]["frames_per_task"], "frames_total": rs[0]["frames_total"],
                            "seeds": len(values), "mean": float(np.mean(values)), "std": float(np.std(values))})
    return out


def markdown(summary: List[Dict], settings: LoopSettings) -> str:
    """The learning-curve table: mean test force RMSE over tasks per round, active vs random."""
    by = {(s["task"], s["strategy"], s["round"]): s for s in summary}
    rounds = sorted({s["round"] for s in summary})
    seeds = max((s["seeds"] for s in summary), default=0)
    lines = [f"Pre-training frames chosen by a {settings.members}-member committee ({settings.criterion}) or at "
             f"random, {settings.n_add} per task per round from {settings.n_start}; {settings.experiment}, "
             f"{settings.steps} steps per training; test force RMSE (eV/Å) on {settings.n_test} fixed frames per "
             f"task, mean over members and tasks; mean ± std over {seeds} seeds.", "",
             "| round | frames per task | active | random | active − random |", "|---|---|---|---|---|"]
    for r in rounds:
        a, b = by.get(("mean", "active", r)), by.get(("mean", "random", r))
        cells = [f"{x['mean']:.4f} ± {x['std']:.4f}" if x else "–" for x in (a, b)]
        diff = f"{a['mean'] - b['mean']:+.4f}" if a and b else "–"
        n = (a or b)["frames_per_task"]
        lines.append(f"| {r} | {n} | {cells[0]} | {cells[1]} | {diff} |")
    tasks = sorted({s["task"] for s in summary} - {"mean"})
    last = rounds[-1] if rounds else None
    if last is not None and tasks:
        lines += ["", f"Per task after round {last}:", "", "| task | active | random |", "|---|---|---|"]
        for t in tasks:
            cells = [by.get((t, st, last)) for st in STRATEGIES]
            lines.append(f"| {t} | " + " | ".join(f"{x['mean']:.4f} ± {x['std']:.4f}" if x else "–"
                                                   for x in cells) + " |")
    return "\n".join(lines) + "\n"


def learning_curve_figure(summary: List[Dict], path: Path, title: str = "") -> Path:
    """Test force RMSE vs training frames per task, active vs random (mean ± std over seeds):
    one panel for the mean over tasks, one per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = ["mean"] + sorted({s["task"] for s in summary} - {"mean"})
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for strategy, colour in zip(STRATEGIES, ("tab:red", "tab:blue")):
            s = sorted((x for x in summary if x["task"] == task and x["strategy"] == strategy),
                       key=lambda x: x["frames_per_task"])
            if not s:
                continue
            n = np.array([x["frames_per_task"] for x in s])
            m, sd = np.array([x["mean"] for x in s]), np.array([x["std"] for x in s])
            ax.plot(n, m, "o-", color=colour, label=strategy)
            ax.fill_between(n, m - sd, m + sd, color=colour, alpha=0.2)
        ax.set_title("mean over tasks" if task == "mean" else task, fontsize=9)
        ax.set_xlabel("training frames per task")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test force RMSE (eV/Å)")
    axes[0][0].legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


# -- the loop ------------------------------------------------------------------------------------


@dataclass
class LoopResult:
    """What :func:`run_active_pretraining` measured and wrote."""

    rows: List[Dict]
    summary: List[Dict]
    markdown: str
    selections: Dict[Tuple[int, str, int], Dict] = field(default_factory=dict)
    paths: List[Path] = field(default_factory=list)


def finished_rows(out: Path, settings: LoopSettings, strategies: Sequence[str]) -> List[Dict]:
    """:func:`result_rows` of every seed in ``out`` whose loop has finished for every one of
    ``strategies`` (an ``eval.json`` of the ensemble there now, for every round): the tables
    cover seeds run by earlier commands too (``settings.json`` makes them the same loop)."""
    rows = []
    for seed_dir in sorted(out.glob("s*"), key=lambda d: (len(d.name), d.name)):
        if not seed_dir.is_dir() or not seed_dir.name[1:].isdigit():
            continue
        seed = int(seed_dir.name[1:])
        rounds = [(strategy, r, seed_dir / strategy / f"r{r}" if r else seed_dir / "r0")
                  for strategy in strategies for r in range(settings.rounds + 1)]
        found = []
        for strategy, r, rdir in rounds:
            try:
                cached = json.loads((rdir / "eval.json").read_text())
                current = cached.get("ensemble_sha256") == sha256(rdir / "ensemble" / "ensemble.json")
            except (OSError, ValueError):
                current = False
            if not current:
                break
            found += result_rows(seed, strategy, r, settings.frames_per_task(r), cached["tasks"])
        else:
            rows += found
    return rows


def claim_settings(out: Path, settings: LoopSettings) -> None:
    """Write ``settings.json``, or refuse a folder that holds a loop with other settings
    (its rounds would be mixed into one table)."""
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            held = json.loads(path.read_text())
        except ValueError:
            held = None
        if held != settings.to_json():
            diff = sorted(k for k in settings.to_json() if not isinstance(held, dict)
                          or held.get(k) != settings.to_json()[k])
            raise ActivePretrainingError(f"{out} holds a loop with other settings ({', '.join(diff)} differ; "
                                         f"{path}); choose another output folder or delete it")
        return
    write_json(path, settings.to_json())


def run_active_pretraining(out: PathLike, settings: LoopSettings = LoopSettings(), seeds: Sequence[int] = (0,),
                           strategies: Sequence[str] = STRATEGIES, log: Callable[[str], None] = print,
                           plot: bool = True) -> LoopResult:
    """Run (or resume) the loop of the module docstring for every seed and strategy.

    Raises:
        ActivePretrainingError: bad settings, a task too small, or a folder holding
            another loop (all before any training).
        RunFailed: a member's ``spktrain`` failed (its log is named).
        OutputBusy: another process holds ``out``.
    """
    from spk_meta.experiment.runner import output_lock

    settings.check()
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown or not strategies:
        raise ActivePretrainingError(f"strategies {unknown or '(none)'}: use {', '.join(STRATEGIES)}")
    out = Path(out).absolute()
    pools = open_tasks(settings)
    selections = {}
    with output_lock(out):
        claim_settings(out, settings)
        for seed in seeds:
            start = initial_subset(pools, settings.n_start, seed)
            r0 = out / f"s{seed}" / "r0"
            log(f"seed {seed}, round 0: {settings.n_start} random frames per task")
            manifest0 = train_round(r0, settings, pools, start, seed, log)
            evaluate_round(r0, manifest0, pools)
            for strategy in strategies:
                train, manifest = start, manifest0
                for round_ in range(1, settings.rounds + 1):
                    rdir = out / f"s{seed}" / strategy / f"r{round_}"
                    train, record = choose_next(strategy, load_ensemble(manifest), pools, train, settings,
                                                seed, round_)
                    record["from_ensemble_sha256"] = sha256(manifest)
                    write_json(rdir / "selection.json", record)
                    selections[(seed, strategy, round_)] = record
                    log(f"seed {seed}, {strategy} round {round_}: {settings.frames_per_task(round_)} frames per task "
                        f"(mean added {settings.criterion} "
                        f"{np.mean([t['mean_added_score'] for t in record['tasks'].values()]):.4f})")
                    manifest = train_round(rdir, settings, pools, train, seed, log)
                    evaluate_round(rdir, manifest, pools)
        # the tables: every finished seed in out, this command's and earlier ones'
        rows = finished_rows(out, settings, strategies)
        summary = summarise(rows)
        text = markdown(summary, settings)
        paths = write_csv_and_markdown(out, rows, text)
        if plot:
            paths.append(learning_curve_figure(summary, out / "learning_curve.png",
                                               f"{settings.case}: active vs random pre-training frames"))
    return LoopResult(rows, summary, text, selections, paths)
