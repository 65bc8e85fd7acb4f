"""The 25 KADID-10k distortion types, in KADID's order (type id = index + 1).

These slugs are the task ids (`Sample.group`) for synthetic data and for KADID-10k alike,
so a prior meta-trained on one can be evaluated per type on the other.
"""

KADID_TYPES: tuple[str, ...] = (
    "gaussian_blur",
    "lens_blur",
    "motion_blur",
    "color_diffusion",
    "color_shift",
    "color_quantization",
    "color_saturation_hsv",
    "color_saturation_lab",
    "jpeg2000",
    "jpeg",
    "white_noise",
    "white_noise_color_component",
    "impulse_noise",
    "multiplicative_noise",
    "denoise",
    "brighten",
    "darken",
    "mean_shift",
    "jitter",
    "non_eccentricity_patch",
    "pixelate",
    "quantization",
    "color_block",
    "high_sharpen",
    "contrast_change",
)


def kadid_type_id(name: str) -> int:
    """1-based KADID type id of a slug (ValueError if it is not a KADID type)."""
    return KADID_TYPES.index(name) + 1
