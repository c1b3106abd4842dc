"""VGG19 features for ESRGAN's perceptual loss: conv5_4 BEFORE its ReLU, on ImageNet-normalised inputs.

Written by hand (no torchvision dependency) with the same module indices as torchvision's ``vgg19().features``, so
torchvision's published weight file (``vgg19-dcbb9e9d.pth``: keys ``features.{idx}.weight/bias``) loads as is.
The paper takes features before the activation because after the ReLU deep features are sparse and carry weaker
supervision (section 3.4); index 34 is conv5_4, so the extractor stops there.

Weights come, in order, from an explicit path (``--vgg-weights`` / config ``perceptual.weights``), torch hub's cache,
or the official URL (hash-checked). Without any of them training stops before it starts, with instructions.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import CheckpointError, ModelNotAvailableError

log = logging.getLogger(__name__)

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
VGG19_FILENAME = "vgg19-dcbb9e9d.pth"
VGG19_SHA256_PREFIX = "dcbb9e9d"  # torchvision names its files <arch>-<first 8 hex of the SHA-256>.pth
RANDOM = "random"

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


def hub_checkpoint_dir() -> Path:
    """Where torch.hub keeps downloaded weights: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch)."""
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home:
        root = Path(torch_home).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "torch"
    return root / "hub" / "checkpoints"


def how_to_get_weights() -> str:
    dest = hub_checkpoint_dir() / VGG19_FILENAME
    return (
        f"download {VGG19_URL} (548 MB, SHA-256 starting {VGG19_SHA256_PREFIX}) and either put it at {dest} "
        f"or pass --vgg-weights PATH (config: perceptual.weights: PATH)"
    )


def resolve_vgg_weights(
    spec: str | None,
    *,
    download: bool = True,
    url: str = VGG19_URL,
    sha256: str = VGG19_SHA256_PREFIX,
) -> Path | None:
    """The VGG19 weight file to use; None means `spec == "random"` (smoke tests only: no perceptual signal).

    `spec` is an explicit path, "random", or None (hub cache, then download from `url`). Raises
    ModelNotAvailableError, saying exactly how to get the file, when none is available.
    """
    if spec == RANDOM:
        log.warning(
            "perceptual.weights is 'random': the perceptual loss uses an UNTRAINED VGG19 and means nothing. "
            "Smoke tests only; this is recorded in the checkpoints."
        )
        return None
    if spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelNotAvailableError(f"{path}: VGG19 weight file not found; {how_to_get_weights()}")
        return path
    cached = hub_checkpoint_dir() / VGG19_FILENAME
    if cached.is_file():
        return cached
    if not download:
        raise ModelNotAvailableError(
            f"VGG19 weights for the perceptual loss are not on this machine; {how_to_get_weights()}"
        )
    from .download import download_file  # written alongside; imported only when needed
    from .errors import DownloadError

    log.warning("downloading VGG19 weights for the perceptual loss from %s to %s", url, cached)
    try:
        return download_file(url, cached, sha256=sha256)
    except DownloadError as exc:
        raise ModelNotAvailableError(
            f"VGG19 weights for the perceptual loss are not available ({exc}); {how_to_get_weights()}"
        ) from None


def load_vgg19_state(path: str | os.PathLike[str], last_index: int = CONV5_4) -> dict[str, Tensor]:
    """Read a torchvision-format VGG19 file safely and return the `features` state dict up to `last_index`.

    Keys other than features.* (the classifier) are ignored; a missing or misshapen conv is an error naming it.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(
            f"{path}: cannot read as a VGG19 weight file ({type(exc).__name__}: {exc})"
        ) from None
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
