"""Typed training configuration: nested dataclasses loaded from YAML, unknown keys rejected, types checked.

One config file describes one training stage; `configs/esrgan_x4_psnr.yaml` and `configs/esrgan_x4_gan.yaml` are the
paper's two stages (the second names the first one's exported generator in `train.pretrained_g`). Every default is
visible here, nothing is hidden in the training code. `--set section.key=value` overrides are parsed as YAML scalars
and go through the same type checks as the file. The resolved config is written into the run folder.
"""

from __future__ import annotations

import dataclasses
import math
import re
import stat
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .compact import CompactConfig
from .errors import ConfigError
from .generator import RRDBConfig

_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@dataclass(frozen=True)
class ModelConfig(RRDBConfig):
    """The generator's hyperparameters (RRDBConfig's fields: paper 64 features, 23 blocks, growth 32, scale 4) and
    the discriminator's width: one config type for the generator, extended by what only training needs."""

    d_num_feat: int = 64
    # vgg: ESRGAN's VGG-style discriminator (one logit per image, HR patches of a multiple of 32 px); unet:
    # Real-ESRGAN's U-Net with spectral norm (one logit per pixel, any patch divisible by 8)
    discriminator: Literal["vgg", "unet"] = "vgg"
    # rrdbnet: the paper's generator (num_block, num_grow, ...); compact: Real-ESRGAN's SRVGGNetCompact (num_conv
    # inner convs of num_feat channels, PReLU, a pixel shuffle and the nearest upscale of the input added: 5x fewer
    # operations per pixel than the CPU recipe's RRDBNet at 16 convs, its realesr-animevideov3 size)
    arch: Literal["rrdbnet", "compact"] = "rrdbnet"
    num_conv: int = 16  # compact only

    @property
    def generator(self) -> RRDBConfig | CompactConfig:
        """The generator's own config (what it is built from and what checkpoints record)."""
        if self.arch == "compact":
            return CompactConfig(self.num_in_ch, self.num_out_ch, self.num_feat, self.num_conv, self.scale)
        return RRDBConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RRDBConfig)})


POOL_BATCHES = 15
"""data.realesrgan.pool_size: auto = this many batches (Real-ESRGAN: 180 pairs for a batch of 12)."""
POOL_MAX_BYTES = 2**31
"""data.realesrgan.pool_size's bound: a pool is held on the training device and saved in every checkpoint (whose
reader refuses files over 8 GiB)."""


@dataclass
class RealESRGANDegradationConfig:
    """data.degradation: realesrgan: Real-ESRGAN's second-order degradation (Wang et al. 2021), its x4plus defaults.

    Each order: blur (a random kernel: isotropic/anisotropic Gaussian, generalized Gaussian or plateau, or a sinc
    filter) -> resize (up/down/keep with the given probabilities, area/bilinear/bicubic) -> noise (Gaussian with
    `gaussian_noise_prob`, else Poisson; grey noise with `gray_noise_prob`) -> JPEG. Then a resize to the LR size and
    a sinc filter (with `final_sinc_prob`), before or after the last JPEG at random. Sigmas and noise in 0..255
    levels of the image at that point; resize scales relative to the HR size (first order) and the LR size (second).
    """

    kernel_sizes: list[int] = field(default_factory=lambda: [7, 9, 11, 13, 15, 17, 19, 21])
    # iso, aniso, generalized_iso, generalized_aniso, plateau_iso, plateau_aniso
    kernel_prob: list[float] = field(default_factory=lambda: [0.45, 0.25, 0.12, 0.03, 0.12, 0.03])
    sinc_prob: float = 0.1
    blur_sigma: list[float] = field(default_factory=lambda: [0.2, 3.0])
    betag: list[float] = field(default_factory=lambda: [0.5, 4.0])
    betap: list[float] = field(default_factory=lambda: [1.0, 2.0])
    resize_prob: list[float] = field(default_factory=lambda: [0.2, 0.7, 0.1])  # up, down, keep
    resize_range: list[float] = field(default_factory=lambda: [0.15, 1.5])
    gaussian_noise_prob: float = 0.5
    noise_sigma: list[float] = field(default_factory=lambda: [1.0, 30.0])
    poisson_scale: list[float] = field(default_factory=lambda: [0.05, 3.0])
    gray_noise_prob: float = 0.4
    jpeg_quality: list[float] = field(default_factory=lambda: [30.0, 95.0])
    second_blur_prob: float = 0.8
    sinc_prob2: float = 0.1
    blur_sigma2: list[float] = field(default_factory=lambda: [0.2, 1.5])
    betag2: list[float] = field(default_factory=lambda: [0.5, 4.0])
    betap2: list[float] = field(default_factory=lambda: [1.0, 2.0])
    resize_prob2: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.3])
    resize_range2: list[float] = field(default_factory=lambda: [0.3, 1.2])
    gaussian_noise_prob2: float = 0.5
    noise_sigma2: list[float] = field(default_factory=lambda: [1.0, 25.0])
    poisson_scale2: list[float] = field(default_factory=lambda: [0.05, 2.5])
    gray_noise_prob2: float = 0.4
    jpeg_quality2: list[float] = field(default_factory=lambda: [30.0, 95.0])
    final_sinc_prob: float = 0.8
    # unsharp mask of the HR (Real-ESRGAN's "gt_usm": weight 0.5, radius 50, threshold 10 levels): the sharpened HR is
    # both the target and the source of the LR, so the model learns to output crisper edges than the photos have;
    # 0 = off. The GAN stage shows its discriminator the HR before sharpening, as Real-ESRGAN does.
    usm_weight: float = 0.5
    # Real-ESRGAN's "training pair pool" (its queue_size): degraded (LR, HR) pairs wait in a pool and each step trains
    # on a random draw of it, the new batch taking the drawn places, so a batch mixes samples of many batches'
    # shared resize scales and modes. auto = 15 batches (data.batch_size x 15: Real-ESRGAN's 180 for its 12 per GPU,
    # 720 for its 4 GPUs); a number = that many pairs over all processes (a multiple of data.batch_size); 0 = off.
    pool_size: int | Literal["auto"] = "auto"


