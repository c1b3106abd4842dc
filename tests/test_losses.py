"""ESRGAN's and Real-ESRGAN's losses against hand-computed values; gradients of the adversarial generator losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from esrgan.losses import (
    discriminator_loss,
    gan_d_loss,
    gan_g_loss,
    generator_adv_loss,
    perceptual_loss,
    pixel_loss,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# C(real) = [2, 0] (mean 1), C(fake) = [1, -1] (mean 0)
# D_Ra(real, fake) = [2, 0], D_Ra(fake, real) = [0, -2]; BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x)
REAL = [2.0, 0.0]
FAKE = [1.0, -1.0]
D_SUM = (softplus(-2) + softplus(0)) / 2 + (softplus(0) + softplus(-2)) / 2
G_SUM = (softplus(2) + softplus(0)) / 2 + (softplus(0) + softplus(2)) / 2


def test_discriminator_loss_by_hand() -> None:
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    assert discriminator_loss(real, fake).item() == pytest.approx(D_SUM, rel=1e-6)
    assert pytest.approx(0.8200751916, rel=1e-9) == D_SUM
    assert discriminator_loss(real, fake, reduction="mean").item() == pytest.approx(D_SUM / 2, rel=1e-6)


def test_generator_loss_by_hand() -> None:
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    assert generator_adv_loss(real, fake).item() == pytest.approx(G_SUM, rel=1e-6)
    assert pytest.approx(2.8200751916, rel=1e-9) == G_SUM
    assert generator_adv_loss(real, fake, reduction="mean").item() == pytest.approx(G_SUM / 2, rel=1e-6)
    with pytest.raises(ValueError, match="sum' or 'mean"):
        generator_adv_loss(real, fake, reduction="max")  # type: ignore[arg-type]


def test_generator_gradient_flows_through_both_terms() -> None:
    """d/df_j of term 1 = -(1/n) mean_i sigmoid(D_Ra(real_i)); of term 2 = -(1/n) sigmoid(-D_Ra(fake_j))."""
    real = torch.tensor(REAL)
    fake = torch.tensor(FAKE, requires_grad=True)
    generator_adv_loss(real, fake).backward()
    assert fake.grad is not None
    term1 = -0.5 * (sigmoid(2) + sigmoid(0)) / 2
    expected = [term1 - 0.5 * sigmoid(-0.0), term1 - 0.5 * sigmoid(2)]
    assert fake.grad.tolist() == pytest.approx(expected, rel=1e-6)
    # the real-side term alone already moves the fakes: without it the gradient would be the second part only
    assert term1 == pytest.approx(-0.3451993, rel=1e-6)


def test_discriminator_gradient_reaches_both_inputs() -> None:
    real = torch.tensor(REAL, requires_grad=True)
    fake = torch.tensor(FAKE, requires_grad=True)
    discriminator_loss(real, fake).backward()
    assert real.grad is not None and fake.grad is not None
    # raising a real logit lowers the loss, raising a fake logit raises it
    assert (real.grad < 0).all() and (fake.grad > 0).all()


def test_pixel_loss_is_mean_absolute_error(photo_small: np.ndarray) -> None:
    hr = torch.from_numpy(photo_small.copy()).permute(2, 0, 1)[None].float() / 255
    sr = hr.flip(-1)
    assert pixel_loss(sr, hr).item() == pytest.approx(float((sr - hr).abs().mean()), rel=1e-6)
    assert pixel_loss(hr, hr).item() == 0.0


def test_perceptual_loss_is_l1_of_features_and_hr_side_is_fixed(photo_small: np.ndarray) -> None:
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    hr = torch.from_numpy(photo_small.copy()).permute(2, 0, 1)[None].float() / 255
    hr.requires_grad_(True)
    sr = (hr.detach() * 0.9).requires_grad_(True)
    loss = perceptual_loss(features, sr, hr)
    with torch.no_grad():
        expected = (features(sr) - features(hr)).abs().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert hr.grad is None


# vanilla (Real-ESRGAN) on per-pixel logits, a 1x1x2x2 map each: C(real) = [[2, 0], [1, -1]], C(fake) = [[-1, 0], [3, 0]]
# D: mean BCE(real, 1) + mean BCE(fake, 0) = mean softplus(-real) + mean softplus(fake); G: mean softplus(-fake)
REAL_MAP = [[2.0, 0.0], [1.0, -1.0]]
FAKE_MAP = [[-1.0, 0.0], [3.0, 0.0]]
V_D = (
    sum(softplus(-x) for row in REAL_MAP for x in row) / 4
    + sum(softplus(x) for row in FAKE_MAP for x in row) / 4
)
V_G = sum(softplus(-x) for row in FAKE_MAP for x in row) / 4


def test_vanilla_gan_losses_by_hand_on_per_pixel_logits() -> None:
    real, fake = torch.tensor([[REAL_MAP]]), torch.tensor([[FAKE_MAP]])
    assert gan_d_loss("vanilla", real, fake).item() == pytest.approx(V_D, rel=1e-6)
    assert gan_d_loss("vanilla", real, fake, reduction="mean").item() == pytest.approx(V_D / 2, rel=1e-6)
    assert gan_g_loss("vanilla", None, fake).item() == pytest.approx(V_G, rel=1e-6)
    assert gan_g_loss("vanilla", real, fake).item() == pytest.approx(
        V_G, rel=1e-6
    )  # real logits play no part
    # ragan through the same entry points is ESRGAN's loss
    r, f = torch.tensor(REAL), torch.tensor(FAKE)
    assert gan_d_loss("ragan", r, f).item() == pytest.approx(D_SUM, rel=1e-6)
    assert gan_g_loss("ragan", r, f).item() == pytest.approx(G_SUM, rel=1e-6)
    with pytest.raises(ValueError, match="needs the real images' logits"):
        gan_g_loss("ragan", None, f)


def test_vanilla_generator_gradient_pushes_fakes_towards_real() -> None:
    fake = torch.tensor([[FAKE_MAP]], requires_grad=True)
    gan_g_loss("vanilla", None, fake).backward()
    assert fake.grad is not None and bool((fake.grad < 0).all())  # descending raises every fake logit
    # d/dx softplus(-x) / 4 = -sigmoid(-x) / 4
    expected = torch.tensor([[[[-sigmoid(-x) / 4 for x in row] for row in FAKE_MAP]]])
    torch.testing.assert_close(fake.grad, expected)


def test_perceptual_loss_sums_weighted_layers(photo_small: np.ndarray) -> None:
    torch.manual_seed(0)
    shallow = nn.Conv2d(3, 4, 3, padding=1)
    deep = nn.Conv2d(4, 2, 3, padding=1)

    class TwoLayers(nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            a = shallow(x)
            return [a, deep(torch.relu(a))]

    hr = torch.from_numpy(photo_small.copy()).permute(2, 0, 1)[None].float() / 255
    sr = hr.flip(-1)
    extractor = TwoLayers()
    with torch.no_grad():
        fa, fb = extractor(sr), extractor(hr)
        parts = [(x - y).abs().mean().item() for x, y in zip(fa, fb, strict=True)]
    loss = perceptual_loss(extractor, sr, hr, (0.1, 1.0))
    assert loss.item() == pytest.approx(0.1 * parts[0] + parts[1], rel=1e-6)
    assert perceptual_loss(extractor, sr, hr, (0.0, 1.0)).item() == pytest.approx(parts[1], rel=1e-6)
    with pytest.raises(ValueError, match="2 feature maps but 1 layer weights"):
        perceptual_loss(extractor, sr, hr)
