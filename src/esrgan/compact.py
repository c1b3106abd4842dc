"""SRVGGNetCompact, Real-ESRGAN's compact generator (Wang et al., Real-ESRGAN, 2021: its video and fast models).

conv(in -> num_feat) -> PReLU -> num_conv x [conv(num_feat -> num_feat) -> PReLU] -> conv(num_feat -> out x scale^2)
-> pixel shuffle -> + nearest upscale of the input. Plain VGG-style: no dense blocks, no skip inside, every conv 3x3,
so a receptive field of num_conv + 2 input pixels each side. realesr-animevideov3 has 16 inner convs (0.62 M
parameters, 27x fewer than the paper's RRDBNet), realesr-general-x4v3 32 (1.2 M).

Parameter names are Real-ESRGAN's (``body.{i}.weight``: the convs at even i, each PReLU's per-channel slopes at the
odd i after it), so our state dicts load in its code, BasicSR and spandrel as they are. Real-ESRGAN's class can also
use ReLU or LeakyReLU, which have no tensors: a file without PReLU slopes cannot say which it was, and every released
compact model uses PReLU, so only PReLU is built (see esrgan.checkpoints).

`esrgan train` trains it with `model.arch: compact` (from init_weights, not PyTorch's default init: see there).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

COMPACT_SCALES = (1, 2, 3, 4, 8)
MAX_CONVS = (
    1024  # released models have 16 and 32; a file claiming thousands is refused before anything is built
)


def scale_of(num_in_ch: int, planes: int) -> int | None:
    """The scale whose pixel shuffle turns the last conv's `planes` into num_in_ch channels (None: no such scale)."""
    return next((s for s in COMPACT_SCALES if num_in_ch * s * s == planes), None)


@dataclass(frozen=True)
class CompactConfig:
    """Hyperparameters of an SRVGGNetCompact: everything needed to rebuild it, stored with our files."""

    ARCH: ClassVar[str] = "SRVGGNetCompact"

    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_conv: int = 16
    scale: int = 4

    def __post_init__(self) -> None:
        if self.scale not in COMPACT_SCALES:
            raise ValueError(f"scale must be one of {COMPACT_SCALES}, got {self.scale}")
        for name in ("num_in_ch", "num_out_ch", "num_feat"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.num_conv <= MAX_CONVS:
            raise ValueError(f"num_conv must be 0-{MAX_CONVS}, got {self.num_conv}")
        if self.num_out_ch != self.num_in_ch:
            raise ValueError("the nearest-upscale residual needs as many output channels as input channels")

    # What the tiling and the engines ask of any generator's config (RRDBConfig has the same names).
    @property
    def unshuffle(self) -> int:
        return 1

    @property
    def image_residual(self) -> bool:
        return False  # the nearest residual is part of the architecture, not an option

    @property
    def receptive_radius(self) -> int:
        """Input pixels each side that reach one output pixel: one per 3x3 conv (the pixel shuffle and the nearest
        upscale of the input add none). realesr-animevideov3: 18; realesr-general-x4v3: 34."""
        return self.num_conv + 2

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def expected_shapes(config: CompactConfig) -> dict[str, tuple[int, ...]]:
    """Every key of SRVGGNetCompact(config).state_dict() with its shape, in the same order, without building it."""
    feat = config.num_feat
    shapes: dict[str, tuple[int, ...]] = {}
    index = 0
    for cin, cout in [
        (config.num_in_ch, feat),
        *[(feat, feat)] * config.num_conv,
        (feat, config.num_out_ch * config.scale**2),
    ]:
        shapes[f"body.{index}.weight"] = (cout, cin, 3, 3)
        shapes[f"body.{index}.bias"] = (cout,)
        if index < 2 * config.num_conv + 2:  # a PReLU after every conv but the last
            shapes[f"body.{index + 1}.weight"] = (feat,)
        index += 2
    return shapes


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact generator; realesr-animevideov3 = CompactConfig(num_conv=16), general-x4v3 = 32."""

    def __init__(self, config: CompactConfig | None = None) -> None:
        super().__init__()
        self.config = config or CompactConfig()
        cfg = self.config
        layers: list[nn.Module] = [nn.Conv2d(cfg.num_in_ch, cfg.num_feat, 3, 1, 1), nn.PReLU(cfg.num_feat)]
        for _ in range(cfg.num_conv):
            layers += [nn.Conv2d(cfg.num_feat, cfg.num_feat, 3, 1, 1), nn.PReLU(cfg.num_feat)]
        layers.append(nn.Conv2d(cfg.num_feat, cfg.num_out_ch * cfg.scale**2, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, config: CompactConfig) -> SRVGGNetCompact:
        return cls(config)

    @property
    def scale(self) -> int:
        return self.config.scale

    def init_weights(self, last_scale: float = 0.1) -> None:
        """Initialisation for training from scratch (ours; Real-ESRGAN keeps PyTorch's default): He-normal for
        every conv with the gain of the PReLU's initial slope 0.25, so the signal keeps its scale through all num_conv
        layers (PyTorch's default loses nine tenths of it within four layers, tests/test_compact.py), zero biases,
        and the last conv x last_scale, so training starts near the nearest upscale."""
        convs = [m for m in self.body if isinstance(m, nn.Conv2d)]
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight, a=0.25, mode="fan_in", nonlinearity="leaky_relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        convs[-1].weight.data.mul_(last_scale)

    def forward(self, x: Tensor) -> Tensor:
        """Map an (N, C, H, W) image in [0, 1] to (N, C, H * scale, W * scale)."""
        out = self.body(x)
        if self.config.scale == 1:
            return out + x
        out = F.pixel_shuffle(out, self.config.scale)
        return out + F.interpolate(x, scale_factor=float(self.config.scale), mode="nearest")
