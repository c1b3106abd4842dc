"""The generator architectures a model file can hold, told apart in this one place.

- RRDBNet (esrgan.generator): ESRGAN's generator, the paper's; what `esrgan train` trains by default and most
  community models are.
- SRVGGNetCompact (esrgan.compact): Real-ESRGAN's compact generator (realesr-animevideov3, realesr-general-x4v3);
  upscaled, converted, interpolated, and trained with `model.arch: compact`.

Every config has `scale`, `num_in_ch`, `num_out_ch`, `num_feat`, `unshuffle` and `image_residual`, which is all the
tiling and the upscaling pipeline ask of a model; what exists for one architecture only (esrgan.fast's packed
RRDBNet, ncnn's graph, the training init and `compile: blocks`) checks the type.
"""

from __future__ import annotations

from typing import TypeAlias

from .compact import CompactConfig, SRVGGNetCompact
from .generator import RRDBConfig, RRDBNet

GeneratorConfig: TypeAlias = RRDBConfig | CompactConfig
Generator: TypeAlias = RRDBNet | SRVGGNetCompact

ARCHS: dict[str, type[RRDBConfig] | type[CompactConfig]] = {
    "RRDBNet": RRDBConfig,
    "SRVGGNetCompact": CompactConfig,
}
"""The names our files record (metadata esrgan.arch) and the config each one's esrgan.config holds."""


def arch_name(config: GeneratorConfig) -> str:
    return "SRVGGNetCompact" if isinstance(config, CompactConfig) else "RRDBNet"


def build_generator(config: GeneratorConfig) -> Generator:
    """An untrained generator of this architecture and size (on the current default device)."""
    if isinstance(config, CompactConfig):
        return SRVGGNetCompact(config)
    return RRDBNet.from_config(config)


def describe_arch(config: GeneratorConfig) -> str:
    """One line: the architecture and its size, as `esrgan info` and the web UI show it."""
    if isinstance(config, CompactConfig):
        return f"SRVGGNetCompact (Real-ESRGAN compact), {config.num_conv} convs, x{config.scale}"
    return f"RRDBNet, {config.num_block} blocks, x{config.scale}"