@dataclass
class DataConfig:
    """Training images: an HR folder (LR made by MATLAB bicubic on the fly) or paired HR/LR folders."""

    hr_dir: str = ""
    lr_dir: str | None = None  # paired mode: LR files with the same stem as the HR files
    patch_size: int = 128  # HR patch; the LR patch is patch_size / scale
    batch_size: int = 16  # total over all processes (the paper's 16)
    num_workers: int = 4
    # LR patches made on the training device for the whole batch (bicubic and realesrgan degradations): auto = on a
    # GPU (realesrgan: on CUDA only, see train.lr_on_device); otherwise in the loader (realesrgan: still batch-wide,
    # in the worker that collates the batch)
    lr_on_device: bool | Literal["auto"] = "auto"
    flip: bool = True
    rot90: bool = True
    cache_max_mb: int = 4096  # decoded images kept in RAM when they fit in this budget
    # > 1: shrink each HR image by this factor first (MATLAB bicubic). Very large photos (5K wallpapers) then hold
    # more detail per patch, and resampling hides their JPEG artefacts; the paper's DIV2K needs none (1.0). A list
    # ([2.0, 4.0]) trains on every image at every factor: a multi-scale set, sharp and soft versions of each photo
    hr_downscale: float | list[float] = 1.0
    # 8, or 16 to train on 16 bits of 16-bit files and measurements (DICOM, float TIFFs: stretched from their
    # range as `esrgan upscale` stretches them); with 8 they are reduced to 8 bits. 8-bit files keep their levels
    # (times 257; a grey model's luma of a colour file is then computed at 16 bits); the LR patches are rounded to
    # the levels of this depth. Not with the realesrgan degradation
    bit_depth: int = 8
    # [lo, hi] in the files' stored values: every DICOM slice and measurement TIFF mapped from this one range (as
    # `esrgan upscale --value-range LO:HI`), not each from its own min and max, so that one value (a CT's HU) is one
    # level in every image; values outside are clipped, with a warning. Photos are read as they are. null: per file
    value_range: list[float] | None = None
    # bicubic: the paper's (MATLAB bicubic of the HR patch); realworld: blur -> bicubic -> noise -> JPEG (one order,
    # the settings below); realesrgan: Real-ESRGAN's second-order degradation (data.realesrgan), made for the whole
    # batch on the training device (a GPU), or in the loader's workers on a CPU
    degradation: Literal["bicubic", "realworld", "realesrgan"] = "bicubic"
    blur_prob: float = 0.5  # realworld only: Gaussian blur before the bicubic downscale
    blur_sigma: list[float] = field(default_factory=lambda: [0.2, 2.0])
    noise_prob: float = 0.5  # realworld only: Gaussian noise on the LR image
    noise_sigma: list[float] = field(default_factory=lambda: [1.0, 15.0])  # in 0..255 levels
    jpeg_prob: float = 0.5  # realworld only: JPEG re-encoding of the LR image
    jpeg_quality: list[int] = field(default_factory=lambda: [40, 95])
    realesrgan: RealESRGANDegradationConfig = field(default_factory=RealESRGANDegradationConfig)

    @property
    def pool_pairs(self) -> int:
        """realesrgan.pool_size as a count of pairs: auto = POOL_BATCHES batches of batch_size."""
        size = self.realesrgan.pool_size
        return POOL_BATCHES * self.batch_size if size == "auto" else size


