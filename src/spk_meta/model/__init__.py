"""Checks between a SchNetPack model and the data it is trained on."""

from spk_meta.model.compat import (
    ModelDataMismatch,
    check_model_against_data,
    dataset_elements,
    model_elements,
    neighbor_list_cutoff,
)

__all__ = [
    "ModelDataMismatch",
    "check_model_against_data",
    "dataset_elements",
    "model_elements",
    "neighbor_list_cutoff",
]
