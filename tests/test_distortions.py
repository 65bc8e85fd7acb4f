"""The distortion engine: registry, all KADID types, levels, determinism, input checks."""

import numpy as np
import pytest
from conftest import natural_image
from PIL import features

from metaiqa.distortions import (
    KADID_TYPES,
    LEVELS,
    BadDistortionOutput,
    InvalidImage,
    InvalidLevel,
    UnknownDistortion,
    apply,
    list_distortions,
    register_distortion,
    unregister_distortion,
)
from metaiqa.distortions._ops import lab_to_rgb, rgb_to_lab, rgb_to_ycbcr, ycbcr_to_rgb

IMG = natural_image(64, seed=3)


def test_all_kadid_types_registered_in_kadid_order():
    expected = [t for t in KADID_TYPES if t != "jpeg2000" or features.check("jpg_2000")]
    assert list_distortions()[: len(expected)] == expected
    assert len(expected) >= 24


@pytest.mark.parametrize("name", list_distortions())
def test_every_type_is_deterministic_and_shape_preserving(name):
    img = natural_image(64, seed=3)[:, :56].copy()  # non-square on purpose
    before = img.copy()
    outs = [apply(name, img, level, np.random.default_rng(7)) for level in LEVELS]
    again = apply(name, img, 5, np.random.default_rng(7))
    np.testing.assert_array_equal(img, before)  # input untouched
    for out in outs:
        assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(outs[-1], again)
    assert not np.array_equal(outs[-1], img), f"{name} level 5 left the image unchanged"


@pytest.mark.parametrize("name", ["white_noise", "impulse_noise", "jitter", "color_block", "motion_blur"])
def test_random_types_depend_on_the_seed(name):
    a = apply(name, IMG, 4, np.random.default_rng(1))
    b = apply(name, IMG, 4, np.random.default_rng(2))
    assert not np.array_equal(a, b)


def test_int_seed_and_default_rng_are_reproducible():
    np.testing.assert_array_equal(apply("white_noise", IMG, 3, 5), apply("white_noise", IMG, 3, np.random.default_rng(5)))
    np.testing.assert_array_equal(apply("white_noise", IMG, 3), apply("white_noise", IMG, 3))


def test_impulse_noise_levels_are_nested():
    """Common random numbers: the samples hit at level 2 are a subset of those hit at level 4."""
    lo = apply("impulse_noise", IMG, 2, np.random.default_rng(0)) != IMG
    hi = apply("impulse_noise", IMG, 4, np.random.default_rng(0)) != IMG
    assert lo.any() and not (lo & ~hi).any()


@pytest.mark.parametrize("level", [0, 6, -1, 2.5, "3", True, None])
def test_bad_levels_are_refused_with_the_value(level):
    with pytest.raises(InvalidLevel, match="1..5") as err:
        apply("jpeg", IMG, level, np.random.default_rng(0))
    assert repr(level) in str(err.value)


def test_numpy_integer_level_is_accepted():
    assert apply("jpeg", IMG, np.int64(2), np.random.default_rng(0)).shape == IMG.shape


@pytest.mark.parametrize(
    "image",
    [IMG.astype(np.float32), IMG[..., 0], IMG[..., :2], np.zeros((4, 4, 3), np.uint8), IMG.tolist()],
    ids=["float", "gray", "2ch", "tiny", "list"],
)
def test_bad_images_are_refused(image):
    with pytest.raises(InvalidImage):
        apply("jpeg", image, 1, np.random.default_rng(0))


def test_unknown_distortion_names_the_choices():
    with pytest.raises(UnknownDistortion, match="'bogus'.*gaussian_blur"):
        apply("bogus", IMG, 1, np.random.default_rng(0))


def test_user_distortion_can_be_registered_applied_and_removed():
    @register_distortion("test_invert")
    def invert(image, level, rng):
        return 255 - image

    try:
        assert list_distortions()[-1] == "test_invert"
        np.testing.assert_array_equal(apply("test_invert", IMG, 1, np.random.default_rng(0)), 255 - IMG)
        with pytest.raises(ValueError, match="already registered"):
            register_distortion("test_invert")(invert)
    finally:
        unregister_distortion("test_invert")
    assert "test_invert" not in list_distortions()


def test_broken_user_distortion_is_caught():
    register_distortion("test_broken")(lambda image, level, rng: image[:10])
    try:
        with pytest.raises(BadDistortionOutput, match="test_broken"):
            apply("test_broken", IMG, 1, np.random.default_rng(0))
    finally:
        unregister_distortion("test_broken")


def test_float_output_of_user_distortion_is_converted():
    register_distortion("test_float")(lambda image, level, rng: image.astype(np.float32) / 255.0 * 0.5)
    try:
        out = apply("test_float", IMG, 1, np.random.default_rng(0))
        assert out.dtype == np.uint8
        assert abs(int(out.max()) - int(IMG.max()) // 2) <= 1
    finally:
        unregister_distortion("test_float")


def test_colour_space_round_trips():
    x = IMG.astype(np.float32) / 255
    np.testing.assert_allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-4)
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-5)
    lab = rgb_to_lab(np.array([[[1.0, 1.0, 1.0]]]))
    np.testing.assert_allclose(lab[0, 0], [100.0, 0.0, 0.0], atol=1e-3)


def test_hsv_desaturation_keeps_value_and_reaches_grey():
    grey = apply("color_saturation_hsv", IMG, 5, np.random.default_rng(0))
    assert (grey.max(axis=-1) - grey.min(axis=-1)).max() <= 1
    np.testing.assert_allclose(grey.max(axis=-1), IMG.max(axis=-1), atol=1)
