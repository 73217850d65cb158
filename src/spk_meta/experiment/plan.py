"""What a comparison runs: cases (data), methods, presets and the training runs they expand to.

A *case* names the pre-training data, the target data and the files it is judged on. A
*method* is one way to pre-train (or not): none, joint training (k = 1), Reptile over k,
multi-head joint training, first-order MAML over k, and transfer from one dataset alone.
Every method gets the same pre-training budget in inner optimiser steps and the same
fine-tuning protocol; k is chosen on the target's validation frames only.
"""

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple, Union

#: every method of the comparison, in table order
METHODS = ("none", "joint", "reptile", "multihead", "fomaml", "transfer")
#: methods with an inner-step count k to choose
METHODS_WITH_K = ("reptile", "fomaml")


@dataclass(frozen=True)
class Case:
    """One case study: data configs (``configs/data``), embedded dataset and judging files.

    Attributes:
        name: ``ethanol`` or ``organic``.
        dataset: the function in :mod:`spk_meta.datasets` that returns the embedded files.
        pretrain_data: data config of the multi-level pre-training tasks.
        pretrain_train_frames: training frames of each of those tasks (their splits); one
            pre-training "epoch" of the budget is one pass over their batches.
        transfer_data: data config of the single dataset the transfer baseline starts from
            (the largest one).
        transfer_label: what the table calls that baseline.
        target_data: data config of the target level (one task, ``target_task``).
        target_train: dataset key of the target's training file (validation rows index it).
        tests: ``(temperature K, dataset key)`` of the target test trajectories.
        scans: dataset keys of labelled rigid scans at the target level.
    """

    name: str
    dataset: str
    pretrain_data: str
    pretrain_train_frames: Tuple[int, ...]
    transfer_data: str
    transfer_label: str
    target_data: str
    target_task: str
    target_train: str
    tests: Tuple[Tuple[int, str], ...]
    scans: Tuple[str, ...] = ()
    target_label: str = "MP2"

    def pretrain_batches_per_epoch(self, batch_size: int) -> int:
        """Inner steps in one pass over the pre-training tasks (each task's last batch may
        be short, as the data module serves them)."""
        return sum(-(-n // batch_size) for n in self.pretrain_train_frames)


def _mp2_tests() -> Tuple[Tuple[int, str], ...]:
    return tuple((t, f"target_mp2_631gs_test_{t}K") for t in (300, 600, 900))


CASES: Dict[str, Case] = {
    # the seed paper's first case: one molecule (ethanol) at every level
    "ethanol": Case(
        name="ethanol", dataset="ethanol_multilevel", pretrain_data="ethanol_multilevel",
        pretrain_train_frames=(160, 160, 160), transfer_data="ethanol_wb97x", transfer_label="transfer (wB97X only)",
        target_data="ethanol_mp2", target_task="mp2_6-31gs", target_train="target_mp2_631gs_train_300K",
        tests=_mp2_tests(),
    ),
    # many molecules at many levels -> ethylamine, which no pre-training task contains
    "organic": Case(
        name="organic", dataset="organic_multilevel", pretrain_data="organic_multilevel",
        pretrain_train_frames=(160, 160, 200, 240), transfer_data="organic_hf_def2svp",
        transfer_label="transfer (HF carbonyls only)", target_data="ethylamine_mp2", target_task="mp2_6-31gs",
        target_train="target_mp2_631gs_train_300K", tests=_mp2_tests(),
        scans=("scan_mp2_631gs_torsion_CCNH", "scan_mp2_631gs_stretch_NH", "scan_mp2_631gs_stretch_CH"),
    ),
}


@dataclass(frozen=True)
class Variant:
    """One pre-training method with its inner-step count ``k`` (1 where it has none)."""

    method: str
    k: int = 1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.method == "reptile" and self.k < 2:
            raise ValueError("Reptile needs k >= 2 (k = 1 is the 'joint' method)")
        if self.method not in METHODS_WITH_K and self.k != 1:
            raise ValueError(f"method {self.method!r} has no k (got k={self.k})")

    @classmethod
    def coerce(cls, value: Union["Variant", int, None]) -> "Variant":
        """A ``Variant`` from the older spelling: ``None`` = none, 1 = joint, k > 1 = Reptile."""
        if isinstance(value, Variant):
            return value
        if value is None:
            return cls("none")
        return cls("joint") if int(value) == 1 else cls("reptile", int(value))

    @property
    def tag(self) -> str:
        """The run-name part: ``none``, ``k1`` (joint), ``k10`` (Reptile), ``multihead``,
        ``fomaml_k5``, ``transfer``."""
        if self.method == "joint":
            return "k1"
        if self.method == "reptile":
            return f"k{self.k}"
        if self.method == "fomaml":
            return f"fomaml_k{self.k}"
        return self.method

    @property
    def legacy_k(self) -> Optional[int]:
        """``None`` for no pre-training, ``k`` for joint/Reptile; the column the tables sort k by."""
        if self.method == "none":
            return None
        return self.k

    def sort_key(self) -> Tuple[int, int]:
        return METHODS.index(self.method), self.k


@dataclass(frozen=True)
class Preset:
    """One comparison: every (architecture, method, seed) pre-training, each fine-tuned on
    every N, evaluated on the target's test trajectories (and scans)."""

    architectures: Tuple[str, ...] = ("ani",)
    methods: Tuple[str, ...] = ("none", "joint", "reptile")
    ks: Tuple[int, ...] = (10,)
    fomaml_ks: Tuple[int, ...] = (3,)
    n_target: Tuple[int, ...] = (25,)
    seeds: Tuple[int, ...] = (0,)
    pretrain_epochs: int = 10
    finetune_epochs: int = 30
    num_val: int = 25
    extra: Tuple[str, ...] = ()

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")

    def with_(self, **kw) -> "Preset":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def variants(self) -> List[Variant]:
        """The pre-training variants in table order (a k of 1 in ``ks`` is ignored: that
        is the ``joint`` method)."""
        out: List[Variant] = []
        for method in METHODS:
            if method not in self.methods:
                continue
            if method == "reptile":
                out += [Variant("reptile", k) for k in sorted(set(self.ks)) if k > 1]
            elif method == "fomaml":
                out += [Variant("fomaml", k) for k in sorted(set(self.fomaml_ks))]
            else:
                out.append(Variant(method))
        return out


PRESETS = {
    # a few minutes on 2 CPU cores: every method end to end
    "quick": Preset(methods=METHODS),
    # the paper-style comparison of every method (hours on CPU, minutes per run on a GPU)
    "full": Preset(
        architectures=("ani", "painn"),
        methods=METHODS,
        ks=(10, 30, 100, 300),
        fomaml_ks=(3, 10),
        n_target=(25, 50, 100),
        seeds=(0, 1, 2),
        pretrain_epochs=150,
        finetune_epochs=150,
    ),
}


@dataclass(frozen=True)
class PretrainRun:
    architecture: str
    variant: Variant
    seed: int

    def __post_init__(self):
        object.__setattr__(self, "variant", Variant.coerce(self.variant))
        if self.variant.method == "none":
            raise ValueError("'none' has no pre-training run")

    @property
    def k(self) -> int:
        return self.variant.k

    @property
    def name(self) -> str:
        return f"pre_{self.architecture}_{self.variant.tag}_s{self.seed}"


@dataclass(frozen=True)
class FinetuneRun:
    architecture: str
    variant: Variant
    n: int
    seed: int

    def __post_init__(self):
        object.__setattr__(self, "variant", Variant.coerce(self.variant))

    @property
    def name(self) -> str:
        return f"ft_{self.architecture}_{self.variant.tag}_n{self.n}_s{self.seed}"

    @property
    def pretrain(self) -> Optional[PretrainRun]:
        return None if self.variant.method == "none" else PretrainRun(self.architecture, self.variant, self.seed)


def expand(preset: Preset) -> Tuple[List[PretrainRun], List[FinetuneRun]]:
    variants = preset.variants()
    pre = [PretrainRun(a, v, s) for a in preset.architectures for v in variants if v.method != "none"
           for s in preset.seeds]
    ft = [FinetuneRun(a, v, n, s) for a in preset.architectures for v in variants
          for n in preset.n_target for s in preset.seeds]
    return pre, ft
