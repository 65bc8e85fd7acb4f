"""Behaviour of the bi-level functions (learn2learn-style checks on tiny networks)."""

import numpy as np
import pytest
import torch
from torch import nn

from metaiqa.meta.bilevel import (
    fomaml_grads,
    forward,
    inner_adapt,
    maml_grads,
    reptile_grads,
    supervised_grads,
)
from metaiqa.meta.losses import Target, iqa_loss, make_loss, ranking_hinge
from metaiqa.models import create_model


def _mse(pred, y):
    return ((pred - y) ** 2).mean()


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 4)
        self.l2 = nn.Linear(4, 1)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x))).squeeze(-1)


def _mlp_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(6, 3, generator=g, dtype=torch.float64)
    ys = torch.randn(6, generator=g, dtype=torch.float64)
    xq = torch.randn(5, 3, generator=g, dtype=torch.float64)
    yq = torch.randn(5, generator=g, dtype=torch.float64)
    return (xs, ys), (xq, yq)


def _tiny_iqa(seed=0):
    torch.manual_seed(seed)
    model = create_model("metaiqa_tiny", dropout=0.0).train()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(8, 3, 32, 32, generator=g)
    y = torch.rand(8, generator=g)
    content = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    return model, (x[:4], Target(y[:4], content[:4])), (x[4:], Target(y[4:], content[4:]))


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_adapted_copy_leaves_prior_untouched(optimizer):
    model, support, _ = _tiny_iqa()
    before = _snapshot(model)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    adapted = inner_adapt(
        model, params, buffers, *support, steps=2, lr=0.1, optimizer=optimizer, loss_fn=make_loss(1.0)
    )
    assert set(adapted) == set(params)
    assert _same(before, _snapshot(model)), "prior parameters or running statistics changed"
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(adapted[k], params[k]) for k in params)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_inner_step_lowers_support_loss(optimizer):
    model, support, _ = _tiny_iqa(3)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    loss_fn = make_loss(0.0)
    lr = 0.05 if optimizer == "sgd" else 1e-3
    adapted = inner_adapt(model, params, buffers, *support, steps=1, lr=lr, optimizer=optimizer, loss_fn=loss_fn)
    b = {k: v.clone() for k, v in buffers.items()}
    before = loss_fn(forward(model, params, b, support[0]), support[1]).item()
    after = loss_fn(forward(model, adapted, b, support[0]), support[1]).item()
    assert after < before


@pytest.mark.parametrize("fn", [maml_grads, fomaml_grads, reptile_grads])
def test_meta_gradients_reach_the_prior(fn):
    model, support, query = _tiny_iqa(1)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    res = fn(model, params, buffers, support, query, steps=2, lr=0.05, loss_fn=make_loss(1.0))
    assert set(res.grads) == set(params)
    assert all(torch.isfinite(g).all() for g in res.grads.values())
    # backbone (first conv) and head (last linear) both receive signal
    first_conv = "backbone.0.weight"
    last = [k for k in params if k.startswith("head.")][-1]
    assert res.grads[first_conv].abs().sum() > 0 and res.grads[last].abs().sum() > 0
    assert len(res.inner_losses) == 2 and res.query_loss > 0
    assert all(p.grad is None for p in model.parameters())


def test_reptile_grad_is_prior_minus_adapted():
    model, support, query = _tiny_iqa(2)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    res = reptile_grads(model, params, buffers, support, query, steps=3, lr=0.1, loss_fn=_mse_t)
    adapted = inner_adapt(model, params, buffers, *support, steps=3, lr=0.1, loss_fn=_mse_t)
    for k in params:
        torch.testing.assert_close(res.grads[k], params[k].detach() - adapted[k])


