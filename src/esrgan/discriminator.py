"""The VGG-style discriminator of ESRGAN's GAN stage (Wang et al. 2018; BasicSR's VGGStyleDiscriminator).

Five stages of (3x3 stride 1, 4x4 stride 2) convs halve a 128x128 input down to 512x4x4; batch norm follows every
conv but the first, LeakyReLU(0.2) every conv; two linear layers map the 8192 features to one raw logit. The logit
is not squashed: the relativistic average loss compares raw logits (esrgan.losses).
"""

from __future__ import annotations

from torch import Tensor, nn

_CHANNEL_MULT = (1, 2, 4, 8, 8)  # stage widths 64, 128, 256, 512, 512 for num_feat 64


class VGGStyleDiscriminator(nn.Module):
    """Discriminator for square inputs of `input_size` (128 in the paper; must be 32 * 2^k for the 4x4 head)."""

    def __init__(self, *, num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128) -> None:
        super().__init__()
        if input_size < 32 or input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32 (128 in the paper), got {input_size}")
        self.input_size = input_size
        self.num_in_ch = num_in_ch
        layers: list[nn.Module] = [
            nn.Conv2d(num_in_ch, num_feat, 3, 1, 1, bias=True),  # conv0_0: no norm
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(num_feat, num_feat, 4, 2, 1, bias=False),  # conv0_1
            nn.BatchNorm2d(num_feat, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        in_ch = num_feat
        for mult in _CHANNEL_MULT[1:]:
            out_ch = num_feat * mult
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False),
                nn.BatchNorm2d(out_ch, affine=True),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(out_ch, out_ch, 4, 2, 1, bias=False),
                nn.BatchNorm2d(out_ch, affine=True),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        spatial = input_size // 32
        self.linear1 = nn.Linear(in_ch * spatial * spatial, 100)
        self.linear2 = nn.Linear(100, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, S, S) image -> (N, 1) raw logits."""
        if x.dim() != 4 or x.shape[1] != self.num_in_ch or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"discriminator expects (N, {self.num_in_ch}, {self.input_size}, {self.input_size}) "
                f"inputs (the HR patch size it was built for), got {tuple(x.shape)}"
            )
        feat = self.features(x).flatten(1)
        return self.linear2(self.lrelu(self.linear1(feat)))
