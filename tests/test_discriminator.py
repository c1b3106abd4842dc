"""The VGG-style discriminator: the paper's architecture (counted by hand), its input check, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from esrgan.discriminator import VGGStyleDiscriminator

# conv0_0 (3x3, bias) + conv0_1 (4x4) + four (3x3, 4x4) pairs 64->128->256->512->512, BN after all but conv0_0,
# Linear(8192, 100), Linear(100, 1): summed layer by layer from the recipe
PAPER_PARAMS = (
    (3 * 64 * 9 + 64) + (64 * 64 * 16 + 128)
    + (64 * 128 * 9 + 256) + (128 * 128 * 16 + 256)
    + (128 * 256 * 9 + 512) + (256 * 256 * 16 + 512)
    + (256 * 512 * 9 + 1024) + (512 * 512 * 16 + 1024)
    + (512 * 512 * 9 + 1024) + (512 * 512 * 16 + 1024)
    + (8192 * 100 + 100) + (100 + 1)
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_paper_architecture() -> None:
    d = VGGStyleDiscriminator()
    assert sum(p.numel() for p in d.parameters()) == PAPER_PARAMS == 14_499_401
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 10
    assert [c.kernel_size[0] for c in convs] == [3, 4] * 5
    assert [c.stride[0] for c in convs] == [1, 2] * 5
    assert convs[0].bias is not None and all(c.bias is None for c in convs[1:])
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 9
    assert d.linear1.in_features == 8192


def test_logits_for_real_photo_patches(photo: np.ndarray) -> None:
    d = VGGStyleDiscriminator(num_feat=8, input_size=128)
    x = torch.from_numpy(photo[:256:2, :256:2].copy()).permute(2, 0, 1)[None].float() / 255
    x = torch.cat([x, x.flip(-1)]).requires_grad_(True)
    out = d(x)
    assert out.shape == (2, 1)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the generator needs gradients through D
    assert all(p.grad is not None for p in d.parameters())


def test_other_multiples_of_32() -> None:
    d = VGGStyleDiscriminator(num_feat=8, input_size=96)
    assert d.linear1.in_features == 8 * 8 * 3 * 3
    assert d(torch.rand(2, 3, 96, 96)).shape == (2, 1)


def test_wrong_input_size_is_a_clear_error() -> None:
    d = VGGStyleDiscriminator(num_feat=8, input_size=128)
    with pytest.raises(ValueError, match=r"expects \(N, 3, 128, 128\).*got \(1, 3, 96, 96\)"):
        d(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match="multiple of 32"):
        VGGStyleDiscriminator(input_size=100)
