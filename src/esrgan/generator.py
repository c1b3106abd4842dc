"""RRDBNet, the ESRGAN generator (Wang et al. 2018, section 3.1).

conv_first -> num_block x RRDB -> conv_body -> + long skip -> upsampling stages (nearest x2, conv, LeakyReLU)
-> conv_hr -> LeakyReLU -> conv_last. No batch norm anywhere. Scales 1 and 2 follow Real-ESRGAN: the input is
pixel-unshuffled by 4 or 2 and fed to the x4 trunk. Scale 8 adds a third upsampling stage.

Parameter names are the BasicSR / Real-ESRGAN ones (``conv_first``, ``body.{i}.rdb{k}.conv{j}``, ``conv_body``,
``conv_up{n}``, ``conv_hr``, ``conv_last``): the most widespread layout, so our state dicts load in other tools as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CheckpointError

SCALES = (1, 2, 4, 8)
FP16_MAX = 65504.0  # the largest finite float16


@dataclass(frozen=True)
class RRDBConfig:
    """Hyperparameters of an RRDBNet: everything needed to rebuild it, stored with every checkpoint."""

    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_block: int = 23
    num_grow: int = 32
    scale: int = 4
    # Scales 1 and 2 come in two designs: Real-ESRGAN's (pixel-unshuffle the input, then the x4 trunk: True) and the
    # original ESRGAN community models' (log2(scale) upsampling stages, none for x1: False). Ignored for x4 and x8.
    pixel_unshuffle: bool = True
    # Not in the paper: add the bicubic upscale of the input to the output, so the network learns only the detail
    # bicubic misses (VDSR's global residual; Real-ESRGAN's compact net adds a nearest upscale the same way). It
    # starts training at the bicubic baseline instead of at ~9 dB, which matters when a run is a few thousand steps
    # (the CPU recipe); no parameter changes, so only the metadata stored with the weights records it.
    image_residual: bool = False
    # ESRGAN+ (Rakotonirina & Rasoanaivo, ICASSP 2020): each dense block adds a bias-free 1x1 conv of its input to its
    # second output, and that sum to its fourth ("conv1x1" keys in the community's ESRGAN+ / nESRGAN+ model files)
    plus: bool = False

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale}")
        for name in ("num_in_ch", "num_out_ch", "num_feat", "num_block", "num_grow"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_residual and self.num_out_ch != self.num_in_ch:
            raise ValueError("image_residual needs as many output channels as input channels")
        if self.scale >= 4 and not self.pixel_unshuffle:
            object.__setattr__(self, "pixel_unshuffle", True)  # one canonical config per architecture

    @property
    def unshuffle(self) -> int:
        """Pixel-unshuffle factor applied to the input (Real-ESRGAN's x2/x1 convention)."""
        if not self.pixel_unshuffle:
            return 1
        return {1: 4, 2: 2}.get(self.scale, 1)

    @property
    def num_upsample(self) -> int:
        """Number of nearest-x2 upsampling stages in the tail."""
        if self.unshuffle > 1:
            return 2
        return {1: 0, 2: 1, 4: 2, 8: 3}[self.scale]

    @property
    def receptive_radius(self) -> int:
        """Input pixels each side that can reach one output pixel (an upper bound, tight for random weights), in
        pixels of the trunk (the input after pixel unshuffle: `unshuffle` input pixels wide, plus the rest of a
        block): one per 3x3 conv at the trunk's size (conv_first, 5 per dense block x 3 per RRDB, conv_body), and 2
        for the tail (a conv after k nearest-x2 stages covers 1 / 2^k of a trunk pixel: the upsampling convs and the
        two full-size ones add up to 1 + 2^-stages, less than 2). The bicubic image residual reaches 2: less.
        23 blocks at x4: 349, so no tiling of RRDBNet affords an exact overlap; 1 block: 19."""
        f = self.unshuffle
        return (4 + 15 * self.num_block) * f + (f - 1)

    def to_dict(self) -> dict[str, int | bool]:
        """The fields as written with every model and checkpoint; `plus` only when set, so that files of the plain
        RRDBNet stay exactly what earlier releases wrote and read (they refuse an unknown field)."""
        values = asdict(self)
        if not self.plus:
            del values["plus"]
        return values


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; LeakyReLU after the first four; residual scaled by 0.2 (ESRGAN+: two more
    residual paths, see RRDBConfig.plus)."""

    def __init__(self, num_feat: int, num_grow: int, plus: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow, num_grow, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow, num_grow, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow, num_grow, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow, num_feat, 3, 1, 1)
        self.conv1x1 = nn.Conv2d(num_feat, num_grow, 1, bias=False) if plus else None
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        if self.conv1x1 is not None:
            x2 = x2 + self.conv1x1(x)
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        if self.conv1x1 is not None:
            x4 = x4 + x2
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three RDBs, residual scaled by 0.2."""

    def __init__(self, num_feat: int, num_grow: int, plus: bool = False) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow, plus)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow, plus)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow, plus)

    def forward(self, x: Tensor) -> Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """The ESRGAN generator. Paper size (x4, 64 features, 23 blocks, growth 32) has 16,697,987 parameters."""

    @overload
    def __init__(self, config: RRDBConfig) -> None: ...

    @overload
    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow: int = 32,
        scale: int = 4,
        pixel_unshuffle: bool = True,
        image_residual: bool = False,
        plus: bool = False,
    ) -> None: ...

    def __init__(self, config: RRDBConfig | None = None, **hyperparameters: Any) -> None:
        """RRDBNet(RRDBConfig(...)), as SRVGGNetCompact takes its config, or RRDBNet(num_feat=..., ...) with the
        RRDBConfig fields as keywords (its defaults: the paper's network); not both."""
        super().__init__()
        if config is None:
            config = RRDBConfig(**hyperparameters)
        elif not isinstance(config, RRDBConfig):
            raise TypeError(f"RRDBNet takes an RRDBConfig, not {type(config).__name__}")
        elif hyperparameters:
            raise TypeError(
                f"RRDBNet takes a config or keyword hyperparameters, not both (got {', '.join(hyperparameters)})"
            )
        self.config = cfg = config
        num_feat = cfg.num_feat
        self.conv_first = nn.Conv2d(cfg.num_in_ch * cfg.unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, cfg.num_grow, cfg.plus) for _ in range(cfg.num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        # conv_up1..conv_upN as plain attributes so the state-dict keys are the BasicSR ones
        self.upsample_names = [f"conv_up{n + 1}" for n in range(cfg.num_upsample)]
        for name in self.upsample_names:
            self.add_module(name, nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, cfg.num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    @classmethod
    def from_config(cls, config: RRDBConfig) -> RRDBNet:
        return cls(config)

    @property
    def scale(self) -> int:
        return self.config.scale

    def init_weights(self, scale: float = 0.1) -> None:
        """The paper's initialisation for training from scratch: Kaiming normal x0.1, zero bias, on the RDB convs."""
        for module in self.body.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
                module.weight.data.mul_(scale)
                if module.bias is not None:
                    module.bias.data.zero_()
        if self.config.image_residual:  # start exactly at the bicubic upscale
            self.conv_last.weight.data.zero_()
            if self.conv_last.bias is not None:
                self.conv_last.bias.data.zero_()

    def compile_blocks(self, **options: Any) -> None:
        """torch.compile each RRDB in place ("regional compilation"): the blocks are one class with one set of
        shapes, so the compiler compiles the first and reuses it for the others (torch >= 2.5, which passes module
        parameters as graph inputs; older releases would recompile each block until Dynamo's cache limit sends
        the rest back to eager). Parameter names and state dicts are unchanged; the head and tail stay eager.
        The paper's G, forward + backward, fp32, on 2 cores of an AMD EPYC Zen 3: first call 15.4 s, against 94 s
        for torch.compile of the whole network (bench/compile_time.py; docs/benchmarks.md has the table)."""
        if tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 5):
            raise RuntimeError(f"compiling per block needs torch >= 2.5 (this is {torch.__version__})")
        for block in self.body:
            block.compile(**options)

    def forward(self, x: Tensor) -> Tensor:
        """Map an (N, C, H, W) image in [0, 1] to (N, C_out, H * scale, W * scale)."""
        factor = self.config.unshuffle
        h, w = x.shape[-2:]
        if factor > 1:
            pad_h, pad_w = (-h) % factor, (-w) % factor
            if pad_h or pad_w:
                # reflect needs pad < size; a 1-pixel-wide input can only be replicated
                mode = "reflect" if h > pad_h and w > pad_w else "replicate"
                x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        # the image residual of the padded input (cropped below with the rest): what a tiled pass, which pads the
        # image once before cutting it (Upscaler.tiling), computes at the last rows and columns too
        base = upscale_input(x, self.config) if self.config.image_residual else None
        if factor > 1:
            x = F.pixel_unshuffle(x, factor)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for name in self.upsample_names:
            conv = getattr(self, name)
            feat = self.lrelu(conv(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        out = out if base is None else out + base
        if factor > 1:
            out = out[..., : h * self.config.scale, : w * self.config.scale]
        return out


def upscale_input(x: Tensor, config: RRDBConfig) -> Tensor:
    """The image residual's base: bicubic (PyTorch's, a = -0.75) upscale of the input."""
    if config.scale == 1:
        return x
    return F.interpolate(x, scale_factor=float(config.scale), mode="bicubic", align_corners=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_half(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """fp16 copies of float weights, refused (one CheckpointError) where a value is beyond fp16's range: every writer
    of fp16 weights (our safetensors, the .pth layouts, ncnn's .bin) goes through here, so none writes an inf."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        peak = float(value.abs().max()) if value.numel() else 0.0
        if peak > FP16_MAX:
            raise CheckpointError(
                f"{key}: a weight of magnitude {peak:.3g} does not fit fp16 (max {FP16_MAX:g})"
            )
        out[key] = value.to(torch.float16)
    return out
