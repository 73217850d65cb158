"""Model-side helpers: pre-flight checks against the data, loading model files safely,
pre-trained models."""

from spk_meta.model.preflight import (
    ModelDataMismatch,
    check_model_against_data,
    data_labels,
    dataset_elements,
    derivative_outputs,
    drop_unlabelled_outputs,
    model_elements,
    neighbor_list_cutoff,
    warn_untrained_elements,
)
from spk_meta.model.loading import NotAModelFile, UntrustedModelFile, load_model
from spk_meta.model.pretrained import frozen_parameters, load_pretrained

__all__ = [
    "ModelDataMismatch",
    "check_model_against_data",
    "data_labels",
    "dataset_elements",
    "derivative_outputs",
    "drop_unlabelled_outputs",
    "model_elements",
    "neighbor_list_cutoff",
    "warn_untrained_elements",
    "NotAModelFile",
    "UntrustedModelFile",
    "load_model",
    "frozen_parameters",
    "load_pretrained",
]