@dataclass
class TrainConfig:
    stage: Literal["psnr", "gan"] = "psnr"
    total_steps: int = 1_000_000
    seed: int = 0
    device: str = "auto"  # auto = cuda if available, else cpu
    # fp16 (with a grad scaler) is CUDA only; auto = bf16 on a GPU that has it (else fp16) and on a CPU that
    # computes bf16 natively (AVX512-BF16/AMX), fp32 on other CPUs (emulated bf16 is several times slower there)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    pretrained_g: str | None = None  # stage 2: stage 1's exported generator (or a training checkpoint)
    # stage 2: a discriminator to start from (a training checkpoint of ours, Real-ESRGAN's *_netD.pth, a BasicSR
    # net_d_*.pth), e.g. to fine-tune Real-ESRGAN's x4plus with its own discriminator; null = initialised anew
    pretrained_d: str | None = None
    ema_decay: float = 0.0  # 0 disables the EMA generator; BasicSR uses 0.999
    # EMA warm-up: the decay used at step t is min(ema_decay, (1 + t) / (10 + t)), so the average forgets the random
    # initial weights within a short run (with a fixed 0.999 they still weigh e^-2.5 = 8% after 2500 steps).
    ema_warmup: bool = True
    max_nonfinite_steps: int = 5  # stop after this many NaN/Inf losses in a row
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    channels_last: bool = False  # NHWC memory format for G, D and the batches (about 10% faster on this CPU)
    # wall-clock budget of the run (0 = none): the cosine/constant schedule follows elapsed time and the run ends
    # when the budget is spent (total_steps stays an upper bound); resumed runs continue the budget
    time_budget_minutes: float = 0.0
    # torch.compile G's training forward/backward (compile time counts): true = the whole network as one graph;
    # "blocks" = each RRDB compiled in place and reused by the others (RRDBNet.compile_blocks: ~6x less compile time)
    compile: bool | Literal["blocks"] = False
    cudnn_benchmark: bool = (
        True  # CUDA: let cuDNN pick the fastest convolution algorithms for the fixed shapes
    )
    # CUDA: record the whole step once as a CUDA graph and replay it (train.GraphedStep); auto = on one GPU in
    # bf16/fp32, not under torchrun (eager PyTorch spends most of a step launching kernels there)
    cuda_graph: bool | Literal["auto"] = "auto"


