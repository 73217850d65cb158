"""Datasets shipped inside the package."""

from spk_meta.datasets.embedded import (
    DatasetFile,
    EmbeddedDataset,
    cache_dir,
    ethanol_multilevel,
    load_embedded,
    organic_multilevel,
)

__all__ = ["DatasetFile", "EmbeddedDataset", "cache_dir", "ethanol_multilevel", "load_embedded", "organic_multilevel"]
