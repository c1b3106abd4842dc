"""VGG19 features for ESRGAN's perceptual loss: conv5_4 BEFORE its ReLU, on ImageNet-normalised inputs.

Written by hand (no torchvision dependency) with the same module indices as torchvision's ``vgg19().features``, so
torchvision's published weight file (``vgg19-dcbb9e9d.pth``: keys ``features.{idx}.weight/bias``) loads as is.
The paper takes features before the activation because after the ReLU deep features are sparse and carry weaker
supervision (section 3.4); index 34 is conv5_4, so the extractor stops there.

Weights come, in order, from an explicit path (``--vgg-weights`` / config ``perceptual.weights``), torch hub's cache,
or the official URL (hash-checked): esrgan.zoo.resolve_vgg_weights, beside the other weight files. Without any of
them training stops before it starts, with instructions.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import CheckpointError

# torchvision's VGG19 "E" configuration: conv widths, "M" = 2x2 max pool
_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                               512, 512, 512, 512, "M")  # fmt: skip
CONV5_4 = 34  # index of conv5_4 in torchvision's vgg19().features

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
    """Frozen VGG19 up to conv5_4 (pre-activation); takes RGB in [0, 1] and normalises it the ImageNet way inside."""

    def __init__(self, *, weights: str | os.PathLike[str] | None) -> None:
        """`weights`: a torchvision-format file, or None for random weights (smoke tests only)."""
        super().__init__()
        self.features = vgg19_features(CONV5_4)
        self.pretrained = weights is not None
        if weights is not None:
            self.features.load_state_dict(load_vgg19_state(weights), strict=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatureExtractor:
        """Always stays in eval mode: it is a fixed feature space, not a trained part."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        mean: Tensor = self.mean  # type: ignore[assignment]
        std: Tensor = self.std  # type: ignore[assignment]
        return self.features((x - mean) / std)
