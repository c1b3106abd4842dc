"""ESRGAN's losses: L1 pixel loss, perceptual loss on VGG19 conv5_4, relativistic average GAN (section 3.2-3.4);
and Real-ESRGAN's: the perceptual loss at several VGG19 depths, a standard ("vanilla") GAN on per-pixel logits.

With C the raw discriminator output and D_Ra(a, b) = C(a) - mean(C(b)):
    discriminator:  BCE(D_Ra(real, fake), 1) + BCE(D_Ra(fake, real), 0)
    generator:      BCE(D_Ra(real, fake), 0) + BCE(D_Ra(fake, real), 1)
The generator gets gradients from both terms (fake logits appear in both), which is the point of the relativistic
loss. The paper adds the two terms ("sum", our default); BasicSR averages them ("mean"), which halves the effective
adversarial weight lambda. The generator's total is L_percep + lambda * L_Ra + eta * L_1 (1, 5e-3, 1e-2).

Vanilla (Real-ESRGAN, losses.gan_type: vanilla): D minimises BCE(C(real), 1) + BCE(C(fake), 0) (BasicSR back-propagates
the two terms one after the other: their sum), G minimises BCE(C(fake), 1); with the U-Net discriminator every pixel's
logit is a term of the mean. Real-ESRGAN weighs it 0.1 beside L1 1 and the five-layer perceptual loss 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Reduction = Literal["sum", "mean"]
GanType = Literal["ragan", "vanilla"]


def pixel_loss(sr: Tensor, hr: Tensor) -> Tensor:
    """Mean absolute error, the only loss of the PSNR-oriented stage."""
    return F.l1_loss(sr, hr)


def perceptual_loss(
    extractor: nn.Module, sr: Tensor, hr: Tensor, layer_weights: Sequence[float] = (1.0,)
) -> Tensor:
    """Sum over the extractor's layers of weight * L1 between the features of SR and HR (VGG19 conv5_4 before the
    ReLU alone by default); the HR side needs no gradient. `extractor` returns a feature map or a list of them."""
    sr_feats, hr_feats = _as_list(extractor(sr)), _as_list(extractor(hr))
    if len(sr_feats) != len(layer_weights):
        raise ValueError(f"{len(sr_feats)} feature maps but {len(layer_weights)} layer weights")
    total = sr.new_zeros(())
    for weight, a, b in zip(layer_weights, sr_feats, hr_feats, strict=True):
        if weight:
            total = total + weight * F.l1_loss(a, b.detach())
    return total


def _as_list(features: Tensor | list[Tensor]) -> list[Tensor]:
    return [features] if isinstance(features, Tensor) else list(features)


def _combine(a: Tensor, b: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "sum":
        return a + b
    if reduction == "mean":
        return (a + b) / 2
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, *, reduction: Reduction = "sum") -> Tensor:
    """Relativistic average loss of D: real should look more real than the average fake, and vice versa."""
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    real_term = F.binary_cross_entropy_with_logits(real_rel, real_rel.new_ones(()).expand_as(real_rel))
    fake_term = F.binary_cross_entropy_with_logits(fake_rel, fake_rel.new_zeros(()).expand_as(fake_rel))
    return _combine(real_term, fake_term, reduction)


def generator_adv_loss(real_logits: Tensor, fake_logits: Tensor, *, reduction: Reduction = "sum") -> Tensor:
    """Relativistic average loss of G: the labels of discriminator_loss swapped; both terms depend on the fakes."""
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    real_term = F.binary_cross_entropy_with_logits(real_rel, real_rel.new_zeros(()).expand_as(real_rel))
    fake_term = F.binary_cross_entropy_with_logits(fake_rel, fake_rel.new_ones(()).expand_as(fake_rel))
    return _combine(real_term, fake_term, reduction)


def _bce(logits: Tensor, target: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def gan_d_loss(
    gan_type: GanType, real_logits: Tensor, fake_logits: Tensor, *, reduction: Reduction = "sum"
) -> Tensor:
    """D's adversarial loss, relativistic average (ESRGAN) or vanilla (Real-ESRGAN), on raw logits of any shape."""
    if gan_type == "ragan":
        return discriminator_loss(real_logits, fake_logits, reduction=reduction)
    if gan_type == "vanilla":
        return _combine(_bce(real_logits, 1.0), _bce(fake_logits, 0.0), reduction)
    raise ValueError(f"gan_type must be 'ragan' or 'vanilla', got {gan_type!r}")


def gan_g_loss(
    gan_type: GanType, real_logits: Tensor | None, fake_logits: Tensor, *, reduction: Reduction = "sum"
) -> Tensor:
    """G's adversarial loss; the vanilla loss needs no real logits (None), the relativistic one does."""
    if gan_type == "ragan":
        if real_logits is None:
            raise ValueError("the relativistic average loss needs the real images' logits")
        return generator_adv_loss(real_logits, fake_logits, reduction=reduction)
    if gan_type == "vanilla":
        return _bce(fake_logits, 1.0)
    raise ValueError(f"gan_type must be 'ragan' or 'vanilla', got {gan_type!r}")
