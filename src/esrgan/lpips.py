"""LPIPS v0.1 (Zhang et al., CVPR 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric").

Written by hand because the ``lpips`` package needs torchvision, which this project does not depend on. The metric:

1. RGB in [0, 1] is mapped to [-1, 1] (what LPIPS expects), then shifted and scaled per channel by the constants of
   the published v0.1 code (its "scaling layer": ImageNet statistics re-expressed for [-1, 1] inputs).
2. An ImageNet backbone (AlexNet or VGG16 ``features``, written here with torchvision's module indices so
   torchvision's weight files load as is) gives five ReLU outputs.
3. At every pixel each feature vector is divided by its Euclidean norm over channels, the two images' unit vectors
   are subtracted and squared, a learned non-negative weight per channel (the 1x1 "lin" layer) sums the channels,
   the map is averaged over space, and the five layers are summed.

Weights are two files per network, both optional extras that this project never downloads by itself:

* the backbone, torchvision format (``features.{idx}.weight/bias``): an explicit path, else torch hub's cache;
* the v0.1 lin layers (``lin{k}.model.1.weight``, a few KB): an explicit path, else torch hub's cache under the name
  ``lpips_v0.1_<net>.pth``, else the ``weights/v0.1/`` folder of an installed ``lpips`` package (found without
  importing it, since importing it would import torchvision).

Without them `load_lpips` raises ModelNotAvailableError naming each missing file, its URL and where to put it
(the lookup is esrgan.zoo.resolve_lpips_weights, beside the other weight files).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoints import read_torch_file
from .errors import CheckpointError
from .zoo import resolve_lpips_weights

__all__ = ["LPIPS", "NETS", "load_lpips"]


# The v0.1 scaling layer: x -> (x - shift) / scale on inputs in [-1, 1] (constants of the published code).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # added to the channel norm, as in the published code, so an all-zero feature vector stays zero


@dataclass(frozen=True)
class NetSpec:
    """One LPIPS backbone: torchvision's `features` layout and the five ReLU outputs LPIPS reads."""

    # (index, in, out, kernel, stride, padding) of each conv in torchvision's `features`; a ReLU follows each conv
    convs: tuple[tuple[int, int, int, int, int, int], ...]
    pools: tuple[int, ...]  # indices of the max pools
    pool_kernel: int
    taps: tuple[int, ...]  # indices of the ReLUs whose outputs are compared
    min_size: int  # smallest height/width the backbone accepts up to the last tap

    @property
    def channels(self) -> tuple[int, ...]:
        out = {idx + 1: cout for idx, _, cout, *_ in self.convs}
        return tuple(out[t] for t in self.taps)


_ALEX = NetSpec(
    convs=(
        (0, 3, 64, 11, 4, 2),
        (3, 64, 192, 5, 1, 2),
        (6, 192, 384, 3, 1, 1),
        (8, 384, 256, 3, 1, 1),
        (10, 256, 256, 3, 1, 1),
    ),
    pools=(2, 5),
    pool_kernel=3,  # AlexNet pools 3x3 with stride 2
    taps=(1, 4, 7, 9, 11),
    min_size=31,  # 11x11/4 conv, then a 3x3/2 pool that must still see a 3x3 window after the first pool
)

_VGG16 = NetSpec(
    convs=(
        (0, 3, 64, 3, 1, 1),
        (2, 64, 64, 3, 1, 1),
        (5, 64, 128, 3, 1, 1),
        (7, 128, 128, 3, 1, 1),
        (10, 128, 256, 3, 1, 1),
        (12, 256, 256, 3, 1, 1),
        (14, 256, 256, 3, 1, 1),
        (17, 256, 512, 3, 1, 1),
        (19, 512, 512, 3, 1, 1),
        (21, 512, 512, 3, 1, 1),
        (24, 512, 512, 3, 1, 1),
        (26, 512, 512, 3, 1, 1),
        (28, 512, 512, 3, 1, 1),
    ),
    pools=(4, 9, 16, 23),
    pool_kernel=2,
    taps=(3, 8, 15, 22, 29),  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    min_size=16,  # four 2x2 pools before relu5_3
)

NETS: dict[str, NetSpec] = {"alex": _ALEX, "vgg": _VGG16}


def _spec(net: str) -> NetSpec:
    if net not in NETS:
        raise ValueError(f"unknown LPIPS network {net!r}; choose one of {', '.join(NETS)}")
    return NETS[net]


def backbone_features(spec: NetSpec) -> nn.Sequential:
    """torchvision's `features` for this backbone up to the last tap (same indices, same parameter names)."""
    layers: dict[int, nn.Module] = {}
    for idx, cin, cout, k, s, p in spec.convs:
        layers[idx] = nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p)
        layers[idx + 1] = nn.ReLU()  # not in place: the tapped outputs must survive the next layer
    for idx in spec.pools:
        layers[idx] = nn.MaxPool2d(kernel_size=spec.pool_kernel, stride=2)
    assert sorted(layers) == list(range(len(layers)))
    return nn.Sequential(*(layers[i] for i in range(spec.taps[-1] + 1)))


def _read_tensors(path: Path, what: str) -> dict[str, Tensor]:
    """A flat {name: tensor} file read as hostile, like every model file (esrgan.checkpoints.read_torch_file: size
    limit, zip-bomb check, weights_only unpickling, one-line errors naming the file); the caller checks the keys."""
    return read_torch_file(
        path,
        what=what,
        advice="The published torchvision and LPIPS v0.1 files hold tensors only: get this one again from its "
        "published URL.",
    )


