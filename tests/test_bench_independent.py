"""The independent benchmark's damage code (benchmarks/independent_damage.py): deterministic, monotone.

Fast, offline: a numpy-made test image, no BIQ2021, no ../shared, no network.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import independent_damage as dmg  # noqa: E402


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 96x128 colour image with edges, gradients and texture."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:128].astype(np.float64)
    base = np.stack([40 + 1.2 * x, 60 + 1.5 * y, 120 + 60 * np.sin(x / 7) * np.cos(y / 9)], -1)
    base[20:60, 30:80] += 60  # a bright block with hard edges
    base += rng.normal(0, 4, base.shape)  # fine texture
    return np.clip(base, 0, 255).astype(np.uint8)


def _gradient_energy(img: np.ndarray) -> float:
    g = img.astype(np.float64).mean(-1)
    return float(np.mean(np.diff(g, axis=0) ** 2) + np.mean(np.diff(g, axis=1) ** 2))


@pytest.mark.parametrize("family", list(dmg.FAMILIES))
def test_deterministic_and_monotone(photo, family):
    levels = [dmg.damage(photo, family, lv, seed=5) for lv in range(1, dmg.LEVELS + 1)]
    again = dmg.damage(photo, family, 3, seed=5)
    assert np.array_equal(again, levels[2]), "same seed must give the same image"
    assert all(out.shape == photo.shape and out.dtype == np.uint8 for out in levels)
    err = [np.abs(out.astype(np.float64) - photo).mean() for out in levels]
    assert err[0] > 0, f"{family}: severity 1 changes nothing"
    # On an image this small the two strongest JPEG2000 rates both hit the codec's floor (on real
    # photos they differ); every other step must strictly add error.
    steps = zip(err, err[1:-1] if family == "jpeg2000" else err[1:], strict=False)
    assert all(b > a for a, b in steps), f"{family}: error not increasing: {err}"


@pytest.mark.parametrize("family", ["gaussian_blur", "motion_blur", "defocus"])
def test_blur_removes_detail_step_by_step(photo, family):
    energy = [_gradient_energy(photo)] + [
        _gradient_energy(dmg.damage(photo, family, lv, 1)) for lv in range(1, dmg.LEVELS + 1)
    ]
    assert all(b < a for a, b in zip(energy, energy[1:], strict=False)), energy


def test_photometric_families_move_the_right_statistic(photo):
    def stat(family, fn):
        return [fn(photo)] + [fn(dmg.damage(photo, family, lv, 0)) for lv in range(1, dmg.LEVELS + 1)]

    def chroma(img):
        return float(np.abs(img.astype(np.float64) - img.mean(-1, keepdims=True)).mean())

    def decreasing(v):
        return all(b < a for a, b in zip(v, v[1:], strict=False))

    assert decreasing(stat("contrast", lambda im: float(im.std())))
    assert decreasing(stat("underexposure", lambda im: float(im.mean())))
    assert decreasing([-v for v in stat("overexposure", lambda im: float(im.mean()))])
    assert decreasing(stat("desaturate", chroma))
    assert decreasing(stat("posterize", lambda im: len(np.unique(im))))


def test_noise_changes_with_the_seed(photo):
    a = dmg.damage(photo, "white_noise", 2, seed=1)
    b = dmg.damage(photo, "white_noise", 2, seed=2)
    assert not np.array_equal(a, b)


def test_recipe_fingerprint_is_stable():
    assert dmg.fingerprint() == dmg.fingerprint() and len(dmg.fingerprint()) == 16


def test_summary_interval_resamples_whole_photos():
    import independent

    # photo "a" keeps its pristine version on top in both families, photo "b" in neither
    per = {"blur": {"a": {"srocc": 1.0, "above": 1.0}, "b": {"srocc": -1.0, "above": 0.0}},
           "noise": {"a": {"srocc": 1.0, "above": 1.0}, "b": {"srocc": -1.0, "above": 0.0}}}
    out = independent.summarise(per)
    assert out["all"]["pristine_above"] == 0.5 and out["all"]["families_backwards"] == []
    assert out["all"]["pristine_above_ci95"] == [0.0, 1.0]
    assert independent.summarise(per, ["a"])["all"]["pristine_above_ci95"] == [1.0, 1.0]
