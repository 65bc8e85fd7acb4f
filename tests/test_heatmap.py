"""Heatmaps: shapes/range, maps land where the model looks, the views policy (same views as the
score, local-score maps on the fixed scale), MSCN masking, overlays with a colour bar, and the
route / CLI / API with a views checkpoint."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torch import nn
from torch.nn import functional as F

from metaiqa.cli import main
from metaiqa.data.transforms import to_viewing_scale, view_boxes
from metaiqa.errors import InvalidInput
from metaiqa.inference.heatmap import (
    MAX_LOCAL_VIEWS,
    UnknownHeatmapMethod,
    coarse_grid,
    colorize,
    compute_heatmap,
    default_method,
    explain,
    find_cam_layer,
    gradcam_heatmap,
    gradient_heatmap,
    local_boxes,
    overlay_png,
)
from metaiqa.inference.overlay import COLOUR_MAPS, blend
from metaiqa.inference.scorer import Scorer
from metaiqa.models import create_model, save_checkpoint
from tests.conftest import natural_image

VIEWS = {"policy": "views", "scale": 96, "size": 64, "max_views": 16}

POLICIES = [{"policy": "center_crop", "size": 48}, {"policy": "resize", "size": 40}, {"policy": "native"}]


def quadrant_mass(heat: np.ndarray) -> np.ndarray:
    """Share of the map in [top-left, top-right, bottom-left, bottom-right]."""
    h, w = heat.shape
    parts = [heat[: h // 2, : w // 2], heat[: h // 2, w // 2 :], heat[h // 2 :, : w // 2], heat[h // 2 :, w // 2 :]]
    m = np.array([p.sum() for p in parts])
    return m / m.sum()


class TopRightModel(nn.Module):
    """Its logit depends only on the pixels of the top-right quadrant of its input."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(3.0))

    def logits(self, x):
        h, w = x.shape[-2:]
        return self.w * (x[..., : h // 2, w // 2 :] ** 2).mean(dim=(1, 2, 3))

    def forward(self, x):
        return torch.sigmoid(self.logits(x))


class RedChannelModel(nn.Module):
    """A 1x1 conv reading the red channel, then a global mean: Grad-CAM must follow the red."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x).mean(dim=(1, 2, 3))


def smooth_with_noisy_quadrant(quadrant: int, seed: int, size: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.5 + 0.2 * np.sin(3 * x + y), 0.5 + 0.2 * np.cos(2 * y - x), 0.4 + 0.1 * x], -1)
    r, c = divmod(quadrant, 2)
    half = size // 2
    img[r * half : (r + 1) * half, c * half : (c + 1) * half] += np.random.default_rng(seed).normal(0, 0.08, (half, half, 3))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_model("metaiqa_tiny").eval()


@pytest.mark.parametrize("preprocess", POLICIES, ids=lambda p: p["policy"])
@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def test_shape_range_finite(tiny, preprocess, method):
    img = natural_image(96, seed=3)[:, :80]  # non-square: catches transposed maps
    heat = compute_heatmap(tiny, img, preprocess, method)
    assert heat.shape == (96, 80) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() == pytest.approx(1.0) and heat.std() > 0.01


@pytest.mark.parametrize("preprocess", POLICIES, ids=lambda p: p["policy"])
def test_gradient_map_lands_where_the_model_looks(preprocess):
    img = natural_image(96, seed=5)[:64]  # 64 x 96
    mass = quadrant_mass(gradient_heatmap(TopRightModel(), img, preprocess))
    assert mass[1] > 0.9, mass


def test_gradcam_follows_the_activation():
    img = np.full((64, 96, 3), 20, np.uint8)
    img[40:60, 10:40] = (250, 20, 20)  # red patch, bottom-left
    model = RedChannelModel()
    assert find_cam_layer(model) is model.conv
    heat = gradcam_heatmap(model, img, {"policy": "native"})
    assert quadrant_mass(heat)[2] > 0.6
    assert heat[50, 25] == pytest.approx(1.0, abs=0.05) and heat[10, 80] < 0.2
    neg = gradcam_heatmap(model, img, {"policy": "native"}, sign="negative")
    assert neg.max() == 0.0  # every activation pushes the score up: nothing pulls it down


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mscn_front_end_masks_noise_in_gradient_map(seed):
    """The MSCN front end divides by local contrast, so the score is least sensitive where the
    image is already noisy (contrast masking): that quadrant must get the least gradient mass,
    for any weights behind it. A misplaced, flipped or constant map fails this."""
    torch.manual_seed(seed)
    model = create_model("metaiqa_tiny").eval()
    quadrant = seed % 4
    mass = quadrant_mass(gradient_heatmap(model, smooth_with_noisy_quadrant(quadrant, seed), {"policy": "native"}))
    others = np.delete(mass, quadrant)
    assert mass[quadrant] < 0.5 * others.min(), mass


def test_find_cam_layer_prefers_resnet_layer4(tiny):
    resnet = create_model("metaiqa_resnet18")
    assert find_cam_layer(resnet) is resnet.backbone.layer4
    assert find_cam_layer(tiny) is [m for m in tiny.modules() if isinstance(m, nn.Conv2d)][-1]
    with pytest.raises(InvalidInput, match="convolutional"):
        find_cam_layer(TopRightModel())


def test_model_left_untouched_and_works_under_inference_mode(tiny):
    tiny.train()
    img = natural_image(64, seed=1)
    with torch.inference_mode():
        g = gradient_heatmap(tiny, img, POLICIES[0])
        c = gradcam_heatmap(tiny, img, POLICIES[0])
    assert tiny.training  # mode restored
    assert all(p.grad is None for p in tiny.parameters())
    layer = find_cam_layer(tiny)
    assert not layer._forward_hooks
    tiny.eval()
    np.testing.assert_allclose(g, gradient_heatmap(tiny, img, POLICIES[0]), atol=1e-6)  # eval was used
    assert np.isfinite(c).all()


def test_large_image_downscaled_but_map_has_original_size():
    img = natural_image(128, seed=2)
    heat = gradient_heatmap(TopRightModel(), img, {"policy": "native"}, max_side=64)
    assert heat.shape == (128, 128) and quadrant_mass(heat)[1] > 0.9


def test_constant_model_gives_zero_map():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0])

    heat = gradient_heatmap(Constant(), natural_image(64), {"policy": "native"})
    assert heat.shape == (64, 64) and not heat.any()


def test_bad_inputs(tiny):
    with pytest.raises(UnknownHeatmapMethod, match="nope"):
        compute_heatmap(tiny, natural_image(64), POLICIES[0], "nope")
    with pytest.raises(InvalidInput, match="float"):
        gradient_heatmap(tiny, natural_image(64).astype(float), POLICIES[0])
    with pytest.raises(InvalidInput, match="policy"):
        gradient_heatmap(tiny, natural_image(64), {"policy": "zoom"})
    with pytest.raises(InvalidInput, match="sign"):
        gradcam_heatmap(tiny, natural_image(64), POLICIES[0], sign="both")


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_overlay_png_blend():
    img = natural_image(64, seed=4)
    heat = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    decoded = decode_png(overlay_png(img, heat, legend=False))
    assert decoded.shape == (64, 64, 3) and decoded.dtype == np.uint8
    expected = np.round(0.55 * img + 0.45 * colorize(heat).astype(np.float32))
    assert np.abs(decoded.astype(int) - expected).max() <= 1
    np.testing.assert_array_equal(decode_png(overlay_png(img, heat, alpha=0.0, legend=False)), img)
    np.testing.assert_array_equal(decode_png(overlay_png(img, heat, alpha=1.0, legend=False)), colorize(heat))
    small = decode_png(overlay_png(img, heat[::4, ::4], legend=False))  # heat resized to fit
    assert small.shape == (64, 64, 3)
    with pytest.raises(InvalidInput, match="alpha"):
        overlay_png(img, heat, alpha=1.5)
    with pytest.raises(InvalidInput, match="2-D"):
        overlay_png(img, heat[None])
    with pytest.raises(InvalidInput, match="colour map"):
        overlay_png(img, heat, method="magic")


def bar_row(strip: np.ndarray, lut: np.ndarray) -> int | None:
    """A row of `strip` whose middle runs through the colours of `lut` in order, over most of it."""
    w = strip.shape[1]
    for y in range(strip.shape[0]):
        row = strip[y, w // 8 : w - w // 8].astype(int)
        dist = np.abs(row[:, None, :] - lut[None].astype(int)).max(axis=2)  # (pixels, 256)
        idx = dist.argmin(axis=1)
        if dist.min(axis=1).max() <= 10 and np.all(np.diff(idx) >= -3) and idx[-1] - idx[0] > 150:
            return y
    return None


@pytest.mark.parametrize("method", ["views", "gradient"])
def test_overlay_png_has_colour_bar_and_score(method):
    img = natural_image(160, seed=4)[:120]
    heat = np.full((120, 160), 0.3, np.float32)
    png = decode_png(overlay_png(img, heat, method=method, score=0.25))
    assert png.shape[1] == 160 and png.shape[0] > 120 + 20  # the legend strip goes below the image
    np.testing.assert_array_equal(png[:120], blend(img, heat, method=method))  # the photo is not covered
    strip = png[120:]
    assert bar_row(strip, COLOUR_MAPS[method]) is not None  # a colour bar of this method's map
    other = "gradient" if method == "views" else "views"
    assert bar_row(strip, COLOUR_MAPS[other]) is None
    assert (decode_png(overlay_png(img, heat, method=method, score=0.75))[120:] != strip).any()  # score drawn
    assert (strip < 60).all(axis=2).sum() > 50  # dark text on the white strip


def test_score_colours_are_fixed_red_bad_blue_good():
    lut = COLOUR_MAPS["views"]
    red, blue = lut[0].astype(int), lut[255].astype(int)
    assert red[0] > 120 and red[2] < 80 and blue[2] > 120 and blue[0] < 80
    np.testing.assert_array_equal(colorize(np.array([[0.0, 1.0]]), "views")[0], lut[[0, 255]])


def test_colormap_and_grid():
    lut = colorize(np.linspace(0, 1, 256))
    assert lut.shape == (256, 3) and len({tuple(c) for c in lut}) > 200
    assert lut[0].sum() < lut[128].sum()  # dark at 0, bright in the middle
    np.testing.assert_array_equal(colorize(np.array([-1.0, np.nan, 2.0])), lut[[0, 0, 255]])
    grid = coarse_grid(np.ones((100, 50), np.float32), 32)
    assert grid.shape == (32, 32) and np.allclose(grid, 1.0)
    assert coarse_grid(np.ones((10, 50)), 32).shape == (10, 32)


# --- the views policy: maps over the same views as the score ---------------------------------


class Brightness(nn.Module):
    """Score = mean brightness of the view (no `logits`): every view's score is known exactly."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.w * x.mean(dim=(1, 2, 3))


class Sharpness(nn.Module):
    """logit = gain * (mean |Laplacian| - offset): blurring lowers the score of every view."""

    def __init__(self, gain: float = 60.0, offset: float = 0.03):
        super().__init__()
        self.gain, self.offset = gain, offset
        self.register_buffer("kernel", torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3))

    def logits(self, x):
        lap = F.conv2d(x.mean(dim=1, keepdim=True), self.kernel)
        return self.gain * (lap.abs().mean(dim=(1, 2, 3)) - self.offset)

    def forward(self, x):
        return torch.sigmoid(self.logits(x))


def blurred(image: np.ndarray, radius: float = 3) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def wide(height: int, width: int, value: int = 20) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


@pytest.fixture(scope="module")
def views_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("views") / "whole.safetensors"
    return save_checkpoint(path, create_model("metaiqa_tiny"), model_name="metaiqa_tiny", preprocess=VIEWS)


IMAGES = {  # (height, width, preprocess overrides): plain, downscaled, panorama over the view cap
    "plain": (96, 140, {}),
    "downscaled": (200, 280, {}),
    "capped": (64, 700, {"max_views": 3}),
}


@pytest.mark.parametrize("case", IMAGES)
@pytest.mark.parametrize("method", ["views", "gradient", "gradcam"])
def test_score_equals_the_scorers(views_ckpt, method, case):
    h, w, extra = IMAGES[case]
    scorer = Scorer.from_checkpoint(views_ckpt, preprocess={**VIEWS, **extra})
    img = np.ascontiguousarray(np.tile(natural_image(96, seed=7), (3, 8, 1))[:h, :w])
    res = explain(scorer.model, img, scorer.preprocess, method)
    assert res.score == pytest.approx(scorer.score_arrays([img])[0], abs=1e-5)
    assert res.heat.shape == (h, w) and res.heat.dtype == np.float32
    assert np.isfinite(res.heat).all() and 0.0 <= res.heat.min() and res.heat.max() <= 1.0
    seen = to_viewing_scale(img, VIEWS["scale"], VIEWS["size"])
    policy = view_boxes(*seen.shape[:2], VIEWS["size"], scorer.preprocess["max_views"])
    assert res.views == (len(policy) if method != "views" else len(local_boxes(*seen.shape[:2], VIEWS["size"])))


def test_gradient_covers_exactly_the_policys_views():
    """One view (max_views=1) of a 4:1 image downscaled 2x: the map is that view's box in the
    original image, and nothing outside it (the score does not depend on those pixels)."""
    pre = {"policy": "views", "scale": 64, "size": 64, "max_views": 1}
    img = natural_image(128, seed=2)[:, :, :]
    img = np.ascontiguousarray(np.tile(img, (1, 4, 1)))  # 128 x 512 -> frame 64 x 256, box cols 96..160
    res = explain(Brightness(), img, pre, "gradient")
    assert res.views == 1 and res.score == pytest.approx(Scorer(Brightness(), pre).score_arrays([img])[0], abs=1e-6)
    assert res.heat[:, 200:312].min() > 0.9  # box cols 192..320 in the original
    assert res.heat[:, :170].max() < 1e-3 and res.heat[:, 345:].max() < 1e-3


def test_gradcam_follows_the_activation_inside_the_scored_view_only():
    pre = {"policy": "views", "scale": 64, "size": 64, "max_views": 1}
    img = wide(64, 256)
    img[20:44, 110:140] = (250, 20, 20)  # inside the one view (cols 96..160)
    img[20:44, 10:40] = (250, 20, 20)  # outside it: not part of the score
    heat = gradcam_heatmap(RedChannelModel(), img, pre)
    assert heat[32, 125] == pytest.approx(1.0, abs=0.05)
    assert heat[:, :90].max() == 0.0 and heat[:, 170:].max() == 0.0


def test_default_method_follows_the_policy():
    assert default_method(VIEWS) == "views"
    assert default_method({"policy": "center_crop", "size": 224}) == "gradient"
    img = natural_image(96, seed=1)
    res = explain(Brightness(), img, VIEWS)
    assert res.method == "views" and res.scale == "absolute" and "fixed 0-1" in res.legend
    assert explain(Brightness(), img, POLICIES[0]).scale == "relative"
    np.testing.assert_array_equal(compute_heatmap(Brightness(), img, VIEWS), res.heat)


# --- the views map: local scores on the fixed 0-1 scale ---------------------------------------


@pytest.mark.parametrize("preprocess", [VIEWS, {"policy": "center_crop", "size": 48}], ids=["views", "center_crop"])
@pytest.mark.parametrize("grey", [51, 204])
def test_views_map_is_in_score_units_not_normalised(preprocess, grey):
    """A view's score is its brightness: a uniform grey of 0.2 maps to 0.2 everywhere, 0.8 to 0.8
    (per-map max normalisation would give 1, or 0, for both)."""
    res = explain(Brightness(), wide(90, 150, grey), preprocess, "views")
    np.testing.assert_allclose(res.heat, grey / 255, atol=1e-6)
    assert res.score == pytest.approx(grey / 255, abs=1e-6)


def test_views_map_values_are_the_local_scores():
    img = wide(64, 192, 40)
    img[:, 128:] = 220  # bright right third
    res = explain(Brightness(), img, {"policy": "center_crop", "size": 64}, "views")
    assert res.heat[:, :40].max() == pytest.approx(40 / 255, abs=1e-3)  # covered by dark views only
    assert res.heat[:, 160:].min() == pytest.approx(220 / 255, abs=1e-3)
    assert np.all(np.diff(res.heat[32]) >= -1e-6)  # rises left to right, no overshoot


@pytest.mark.parametrize("preprocess", [VIEWS, {"policy": "center_crop", "size": 64}], ids=["views", "center_crop"])
def test_uniform_damage_lowers_the_map_everywhere(preprocess):
    img = np.ascontiguousarray(np.tile(natural_image(96, seed=3), (2, 3, 1)))  # 192 x 288
    clean = explain(Sharpness(), img, preprocess, "views")
    damaged = explain(Sharpness(), blurred(img), preprocess, "views")
    assert 0.2 < clean.score < 0.98 and damaged.score < clean.score - 0.2
    assert (damaged.heat < clean.heat).all()


def test_local_damage_shows_where_it_is():
    img = np.ascontiguousarray(np.tile(natural_image(96, seed=3), (2, 4, 1)))  # 192 x 384
    img[:, 192:] = blurred(img)[:, 192:]  # right half blurred
    heat = explain(Sharpness(), img, VIEWS, "views").heat
    clean = explain(Sharpness(), np.ascontiguousarray(np.tile(natural_image(96, seed=3), (2, 4, 1))), VIEWS, "views")
    assert heat[:, :96].mean() > heat[:, -96:].mean() + 0.2
    assert heat[:, -96:].mean() < clean.heat[:, -96:].mean() - 0.2
    np.testing.assert_allclose(heat[:, :40], clean.heat[:, :40], atol=1e-6)  # views that miss the blur


def test_bundled_prior_map_is_lower_for_a_blurred_photo():
    """A trained model: metaiqa-prior (center_crop, native-scale 224 crops) on a CC0 photo."""
    from metaiqa.models.pretrained import PRIOR_MODEL, default_checkpoint_path

    path = default_checkpoint_path(PRIOR_MODEL)
    if not path.is_file():
        pytest.skip(f"{path} is not in this build")
    scorer = Scorer.from_checkpoint(path)
    photo = Image.open("tests/data/dandelion_cc0.png").convert("RGB")
    clean = np.asarray(photo)
    damaged = np.asarray(photo.filter(ImageFilter.GaussianBlur(4)))
    a = explain(scorer.model, clean, scorer.preprocess, "views", limit=4)
    b = explain(scorer.model, damaged, scorer.preprocess, "views", limit=4)
    assert a.score == pytest.approx(scorer.score_arrays([clean])[0], abs=1e-5)
    assert b.heat.mean() < a.heat.mean() - 0.2 and (b.heat < a.heat).mean() > 0.95


def test_local_boxes_cover_refine_and_stay_bounded():
    boxes = local_boxes(384, 512, 224)
    tops, lefts = sorted({t for t, _ in boxes}), sorted({lf for _, lf in boxes})
    assert max(np.diff(tops).max(), np.diff(lefts).max()) <= 112  # stride <= size / 2
    assert set(view_boxes(384, 512, 224, 16)) <= set(boxes)  # the policy's own views are among them
    covered = np.zeros((384, 512), bool)
    for t, lf in boxes:
        covered[t : t + 224, lf : lf + 224] = True
    assert covered.all()
    for h, w in [(384, 4608), (3000, 4000), (224, 224)]:
        assert 1 <= len(local_boxes(h, w, 224)) <= MAX_LOCAL_VIEWS
    assert len(local_boxes(3000, 4000, 224, limit=6)) <= 6
    with pytest.raises(InvalidInput, match="limit"):
        local_boxes(300, 300, 224, limit=0)


def test_sparse_grid_leaves_no_gaps():
    """A large native image with few local views: uncovered pixels take the nearest view's score."""
    img = wide(400, 600, 128)
    img[:, 300:] = 30
    res = explain(Brightness(), img, {"policy": "center_crop", "size": 48}, "views", limit=4)
    assert res.views == 4 and res.heat.min() > 0.1  # no zero gaps
    assert res.heat[:, :250].min() == pytest.approx(128 / 255, abs=1e-3)
    assert res.heat[:, 350:].max() == pytest.approx(30 / 255, abs=1e-3)


# --- route, CLI and API with a views checkpoint ------------------------------------------------


@pytest.fixture(scope="module")
def views_client(views_ckpt):
    from fastapi.testclient import TestClient
    from metaiqa.service.app import create_app
    from service_helpers import settings_for

    with TestClient(create_app(settings_for(views_ckpt))) as c:
        yield c


def png_of(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("method", [None, "gradient", "gradcam"])
def test_route_with_a_views_checkpoint(views_client, views_ckpt, method):
    img = np.ascontiguousarray(natural_image(128, seed=5)[:100])
    query = "" if method is None else f"?method={method}"
    r = views_client.post(f"/v1/heatmap{query}", files={"image": ("a.png", png_of(img), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = Scorer.from_checkpoint(views_ckpt).score_arrays([img])[0]
    assert body["method"] == (method or "views") and body["score"] == pytest.approx(expected, abs=1e-5)
    assert body["scale"] == ("absolute" if method is None else "relative") and body["legend"]
    grid = np.asarray(body["grid"])
    assert grid.shape == (body["grid_height"], body["grid_width"]) and 0 <= grid.min() and grid.max() <= 1
    r = views_client.post(
        f"/v1/heatmap{query}", files={"image": ("a.png", png_of(img), "image/png")}, headers={"Accept": "image/png"}
    )
    assert r.status_code == 200 and r.headers["x-heatmap-method"] == (method or "views")
    assert float(r.headers["x-score"]) == pytest.approx(expected, abs=1e-5)
    png = decode_png(r.content)
    assert png.shape[1] == 128 and png.shape[0] > 100  # the image plus the legend strip


def test_cli_heatmaps_with_a_views_checkpoint(capsys, views_ckpt, tmp_path):
    img = np.ascontiguousarray(natural_image(128, seed=6)[:96])
    Image.fromarray(img).save(tmp_path / "p.png")
    for method, flag in [("views", []), ("gradient", ["--heatmap-method", "gradient"])]:
        code = main(["score", str(tmp_path / "p.png"), "--model", str(views_ckpt), "--format", "json",
                     "--heatmap-dir", str(tmp_path / "heat"), *flag])  # fmt: skip
        (row,) = json.loads(capsys.readouterr().out)
        assert code == 0 and row["heatmap"].endswith(f"p.{method}.png")
        png = decode_png(open(row["heatmap"], "rb").read())
        assert png.shape[1] == 128 and png.shape[0] > 96
        assert bar_row(png[96:], COLOUR_MAPS[method]) is not None


def test_api_heatmap_uses_the_library_for_views(views_ckpt):
    import metaiqa

    model = metaiqa.load(views_ckpt)
    img = np.ascontiguousarray(np.tile(natural_image(96, 1), (2, 3, 1)))
    heat, score = model.heatmap(img)
    res = explain(model.scorer.model, img, model.preprocess, "views")
    np.testing.assert_array_equal(heat, res.heat)
    assert score == pytest.approx(model.score(img), abs=1e-5)
    grad, score_g = model.heatmap(img, method="gradient")
    assert grad.shape == img.shape[:2] and grad.max() == pytest.approx(1.0) and score_g == pytest.approx(score)


def test_readme_page_and_overlay_describe_the_maps_in_the_same_words():
    import re
    from pathlib import Path

    from metaiqa.inference.heatmap import LEGENDS

    root = Path(__file__).resolve().parents[1]

    def norm(text: str) -> str:
        text = re.sub(r'"\s*\+\s*"', "", text)  # JS string concatenation across lines
        return " ".join(text.replace("–", "-").lower().split())

    readme = norm((root / "README.md").read_text())
    page_js = norm((root / "service/static/app.js").read_text())
    phrases = {
        "views": "on the fixed 0-1 score scale (red = 0, bad; yellow = 0.5; blue = 1, good); comparable between images",
        "gradient": "relative to this image (red = its most sensitive pixels): where a change would move the score "
        "most, not where damage is; not comparable between images",
        "gradcam": "relative to this image (red = the regions carrying the score most); coarse",
    }
    for method, phrase in phrases.items():
        for where, text in [("LEGENDS", norm(LEGENDS[method])), ("README", readme), ("app.js", page_js)]:
            assert phrase in text, (method, where)
    html = (root / "service/static/index.html").read_text()
    assert re.search(r'<option value="views" selected>', html)  # the page's default
