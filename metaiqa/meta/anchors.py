"""Synthetic orderings that keep a model honest while it learns from human scores.

`AnchorSet` cuts crops of pristine photos at the viewing scale and distorts each with two
levels of one random type (our distortion engine): training pairs with a known order.
`SyntheticOrderingSet` is the fixed validation counterpart: whole photos of validation
scenes, every type at levels 1, 3 and 5; it reports the mean within-(scene, type) SROCC of
[pristine, 1, 3, 5] and the share of distorted versions scored below their pristine photo.
Scenes come from the init checkpoint's recorded split, so the prior's test scenes are
never used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from metaiqa.data.samples import DatasetError
from metaiqa.data.transforms import to_viewing_scale
from metaiqa.distortions import list_distortions
from metaiqa.distortions.registry import apply as distort

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")


def _scene_photos(folder: str | Path, splits: dict, part: str) -> list[Path]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DatasetError(f"reference folder {root} not found")
    photos = sorted(p for p in root.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    allowed = (splits.get(part) or {}).get("contents") if splits else None
    if allowed is not None:
        photos = [p for p in photos if p.name in set(allowed)]
    if not photos:
        raise DatasetError(f"{root}: no reference photos for scene split {part!r}")
    return photos


def _read_at_scale(path: Path, short_side: int, crop_size: int) -> np.ndarray:
    with Image.open(path) as im:
        im.draft("RGB", (short_side * 2, short_side * 2))  # JPEG: decode at a reduced scale when possible
        arr = np.asarray(im.convert("RGB"))
    return to_viewing_scale(arr, short_side, crop_size)


def darkest_well_rated(images: Sequence[np.ndarray], mos: Sequence[float], n: int) -> np.ndarray:
    """Indices of the n darkest images (mean of RGB) among those with MOS >= the median, darkest first.

    The assumption: rated at or above the median, a dark photo is dark by intent (night, low
    key) rather than by an exposure mistake, so brightening or darkening it is damage — a case
    that photos chosen by rating alone (mostly daylight) rarely show the anchor.
    """
    mos = np.asarray(mos, dtype=np.float64)
    if len(images) != len(mos):
        raise ValueError(f"darkest_well_rated: {len(images)} images but {len(mos)} scores")
    rated = np.flatnonzero(mos >= np.median(mos)) if len(mos) else np.zeros(0, dtype=int)
    brightness = np.asarray([float(images[i].mean()) for i in rated])
    return rated[np.argsort(brightness, kind="stable")[:n]]


class AnchorSet:
    """Pristine reference photos at several scales; `sample` returns ordered distorted triples."""

    VERSIONS = 3  # pristine, lighter level, heavier level

    def __init__(self, images: list[np.ndarray], scenes: list[str], crop_size: int, types: Sequence[str]):
        self.images, self.scenes, self.crop_size, self.types = images, scenes, crop_size, list(types)

    @classmethod
    def from_folder(cls, folder, splits: dict, part: str, scales: Sequence[int], crop_size: int) -> AnchorSet:
        photos = _scene_photos(folder, splits, part)
        images = [_read_at_scale(p, s, crop_size) for p in photos for s in scales]
        log.info("anchor: %d photos (%s scenes) x %d scales", len(photos), part, len(scales))
        return cls(images, [p.name for p in photos], crop_size, list_distortions())

    def with_photos(self, images: list[np.ndarray], names: list[str]) -> AnchorSet:
        """This set plus more pristine photos (e.g. the best-rated photos of a human-scored train split)."""
        return AnchorSet(self.images + images, self.scenes + names, self.crop_size, self.types)

    def _textured_crop(self, rng: np.random.Generator) -> np.ndarray:
        size = self.crop_size
        for _ in range(8):  # flat crops (sky, defocus) teach nothing: retry a few times
            img = self.images[int(rng.integers(len(self.images)))]
            h, w = img.shape[:2]
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            crop = img[top : top + size, left : left + size]
            if crop.std() >= 12:
                break
        return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)

    def sample(
        self, n: int, rng: np.random.Generator, type_probs: np.ndarray | None = None,
        level_probs: np.ndarray | None = None,
    ) -> tuple[list[np.ndarray], list[float], list[str]]:
        """n x (pristine, level a, level b) with a < b; labels 1, 1 - a/10, 1 - b/10 (order only).

        Returns (crops, labels, the type of each triple). `type_probs` (one per `self.types`)
        replaces uniform sampling of the type, `level_probs` (one per level 1..5) that of the two
        levels (drawn without replacement). Both levels of a triple use the same random
        stream, so a type with a random direction (mean_shift up or down) shifts both one way.
        """
        crops: list[np.ndarray] = []
        labels: list[float] = []
        kinds: list[str] = []
        for _ in range(n):
            crop = self._textured_crop(rng)
            kind = self.types[int(rng.choice(len(self.types), p=type_probs))]
            a, b = sorted(int(v) for v in rng.choice(np.arange(1, 6), size=2, replace=False, p=level_probs))
            series = int(rng.integers(2**63))
            crops += [crop, distort(kind, crop, a, np.random.default_rng(series)),
                      distort(kind, crop, b, np.random.default_rng(series))]
            labels += [1.0, 1.0 - a / 10, 1.0 - b / 10]
            kinds.append(kind)
        return crops, labels, kinds


def level_probs(weights: Sequence[float] | None) -> np.ndarray | None:
    """Normalised draw weights of anchor levels 1..5 (None: uniform)."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (5,) or not np.isfinite(w).all() or (w < 0).any() or np.count_nonzero(w) < 2:
        raise ValueError(f"anchor level weights need 5 values >= 0 (levels 1..5), at least two > 0; got {list(weights)}")
    return w / w.sum()


