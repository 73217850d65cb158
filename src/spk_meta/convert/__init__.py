"""Converters: published quantum-chemistry datasets -> one task database per level of theory,
or one packed task store per source (``output_format="packed"``)."""

from spk_meta.convert.base import ConversionError, LevelSpec, Reader, SourceFrame, SourceGroup
from spk_meta.convert.run import OUTPUT_FORMATS, READERS, ConversionSummary, LevelSummary, convert, parse_elements

__all__ = [
    "ConversionError",
    "ConversionSummary",
    "LevelSpec",
    "LevelSummary",
    "OUTPUT_FORMATS",
    "READERS",
    "Reader",
    "SourceFrame",
    "SourceGroup",
    "convert",
    "parse_elements",
]