def _mse_t(pred, t):
    return _mse(pred, t.y)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_maml_matches_finite_differences_and_differs_from_fomaml(optimizer):
    torch.manual_seed(0)
    model = TinyMLP().double()
    support, query = _mlp_data()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    kw = dict(steps=2, lr=0.3 if optimizer == "sgd" else 0.05, optimizer=optimizer, loss_fn=_mse)
    maml = maml_grads(model, params, {}, support, query, **kw).grads
    fo = fomaml_grads(model, params, {}, support, query, **kw).grads

    def objective(p):
        adapted = inner_adapt(model, p, {}, *support, **kw)
        return _mse(forward(model, adapted, {}, query[0]), query[1]).item()

    h = 1e-6
    for name, value in params.items():
        fd = torch.zeros_like(value)
        for i in range(value.numel()):
            plus = {k: v.clone() for k, v in params.items()}
            minus = {k: v.clone() for k, v in params.items()}
            plus[name].view(-1)[i] += h
            minus[name].view(-1)[i] -= h
            fd.view(-1)[i] = (objective(plus) - objective(minus)) / (2 * h)
        torch.testing.assert_close(maml[name], fd, rtol=1e-5, atol=1e-7)
    diff = sum((maml[k] - fo[k]).norm() for k in params) / sum(maml[k].norm() for k in params)
    assert diff > 1e-2, f"first- and second-order gradients should differ here, relative diff {diff}"


def test_batchnorm_running_stats_only_move_in_the_outer_forward():
    model, support, query = _tiny_iqa(4)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    prior_buffers = {k: v.clone() for k, v in buffers.items()}
    res = fomaml_grads(model, params, buffers, support, query, steps=3, lr=0.05, loss_fn=_mse_t)
    # the model's own buffers are untouched
    assert _same(prior_buffers, dict(model.named_buffers()))
    # returned buffers == one train-mode forward of the query at the adapted params on the prior's stats
    adapted = inner_adapt(model, params, buffers, *support, steps=3, lr=0.05, loss_fn=_mse_t)
    expected = {k: v.clone() for k, v in prior_buffers.items()}
    forward(model, adapted, expected, query[0])
    for k in expected:
        torch.testing.assert_close(res.buffers[k], expected[k])
    moved = [k for k in expected if "running_mean" in k]
    assert moved and all(not torch.equal(res.buffers[k], prior_buffers[k]) for k in moved)
    # the inner loop used batch statistics: the adapted params differ from an eval-mode adaptation
    model.eval()
    adapted_eval = inner_adapt(model, params, buffers, *support, steps=3, lr=0.05, loss_fn=_mse_t)
    assert any(not torch.allclose(adapted[k], adapted_eval[k]) for k in params)


def test_supervised_grads_equal_plain_backward():
    model, support, _ = _tiny_iqa(5)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    loss_fn = make_loss(0.5)
    res = supervised_grads(model, params, buffers, support, loss_fn=loss_fn)
    loss_fn(model(support[0]), support[1]).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(res.grads[k], p.grad)


def test_ranking_hinge_by_hand():
    pred = torch.tensor([0.9, 0.2, 0.5, 0.1])
    y = torch.tensor([0.3, 0.8, 0.5, 0.51])
    content = torch.tensor([0, 0, 1, 1])
    # pair (0,1): y0<y1 but p0>p1 -> hinge 0.05 + 0.7 = 0.75; pair (2,3): |dy| = 0.01 < 0.02 -> ignored
    assert ranking_hinge(pred, y, content).item() == pytest.approx(0.75)
    # correctly ordered by more than the margin -> zero
    assert ranking_hinge(torch.tensor([0.1, 0.9]), torch.tensor([0.2, 0.8]), None).item() == 0.0
    # no pairs at all -> zero but still differentiable
    p = torch.tensor([0.4, 0.6], requires_grad=True)
    out = ranking_hinge(p, torch.tensor([0.5, 0.5]), None)
    out.backward()
    assert out.item() == 0.0 and p.grad is not None
    total = iqa_loss(pred, Target(y, content), ranking_weight=2.0)
    assert total.item() == pytest.approx(((pred - y) ** 2).mean().item() + 1.5)