class TypeSampler:
    """Chooses anchor distortion types, more often the ones the model currently orders worst.

    Keeps an exponential moving average of each type's anchor ranking loss; `probs()` mixes
    the loss-proportional share with the base one (`floor` = weight of the base), so every
    type keeps being trained. The base is uniform unless `weights` (type -> relative weight,
    unnamed types 1) says otherwise; with `adaptive=False` draws follow the base. State is
    saved with the run.
    """

    def __init__(self, types: Sequence[str], *, adaptive: bool, floor: float = 0.5, decay: float = 0.98,
                 weights: dict[str, float] | None = None):
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"TypeSampler floor must be in [0, 1], got {floor}")
        self.types, self.adaptive, self.floor, self.decay = list(types), adaptive, floor, decay
        self.base = self._base_probs(weights or {})
        self.loss_ema = np.full(len(self.types), np.nan)

    def _base_probs(self, weights: dict[str, float]) -> np.ndarray | None:
        """Normalised per-type weights, or None for uniform (the sampler's own uniform draw)."""
        unknown = sorted(set(weights) - set(self.types))
        if unknown:
            raise ValueError(f"anchor type weights name unknown types {unknown}; known: {self.types}")
        if not weights or not self.types:
            return None
        w = np.asarray([float(weights.get(t, 1.0)) for t in self.types])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"anchor type weights must be >= 0 and not all 0, got {weights}")
        return w / w.sum()

    def probs(self) -> np.ndarray | None:
        if not self.adaptive or np.isnan(self.loss_ema).all():
            return self.base
        ema = np.where(np.isnan(self.loss_ema), np.nanmax(self.loss_ema), self.loss_ema)  # unseen: as hard as the hardest
        share = ema / ema.sum() if ema.sum() > 0 else np.full(len(ema), 1.0 / len(ema))
        base = self.base if self.base is not None else np.full(len(ema), 1.0 / len(ema))
        return self.floor * base + (1.0 - self.floor) * share

    def update(self, kinds: Sequence[str], losses: Sequence[float]) -> None:
        for kind, loss in zip(kinds, losses, strict=True):
            i = self.types.index(kind)
            old = self.loss_ema[i]
            self.loss_ema[i] = loss if np.isnan(old) else self.decay * old + (1.0 - self.decay) * loss

    def hardest(self, k: int = 5) -> dict[str, float]:
        """The k types with the highest loss average (for the training log)."""
        order = np.argsort(-np.nan_to_num(self.loss_ema, nan=-1.0))[:k]
        return {self.types[i]: round(float(self.loss_ema[i]), 4) for i in order if not np.isnan(self.loss_ema[i])}

    def state_dict(self) -> dict:
        return {"loss_ema": self.loss_ema.tolist()}

    def load_state_dict(self, state: dict) -> None:
        ema = np.asarray(state["loss_ema"], dtype=np.float64)
        if ema.shape != self.loss_ema.shape:
            raise ValueError(f"TypeSampler state holds {ema.size} types, this run has {self.loss_ema.size}")
        self.loss_ema = ema


