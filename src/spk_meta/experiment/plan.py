"""What the comparison runs: presets and the list of training runs they expand to."""

from dataclasses import dataclass, field, replace
from typing import List, Optional, Tuple

#: pre-training variants: None = no pre-training, 1 = joint training (k = 1), k > 1 = Reptile
Variant = Optional[int]


@dataclass(frozen=True)
class Preset:
    """One comparison: every (architecture, variant, seed) pre-training, each fine-tuned
    on every N, evaluated on the MP2 test frames at 300/600/900 K."""

    architectures: Tuple[str, ...] = ("ani",)
    ks: Tuple[int, ...] = (1, 10)
    n_target: Tuple[int, ...] = (25,)
    seeds: Tuple[int, ...] = (0,)
    pretrain_epochs: int = 10
    finetune_epochs: int = 30
    num_val: int = 25
    extra: Tuple[str, ...] = ()

    def with_(self, **kw) -> "Preset":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


PRESETS = {
    # a few minutes on 2 CPU cores: the machinery end to end, not the science
    "quick": Preset(),
    # the paper-style comparison (hours on CPU, minutes per run on a GPU)
    "full": Preset(
        architectures=("ani", "painn"),
        ks=(1, 10, 30, 100, 300),
        n_target=(25, 50, 100),
        seeds=(0, 1, 2),
        pretrain_epochs=150,
        finetune_epochs=150,
    ),
}


@dataclass(frozen=True)
class PretrainRun:
    architecture: str
    k: int
    seed: int

    @property
    def name(self) -> str:
        return f"pre_{self.architecture}_k{self.k}_s{self.seed}"


@dataclass(frozen=True)
class FinetuneRun:
    architecture: str
    variant: Variant
    n: int
    seed: int

    @property
    def name(self) -> str:
        v = "none" if self.variant is None else f"k{self.variant}"
        return f"ft_{self.architecture}_{v}_n{self.n}_s{self.seed}"

    @property
    def pretrain(self) -> Optional[PretrainRun]:
        return None if self.variant is None else PretrainRun(self.architecture, self.variant, self.seed)


def expand(preset: Preset) -> Tuple[List[PretrainRun], List[FinetuneRun]]:
    pre = [PretrainRun(a, k, s) for a in preset.architectures for k in preset.ks for s in preset.seeds]
    variants: List[Variant] = [None, *preset.ks]
    ft = [FinetuneRun(a, v, n, s) for a in preset.architectures for v in variants
          for n in preset.n_target for s in preset.seeds]
    return pre, ft
