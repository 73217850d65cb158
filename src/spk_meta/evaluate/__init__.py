"""Evaluation of trained models: errors on labelled files, scans, ensembles, MD stability."""

from spk_meta.evaluate.ensemble import EnsembleCalculator
from spk_meta.evaluate.md import md_stability
from spk_meta.evaluate.metrics import error_metrics, gradient_error, roughness, spurious_barriers
from spk_meta.evaluate.predict import (
    calculator,
    energy_reference_missing,
    evaluate,
    evaluate_frames,
    load_model,
    predict,
    read_labelled,
)
from spk_meta.evaluate.scan_scores import SCAN_METRICS, LabelledScan, predict_scan, read_scan, scan_figure, score_scan
from spk_meta.evaluate.scans import Scan, bond_scan, bonded_side, dissociation_report, torsion_scan

__all__ = [
    "SCAN_METRICS", "LabelledScan", "predict_scan", "read_scan", "scan_figure", "score_scan",
    "EnsembleCalculator", "Scan", "bond_scan", "bonded_side", "calculator", "dissociation_report",
    "energy_reference_missing", "error_metrics", "evaluate", "evaluate_frames", "gradient_error",
    "load_model", "md_stability", "predict", "read_labelled", "roughness", "spurious_barriers",
    "torsion_scan",
]