@dataclass
class OptimConfig:
    """Adam for G and D (paper: beta1 0.9, beta2 0.999)."""

    lr_g: float = 2e-4
    lr_d: float = 1e-4
    betas_g: list[float] = field(default_factory=lambda: [0.9, 0.999])
    betas_d: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped once per iteration (the same for G and D)."""

    kind: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [200_000, 400_000, 600_000, 800_000])
    gamma: float = 0.5
    eta_min: float = 1e-7  # cosine only: the final learning rate


@dataclass
class LossesConfig:
    """Loss weights: stage 1 is L1 only; stage 2 is percep 1, gan 5e-3 (lambda), pixel 1e-2 (eta)."""

    pixel_weight: float = 1.0
    perceptual_weight: float = 0.0
    gan_weight: float = 0.0
    gan_reduction: Literal["sum", "mean"] = "sum"  # sum: the paper; mean: BasicSR (halves lambda)
    # ragan: ESRGAN's relativistic average GAN; vanilla: the standard GAN loss (Real-ESRGAN, weight 0.1)
    gan_type: Literal["ragan", "vanilla"] = "ragan"


@dataclass
class PerceptualConfig:
    """VGG19 weights: a path, null (torch hub cache, then the official URL) or "random" (smoke tests only); the layers
    whose features are compared and their weights (the paper: conv5_4 alone; Real-ESRGAN: conv1_2 0.1, conv2_2 0.1,
    conv3_4 1, conv4_4 1, conv5_4 1; names of convs are before their ReLU, relu1_1 .. after)."""

    weights: str | None = None
    download: bool = True
    layers: list[str] = field(default_factory=lambda: ["conv5_4"])
    layer_weights: list[float] = field(default_factory=lambda: [1.0])


@dataclass
class ValidationConfig:
    dir: str | None = None  # HR images; LR by MATLAB bicubic; Y-PSNR/SSIM with `scale` pixels cropped
    # bicubic: the literature's LR; realesrgan: each image's LR made once by data.realesrgan's degradation (fixed
    # draws per image, the HR not sharpened), what a real-world model is for; the best checkpoint follows it
    lr: Literal["bicubic", "realesrgan"] = "bicubic"
    every: int = 5000
    max_images: int = 0  # 0 = all
    samples: int = 4  # images put into the saved sample grid
    sample_crop: int = 128  # HR crop shown per image in the grid


@dataclass
class LoggingConfig:
    every: int = 100  # JSONL line every this many steps
    progress: bool = True  # tqdm bar with it/s, losses, ETA
    tensorboard: bool = False  # needs the optional tensorboard package


@dataclass
class CheckpointConfig:
    every: int = 5000
    keep_last: int = 3
    keep_best: bool = True  # keep the checkpoint with the best validation Y-PSNR as best.ckpt


@dataclass
class Config:
    name: str = "run"
    output_dir: str = "runs"  # the run folder is output_dir/name
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    losses: LossesConfig = field(default_factory=LossesConfig)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir).expanduser() / self.name


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


# The typed loader is hand-written (about 60 lines) rather than pydantic/dacite: its errors name the file and the key
# the way the rest of the CLI does, it reads plain dataclasses, and it keeps the dependency list short.
def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` and return it (ints widen to float; nothing else is coerced)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return _build(tp, value, where)
    if origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
    elif origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, where)
            except ConfigError:
                continue
    elif origin is list:
        if isinstance(value, list):
            (item_tp,) = typing.get_args(tp)
            return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string, not a number: accept that spelling
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"unsupported config field type {tp!r}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            # a top-level key has no section to name: "top.yaml: unknown key 'nme' ..." (it was "top.yaml: : ...")
            place = f"{where}: unknown key {key!r}" if where else f"unknown key {key!r} at the top level"
            raise ConfigError(f"{place} (known: {', '.join(sorted(names))})")
    kwargs = {
        key: _convert(value, hints[key], f"{where}.{key}" if where else key) for key, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ValueError as exc:  # value checks in __post_init__ (e.g. RRDBConfig's scale)
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _location(source: str, key: str) -> str:
    return f"{source}: {key}" if key else source


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as a YAML scalar)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.total_steps=1000")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({_yaml_problem(exc)})") from None
    if isinstance(value, dict):
        raise ConfigError(f"--set {text!r}: set one key at a time (a.b=value), not a mapping")
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides to the raw mapping; the keys are checked against the dataclasses, and the values by
    building the config once all are applied: keys that must change together (a grey model's num_in_ch and
    num_out_ch with image_residual on) are two overrides whose first alone is refused. An error then names the
    override since which the config has not built (the first of the last failing run)."""
    broken_since: str | None = None
    for text in overrides:
        path, value = parse_override(text)
        cls: Any = Config
        node = raw
        for depth, part in enumerate(path):
            names = {f.name: f for f in dataclasses.fields(cls)}
            if part not in names:
                prefix = ".".join(path[:depth]) or "the top level"
                raise ConfigError(
                    f"--set {text!r}: unknown key {part!r} in {prefix} (known: {', '.join(sorted(names))})"
                )
            hint = typing.get_type_hints(cls)[part]
            if depth == len(path) - 1:
                if dataclasses.is_dataclass(hint):
                    raise ConfigError(
                        f"--set {text!r}: {part!r} is a section; set its keys, e.g. {part}.KEY=VALUE"
                    )
                node[part] = value
            else:
                if not dataclasses.is_dataclass(hint):
                    raise ConfigError(f"--set {text!r}: {part!r} is not a section")
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ConfigError(f"--set {text!r}: {part!r} is not a mapping in the config")
                node, cls = child, hint
        try:
            _build(Config, raw, "")
        except ConfigError as exc:
            broken_since, error = broken_since or text, exc
        else:
            broken_since = None
    if broken_since is not None:
        raise ConfigError(f"--set {broken_since!r}: {error}")
    return raw