def _take(obj: dict[str, Tensor], path: Path, key: str, shape: Sequence[int], what: str) -> Tensor:
    value = obj.get(key)
    if not isinstance(value, Tensor):
        raise CheckpointError(f"{path}: missing {key}: not {what}")
    if tuple(value.shape) != tuple(shape):
        raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, {what} needs {tuple(shape)}")
    if not value.is_floating_point() or not torch.isfinite(value).all():
        raise CheckpointError(f"{path}: {key} is not a finite floating-point tensor")
    return value.to(torch.float32)


def _backbone_state(path: Path, net: str, reference: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision-format `features.*` tensors; other keys (the classifier) are ignored."""
    what = f"a torchvision {net} weight file"
    obj = _read_tensors(path, what)
    return {k: _take(obj, path, f"features.{k}", ref.shape, what) for k, ref in reference.items()}


def _lin_state(path: Path, net: str, channels: Sequence[int]) -> list[Tensor]:
    what = f"an LPIPS v0.1 lin-layer file for {net}"
    obj = _read_tensors(path, what)
    return [_take(obj, path, f"lin{k}.model.1.weight", (1, c, 1, 1), what) for k, c in enumerate(channels)]


def unit_normalize(feat: Tensor) -> Tensor:
    """Each pixel's feature vector divided by its Euclidean norm over channels (dim 1)."""
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance: lower is more similar, 0 for identical images. Frozen, always in eval mode.

    Call it on two HxWx3 images (uint8, uint16, or float in [0, 1]; HxW grey is repeated to RGB) to get a float,
    or on two NCHW float tensors in [0, 1] to get N distances (differentiable, on the module's device).
    """

    def __init__(self, net: str, *, backbone: str | os.PathLike[str], lin: str | os.PathLike[str]) -> None:
        """`backbone`: torchvision-format weight file; `lin`: v0.1 lin-layer file (both checked key by key).
        `load_lpips` finds them for you."""
        super().__init__()
        self.net = net
        self.spec = _spec(net)
        self.features = backbone_features(self.spec)
        self.features.load_state_dict(
            _backbone_state(Path(backbone), net, self.features.state_dict()), strict=True
        )
        self.lins = nn.ParameterList(nn.Parameter(w) for w in _lin_state(Path(lin), net, self.spec.channels))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Always stays in eval mode: a metric, not a trained part."""
        return super().train(False)

    def layer_features(self, x: Tensor) -> list[Tensor]:
        """The five tapped ReLU outputs for NCHW RGB in [0, 1]."""
        shift: Tensor = self.shift  # type: ignore[assignment]
        scale: Tensor = self.scale  # type: ignore[assignment]
        h = ((2 * x - 1) - shift) / scale
        taps = set(self.spec.taps)
        out = []
        for idx, layer in enumerate(self.features):
            h = layer(h)
            if idx in taps:
                out.append(h)
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """N distances between NCHW RGB batches in [0, 1]."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two NCHW RGB batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < self.spec.min_size:
            raise ValueError(
                f"LPIPS ({self.net}) needs images at least {self.spec.min_size}x{self.spec.min_size}, "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )
        n = x.shape[0]
        feats = self.layer_features(torch.cat([x, y]))  # one pass: both images see the same backbone call
        total = x.new_zeros(n)
        for feat, lin in zip(feats, self.lins, strict=True):
            diff = (unit_normalize(feat[:n]) - unit_normalize(feat[n:])).pow(2)
            total = total + F.conv2d(diff, lin).mean(dim=(1, 2, 3))
        return total

    @overload
    def __call__(self, a: np.ndarray, b: np.ndarray) -> float: ...
    @overload
    def __call__(self, a: Tensor, b: Tensor) -> Tensor: ...
    def __call__(self, a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> float | Tensor:
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            out: Tensor = super().__call__(a, b)
            return out
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            shift: Tensor = self.shift  # type: ignore[assignment]
            device = shift.device
            with torch.no_grad():
                d: Tensor = super().__call__(_to_tensor(a, device), _to_tensor(b, device))
            return float(d.item())
        raise TypeError(
            f"LPIPS compares two numpy images or two tensors, got {type(a).__name__} and {type(b).__name__}"
        )


def _to_tensor(img: np.ndarray, device: torch.device) -> Tensor:
    """HxWx3 / HxW / HxWx1 image (uint8, uint16 or float in [0, 1]) -> 1x3xHxW float32 in [0, 1]."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"LPIPS needs HxWx3 RGB or HxW grey images, got shape {img.shape}")
    if img.dtype == np.uint8:
        x = torch.from_numpy(img.astype(np.float32) / 255)
    elif img.dtype == np.uint16:
        x = torch.from_numpy(img.astype(np.float32) / 65535)
    elif np.issubdtype(img.dtype, np.floating):
        x = torch.from_numpy(np.asarray(img, dtype=np.float32))
    else:
        raise ValueError(f"LPIPS needs uint8, uint16 or float images, got {img.dtype}")
    x = x.permute(2, 0, 1)[None].expand(1, 3, -1, -1)
    return x.contiguous().to(device)


def load_lpips(
    net: str = "alex",
    *,
    backbone_weights: str | os.PathLike[str] | None = None,
    lin_weights: str | os.PathLike[str] | None = None,
) -> LPIPS:
    """LPIPS v0.1 with published weights ("alex", the paper's default for evaluation, or "vgg").

    Raises ModelNotAvailableError naming the missing files (with URLs and where to put them), CheckpointError for
    a file that is unreadable or has the wrong keys/shapes.
    """
    backbone, lin = resolve_lpips_weights(net, backbone_weights=backbone_weights, lin_weights=lin_weights)
    return LPIPS(net, backbone=backbone, lin=lin)
