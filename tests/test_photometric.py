"""The photometric-statistics branch (`global_stats`): features, zero start, training, save/load, ONNX."""

import numpy as np
import pytest
import torch
from conftest import natural_image

from metaiqa.distortions import apply
from metaiqa.models import create_model, load_checkpoint, save_checkpoint
from metaiqa.models.photometric import FEATURE_NAMES, N_FEATURES, PhotometricHead, photometric_features
from metaiqa.models.resnet_iqa import expand_state_dict


def _tensor(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def _feature(x: torch.Tensor, name: str) -> torch.Tensor:
    return photometric_features(x)[:, FEATURE_NAMES.index(name)]


def test_features_have_one_value_per_name_and_image():
    x = torch.rand(3, 3, 40, 52)
    assert photometric_features(x).shape == (3, N_FEATURES) and len(set(FEATURE_NAMES)) == N_FEATURES


def test_a_mild_mean_shift_moves_the_black_point_either_way():
    img = natural_image(96, seed=3)
    img[:20, :20] = 0  # some true black
    up = apply("mean_shift", img, 1, np.random.default_rng(2))  # seed 2 draws "up", seed 0 "down"
    down = apply("mean_shift", img, 1, np.random.default_rng(0))
    assert up.mean() > img.mean() > down.mean()
    x = _tensor(img, up, down)
    black = _feature(x, "luma_below_0.002")
    assert black[0] > 0.03 and black[1] == 0  # the black corner is grey now
    shadows = _feature(x, "luma_below_0.200")
    assert shadows[2] > shadows[0]  # more of the picture in the shadows


def test_chroma_bleeding_lowers_the_colour_to_luminance_detail_ratio():
    img = natural_image(96, seed=4)
    ratios = [_feature(_tensor(apply("color_diffusion", img, lv, np.random.default_rng(0))),
                       "chroma_detail_ratio").item() for lv in (1, 3, 5)]
    pristine = _feature(_tensor(img), "chroma_detail_ratio").item()
    assert pristine > ratios[0] > ratios[1] > ratios[2]


def test_desaturation_lowers_the_chroma_mean():
    img = natural_image(96, seed=5)
    grey = apply("color_saturation_hsv", img, 3, np.random.default_rng(0))
    chroma = _feature(_tensor(img, grey), "chroma_mean")
    assert chroma[1] < 0.5 * chroma[0]


def test_a_new_branch_adds_nothing_until_trained():
    head = PhotometricHead()
    assert torch.equal(head(torch.rand(4, 3, 32, 32)), torch.zeros(4))
    torch.manual_seed(0)
    plain = create_model("metaiqa_tiny").eval()
    wide = create_model("metaiqa_tiny", global_stats=True).eval()
    wide.load_state_dict(expand_state_dict(plain.state_dict(), wide))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(wide(x), plain(x))


def test_the_branch_learns_what_the_convolutions_are_not_given():
    """Frozen backbone and head: only the branch trains, and it learns to rank exposure."""
    torch.manual_seed(0)
    model = create_model("metaiqa_tiny", global_stats=True)
    assert {n for n in model.head_parameter_names() if n.startswith("stats_head.")}
    branch = [p for n, p in model.named_parameters() if n.startswith("stats_head.")]
    opt = torch.optim.Adam(branch, lr=1e-2)
    imgs = [natural_image(48, seed=s) for s in range(8)]
    pristine = _tensor(*imgs)
    dark = _tensor(*[apply("darken", i, 2, np.random.default_rng(0)) for i in imgs])
    model.eval()  # dropout/BN fixed: the change comes from the branch alone
    for _ in range(60):
        loss = torch.relu(0.5 - (model.logits(pristine) - model.logits(dark))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = [natural_image(48, seed=s) for s in (50, 51, 52)]
    with torch.no_grad():
        gap = model.logits(_tensor(*test)) - model.logits(
            _tensor(*[apply("darken", i, 2, np.random.default_rng(0)) for i in test]))
    assert (gap > 0).all()


def test_checkpoint_round_trip_keeps_the_branch(tmp_path):
    torch.manual_seed(0)
    model = create_model("metaiqa_tiny", global_stats=True)
    torch.nn.init.normal_(model.stats_head.layers[-1].weight)
    path = save_checkpoint(tmp_path / "m.safetensors", model, model_name="metaiqa_tiny",
                           model_kwargs={"global_stats": True}, preprocess={"policy": "center_crop", "size": 32})
    back = load_checkpoint(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(back.model.float().eval()(x), model.eval()(x), atol=2e-3)  # float16 storage


def test_onnx_export_scores_like_torch_with_the_branch(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from metaiqa.inference import Scorer
    from metaiqa.inference.onnx_export import export_onnx

    torch.manual_seed(2)
    model = create_model("metaiqa_tiny", global_stats=True)
    torch.nn.init.normal_(model.stats_head.layers[-1].weight)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model, model_name="metaiqa_tiny",
                           model_kwargs={"global_stats": True}, preprocess={"policy": "center_crop", "size": 48})
    onnx_path = export_onnx(ckpt, tmp_path / "m.onnx")
    images = [natural_image(64, seed=s) for s in range(3)]
    torch_scores = Scorer.from_checkpoint(ckpt).score_arrays(images)
    onnx_scores = Scorer.from_checkpoint(ckpt, backend="onnx", onnx_path=onnx_path).score_arrays(images)
    assert np.abs(np.array(onnx_scores) - np.array(torch_scores)).max() < 0.01
