"""The discriminators: ESRGAN's VGG-style one (Wang et al. 2018; BasicSR's VGGStyleDiscriminator) and Real-ESRGAN's
U-Net with spectral norm (UNetDiscriminatorSN), chosen by model.discriminator.

The VGG-style one: five stages of (3x3 stride 1, 4x4 stride 2) convs halve a 128x128 input down to 512x4x4; batch norm follows every
conv but the first, LeakyReLU(0.2) every conv; two linear layers map the 8192 features to one raw logit. The logit
is not squashed: the relativistic average loss compares raw logits (esrgan.losses). The U-Net gives one logit per
pixel (its class docstring).
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.spectral_norm import SpectralNorm

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


class _Float32Hook:
    """torch's spectral-norm pre-forward hook run with autocast off. Under CUDA autocast its power iteration and
    sigma (torch.mv) would run in bf16/fp16, the weight's scale jittering by ~0.4 % from step to step; Real-ESRGAN
    trains in fp32. The normalised weight stays float32 and the convolution itself still runs under autocast."""

    def __init__(self, hook: SpectralNorm) -> None:
        self.hook = hook

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        try:
            no_autocast: Any = torch.autocast(inputs[0].device.type, enabled=False)
        except RuntimeError:  # a device autocast does not know (meta: bench/gpu.py counts FLOPs there)
            no_autocast = contextlib.nullcontext()
        with no_autocast:
            self.hook(module, inputs)


def _spectral_norm(conv: nn.Conv2d) -> nn.Conv2d:
    """torch.nn.utils.spectral_norm (Real-ESRGAN's: weight_orig / weight_u / weight_v in the state dict, one power
    iteration per training forward), its power iteration and sigma in float32 whatever the autocast."""
    conv = nn.utils.spectral_norm(conv)
    for key, hook in conv._forward_pre_hooks.items():
        if isinstance(hook, SpectralNorm):
            conv._forward_pre_hooks[key] = _Float32Hook(hook)
    return conv


class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's U-Net discriminator with spectral normalization (Wang et al. 2021, section 3.3).

    conv0 (3x3) then three 4x4 stride-2 convs (x2, x4, x8 the width) go down to 1/8 of the input; three (bilinear x2,
    3x3 conv) steps come back up, each adding the matching encoder features (the skip connections); two 3x3 convs
    and a last 3x3 conv give one raw logit PER PIXEL, so the generator is told where an image looks fake, not only
    whether. Spectral norm on every conv but the first and the last (torch.nn.utils.spectral_norm: one power
    iteration per forward in training mode, as Real-ESRGAN; in float32 under autocast), no batch norm. The parameter names (conv0..conv9,
    weight_orig / weight_u / weight_v) are Real-ESRGAN's, so its RealESRGAN_x4plus_netD.pth loads as it is.
    Inputs of any size divisible by 8.
    """

    def __init__(self, *, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        self.num_in_ch = num_in_ch
        self.skip_connection = skip_connection
        sn = _spectral_norm
        f = num_feat
        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        self.conv1 = sn(nn.Conv2d(f, f * 2, 4, 2, 1, bias=False))
        self.conv2 = sn(nn.Conv2d(f * 2, f * 4, 4, 2, 1, bias=False))
        self.conv3 = sn(nn.Conv2d(f * 4, f * 8, 4, 2, 1, bias=False))
        self.conv4 = sn(nn.Conv2d(f * 8, f * 4, 3, 1, 1, bias=False))
        self.conv5 = sn(nn.Conv2d(f * 4, f * 2, 3, 1, 1, bias=False))
        self.conv6 = sn(nn.Conv2d(f * 2, f, 3, 1, 1, bias=False))
        self.conv7 = sn(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv8 = sn(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) image, H and W divisible by 8 -> (N, 1, H, W) raw logits."""
        if x.dim() != 4 or x.shape[1] != self.num_in_ch or x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(
                f"the U-Net discriminator expects (N, {self.num_in_ch}, H, W) inputs with H and W divisible by 8, "
                f"got {tuple(x.shape)}"
            )
        act = partial(F.leaky_relu, negative_slope=0.2)
        up = partial(F.interpolate, scale_factor=2, mode="bilinear", align_corners=False)
        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        x4 = act(self.conv4(up(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = act(self.conv5(up(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = act(self.conv6(up(x5)))
        if self.skip_connection:
            x6 = x6 + x0
        out = act(self.conv8(act(self.conv7(x6))))
        return self.conv9(out)


Discriminator = VGGStyleDiscriminator | UNetDiscriminatorSN


def build_discriminator(kind: str, *, num_in_ch: int, num_feat: int, patch_size: int) -> Discriminator:
    """model.discriminator: "vgg" (ESRGAN's, for `patch_size` x `patch_size` inputs) or "unet" (Real-ESRGAN's)."""
    if kind == "vgg":
        return VGGStyleDiscriminator(num_in_ch=num_in_ch, num_feat=num_feat, input_size=patch_size)
    if kind == "unet":
        return UNetDiscriminatorSN(num_in_ch=num_in_ch, num_feat=num_feat)
    raise ValueError(f"unknown discriminator {kind!r} (vgg or unet)")


def _basicsr_vgg_names() -> dict[str, str]:
    """BasicSR's VGGStyleDiscriminator names (conv0_0, conv0_1, bn0_1, conv1_0, bn1_0, ..., linear1) -> ours.

    Our `features` Sequential holds, per stage, conv, BN, LeakyReLU, conv, BN, LeakyReLU (stage 0: no BN after its
    first conv); BasicSR names the same modules one by one. Its 128x128 discriminator is the paper's and ours."""
    names: dict[str, str] = {}
    index = 0
    for stage in range(len(_CHANNEL_MULT)):
        for half in range(2):
            names[f"conv{stage}_{half}"] = f"features.{index}"
            index += 1
            if stage or half:
                names[f"bn{stage}_{half}"] = f"features.{index}"
                index += 1
            index += 1  # the LeakyReLU
    names["linear1"], names["linear2"] = "linear1", "linear2"
    return names


def discriminator_state(d: Discriminator, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A foreign discriminator state dict in `d`'s names: ours as is, BasicSR's VGG-style layout renamed (the
    U-Net's names are Real-ESRGAN's already). Shapes and the exact key set are checked by load_state_dict."""
    if isinstance(d, VGGStyleDiscriminator) and any(k.startswith("conv0_0.") for k in sd):
        names = _basicsr_vgg_names()
        renamed: dict[str, Tensor] = {}
        for key, value in sd.items():
            module, _, leaf = key.rpartition(".")
            renamed[f"{names.get(module, module)}.{leaf}"] = value
        return renamed
    return sd
