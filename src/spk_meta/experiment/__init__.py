"""The comparison of the seed paper's first case study on the embedded ethanol data:
no pre-training vs k = 1 vs Reptile, fine-tuned on N MP2 structures, per temperature."""

from spk_meta.experiment.plan import PRESETS, FinetuneRun, Preset, PretrainRun, expand
from spk_meta.experiment.record import Decision, RunSpec, decide
from spk_meta.experiment.results import choose_k, markdown, rows_from_runs, summarise, write_results
from spk_meta.experiment.runner import OutputBusy, Runner, RunFailed, output_lock

__all__ = [
    "PRESETS", "Decision", "FinetuneRun", "OutputBusy", "Preset", "PretrainRun", "RunFailed", "RunSpec", "Runner",
    "choose_k", "decide", "expand", "markdown", "output_lock", "rows_from_runs", "summarise", "write_results",
]
