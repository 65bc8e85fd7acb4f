"""The human-rated photos of a joint run: the seeded validation carve-out, the best-rated ones,
and every photo read once at the viewing scale (`metaiqa.meta.joint`, benchmarks/photo_orderings.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from metaiqa.data.samples import DatasetError
from metaiqa.data.transforms import to_viewing_scale

if TYPE_CHECKING:
    from metaiqa.meta.joint import JointConfig


def human_split(cfg: JointConfig):
    """(train, val) samples of the human data: the seeded carve-out the trainer selects on."""
    from metaiqa.data.formats import parse_data_spec
    from metaiqa.meta.finetune import check_samples

    samples = parse_data_spec(cfg.human)
    check_samples(samples, cfg.human)
    order = np.random.default_rng(cfg.seed).permutation(len(samples))
    n_val = max(3, int(round(cfg.val_fraction * len(samples))))
    if len(samples) - n_val < cfg.batch_human:
        raise DatasetError(f"{cfg.human}: {len(samples)} images are too few for a {cfg.batch_human}-image batch + validation")
    val = [samples[i] for i in order[:n_val]]
    train = [samples[i] for i in order[n_val:]]
    return train, val


def best_rated(samples, n: int) -> np.ndarray:
    """Indices of the n samples with the highest MOS, best first (ties in input order)."""
    return np.argsort([-s.mos for s in samples], kind="stable")[:n]


def read_scaled(samples, cfg: JointConfig, progress: bool) -> list[np.ndarray]:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from metaiqa.meta.images import read_rgb

    def one(s):
        return to_viewing_scale(read_rgb(s.path), cfg.scale, cfg.crop_size)

    with ThreadPoolExecutor(max_workers=cfg.threads or 1) as pool:
        it = pool.map(one, samples)
        return list(tqdm(it, total=len(samples), desc="reading photos", unit="img", disable=not progress, leave=False))