def test_ranking_across_images_when_every_image_is_its_own_content():
    # four photos, each its own content (ids all distinct), scored in the wrong order
    pred = torch.tensor([0.9, 0.6, 0.4, 0.1], requires_grad=True)
    y = torch.tensor([0.1, 0.4, 0.6, 0.9])
    own = torch.arange(4)
    assert ranking_hinge(pred, y, own).item() == 0.0  # within content: not a single pair
    across = ranking_hinge(pred, y, None)
    # every pair (i < j) has y_i < y_j but p_i > p_j: hinge = margin + (p_i - p_j)
    by_hand = np.mean([0.05 + (pred[i] - pred[j]).item() for i in range(4) for j in range(i + 1, 4)])
    assert across.item() == pytest.approx(by_hand)
    across.backward()
    assert pred.grad.abs().sum() > 0  # it pushes the scores toward the labels' order
    mse = ((pred.detach() - y) ** 2).mean().item()
    loss = iqa_loss(pred.detach(), Target(y, own), ranking_weight=1.0, across=True)
    assert loss.item() == pytest.approx(mse + by_hand)  # `across` overrides the content ids
    assert iqa_loss(pred.detach(), Target(y, own), ranking_weight=1.0).item() == pytest.approx(mse)
    # pairs whose labels differ by no more than min_diff are never ranked, across images too
    p = torch.tensor([0.9, 0.1, 0.5], requires_grad=True)
    close = ranking_hinge(p, torch.tensor([0.50, 0.51, 0.515]), None, min_diff=0.02)
    close.backward()
    assert close.item() == 0.0 and p.grad.abs().sum() == 0


def test_bad_inner_optimizer_is_rejected():
    model, support, _ = _tiny_iqa()
    with pytest.raises(ValueError, match="lbfgs"):
        inner_adapt(model, dict(model.named_parameters()), {}, *support, steps=1, lr=0.1, optimizer="lbfgs",
                    loss_fn=_mse_t)


def _renorm_tiny(seed=0, rmax=1e4, dmax=1e4):
    from metaiqa.meta.batchnorm import calibrate_batchnorm, use_batch_renorm

    torch.manual_seed(seed)
    model = create_model("metaiqa_tiny", dropout=0.0)
    calib = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 10))
    calibrate_batchnorm(model, calib)
    assert use_batch_renorm(model, rmax, dmax) == 4
    return model.train()


def test_batch_renorm_scores_each_image_independently_of_its_batch():
    x = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    model = _renorm_tiny()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    params = dict(model.named_parameters())
    a = forward(model, params, {k: v.clone() for k, v in buffers.items()}, x[[0, 1, 2, 3]])
    b = forward(model, params, {k: v.clone() for k, v in buffers.items()}, x[[0, 4, 5, 6]])
    torch.testing.assert_close(a[0], b[0])
    # ... and equals the eval-mode (running statistics) score
    model.eval()
    torch.testing.assert_close(a, forward(model, params, buffers, x[[0, 1, 2, 3]]))
    # plain BatchNorm in train mode is transductive: the same image scores differently
    torch.manual_seed(0)
    plain = create_model("metaiqa_tiny", dropout=0.0).train()
    assert not torch.allclose(plain(x[[0, 1, 2, 3]])[0], plain(x[[0, 4, 5, 6]])[0])


def test_batch_renorm_gradient_flows_through_batch_statistics():
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    y = torch.rand(6, generator=torch.Generator().manual_seed(5))
    model = _renorm_tiny(1)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    params = dict(model.named_parameters())
    g_train = supervised_grads(model, params, buffers, (x, y), loss_fn=_mse).grads
    model.eval()
    g_eval = supervised_grads(model, params, buffers, (x, y), loss_fn=_mse).grads
    w = "backbone.0.weight"
    assert not torch.allclose(g_train[w], g_eval[w])


def test_batch_renorm_checkpoint_loads_into_the_plain_model():
    model = _renorm_tiny(2)
    plain = create_model("metaiqa_tiny", dropout=0.0)
    plain.load_state_dict(model.state_dict())
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(plain.eval()(x), model.eval()(x))
