"""The Python API: metaiqa.load / Model.score / Model.heatmap / metaiqa.list_models."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import metaiqa
from metaiqa.api import Heatmap, ImageFileNotFound, Model, UnreadableFile, UnsupportedInput
from metaiqa.data.transforms import ExtremeAspectRatio
from metaiqa.errors import InvalidInput, MetaIQAError
from metaiqa.inference.decode import ImageTooSmall, NotAnImage
from metaiqa.models import create_model, save_checkpoint
from metaiqa.models import pretrained as pretrained_mod
from metaiqa.models.pretrained import ModelNotFound
from tests.conftest import natural_image

PHOTO = Path(__file__).parent / "data" / "dandelion_cc0.png"


def _tiny(path: Path, preprocess: dict) -> Path:
    """A tiny checkpoint whose last layer is scaled up so different images get clearly different scores."""
    torch.manual_seed(0)
    model = create_model("metaiqa_tiny").eval()
    with torch.no_grad():
        model.head.layers[-1].weight.mul_(300.0)
    return save_checkpoint(path, model, model_name="metaiqa_tiny", preprocess=preprocess)


@pytest.fixture
def models_dir(tmp_path) -> Path:
    folder = tmp_path / "models"
    _tiny(folder / "tiny.safetensors", {"policy": "center_crop", "size": 64})
    _tiny(folder / "tiny-views.safetensors", {"policy": "views", "scale": 64, "size": 48, "max_views": 4})
    return folder


@pytest.fixture
def model(models_dir) -> Model:
    return metaiqa.load(models_dir / "tiny.safetensors")


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


# --- loading ---------------------------------------------------------------------------------


def test_load_by_path_and_by_models_dir_name(models_dir):
    by_path = metaiqa.load(models_dir / "tiny.safetensors")
    by_sidecar = metaiqa.load(str(models_dir / "tiny.json"))
    by_name = metaiqa.load("tiny", models_dir=models_dir)
    assert by_path.name == by_sidecar.name == by_name.name == "tiny"
    assert by_name.preprocess == {"policy": "center_crop", "size": 64}
    assert by_name.info["model"] == "metaiqa_tiny" and len(by_name.info["sha256"]) == 64
    by_name.info["model"] = "changed"  # a copy: the model's metadata stays intact
    assert by_name.info["model"] == "metaiqa_tiny"
    img = natural_image(96, 1)
    assert by_path.score(img) == by_name.score(img)
    assert "tiny" in repr(by_name)


def test_load_none_is_the_bundled_default(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained_mod, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ModelNotFound, match="metaiqa-default"):
        metaiqa.load()
    _tiny(tmp_path / "metaiqa-default.safetensors", {"policy": "center_crop", "size": 64})
    assert metaiqa.load().name == "metaiqa-default"
    assert metaiqa.list_models() == ["metaiqa-default"]


def test_unknown_model_names_the_available_ones(models_dir):
    with pytest.raises(ModelNotFound, match="tiny") as err:
        metaiqa.load("nope", models_dir=models_dir)
    assert "tiny" in err.value.available


def test_list_models_lists_checkpoints_and_architectures_stay_in_models():
    import metaiqa.models

    assert "metaiqa-prior" in metaiqa.list_models()
    assert metaiqa.models.list_models() == ["metaiqa_effnet_lite0", "metaiqa_resnet18", "metaiqa_tiny"]


def test_list_models_with_models_dir(models_dir):
    names = metaiqa.list_models(models_dir)
    assert names[-2:] == ["tiny", "tiny-views"] and "metaiqa-prior" in names
    assert metaiqa.list_models(models_dir / "missing") == metaiqa.list_models()


def test_import_metaiqa_is_light_and_exports_are_lazy():
    code = "import sys, metaiqa; assert not {'torch', 'numpy', 'metaiqa.api'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
    import metaiqa.api
    import metaiqa.models

    assert "load" in dir(metaiqa) and "list_models" in metaiqa.__all__
    assert metaiqa.load is metaiqa.api.load and metaiqa.Model is Model and metaiqa.MetaIQAError is MetaIQAError
    assert metaiqa.list_models is metaiqa.api.list_models
    assert metaiqa.models.list_models is not metaiqa.list_models  # architectures vs checkpoints
    with pytest.raises(AttributeError, match="no_such_thing"):
        metaiqa.no_such_thing  # noqa: B018


# --- scoring every kind of input -------------------------------------------------------------


def test_every_input_kind_gives_the_same_score(model, tmp_path):
    img = natural_image(96, 1)
    path = tmp_path / "a.png"
    Image.fromarray(img).save(path)
    blob = png_bytes(img)
    expected = model.scorer.score_arrays([img])[0]
    kinds = [img, path, str(path), blob, bytearray(blob), memoryview(blob), Image.fromarray(img)]
    for x in kinds:
        got = model.score(x)
        assert isinstance(got, float) and got == pytest.approx(expected, abs=1e-6), type(x)


def test_list_input_keeps_order_and_mixes_kinds(model, tmp_path):
    imgs = [natural_image(96, s) for s in range(4)]
    Image.fromarray(imgs[1]).save(tmp_path / "b.png")
    singles = [model.score(i) for i in imgs]
    assert len(set(singles)) == 4  # the inputs are distinguishable
    mixed = [imgs[0], tmp_path / "b.png", png_bytes(imgs[2]), Image.fromarray(imgs[3])]
    assert model.score(mixed) == pytest.approx(singles, abs=1e-6)
    assert model.score(tuple(mixed), batch_size=1) == pytest.approx(singles, abs=1e-6)
    assert model.score([]) == []


def test_pil_images_are_converted_like_files(model, tmp_path):
    rgba = np.dstack([natural_image(96, 2), np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (96, 1))])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert model.score(Image.fromarray(rgba, "RGBA")) == pytest.approx(model.score(tmp_path / "alpha.png"))
    tall = natural_image(96, 3)[:, :64]
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    Image.fromarray(tall).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "rot.jpg") as opened:
        assert opened.size == (64, 96)
        assert model.score(opened) == pytest.approx(model.score(tmp_path / "rot.jpg"))


# --- bad inputs ------------------------------------------------------------------------------


def test_missing_file_raises_naming_it(model, tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageFileNotFound, match="nope.jpg") as err:
        model.score(missing)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, MetaIQAError)
    with pytest.raises(UnreadableFile, match="Is a directory|cannot read"):
        model.score(tmp_path)


def test_bad_item_of_a_list_is_named_by_position(model, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    good = natural_image(96, 1)
    with pytest.raises(NotAnImage, match=r"^input 1 \(7 bytes\): not a recognised image"):
        model.score([good, b"garbage"])
    with pytest.raises(NotAnImage, match="broken.png"):
        model.score([good, tmp_path / "broken.png"])


@pytest.mark.parametrize(
    ("bad", "error", "pattern"),
    [
        (np.zeros((64, 64, 3), np.float32), UnsupportedInput, "uint8 HxWx3.*float32"),
        (np.zeros((64, 64), np.uint8), UnsupportedInput, "grey image"),
        (np.zeros((64, 64, 4), np.uint8), UnsupportedInput, "alpha"),
        (np.zeros((10, 64, 3), np.uint8), ImageTooSmall, "shorter side 10"),
        (12, UnsupportedInput, "type int"),
        (None, UnsupportedInput, "type NoneType"),
    ],
)
def test_values_of_the_wrong_kind(model, bad, error, pattern):
    with pytest.raises(error, match=pattern):
        model.score(bad)
    with pytest.raises(error, match="input 1"):
        model.score([natural_image(96, 1), bad])


def test_type_errors_are_also_type_errors_and_settings_are_checked(model):
    with pytest.raises(TypeError):
        model.score(object())
    with pytest.raises(InvalidInput, match="batch_size"):
        model.score([natural_image(96, 1)], batch_size=0)
    with pytest.raises(InvalidInput, match="crops"):
        model.score(natural_image(96, 1), crops=0)


def test_policy_refusal_names_the_input(models_dir):
    views = metaiqa.load("tiny-views", models_dir=models_dir)
    strip = np.zeros((40, 40 * 13, 3), np.uint8)
    with pytest.raises(ExtremeAspectRatio, match=r"^input 1 \(array"):
        views.score([natural_image(96, 1), strip])
    with pytest.raises(ExtremeAspectRatio, match="b.png"):
        Image.fromarray(strip).save(models_dir / "b.png")
        views.score(models_dir / "b.png")


# --- heatmaps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def test_heatmap_shape_range_and_score(model, tmp_path, method):
    img = natural_image(96, 2)[:80]
    Image.fromarray(img).save(tmp_path / "h.png")
    result = model.heatmap(tmp_path / "h.png", method=method)
    assert isinstance(result, Heatmap)
    heat, score = result
    assert heat.shape == (80, 96) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    assert score == pytest.approx(model.score(img))


def test_heatmap_for_the_views_policy_covers_the_whole_image(models_dir):
    views = metaiqa.load("tiny-views", models_dir=models_dir)
    img = np.ascontiguousarray(np.tile(natural_image(96, 1), (2, 3, 1)))  # 192 x 288
    heat, score = views.heatmap(img)
    assert heat.shape == (192, 288) and 0.0 <= heat.min() and heat.max() <= 1.0
    assert score == pytest.approx(views.score(img))


def test_heatmap_takes_one_input(model):
    with pytest.raises(UnsupportedInput, match="one input"):
        model.heatmap([natural_image(96, 1)])
    with pytest.raises(NotAnImage, match="^input"):
        model.heatmap(b"nope")
    with pytest.raises(InvalidInput, match="unknown heatmap method"):
        model.heatmap(natural_image(96, 1), method="magic")


# --- the bundled prior -------------------------------------------------------------------------


def test_bundled_prior_loads_and_scores_a_photo():
    prior = metaiqa.load("metaiqa-prior")
    assert prior.name == "metaiqa-prior" and prior.info["model"] == "metaiqa_resnet18"
    score = prior.score(PHOTO)
    assert 0.0 <= score <= 1.0
    with Image.open(PHOTO) as im:
        assert prior.score([im, PHOTO]) == pytest.approx([score, score], abs=1e-6)
