"""ESRGAN's losses: L1 pixel loss, perceptual loss on VGG19 conv5_4, relativistic average GAN (section 3.2-3.4).

With C the raw discriminator output and D_Ra(a, b) = C(a) - mean(C(b)):
    discriminator:  BCE(D_Ra(real, fake), 1) + BCE(D_Ra(fake, real), 0)
    generator:      BCE(D_Ra(real, fake), 0) + BCE(D_Ra(fake, real), 1)
The generator gets gradients from both terms (fake logits appear in both), which is the point of the relativistic
loss. The paper adds the two terms ("sum", our default); BasicSR averages them ("mean"), which halves the effective
adversarial weight lambda. The generator's total is L_percep + lambda * L_Ra + eta * L_1 (1, 5e-3, 1e-2).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

Reduction = Literal["sum", "mean"]


def pixel_loss(sr: Tensor, hr: Tensor) -> Tensor:
    """Mean absolute error, the only loss of the PSNR-oriented stage."""
    return F.l1_loss(sr, hr)


def perceptual_loss(extractor: nn.Module, sr: Tensor, hr: Tensor) -> Tensor:
    """L1 between VGG19 conv5_4 pre-activation features of SR and HR; the HR side needs no gradient."""
    return F.l1_loss(extractor(sr), extractor(hr).detach())


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
