"""esrgan: ESRGAN super-resolution (Wang et al., ECCV Workshops 2018) as practical software.

Public API (imported lazily so `import esrgan` stays cheap):
    RRDBNet, RRDBConfig          the generator and its hyperparameters          (esrgan.generator)
    SRVGGNetCompact, CompactConfig  Real-ESRGAN's compact generator (inference)  (esrgan.compact)
    load_model                   a model by name or any model file                (esrgan.zoo)
    save_model                   one loading pipeline for every model file       (esrgan.checkpoints)
    interpolate_state_dicts      network interpolation                           (esrgan.checkpoints)
    Upscaler                     upscale numpy arrays / PIL images / files        (esrgan.upscale)
    upscale_video                a video through an Upscaler, sound and timing kept (esrgan.video; needs PyAV)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "RRDBNet": "generator",
    "RRDBConfig": "generator",
    "SRVGGNetCompact": "compact",
    "CompactConfig": "compact",
    "load_model": "zoo",
    "save_model": "checkpoints",
    "interpolate_state_dicts": "checkpoints",
    "Upscaler": "upscale",
    "upscale_video": "video",
}

__all__ = [
    "CompactConfig",
    "RRDBConfig",
    "RRDBNet",
    "SRVGGNetCompact",
    "Upscaler",
    "__version__",
    "interpolate_state_dicts",
    "load_model",
    "save_model",
    "upscale_video",
]

if TYPE_CHECKING:
    from .checkpoints import interpolate_state_dicts, save_model
    from .compact import CompactConfig, SRVGGNetCompact
    from .generator import RRDBConfig, RRDBNet
    from .upscale import Upscaler
    from .video import upscale_video
    from .zoo import load_model


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'esrgan' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy exports too (tab completion, help()), without importing them."""
    return sorted({*globals(), *_LAZY})
