"""Converters: published quantum-chemistry datasets -> one task database per level of theory."""

from spk_meta.convert.base import ConversionError, LevelSpec, Reader, SourceFrame
from spk_meta.convert.run import READERS, ConversionSummary, LevelSummary, convert, parse_elements

__all__ = [
    "ConversionError",
    "ConversionSummary",
    "LevelSpec",
    "LevelSummary",
    "READERS",
    "Reader",
    "SourceFrame",
    "convert",
    "parse_elements",
]
