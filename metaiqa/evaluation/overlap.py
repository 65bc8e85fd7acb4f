"""Does a validation set overlap what the model was trained (or selected) on?

A checkpoint's sidecar records its data under "data" (see `metaiqa.models.checkpoint`):

- meta-train (`metaiqa.meta.datasplit`): ``splits.{train,val}.contents``, the scenes of the
  training and model-selection splits (the test split is held out and may be validated on);
- joint fine-tune (`metaiqa.meta.joint`): ``human`` (the data spec of the human-rated training
  images, validation carved from it), ``human_val_ids``, ``anchor_scenes``, ``val_scenes`` and
  ``init_splits`` (the prior's own splits);
- few-shot fine-tune (`metaiqa.meta.finetune`): ``train.contents`` and ``train.paths`` (the shots).

Validation images are matched by scene (Sample.content / ref_id / source) and by file name.
Names that look like file names (they have an extension) are compared case-insensitively;
bare ids such as KADID's ``I01`` exactly. The splits' ``ref_ids`` are not compared: a synthetic
set's references are crops named ``I01`` ..., names other data sets reuse for other photos (its
``contents``, the photos the crops came from, are compared).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaiqa.data.samples import Sample

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5


def _key(name: str) -> str:
    name = str(name).strip()
    return name.casefold() if Path(name).suffix else name


def _names(values: Any) -> list[str]:
    if not isinstance(values, list | tuple):
        return []
    return [str(v) for v in values if isinstance(v, str | int) and str(v).strip() and str(v) != "..."]


def _split_contents(splits: Any, where: str) -> dict[str, list[str]]:
    out = {}
    if isinstance(splits, dict):
        for part in ("train", "val"):
            contents = _names((splits.get(part) or {}).get("contents"))
            if contents:
                out[f"{where} {part} scenes"] = contents
    return out


def recorded_names(data: dict[str, Any]) -> dict[str, list[str]]:
    """Source label -> scene and file names the sidecar's "data" says training or selection used."""
    if not isinstance(data, dict):
        return {}
    out = _split_contents(data.get("splits"), "meta-train")
    out.update(_split_contents(data.get("init_splits"), "prior's"))
    for key, label in (("anchor_scenes", "synthetic training scenes"), ("val_scenes", "synthetic selection scenes"),
                       ("human_val_ids", "human-rated selection images")):
        if _names(data.get(key)):
            out[label] = _names(data[key])
    train = data.get("train")
    if isinstance(train, dict):  # a few-shot fine-tune: the shots
        shots = _names(train.get("contents")) + [Path(p).name for p in _names(train.get("paths"))]
        if shots:
            out["fine-tune shots"] = shots
    return out


def _spec_names(spec: str) -> list[str]:
    """Scene and file names of the samples a data spec holds; [] (with a note) when unavailable here."""
    from metaiqa.data.formats import parse_data_spec
    from metaiqa.errors import MetaIQAError

    try:
        samples = parse_data_spec(spec)
    except (MetaIQAError, OSError) as exc:
        log.info("training data %s not readable here (%s); comparing recorded names only", spec, exc)
        return []
    return sorted({n for s in samples for n in _sample_names(s)})


def _sample_names(s: Sample) -> set[str]:
    names = {Path(s.path).name}
    if s.content is not None:
        names.add(str(s.content))
    return names


def training_overlap(meta: dict[str, Any] | None, samples: Sequence[Sample], *, load_specs: bool = False,
                     model: str = "the model") -> dict[str, Any]:
    """{"checked", "images", "of", "by_source", "examples", "warning"} for `samples` against `meta`'s data.

    With `load_specs`, a recorded training data spec (the joint recipe's ``human``) is read when
    it exists on this machine, so its file names are compared too (a few seconds for 10k images).
    Logs a warning when any validation image overlaps.
    """
    data = (meta or {}).get("data")
    sources = recorded_names(data or {})
    human = (data or {}).get("human") if isinstance(data, dict) else None
    if load_specs and isinstance(human, str) and human:
        names = _spec_names(human)
        if names:
            sources[f"human-rated training data {human}"] = names
    if not sources:
        return {"checked": False, "reason": "the checkpoint records no training scenes or files", "images": 0,
                "of": len(samples), "warning": None}
    lookup = {label: {_key(n) for n in names} for label, names in sources.items()}
    hits: dict[str, int] = {}
    examples: list[str] = []
    n_images = 0
    for s in samples:
        keys = {_key(n) for n in _sample_names(s)}
        matched = [label for label, names in lookup.items() if keys & names]
        if matched:
            n_images += 1
            for label in matched:
                hits[label] = hits.get(label, 0) + 1
            if len(examples) < MAX_EXAMPLES:
                examples.append(str(Path(s.path).name))
    result = {"checked": True, "images": n_images, "of": len(samples), "by_source": hits, "examples": examples,
              "compared": sorted(sources), "warning": None}
    if n_images:
        by = "; ".join(f"{label}: {n}" for label, n in hits.items())
        result["warning"] = (
            f"{n_images} of {len(samples)} validation images share a scene or file name with data {model} was "
            f"trained or selected on ({by}); e.g. {', '.join(examples)}. Figures on them are optimistic: "
            "validate on images the model has not seen."
        )
        log.warning("validation data overlaps the training data: %s", result["warning"])
    return result
