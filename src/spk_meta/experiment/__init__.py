"""Comparisons of pre-training methods (none, joint, Reptile, multi-head, FOMAML, transfer),
each fine-tuned on N target structures and judged per temperature (and on scans): the
ethanol case of the seed paper and the organic many-molecules case."""

from spk_meta.experiment.plan import CASES, METHODS, PRESETS, Case, FinetuneRun, Preset, PretrainRun, Variant, expand
from spk_meta.experiment.record import Decision, RunSpec, decide
from spk_meta.experiment.results import (
    choose_k,
    choose_ks,
    markdown,
    markdown_scans,
    rows_from_runs,
    scan_rows_from_runs,
    summarise,
    summarise_scans,
    write_results,
)
from spk_meta.experiment.runner import OtherCase, OutputBusy, Runner, RunFailed, claim_for_case, output_lock

__all__ = [
    "CASES", "METHODS", "PRESETS", "Case", "Decision", "FinetuneRun", "OtherCase", "OutputBusy", "Preset",
    "PretrainRun", "RunFailed", "RunSpec", "Runner", "Variant", "choose_k", "choose_ks", "claim_for_case", "decide",
    "expand", "markdown", "markdown_scans", "output_lock", "rows_from_runs", "scan_rows_from_runs", "summarise",
    "summarise_scans", "write_results",
]
