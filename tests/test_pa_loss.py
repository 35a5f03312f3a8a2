"""The auxiliary Procrustes-aligned loss (tune_hand/losses.py): value, gradient, degenerate inputs, training."""

import math

import numpy as np
import pytest
import torch

from tune_hand.config import ADDED_KEYS, Config, load_config
from tune_hand.errors import ConfigError
from tune_hand.geometry import rot_z
from tune_hand.losses import pa_aligned, pa_loss, pa_mpjpe
from tune_hand.metrics import pa_mpjpe_mm, procrustes_align


def hands(n=6, seed=0, noise=8.0):
    rng = np.random.default_rng(seed)
    gt = rng.normal(0.0, 40.0, (n, 21, 3))
    pred = gt + rng.normal(0.0, noise, (n, 21, 3))
    return torch.from_numpy(pred), torch.from_numpy(gt)


def test_pa_mpjpe_matches_the_numpy_metric():
    pred, gt = hands()
    assert pa_mpjpe(pred, gt).item() == pytest.approx(pa_mpjpe_mm(pred.numpy(), gt.numpy()), abs=1e-9)
    np.testing.assert_allclose(pa_aligned(pred, gt).numpy(), procrustes_align(pred.numpy(), gt.numpy(), False),
                               atol=1e-9)


def test_pa_loss_is_the_mean_squared_aligned_error():
    pred, gt = hands()
    aligned = procrustes_align(pred.numpy(), gt.numpy(), allow_reflection=False)
    assert pa_loss(pred, gt).item() == pytest.approx(((aligned - gt.numpy()) ** 2).mean(), rel=1e-9)


def test_a_similar_copy_has_zero_loss_and_a_mirror_image_does_not():
    _, gt = hands(2)
    moved = 0.7 * gt @ torch.from_numpy(rot_z(1.1)).T + torch.tensor([5.0, -20.0, 300.0], dtype=torch.float64)
    assert pa_loss(moved, gt).item() == pytest.approx(0.0, abs=1e-9)
    mirrored = gt * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert pa_loss(mirrored, gt).item() > 10.0  # no reflection, like the paper's metric


def test_gradient_is_exact():
    """The fit is computed without gradient; by the envelope theorem that gradient is exact."""
    pred, gt = hands(3, noise=15.0)
    assert torch.autograd.gradcheck(lambda p: pa_loss(p, gt), (pred.clone().requires_grad_(),), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", ["collapsed", "zeros", "planar", "symmetric"])
def test_degenerate_predictions_give_a_finite_loss_and_gradient(kind):
    _, gt = hands(4)
    gt = gt.float()
    if kind == "collapsed":
        pred = torch.ones(4, 21, 3) * 7.0
    elif kind == "zeros":
        pred = torch.zeros(4, 21, 3)
    elif kind == "planar":
        pred = gt.clone()
        pred[..., 2] = 0.0
    else:  # points on the axes: repeated singular values, where an SVD backward divides by zero
        pred = torch.zeros(4, 21, 3)
        pred[:, :3] = torch.eye(3) * 10.0
        pred[:, 3:6] = -torch.eye(3) * 10.0
    pred.requires_grad_()
    loss = pa_loss(pred, gt)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(pred.grad).all()


def test_shape_errors_are_one_line():
    with pytest.raises(ValueError, match=r"\(B, J, 3\)"):
        pa_loss(torch.zeros(2, 21, 3), torch.zeros(2, 20, 3))


def test_a_few_steps_on_the_pa_loss_lower_the_aligned_error():
    pred, gt = hands(8, noise=20.0)
    p = pred.float().clone().requires_grad_()
    opt = torch.optim.SGD([p], lr=0.25 * p.numel())  # the loss is a mean over every coordinate
    before = pa_mpjpe(p.detach(), gt.float()).item()
    for _ in range(20):
        opt.zero_grad()
        pa_loss(p, gt.float()).backward()
        opt.step()
    assert pa_mpjpe(p.detach(), gt.float()).item() < 0.5 * before


def test_the_weight_is_a_config_key_neutral_at_zero():
    assert Config().optim.pa_loss_weight == 0.0 and ADDED_KEYS["optim.pa_loss_weight"] == 0.0
    assert load_config("small", ["optim.pa_loss_weight=0.5"]).optim.pa_loss_weight == 0.5
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ConfigError, match="optim.pa_loss_weight"):
            load_config("small", [f"optim.pa_loss_weight={bad}"])


def test_train_step_adds_the_weighted_pa_loss():
    from tune_hand.training import train_step

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 63), torch.nn.Unflatten(1, (21, 3)))
    x, y = torch.randn(4, 12), torch.randn(4, 21, 3) * 30
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    plain = train_step(model, opt, scaler, x, y, None)
    weighted = train_step(model, opt, scaler, x, y, None, pa_loss_weight=0.5)
    with torch.no_grad():
        pred = model(x)
    expected = torch.nn.functional.mse_loss(pred, y) + 0.5 * pa_loss(pred, y)
    assert plain.item() == pytest.approx(torch.nn.functional.mse_loss(pred, y).item(), rel=1e-6)
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-6)
