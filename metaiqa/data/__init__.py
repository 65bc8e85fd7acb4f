"""Data: the Sample record, data-set adapters, the synthetic engine and task samplers."""

from metaiqa.data.samples import DatasetError, Sample

# Adapters and samplers load lazily: `metaiqa.inference` imports `metaiqa.data.transforms`
# and must not pull in data-set or distortion code.
_LAZY = {
    "load_dataset": "formats",
    "parse_data_spec": "formats",
    "verify_images": "formats",
    "Task": "tasks",
    "TaskSampler": "tasks",
    "TaskTooSmall": "tasks",
    "split_references": "tasks",
    "select_groups": "tasks",
    "few_shot_split": "tasks",
}

__all__ = ["DatasetError", "Sample", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"metaiqa.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
