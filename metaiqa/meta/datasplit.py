"""The meta-training data: load the data set, hold out types, split content-disjointly by scene."""

from dataclasses import dataclass
from typing import Any

from metaiqa.config import ConfigError
from metaiqa.data.samples import Sample
from metaiqa.meta.config import MetaTrainConfig


@dataclass
class DataSplit:
    train: list[Sample]
    val: list[Sample]
    summary: dict[str, Any]


def prepare_data(cfg: MetaTrainConfig) -> DataSplit:
    """Load the data set, hold out types, split content-disjointly (train/val/test) by scene."""
    from metaiqa.data.formats import parse_data_spec
    from metaiqa.data.tasks import select_groups, split_references

    if not cfg.data.spec:
        raise ConfigError("data.spec is required (e.g. --set data.spec=/path/to/synth)")
    samples = parse_data_spec(cfg.data.spec)
    if cfg.data.include_types is not None:
        samples = select_groups(samples, include=cfg.data.include_types)
    holdout = list(cfg.data.holdout_types)
    if holdout:
        select_groups(samples, exclude=holdout)  # unknown names -> UnknownGroup naming them
    v, t = cfg.data.val_fraction, cfg.data.test_fraction
    split_seed = cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed
    parts = split_references(samples, (1 - v - t, v, t), seed=split_seed)
    train = [s for s in parts[0] if s.group not in holdout]
    val = [s for s in parts[1] if s.group not in holdout]

    def ids(part: list[Sample], attr: str) -> list[str]:
        return sorted({str(getattr(s, attr)) for s in part if getattr(s, attr) is not None})

    summary = {
        "spec": cfg.data.spec,
        "holdout_types": holdout,
        "train_types": sorted({str(s.group) for s in train}),
        "split_seed": split_seed,
        "fractions": {"train": 1 - v - t, "val": v, "test": t},
        "split_by": "content (Sample.source or ref_id)",
        "splits": {
            name: {"contents": ids(part, "content"), "ref_ids": ids(part, "ref_id")}
            for name, part in zip(("train", "val", "test"), parts, strict=True)
        },
        "counts": {"train": len(train), "val": len(val), "test_all_types": len(parts[2])},
    }
    return DataSplit(train, val, summary)