def config_from_dict(raw: dict[str, Any], *, source: str = "config", overrides: Sequence[str] = ()) -> Config:
    """The typed, checked config of `raw`; `overrides`: the `--set` texts applied to it, named by the value
    errors of the keys they set."""
    try:
        config: Config = _build(Config, raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    validate(config, source, overrides=overrides)
    return config


def _blamed_overrides(key: str, msg: str, overrides: Sequence[str]) -> list[str]:
    """The `--set` texts behind a value error on `key` (as validate names it: "data.patch_size", a section
    "losses", or several keys "checkpoint/validation.every") or a key its message names ("model.scale"): the last
    one of each key, as that is the value in force."""
    last: dict[str, str] = {}
    for text in overrides:
        name = text.partition("=")[0].strip()
        last[name] = text
    named = set(re.split(r"[./]", key))
    out = []
    for name, text in last.items():
        if (
            name == key
            or name.startswith(key + ".")
            or ("/" in key and set(name.split(".")) <= named)
            or re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", msg)
        ):
            out.append(text)
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML training config, apply `--set` overrides, check every key and type."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # a FIFO would block the read for ever
        raise ConfigError(f"{path}: not a regular file; give a YAML config file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError as exc:  # an image or a checkpoint given by mistake
        raise ConfigError(
            f"{path}: not a YAML config: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {_yaml_problem(exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        _build(Config, raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source=str(path), overrides=overrides or [])


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key given twice in one mapping: PyYAML keeps the last silently, so a
    second `train:` section replaced the first whole (a review found `threads: 2` become 0)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[typing.Any, typing.Any]:
        seen: set[typing.Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader's own construct_mapping refuses it, in its words
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"{key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong (PyYAML's own message spans several lines with a source excerpt),
    and the context it was in ("while scanning a simple key"); the position is the caller's."""
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.problem, exc.context) if p]
        if parts:
            return "; ".join(" ".join(p.split()) for p in parts)
    return " ".join(str(exc).split())


def downscale_factors(value: float | Sequence[float]) -> tuple[float, ...]:
    """`data.hr_downscale` as a tuple of factors; ValueError unless each is >= 1 and a list is non-empty, distinct."""
    factors = (float(value),) if isinstance(value, (int, float)) else tuple(float(f) for f in value)
    if not factors or min(factors) < 1 or len(set(factors)) != len(factors):
        raise ValueError(
            f"must be >= 1 (1 = use the images as they are), or a list of distinct such factors; got {value}"
        )
    return factors


def validate(config: Config, source: str, *, overrides: Sequence[str] = ()) -> None:
    """Value checks the types cannot express; each error names the key, and the `--set` (of `overrides`) that gave
    it its value (else the file was blamed for a value typed on the command line)."""

    def fail(key: str, msg: str) -> None:
        blamed = _blamed_overrides(key, msg, overrides)
        said = f" (from {', '.join(f'--set {t}' for t in blamed)})" if blamed else ""
        raise ConfigError(f"{source}: {key}: {msg}{said}")

    if not config.data.hr_dir:
        fail("data.hr_dir", "the training image folder is required")
    if config.model.scale not in (1, 2, 4, 8):
        fail("model.scale", f"must be 1, 2, 4 or 8, got {config.model.scale}")
    if (config.model.num_in_ch, config.model.num_out_ch) not in ((3, 3), (1, 1)):
        # the data pipeline, the losses and `esrgan upscale` work in RGB or in grey (a grey model trains on the
        # images' luma); before, such a config crashed at the first step with torch's shape error
        fail(
            "model.num_in_ch/num_out_ch",
            f"training takes RGB models (3 and 3) or grey ones (1 and 1), got {config.model.num_in_ch} and "
            f"{config.model.num_out_ch}",
        )
    if config.model.arch == "compact":
        try:
            config.model.generator  # noqa: B018 (CompactConfig's own checks)
        except ValueError as exc:
            fail("model", f"arch compact: {exc}")
        if config.model.image_residual or config.model.plus:
            fail(
                "model",
                "arch compact adds the nearest upscale of its input already: no image_residual, no plus",
            )
        if config.train.compile == "blocks":
            fail("train.compile", "blocks compiles RRDBNet's blocks; a compact model compiles whole (true)")
    if config.data.patch_size % config.model.scale:
        fail("data.patch_size", f"must be a multiple of model.scale ({config.model.scale})")
    try:
        downscale_factors(config.data.hr_downscale)
    except ValueError as exc:
        fail("data.hr_downscale", str(exc))
    if config.data.patch_size < 1:
        fail(
            "data.patch_size",
            f"must be >= 1 (a positive multiple of model.scale), got {config.data.patch_size}",
        )
    if config.data.batch_size < 1:
        fail("data.batch_size", "must be >= 1")
    if config.data.num_workers < 0:
        fail(
            "data.num_workers",
            f"must be >= 0 (0 = load in the training process), got {config.data.num_workers}",
        )
    if config.train.threads < 0:
        fail("train.threads", f"must be >= 0 (0 = torch's default), got {config.train.threads}")
    if config.validation.max_images < 0:
        fail("validation.max_images", f"must be >= 0 (0 = all), got {config.validation.max_images}")
    for key in ("lr_g", "lr_d"):
        if not getattr(config.optim, key) > 0:  # also NaN
            fail(f"optim.{key}", f"must be > 0, got {getattr(config.optim, key)}")
    if config.train.total_steps < 1:
        fail("train.total_steps", "must be >= 1")
    if not config.train.time_budget_minutes >= 0 or not math.isfinite(config.train.time_budget_minutes):
        fail("train.time_budget_minutes", "must be a finite number >= 0 (0 = no budget, total_steps only)")
    if config.train.time_budget_minutes and config.schedule.kind == "multistep":
        fail("schedule.kind", "a time budget needs a schedule in time: cosine or constant, not multistep")
    if not 0.0 <= config.train.ema_decay < 1.0:
        fail("train.ema_decay", "must be in [0, 1)")
    for key in ("blur_sigma", "noise_sigma", "jpeg_quality"):
        if len(getattr(config.data, key)) != 2:
            fail(f"data.{key}", "must be a [low, high] pair")
    _validate_realesrgan(config.data.realesrgan, fail)
    pool = config.data.realesrgan.pool_size
    batch = config.data.batch_size
    if pool != "auto" and (pool < 0 or pool % batch):
        fail(
            "data.realesrgan.pool_size",
            f"must be auto, 0 (off) or a multiple of data.batch_size ({batch}: e.g. {POOL_BATCHES * batch}), got {pool}",
        )
    pairs = config.data.pool_pairs
    patch, scale = config.data.patch_size, config.model.scale
    channels = config.model.num_out_ch  # 3, or 1 for a grey model
    pool_bytes = pairs * channels * (2 * patch * patch + (patch // scale) ** 2)  # uint8 LR, HR and plain HR
    if config.data.degradation == "realesrgan" and pool_bytes > POOL_MAX_BYTES:
        fail(
            "data.realesrgan.pool_size",
            f"{pairs} pairs of {patch} px hold {pool_bytes / 2**30:.1f} GiB, in memory and in every checkpoint "
            f"(at most {POOL_MAX_BYTES / 2**30:g} GiB; Real-ESRGAN's 180 pairs of 256 px: 73 MB)",
        )
    vr = config.data.value_range
    if vr is not None and not (
        len(vr) == 2
        and all(math.isfinite(v) for v in vr)
        and vr[0] < vr[1]
        and math.isfinite(vr[1] - vr[0])
        and math.isfinite(65535.0 / (vr[1] - vr[0]))  # a span no image can be mapped from (all one level)
    ):
        fail(
            "data.value_range", f"must be [lo, hi] with lo < hi, finite (the files' stored values), got {vr}"
        )
    if config.data.bit_depth not in (8, 16):
        fail("data.bit_depth", f"must be 8 or 16, got {config.data.bit_depth}")
    if config.data.bit_depth == 16 and config.data.degradation == "realesrgan":
        fail(
            "data.bit_depth",
            "the realesrgan degradation works on 8-bit images (its rounding between steps, its JPEG, its pair "
            "pool): 16 takes the bicubic or realworld degradation",
        )
    if config.data.degradation == "realesrgan" and config.data.lr_dir is not None:
        fail("data.lr_dir", "the realesrgan degradation makes the LR images from the HR ones: remove lr_dir")
    for key in ("betas_g", "betas_d"):
        betas = getattr(config.optim, key)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            fail(f"optim.{key}", f"must be [beta1, beta2], each in [0, 1) (Adam's), got {betas}")
    if config.schedule.milestones != sorted(config.schedule.milestones):
        fail("schedule.milestones", "must be increasing")
    if config.train.stage == "gan":
        if config.model.discriminator == "vgg" and config.data.patch_size % 32:
            fail("data.patch_size", "the VGG-style discriminator needs a multiple of 32 (128 in the paper)")
        if config.model.discriminator == "unet" and config.data.patch_size % 8:
            fail("data.patch_size", "the U-Net discriminator needs a multiple of 8 (256 in Real-ESRGAN)")
        if config.losses.gan_weight <= 0:
            fail("losses.gan_weight", "must be > 0 in the gan stage (paper: 5e-3)")
    elif config.losses.gan_weight or config.losses.perceptual_weight:
        fail(
            "losses", "the psnr stage is L1 only: set gan_weight and perceptual_weight to 0 or use stage: gan"
        )
    elif config.train.pretrained_d:
        fail("train.pretrained_d", "the psnr stage has no discriminator: remove it or use stage: gan")
    _validate_perceptual(config.perceptual, fail)
    for key in ("every",):
        if getattr(config.checkpoint, key) < 1 or getattr(config.validation, key) < 1:
            fail(f"checkpoint/validation.{key}", "must be >= 1")
    if config.checkpoint.keep_last < 1:
        fail("checkpoint.keep_last", "must be >= 1")
    _validate_ranges(config, fail)
    if not config.name.strip() or config.name in (".", "..") or any(c in config.name for c in "/\\\0"):
        fail(
            "name",
            f"must be a plain folder name (not empty, '.', '..' or containing / or \\), got {config.name!r}",
        )


def _validate_ranges(config: Config, fail: typing.Callable[[str, str], None]) -> None:
    """Values that passed the type checks and would crash or poison a run later (a review found each: a traceback
    at the first validation or log line, or NaN weights after hours): said before anything starts."""
    from .defaults import DEVICES

    finite = math.isfinite
    if config.logging.every < 1:
        fail("logging.every", f"must be >= 1, got {config.logging.every}")
    if config.validation.samples < 1:
        fail(
            "validation.samples", f"must be >= 1 (images in the sample grid), got {config.validation.samples}"
        )
    if (
        config.validation.sample_crop < config.model.scale
        or config.validation.sample_crop % config.model.scale
    ):
        fail(
            "validation.sample_crop",
            f"must be a positive multiple of model.scale ({config.model.scale}), got {config.validation.sample_crop}",
        )
    if config.train.device not in DEVICES:
        fail("train.device", f"must be one of {', '.join(DEVICES)}, got {config.train.device!r}")
    if config.train.seed < 0:
        fail("train.seed", f"must be >= 0, got {config.train.seed}")
    if not (config.optim.weight_decay >= 0 and finite(config.optim.weight_decay)):
        fail("optim.weight_decay", f"must be >= 0, got {config.optim.weight_decay}")
    if not 0 < config.schedule.gamma <= 1:
        fail(
            "schedule.gamma", f"must be in (0, 1] (the factor at each milestone), got {config.schedule.gamma}"
        )
    if not (config.schedule.eta_min >= 0 and finite(config.schedule.eta_min)):
        fail("schedule.eta_min", f"must be >= 0, got {config.schedule.eta_min}")
    for key in ("pixel_weight", "perceptual_weight", "gan_weight"):
        value = getattr(config.losses, key)
        if not (value >= 0 and finite(value)):
            fail(f"losses.{key}", f"must be >= 0, got {value}")
    if config.train.stage == "psnr" and not config.losses.pixel_weight > 0:
        fail("losses.pixel_weight", "must be > 0 in the psnr stage: it is its only loss")
    if not 0.0 <= config.data.blur_prob <= 1.0:
        fail("data.blur_prob", f"must be a probability in [0, 1], got {config.data.blur_prob}")
    low, high = config.data.jpeg_quality
    if not 1 <= low <= high <= 100:
        fail("data.jpeg_quality", f"must be [low, high] with 1 <= low <= high <= 100, got {[low, high]}")
    for key in ("blur_sigma", "noise_sigma"):
        low, high = getattr(config.data, key)
        if not (0 <= low <= high and finite(high)):
            fail(f"data.{key}", f"must be [low, high] with 0 <= low <= high, got {[low, high]}")


def _validate_perceptual(p: PerceptualConfig, fail: typing.Callable[[str, str], None]) -> None:
    from .vgg import LAYERS  # VGG19's layer names (conv1_1 .. relu5_4)

    unknown = [name for name in p.layers if name not in LAYERS]
    if unknown or not p.layers:
        fail(
            "perceptual.layers",
            f"VGG19 layers by name (conv1_1 .. conv5_4, relu1_1 .. relu5_4), got {p.layers}",
        )
    if len(set(p.layers)) != len(p.layers):
        fail("perceptual.layers", f"each layer once, got {p.layers}")
    if len(p.layer_weights) != len(p.layers) or any(w < 0 for w in p.layer_weights):
        fail(
            "perceptual.layer_weights",
            f"one weight >= 0 per layer of perceptual.layers ({len(p.layers)}), got {p.layer_weights}",
        )


def _validate_realesrgan(r: RealESRGANDegradationConfig, fail: typing.Callable[[str, str], None]) -> None:
    where = "data.realesrgan."
    for f in dataclasses.fields(r):
        value = getattr(r, f.name)
        if "prob" in f.name and isinstance(value, float) and not 0.0 <= value <= 1.0:
            fail(where + f.name, f"must be a probability in [0, 1], got {value}")
    for name in ("kernel_prob", "resize_prob", "resize_prob2"):
        probs = getattr(r, name)
        size = 6 if name == "kernel_prob" else 3
        what = "kernel types" if size == 6 else "up, down, keep"
        if len(probs) != size or any(not 0 <= p < math.inf for p in probs) or not sum(probs) > 0:
            fail(
                where + name,
                f"must be {size} weights, finite and >= 0 ({what}), with a positive sum, got {probs}",
            )
        if not math.isfinite(sum(probs)):  # each finite, their sum not: the draw divides by it
            fail(where + name, f"must have a finite sum ({what}; only their ratios matter), got {probs}")
    pairs = {
        "blur_sigma": (1e-3, 20.0), "blur_sigma2": (1e-3, 20.0), "betag": (0.05, 20.0), "betag2": (0.05, 20.0),
        "betap": (0.05, 20.0), "betap2": (0.05, 20.0), "resize_range": (0.05, 4.0), "resize_range2": (0.05, 4.0),
        "noise_sigma": (0.0, 255.0), "noise_sigma2": (0.0, 255.0), "poisson_scale": (0.0, 20.0),
        "poisson_scale2": (0.0, 20.0), "jpeg_quality": (1.0, 100.0), "jpeg_quality2": (1.0, 100.0),
    }  # fmt: skip
    if not 0.0 <= r.usm_weight <= 2.0:
        fail(
            where + "usm_weight",
            f"must be in [0, 2] (0 = no sharpening; Real-ESRGAN: 0.5), got {r.usm_weight}",
        )
    for name, (lo, hi) in pairs.items():
        value = getattr(r, name)
        if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
            fail(where + name, f"must be a [low, high] pair within [{lo:g}, {hi:g}], got {value}")
    for name in ("betag", "betag2", "betap", "betap2", "resize_range", "resize_range2"):
        value = getattr(r, name)
        if len(value) == 2 and not value[0] <= 1.0 <= value[1]:
            what = "shapes are drawn below and above 1" if name.startswith("beta") else "1 = keep the size"
            fail(where + name, f"must hold 1 ({what}), got {value}")
    sizes = r.kernel_sizes
    if not sizes or any(k % 2 == 0 or not 3 <= k <= 21 for k in sizes):
        fail(where + "kernel_sizes", f"must be odd sizes from 3 to 21, got {sizes}")


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
