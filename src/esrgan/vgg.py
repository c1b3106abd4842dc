"""VGG19 features for ESRGAN's perceptual loss: conv5_4 BEFORE its ReLU, on ImageNet-normalised inputs.

Written by hand (no torchvision dependency) with the same module indices as torchvision's ``vgg19().features``, so
torchvision's published weight file (``vgg19-dcbb9e9d.pth``: keys ``features.{idx}.weight/bias``) loads as is.
The paper takes features before the activation because after the ReLU deep features are sparse and carry weaker
supervision (section 3.4); index 34 is conv5_4, so the extractor stops there. Real-ESRGAN sums weighted L1 distances
at five depths (conv1_2 0.1, conv2_2 0.1, conv3_4 1, conv4_4 1, conv5_4 1, all before their ReLU):
`perceptual.layers` / `perceptual.layer_weights` name any of VGG19's convs (conv1_1 .. conv5_4) or their ReLUs
(relu1_1 ..), BasicSR's names; the extractor then stops at the deepest one named.

Weights come, in order, from an explicit path (``--vgg-weights`` / config ``perceptual.weights``), torch hub's cache,
or the official URL (hash-checked): esrgan.zoo.resolve_vgg_weights, beside the other weight files. Without any of
them training stops before it starts, with instructions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import CheckpointError

# torchvision's VGG19 "E" configuration: conv widths, "M" = 2x2 max pool
_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                               512, 512, 512, 512, "M")  # fmt: skip
CONV5_4 = 34  # index of conv5_4 in torchvision's vgg19().features


def _layer_indices() -> dict[str, int]:
    """BasicSR's layer names (conv1_1, relu1_1, ..., conv5_4, relu5_4) -> indices in torchvision's vgg19().features."""
    names: dict[str, int] = {}
    index, block, conv = 0, 1, 1
    for item in _CFG:
        if item == "M":
            index, block, conv = index + 1, block + 1, 1
        else:
            names[f"conv{block}_{conv}"], names[f"relu{block}_{conv}"] = index, index + 1
            index, conv = index + 2, conv + 1
    return names


LAYERS = _layer_indices()

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features(last_index: int = CONV5_4) -> nn.Sequential:
    """torchvision's vgg19().features truncated after module `last_index` (same indices, same parameter names)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(item, int)
            layers += [nn.Conv2d(in_ch, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = item
    return nn.Sequential(*layers[: last_index + 1])


def load_vgg19_state(path: str | os.PathLike[str], last_index: int = CONV5_4) -> dict[str, Tensor]:
    """Read a torchvision-format VGG19 file safely and return the `features` state dict up to `last_index`.

    Keys other than features.* (the classifier) are ignored; a missing or misshapen conv is an error naming it.
    """
    # the model files' defences: size limit, zip-bomb check, one line
    from .checkpoints import read_torch_file

    path = Path(path)
    obj = read_torch_file(
        path,
        what="a VGG19 weight file",
        advice="torchvision's published vgg19-dcbb9e9d.pth holds tensors only: get it again from its URL "
        "(esrgan train says which).",
    )
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a state dict (got {type(obj).__name__})")
    reference = vgg19_features(last_index).state_dict()
    state: dict[str, Tensor] = {}
    for key, ref in reference.items():
        full = f"features.{key}"
        value = obj.get(full)
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: missing {full}: not a torchvision VGG19 weight file")
        if value.shape != ref.shape:
            raise CheckpointError(
                f"{path}: {full} has shape {tuple(value.shape)}, VGG19 needs {tuple(ref.shape)}"
            )
        state[key] = value.float()
    return state


class VGGFeatureExtractor(nn.Module):
    """Frozen VGG19 features at the named layers (default conv5_4, pre-activation); takes RGB in [0, 1] and normalises
    it the ImageNet way inside. Returns one feature map per layer, in the order given."""

    def __init__(
        self, *, weights: str | os.PathLike[str] | None, layers: Sequence[str] = ("conv5_4",)
    ) -> None:
        """`weights`: a torchvision-format file, or None for random weights (smoke tests only)."""
        super().__init__()
        unknown = [name for name in layers if name not in LAYERS]
        if unknown or not layers:
            raise ValueError(
                f"unknown VGG19 layer(s) {unknown or list(layers)} (conv1_1 .. conv5_4, relu1_1 ..)"
            )
        self.layers = tuple(layers)
        self._taps = [LAYERS[name] for name in self.layers]
        last = max(self._taps)
        self.features = vgg19_features(last)
        self.pretrained = weights is not None
        if weights is not None:
            self.features.load_state_dict(load_vgg19_state(weights, last), strict=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatureExtractor:
        """Always stays in eval mode: it is a fixed feature space, not a trained part."""
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        mean: Tensor = self.mean  # type: ignore[assignment]
        std: Tensor = self.std  # type: ignore[assignment]
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"VGG19 features of NCHW RGB or grey images (C = 3 or 1), got {tuple(x.shape)}")
        # a grey batch (a grey model's) broadcasts against the three channels' means: VGG19 sees it as RGB with
        # three equal channels, as it would see the same photo saved in colour
        h = (x - mean) / std
        found: dict[int, Tensor] = {}
        wanted = set(self._taps)
        for index, layer in enumerate(self.features):
            # a tapped conv's output must survive its in-place ReLU: the ReLU then runs out of place
            relu_after_tap = isinstance(layer, nn.ReLU) and index - 1 in wanted
            h = torch.relu(h) if relu_after_tap else layer(h)
            if index in wanted:
                found[index] = h
        return [found[index] for index in self._taps]