class SyntheticOrderingSet:
    """Fixed validation images: per scene, the pristine photo and every type at levels 1, 3, 5."""

    LEVELS = (1, 3, 5)

    def __init__(self, images: list[np.ndarray], keys: list[tuple[str, str, int]], scenes: list[str]):
        self.images, self.keys, self.scenes = images, keys, scenes

    @classmethod
    def from_folder(cls, folder, splits: dict, part: str, scale: int, seed: int = 0) -> SyntheticOrderingSet:
        photos = _scene_photos(folder, splits, part)
        images = [_read_at_scale(p, scale, scale) for p in photos]
        out = cls.from_images(images, [p.name for p in photos], scale, seed)
        log.info("synthetic ordering validation: %d images from %d %s scenes", len(out.images), len(photos), part)
        return out

    @classmethod
    def from_images(cls, photos: list[np.ndarray], names: list[str], scale: int, seed: int = 0) -> SyntheticOrderingSet:
        """Centre scale x scale of each photo (already at the viewing scale), pristine + every type at LEVELS."""
        images, keys = [], []
        for i, (full, name) in enumerate(zip(photos, names, strict=True)):
            h, w = full.shape[:2]
            size = min(scale, h, w)
            top, left = (h - size) // 2, (w - size) // 2
            ref = np.ascontiguousarray(full[top : top + size, left : left + size])
            images.append(ref)
            keys.append((name, "", 0))
            for j, kind in enumerate(list_distortions()):
                for level in cls.LEVELS:
                    rng = np.random.default_rng([seed, i, j])  # one stream per series: levels agree in direction
                    images.append(distort(kind, ref, level, rng))
                    keys.append((name, kind, level))
        return cls(images, keys, list(names))

    def evaluate(self, predict: Callable[[list[np.ndarray]], np.ndarray], prefix: str = "val_synth") -> dict[str, float]:
        """`{prefix}_within_srocc` and `{prefix}_pristine_above` of the scores `predict` gives these images."""
        return self.summary(predict(self.images), prefix)

    def summary(self, pred, prefix: str = "val_synth") -> dict[str, float]:
        """The two numbers of `evaluate`, from scores already computed for `self.images`."""
        within, above = self._series_checks(pred)
        return {f"{prefix}_within_srocc": float(np.mean([w for v in within.values() for w in v])),
                f"{prefix}_pristine_above": float(np.mean([a for v in above.values() for a in v]))}

    def per_type(self, pred) -> dict[str, dict[str, float]]:
        """Per distortion type, from scores for `self.images`: mean within-scene SROCC and pristine-above share."""
        within, above = self._series_checks(pred)
        return {kind: {"within_srocc": float(np.mean(within[kind])), "pristine_above": float(np.mean(above[kind]))}
                for kind in sorted(within)}

    def _series_checks(self, pred) -> tuple[dict[str, list[float]], dict[str, list[bool]]]:
        """Per type: the within-(scene, type) SROCC of [pristine, levels] and pristine > level, per series."""
        from scipy.stats import spearmanr

        pred = np.asarray(pred, dtype=np.float64)
        pristine = {scene: pred[i] for i, (scene, kind, _) in enumerate(self.keys) if not kind}
        groups: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for i, (scene, kind, level) in enumerate(self.keys):
            if kind:
                groups.setdefault((scene, kind), []).append((level, pred[i]))
        within: dict[str, list[float]] = {}
        above: dict[str, list[bool]] = {}
        for (scene, kind), rows in groups.items():
            rho = spearmanr([0] + [lv for lv, _ in rows], [pristine[scene]] + [s for _, s in rows])[0]
            within.setdefault(kind, []).append(-rho if np.isfinite(rho) else 0.0)
            above.setdefault(kind, []).extend(pristine[scene] > s for _, s in rows)
        return within, above
