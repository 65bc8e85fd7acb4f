"""Data: the Sample record, data-set adapters, the synthetic engine and task samplers."""

from metaiqa.data.samples import DatasetError, Sample

__all__ = ["DatasetError", "Sample"]
