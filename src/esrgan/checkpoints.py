"""One loading pipeline for every generator model file (RRDBNet and SRVGGNetCompact), and our own safetensors format.

read (safely) -> unwrap -> detect layout -> infer hyperparameters from shapes -> rename to our layout -> check
every key and shape -> load strictly. Layouts in the wild (see the recipe):

- ``ours`` / ``basicsr``: conv_first, body.{i}.rdb{k}.conv{j}, conv_body, conv_up{n}, conv_hr, conv_last
  (BasicSR >= 1.0, Real-ESRGAN; usually wrapped as {"params_ema": ...} / {"params": ...}).
- ``esrgan``: conv_first, RRDB_trunk.{i}.RDB{k}.conv{j}, trunk_conv, upconv{n}, HRconv, conv_last
  (the ESRGAN repository after its 2019 rename, BSRGAN, RealSR).
- ``old``: model.0, model.1.sub.{i}.RDB{k}.conv{j}.0, model.1.sub.{nb}, model.{3,6,...}, HR conv, last conv
  (the original RRDB_ESRGAN_x4.pth release and most community models of the upscale wiki).

ESRGAN+ files (nESRGAN+ and community models trained with it) add a bias-free ``conv1x1`` to every dense block
(``RDB{k}.conv1x1.weight`` in any of the layouts): loaded as RRDBConfig(plus=True).

Real-ESRGAN's compact generator (SRVGGNetCompact: realesr-animevideov3, realesr-general-x4v3 and the community's
"Compact" models) has one layout, ``body.{i}.weight`` / ``.bias`` only (BasicSR's, so reported as ``basicsr``):
told apart from RRDBNet by its keys, loaded as esrgan.compact.CompactConfig (see esrgan.archs).

Pickle-based files are only read with ``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is
refused, never executed. Our own files are safetensors with the hyperparameters in the metadata.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .archs import ARCHS, Generator, GeneratorConfig, arch_name, build_generator
from .atomic import OutputExistsError, atomic_path, cannot_write_reason
from .compact import COMPACT_SCALES, MAX_CONVS, CompactConfig, SRVGGNetCompact, scale_of
from .compact import expected_shapes as compact_shapes
from .errors import CheckpointError
from .generator import RRDBConfig, RRDBNet, count_parameters, to_half

LAYOUTS = ("ours", "basicsr", "esrgan", "old")
FORMAT_VERSION = "1"
# RRDBNet files are ~67 MB in fp32 at paper size; anything past this is not a generator and is refused unread.
MAX_FILE_BYTES = 2 * 1024**3
# Training checkpoints (esrgan train --resume) add the EMA copy, the discriminator and both optimisers' moments: ~0.45 GB
# for the paper's gan stage. 8 GiB leaves room for much larger models and still refuses an absurd file unread.
MAX_CHECKPOINT_BYTES = 8 * 1024**3
# The paper's RRDBNet has 23 blocks, the deepest published ones a few dozen; at paper width 1024 blocks are already past
# MAX_FILE_BYTES even in fp16. What this stops is a file of thousands of tiny blocks (or one stray `body.100000` key):
# building a model costs ~5 ms of Python per block whatever its width, out of all proportion to the file's bytes.
MAX_BLOCKS = 1024
# Block indices are parsed as ints: Python refuses to convert strings of over 4300 digits (ValueError), and no real
# index has more than a few; a longer one does not match and is reported as an unexpected key.
_INDEX = r"(\d{1,9})"
_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g", "netG", "generator", "g_ema")
_D_WRAPPER_KEYS = ("params", "state_dict", "net_d", "netD", "discriminator", "model")
_PREFIXES = ("module.", "_orig_mod.", "net_g.", "generator.")


@dataclass
class LoadedWeights:
    """A model file read and canonicalised: everything needed to build and fill its generator."""

    config: GeneratorConfig
    state_dict: dict[str, Tensor]
    layout: str
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    # the file's weight dtype ("float16", ...; "mixed"; None: not told, as for ncnn); state_dict is always float32
    stored: str | None = None


# --- reading ------------------------------------------------------------------------------------------------------
def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    # safetensors before pickle: its first 8 bytes are the JSON header's length, little-endian, and a header padded
    # to a multiple of 8 makes the first byte 0x80 (a pickle's protocol marker) for one length in 32
    header = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if len(head) >= 9 and head[8:9] == b"{" and 0 < header <= path.stat().st_size - 8:
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    if head[:4] == b"7767" or path.suffix == ".param":
        return "ncnn"
    return "unknown"


def read_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a model file without executing anything: returns (raw object as stored, safetensors metadata)."""
    path = Path(path)
    _check_size(path, f"{path}: ", MAX_FILE_BYTES, "any model file")
    kind = _sniff(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    if kind in ("torch-zip", "pickle"):
        return _read_torch(path, f"{path}: ", MAX_FILE_BYTES, _MODEL_ADVICE), {}
    if kind == "ncnn":
        raise CheckpointError(f"{path}: ncnn model: use load_weights(), which reads .param/.bin pairs")
    raise CheckpointError(f"{path}: not a model file (expected .pth/.pt, .safetensors or ncnn .param)")


def read_torch_file(
    path: str | Path, *, what: str, max_bytes: int | None = None, advice: str
) -> dict[str, Any]:
    """Read a pickle-based PyTorch file that is not a model file (LPIPS weights, a training checkpoint) with the same
    defences as model files: size limit, zip-bomb check, torch.load(weights_only=True) only, and one-line errors
    ("<path>: cannot read as <what>: <problem>") that never repeat PyTorch's advice to unpickle the file.

    max_bytes: the size limit (default MAX_FILE_BYTES); advice: what to do about a file refused for holding Python
    objects (said after the refusal).
    """
    path = Path(path)
    where = f"{path}: cannot read as {what}: "
    max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
    _check_size(path, where, max_bytes, what)
    if _sniff(path) not in ("torch-zip", "pickle"):
        raise CheckpointError(f"{where}not a PyTorch (torch.save) file")
    return _read_torch(path, where, max_bytes, advice)


def _check_size(path: Path, where: str, max_bytes: int, what: str) -> None:
    """A regular, non-empty file no larger than max_bytes, checked before a byte of it is read."""
    if path.is_dir():
        raise CheckpointError(f"{where}a folder, not a file")
    if not path.is_file():
        raise CheckpointError(f"{where}no such file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{where}empty file")
    if size > max_bytes:
        shown = f"{size / 1e9:.1f} GB" if size >= 10**8 else f"{size:,} bytes"
        raise CheckpointError(f"{where}{shown} is larger than {what} can be; refused")


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({_first_line(exc)})") from None
    return tensors, metadata


def _check_zip(path: Path, where: str, max_bytes: int) -> None:
    """PyTorch writes its zip archives uncompressed: a compressed or oversized entry is a crafted file (a zip bomb)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:  # "zip file version 13.7"
        raise CheckpointError(f"{where}corrupt PyTorch zip archive ({_first_line(exc)})") from None
    if len(entries) > 100_000:
        raise CheckpointError(f"{where}{len(entries)} archive entries; refused")
    for info in entries:
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{where}archive entry {info.filename[:100]!r} is compressed; PyTorch never does that; refused"
            )
    total = sum(info.file_size for info in entries)
    if total > max_bytes:
        raise CheckpointError(f"{where}archive claims {total / 1e9:.1f} GB of data; refused")


def _read_torch(path: Path, where: str, max_bytes: int, advice: str) -> dict[str, Any]:
    """torch.load(weights_only=True) behind the zip checks; where: the start of every message (names the file)."""
    import pickle

    if _sniff(path) == "torch-zip":
        _check_zip(path, where, max_bytes)
    try:
        with warnings.catch_warnings():
            # "Detected pickle protocol 4 in the checkpoint ...": torch's multi-line note on a file it then refuses or
            # reads anyway; nothing the user can act on
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{where}{_unsafe_pickle(exc, advice)}") from None
    except Exception as exc:  # truncated zips, corrupt storages, ...: torch raises many types
        raise CheckpointError(f"{where}unreadable PyTorch file ({_first_line(exc)})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


_MODEL_ADVICE = (
    "If it comes from a source you trust, get a weights-only copy made where the file came from: "
    "torch.save(model.state_dict(), 'weights.pth') or a .safetensors file (esrgan reads both; "
    "`esrgan convert` turns them into ours)"
)


def _unsafe_pickle(exc: BaseException, advice: str) -> str:
    """Why a pickle was refused, in our words: what the file holds and what to do instead (advice).

    PyTorch's own message advises re-running torch.load with weights_only=False, i.e. running the file's code:
    never repeated to the user (only the name of the offending object or opcode is taken from it).
    """
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]{1,200})", text)
    opcode = re.search(r"Unsupported operand (\d+)", text)
    if found:
        what = f"a pickle that refers to the Python object `{found.group(1)}` besides tensors"
    elif opcode:
        what = f"a pickle with opcode {opcode.group(1)}, which PyTorch weight files do not use"
    else:
        what = "a pickle holding Python objects besides tensors"
    return f"refused: {what}; loading it could run code from the file, so it was not loaded. {advice}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# --- canonicalisation ---------------------------------------------------------------------------------------------
def unwrap(obj: Mapping[str, Any], wrappers: tuple[str, ...] = _WRAPPER_KEYS) -> dict[str, Tensor]:
    """Find the generator's tensors in a checkpoint: prefer params_ema over params, strip DataParallel prefixes.
    (`wrappers`: the keys looked into, in order of preference.)"""
    current: Mapping[str, Any] = obj
    for _ in range(4):  # wrappers nest at most a few levels deep
        if any(isinstance(v, Tensor) for v in current.values()):
            break
        for key in wrappers:
            inner = current.get(key)
            if isinstance(inner, Mapping) and inner:
                current = inner
                break
        else:
            break
    tensors: dict[str, Tensor] = {}
    for key, value in current.items():
        if not isinstance(value, Tensor):
            continue
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        tensors[name] = value
    if not tensors:
        raise CheckpointError(f"no tensors found (top-level keys: {_preview(obj.keys())})")
    return tensors


def read_discriminator(path: str | Path) -> dict[str, Tensor]:
    """A discriminator's tensors from a foreign file (Real-ESRGAN's *_netD.pth and BasicSR's net_d_*.pth hold
    {"params": state dict}; a bare state dict or safetensors file too), read as hostile as any model file.
    Naming and shapes are the discriminator's to check (esrgan.discriminator.discriminator_state)."""
    obj, _ = read_weights(path)
    try:
        return unwrap(obj, _D_WRAPPER_KEYS)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def discriminator_kind(sd: Mapping[str, Tensor]) -> str | None:
    """What a discriminator's state dict is, by its names (None: not one): a file people mistake for a model."""
    keys = sd.keys()
    if "conv0.weight" in sd and "conv9.weight" in sd and any(k.endswith(".weight_orig") for k in keys):
        return "Real-ESRGAN's U-Net with spectral norm"
    if "conv0_0.weight" in sd and "linear1.weight" in sd:
        return "BasicSR's VGG-style"
    if "features.0.weight" in sd and "linear1.weight" in sd and "linear2.weight" in sd:
        return "esrgan's VGG-style"
    return None


def detect_layout(sd: Mapping[str, Tensor]) -> str:
    keys = sd.keys()
    if "conv_first.weight" in sd and any(k.startswith("body.") for k in keys):
        return "basicsr"
    if "conv_first.weight" in sd and any(k.startswith("RRDB_trunk.") for k in keys):
        return "esrgan"
    if "model.0.weight" in sd and any(k.startswith("model.1.sub.") for k in keys):
        return "old"
    if (kind := discriminator_kind(sd)) is not None:
        raise CheckpointError(
            f"a GAN discriminator ({kind}), not a generator: it upscales nothing; training can start its "
            "discriminator from it (train.pretrained_d)"
        )
    raise CheckpointError(
        "not an RRDBNet (ESRGAN) or SRVGGNetCompact (Real-ESRGAN compact) model: expected keys like "
        "conv_first.weight + body.0.rdb1.conv1.weight, RRDB_trunk.*, model.1.sub.*, or only body.N.weight/bias; "
        f"found {_preview(keys)}"
    )


_ESRGAN_NAMES = {
    "trunk_conv": "conv_body",
    "HRconv": "conv_hr",
    "conv_first": "conv_first",
    "conv_last": "conv_last",
}


def _rename_esrgan(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = re.fullmatch(r"RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d|1x1)\.(weight|bias)", key)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
            continue
        m = re.fullmatch(r"upconv(\d)\.(weight|bias)", key)
        if m:
            out[f"conv_up{m[1]}.{m[2]}"] = value
            continue
        head, _, tail = key.rpartition(".")
        if head in _ESRGAN_NAMES and tail in ("weight", "bias"):
            out[f"{_ESRGAN_NAMES[head]}.{tail}"] = value
            continue
        raise CheckpointError(f"unexpected key {_short(key)!r} in an ESRGAN-repository (RRDB_trunk) layout")
    return out


def _rename_old(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    tail_convs: dict[int, dict[str, Tensor]] = {}
    num_block = _count_blocks(sd, r"model\.1\.sub\.", r"\.RDB")
    for key, value in sd.items():
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d|1x1)\.(?:0\.)?(weight|bias)", key)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
            continue
        m = re.fullmatch(rf"model\.1\.sub\.{num_block}\.(?:0\.)?(weight|bias)", key)
        if m:
            out[f"conv_body.{m[1]}"] = value
            continue
        m = re.fullmatch(rf"model\.{_INDEX}\.(?:0\.)?(weight|bias)", key)
        if m and int(m[1]) != 1:
            tail_convs.setdefault(int(m[1]), {})[m[2]] = value
            continue
        raise CheckpointError(f"unexpected key {_short(key)!r} in an old-ESRGAN (model.N) layout")
    if 0 not in tail_convs:
        raise CheckpointError("old-ESRGAN layout without model.0 (conv_first)")
    order = sorted(i for i in tail_convs if i != 0)
    if len(order) < 2:
        raise CheckpointError("old-ESRGAN layout without HR and last convolutions")
    names = [f"conv_up{n + 1}" for n in range(len(order) - 2)] + ["conv_hr", "conv_last"]
    for name, index in zip(["conv_first", *names], [0, *order], strict=True):
        for tail, value in tail_convs[index].items():
            out[f"{name}.{tail}"] = value
    return out


def infer_config(sd: Mapping[str, Tensor]) -> GeneratorConfig:
    """Read every hyperparameter off the tensor shapes of a state dict in our layout (either architecture)."""
    if is_compact_state(sd):
        return infer_compact_config(sd)
    try:
        first, last = sd["conv_first.weight"], sd["conv_last.weight"]
        grow = sd["body.0.rdb1.conv1.weight"]
    except KeyError as exc:
        raise CheckpointError(f"missing key {exc.args[0]!r}: cannot infer the architecture") from None
    for name, w in (
        ("conv_first.weight", first),
        ("conv_last.weight", last),
        ("body.0.rdb1.conv1.weight", grow),
    ):
        if w.ndim != 4:
            raise CheckpointError(f"{name}: expected a 4-D convolution weight, got shape {tuple(w.shape)}")
    num_feat, in_total = int(first.shape[0]), int(first.shape[1])
    num_out = int(last.shape[0])
    num_block = _count_blocks(sd, r"body\.", r"\.")
    num_up = sum(1 for k in sd if re.fullmatch(r"conv_up\d+\.weight", k))
    if in_total == num_out * 16 and num_up == 2:
        num_in, scale, unshuffle = num_out, 1, True
    elif in_total == num_out * 4 and num_up == 2:
        num_in, scale, unshuffle = num_out, 2, True
    elif num_up in (0, 1, 2, 3):
        num_in, scale, unshuffle = in_total, 2**num_up, num_up >= 2
    else:
        raise CheckpointError(f"{num_up} upsampling convolutions: no RRDBNet scale has that many")
    return RRDBConfig(
        num_in_ch=num_in,
        num_out_ch=num_out,
        num_feat=num_feat,
        num_block=num_block,
        num_grow=int(grow.shape[0]),
        scale=scale,
        pixel_unshuffle=unshuffle,
        plus=any(k.endswith(".conv1x1.weight") for k in sd),  # ESRGAN+'s extra residual paths
    )


def _count_blocks(sd: Mapping[str, Tensor], prefix: str, suffix: str) -> int:
    """The number of RRDB blocks, from the keys `<prefix>N<suffix>...`: their indices must be exactly 0..N-1.

    Checked before anything is built or even listed per block: a file is only as deep as the blocks it holds, so a
    single stray key such as body.100000.* (a 69 KB file) cannot make us build, or check against, a model of
    100,001 blocks (a minute of CPU and gigabytes of memory before the first missing key would be reported).
    """
    pattern = re.compile(prefix + _INDEX + suffix)
    found = {int(m[1]) for key in sd if (m := pattern.match(key))}
    name = prefix.replace("\\", "")
    if not found:
        raise CheckpointError(f"no {name}N blocks: not an RRDBNet state dict")
    top = max(found)
    if len(found) != top + 1:
        first_gap = min(set(range(len(found) + 1)) - found)
        have = f"only {name}0-{first_gap - 1}" if first_gap else f"no {name}0"
        raise CheckpointError(f"{name}{top} but {have}: not an RRDBNet state dict")
    if len(found) > MAX_BLOCKS:
        raise CheckpointError(
            f"{len(found)} blocks ({name}0-{top}): more than the {MAX_BLOCKS} any RRDBNet model file has; refused"
        )
    return len(found)


_COMPACT_KEY = re.compile(r"body\.(\d{1,9})\.(weight|bias)")


def is_compact_state(sd: Mapping[str, Tensor]) -> bool:
    """Whether a state dict is an SRVGGNetCompact's: body.N.weight / body.N.bias and nothing else (an RRDBNet's
    body keys always go deeper: body.N.rdbK.convJ)."""
    return "body.0.weight" in sd and all(_COMPACT_KEY.fullmatch(str(k)) for k in sd)


def infer_compact_config(sd: Mapping[str, Tensor]) -> CompactConfig:
    """An SRVGGNetCompact's hyperparameters from its shapes: the convs are the 4-D body.N.weight at even N, the last
    one maps num_feat to num_out_ch x scale^2; check_state_dict then checks every key against them."""
    indices = {int(m[1]) for k in sd if (m := _COMPACT_KEY.fullmatch(str(k)))}
    top = max(indices)
    if top > 2 * MAX_CONVS + 2:  # before anything is listed per layer (see _count_blocks)
        raise CheckpointError(
            f"body.{top}: more layers than the {MAX_CONVS} convs any compact model has; refused"
        )
    convs = [i for i in sorted(indices) if sd.get(f"body.{i}.weight", torch.empty(0)).ndim == 4]
    if convs != list(range(0, 2 * len(convs), 2)) or len(convs) < 2:
        raise CheckpointError(
            "body.N keys of an SRVGGNetCompact must be convs at N = 0, 2, 4, ... (at least two): found convs at "
            f"{_preview(convs)}"
        )
    first, last = sd["body.0.weight"], sd[f"body.{convs[-1]}.weight"]
    num_feat, num_in = int(first.shape[0]), int(first.shape[1])
    prelu = sd.get("body.1.weight")
    if prelu is None or prelu.ndim != 1:
        raise CheckpointError(
            "an SRVGGNetCompact without PReLU slopes (body.1.weight): its activation (ReLU or LeakyReLU) is not "
            "recorded in the file and no released compact model uses one; only PReLU models are supported"
        )
    planes = int(last.shape[0])
    scale = scale_of(num_in, planes)
    if scale is None:
        raise CheckpointError(
            f"body.{convs[-1]} (the last conv) makes {planes} planes, not {num_in} x scale^2 for a scale in "
            f"{COMPACT_SCALES}"
        )
    try:
        return CompactConfig(num_in_ch=num_in, num_out_ch=num_in, num_feat=num_feat, num_conv=len(convs) - 2,
                             scale=scale)  # fmt: skip
    except ValueError as exc:
        raise CheckpointError(f"not a usable SRVGGNetCompact: {exc}") from None


def canonicalize(obj: Mapping[str, Any]) -> tuple[GeneratorConfig, dict[str, Tensor], str]:
    """Unwrap, detect the layout, rename to ours, infer the hyperparameters and check every tensor."""
    sd = unwrap(obj)
    if is_compact_state(sd):  # one layout in the wild (Real-ESRGAN's, i.e. BasicSR's), ours too
        compact = infer_compact_config(sd)
        return compact, check_state_dict(compact, sd), "basicsr"
    layout = detect_layout(sd)
    if layout == "esrgan":
        _count_blocks(sd, r"RRDB_trunk\.", r"\.")  # before renaming: errors name the file's own keys
        sd = _rename_esrgan(sd)
    elif layout == "old":
        sd = _rename_old(sd)
    config = infer_config(sd)
    return config, check_state_dict(config, sd), layout


def expected_shapes(config: GeneratorConfig) -> dict[str, tuple[int, ...]]:
    """Every key of build_generator(config).state_dict() with its shape, in the same order, worked out without
    building a model (not even on the meta device, whose per-module Python cost is the same)."""
    if isinstance(config, CompactConfig):
        return compact_shapes(config)
    feat, grow = config.num_feat, config.num_grow
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int) -> None:
        shapes[f"{name}.weight"] = (cout, cin, 3, 3)
        shapes[f"{name}.bias"] = (cout,)

    conv("conv_first", config.num_in_ch * config.unshuffle**2, feat)
    for i in range(config.num_block):
        for k in (1, 2, 3):
            for j in range(1, 6):
                conv(f"body.{i}.rdb{k}.conv{j}", feat + (j - 1) * grow, feat if j == 5 else grow)
            if config.plus:  # bias-free 1x1 (ResidualDenseBlock registers it after conv5)
                shapes[f"body.{i}.rdb{k}.conv1x1.weight"] = (grow, feat, 1, 1)
    conv("conv_body", feat, feat)
    for n in range(config.num_upsample):
        conv(f"conv_up{n + 1}", feat, feat)
    conv("conv_hr", feat, feat)
    conv("conv_last", feat, config.num_out_ch)
    return shapes


def check_state_dict(config: GeneratorConfig, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every expected key present with the expected shape, nothing extra, finite float values -> float32 copies.

    All of it before any model is built: build_model then only fills a model that matches the file.
    """
    if isinstance(config, RRDBConfig) and config.num_block > MAX_BLOCKS:
        raise CheckpointError(
            f"{config.num_block} blocks: more than the {MAX_BLOCKS} any RRDBNet has; refused"
        )
    expected = expected_shapes(config)
    missing = [k for k in expected if k not in sd]
    if missing:
        raise CheckpointError(
            f"missing key {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    extra = [k for k in sd if k not in expected]
    if extra:
        raise CheckpointError(
            f"unexpected key {_short(extra[0])!r}"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    out: dict[str, Tensor] = {}
    for key, shape in expected.items():
        value = sd[key]
        if tuple(value.shape) != shape:
            raise CheckpointError(f"{key}: expected shape {shape}, file has {tuple(value.shape)}")
        if not value.is_floating_point():
            raise CheckpointError(f"{key}: expected floating-point weights, file has {value.dtype}")
        if value.layout != torch.strided or value.device.type == "meta":  # no data to copy, or not dense
            raise CheckpointError(f"{key}: a {value.layout} tensor on {value.device.type}, not dense weights")
        value = value.detach().to(device="cpu", dtype=torch.float32)
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{key}: contains NaN or Inf values")
        out[key] = value.contiguous()
    return out


# --- loading ------------------------------------------------------------------------------------------------------
def load_weights(path: str | Path) -> LoadedWeights:
    """Read any supported model file (ours, BasicSR, ESRGAN, old, ncnn) into a checked canonical state dict."""
    path = Path(path).expanduser()
    if path.suffix == ".param" or (path.is_file() and _sniff(path) == "ncnn"):
        from .ncnn import load_ncnn

        config, sd = load_ncnn(path)  # its own errors name the .param or the .bin
        try:
            checked = check_state_dict(config, sd)
        except CheckpointError as exc:  # e.g. more blocks than any RRDBNet has
            raise CheckpointError(f"{path}: {exc}") from None
        return LoadedWeights(config, checked, "ncnn", {}, path)
    raw, metadata = read_weights(path)
    recorded: GeneratorConfig | None = None
    if isinstance(raw, dict) and "generator" in raw and "model_config" in raw:
        # one of our training checkpoints (.ckpt): the EMA generator where there is one (what the run exports as
        # model.safetensors), and the architecture it records (the image residual has no tensors to tell it)
        recorded = checkpoint_generator(path, raw)
        ema = raw.get("generator_ema")
        metadata = {"esrgan.config": json.dumps(recorded.to_dict()), "esrgan.arch": arch_name(recorded),
                    "esrgan.checkpoint": "generator_ema" if ema is not None else "generator"}  # fmt: skip
        raw = ema if ema is not None else raw["generator"]
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: a training checkpoint without a generator state dict")
    try:
        stored = _precision(unwrap(raw))
        config, sd, layout = canonicalize(raw)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if recorded is None and "esrgan.config" in metadata:
        recorded = config_from_metadata(
            path, metadata["esrgan.config"], metadata.get("esrgan.arch", "RRDBNet")
        )
    if recorded is not None:
        # the image residual has no tensors: only the metadata can say it is there
        tensors_say = (
            replace(recorded, image_residual=False) if isinstance(recorded, RRDBConfig) else recorded
        )
        if tensors_say != config:
            raise CheckpointError(f"{path}: metadata says {recorded} but the tensors say {config}")
        config, layout = recorded, "ours"
    return LoadedWeights(config, sd, layout, metadata, path, stored)


def checkpoint_generator(path: Path, state: Mapping[str, Any]) -> GeneratorConfig:
    """The generator a training checkpoint records (model_arch, absent in earlier releases' = RRDBNet, and
    model_config), checked as a model file's metadata is: a crafted value is one CheckpointError line."""
    arch = state.get("model_arch", "RRDBNet")
    if type(arch) is not str:
        raise CheckpointError(f"{path}: model_arch is a {type(arch).__name__}, not an architecture's name")
    try:
        text = json.dumps(state["model_config"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: no readable model_config (the generator's architecture)") from None
    return config_from_metadata(path, text, arch)


def _precision(sd: Mapping[str, Tensor]) -> str:
    """The dtype the weights were stored in ("float16", "float32", ...; "mixed" when they differ)."""
    kinds = {str(t.dtype).removeprefix("torch.") for t in sd.values() if isinstance(t, Tensor)}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def config_from_metadata(path: Path, text: str, arch: str) -> GeneratorConfig:
    """The architecture our files record, type-checked field by field: the metadata is as hostile as the tensors
    (a string "yes" would otherwise pass as a true image_residual, a string "8" fail deep inside RRDBConfig)."""
    kind = ARCHS.get(arch)
    if kind is None:
        raise CheckpointError(
            f"{path}: esrgan.arch {_short(arch)!r} is not an architecture this esrgan knows "
            f"({', '.join(ARCHS)}): written by a newer release?"
        )
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{path}: invalid esrgan.config metadata ({_first_line(exc)})") from None
    if not isinstance(values, dict):
        raise CheckpointError(
            f"{path}: invalid esrgan.config metadata (a {type(values).__name__}, not an object)"
        )
    fields = kind.__dataclass_fields__
    for key, value in values.items():
        if key not in fields:
            raise CheckpointError(
                f"{path}: invalid esrgan.config metadata (unknown field {_short(str(key))!r})"
            )
        wanted = bool if fields[key].type in ("bool", bool) else int
        if type(value) is not wanted:  # not isinstance: True is an int, 1 is not a bool
            raise CheckpointError(
                f"{path}: invalid esrgan.config metadata ({key} is {_short(repr(value))}, not {wanted.__name__})"
            )
    try:
        return kind(**values)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid esrgan.config metadata ({_first_line(exc)})") from None


def build_model(weights: LoadedWeights) -> Generator:
    model = build_generator(weights.config)
    model.load_state_dict(weights.state_dict, strict=True)
    return model.eval().requires_grad_(False)


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> Generator:
    """Build the generator (RRDBNet or SRVGGNetCompact) of any supported model file, in eval mode, no gradients.

    Files only: names (`esrgan models`) are the zoo's, esrgan.zoo.load_model takes a name or a file. device: auto,
    cpu, cuda, mps or anything torch.device takes ("cuda:1"); one absent here is an EsrganError, before loading.
    """
    from .device import torch_device

    where = torch_device(device)
    return build_model(load_weights(Path(path).expanduser())).to(where)


# --- saving and converting ----------------------------------------------------------------------------------------
def save_model(
    path: str | Path,
    model: Generator | Mapping[str, Tensor],
    *,
    config: GeneratorConfig | None = None,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
    half: bool = False,
) -> Path:
    """Write our format: safetensors with the hyperparameters (and provenance) in its metadata, atomically;
    `half`: fp16 weights (half the file; loading makes them float32 again).

    The name must end in .safetensors: under a .pth name it would be a file torch.load cannot read. A .pth holds
    tensors only (not the hyperparameters or metadata written here); convert_file writes one in another tool's
    layout from this file.
    """
    from safetensors.torch import save

    if Path(path).suffix != ".safetensors":  # checked before any work: nothing is written under another name
        raise CheckpointError(
            f"{path}: save_model writes safetensors: name the file *.safetensors (for a .pth, convert that file: "
            "esrgan convert --layout basicsr, or esrgan.checkpoints.convert_file)"
        )
    if isinstance(model, RRDBNet | SRVGGNetCompact):
        config = config or model.config
        sd: Mapping[str, Tensor] = model.state_dict()
    else:
        sd = model
    if config is None:
        config = infer_config(sd)
    tensors = check_state_dict(config, sd)
    if half:
        tensors = to_half(tensors)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(
        {
            "esrgan.format": FORMAT_VERSION,
            "esrgan.arch": arch_name(config),
            "esrgan.config": json.dumps(config.to_dict()),
        }
    )
    with _writing(Path(path), overwrite) as tmp:
        # save() then our own write, not save_file(): safetensors' save_file recreates the file with mode 0600,
        # which would make every model we write unreadable to other users whatever the umask says
        data = save(tensors, metadata=meta)
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


@contextlib.contextmanager
def _writing(dest: Path, overwrite: bool) -> Iterator[Path]:
    """atomic_path, with a full disk or a read-only folder reported as one CheckpointError line (safetensors raises
    SafetensorError and torch.save RuntimeError for those); an existing dest still raises OutputExistsError."""
    from safetensors import SafetensorError

    try:
        with atomic_path(dest, overwrite=overwrite) as tmp:
            yield tmp
    except OutputExistsError:
        raise
    except OSError as exc:  # the system's reason, not the temporary file's name it comes with
        raise CheckpointError(f"{dest}: cannot write ({cannot_write_reason(dest, exc)})") from None
    except (SafetensorError, RuntimeError) as exc:
        raise CheckpointError(f"{dest}: cannot write ({_first_line(exc)})") from None


def to_layout(config: GeneratorConfig, sd: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Rename a canonical state dict into another tool's key layout."""
    if isinstance(config, CompactConfig):
        if layout in ("ours", "basicsr"):  # Real-ESRGAN's own names
            return dict(sd)
        if layout in LAYOUTS:
            raise CheckpointError(
                f"the {layout!r} layout is ESRGAN's RRDBNet naming; an SRVGGNetCompact (Real-ESRGAN compact) file "
                "is written as --layout basicsr (Real-ESRGAN's .pth), ncnn or ours"
            )
        raise CheckpointError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if config.image_residual and layout != "ours":
        raise CheckpointError(
            f"this model adds a bicubic upscale of its input to its output (image_residual), which {layout!r} "
            "files cannot record: other tools would run it without and get a dark, wrong image; keep --layout ours"
        )
    if config.plus and layout in ("basicsr", "esrgan"):
        raise CheckpointError(
            f"an ESRGAN+ model in the {layout!r} layout: no tool reads ESRGAN+ there (spandrel would drop its 1x1 "
            "paths without a word and run plain ESRGAN); ESRGAN+ files use --layout old, or keep ours"
        )
    if layout in ("basicsr", "esrgan") and config.num_upsample > 2:
        # BasicSR's and Real-ESRGAN's RRDBNet have conv_up1/conv_up2 only, the ESRGAN repository's (and BSRGAN's)
        # upconv1/upconv2: a strict load of a third upsampler fails there. The community's x8 files are old-layout.
        tool, up = (
            ("BasicSR's RRDBNet (Real-ESRGAN's)", "conv_up")
            if layout == "basicsr"
            else ("the ESRGAN repository's RRDBNet", "upconv")
        )
        raise CheckpointError(
            f"an x{config.scale} RRDBNet in the {layout!r} layout: {tool} has two upsamplers ({up}1, {up}2: x4 at "
            f"most) and cannot load this model's {up}3; x8 files use --layout old (the community's x8 models), "
            "ncnn, or ours"
        )
    if layout in ("ours", "basicsr"):
        if layout == "basicsr" and config.scale in (1, 2) and not config.pixel_unshuffle:
            raise CheckpointError("BasicSR's RRDBNet has no native x1/x2 variant: use --layout old or esrgan")
        return dict(sd)
    out: dict[str, Tensor] = {}
    num_up = config.num_upsample
    for key, value in sd.items():
        m = re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d|1x1)\.(weight|bias)", key)
        head, _, tail = key.rpartition(".")
        if layout == "esrgan":
            if m:
                out[f"RRDB_trunk.{m[1]}.RDB{m[2]}.conv{m[3]}.{m[4]}"] = value
            elif head.startswith("conv_up"):
                out[f"upconv{head[len('conv_up') :]}.{tail}"] = value
            else:
                out[f"{ {'conv_body': 'trunk_conv', 'conv_hr': 'HRconv'}.get(head, head) }.{tail}"] = value
        elif layout == "old":
            if m:  # conv1..conv5 inside their conv blocks (".0."); ESRGAN+'s conv1x1 a bare conv
                wrap = "" if m[3] == "1x1" else "0."
                out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.{wrap}{m[4]}"] = value
            elif head == "conv_body":
                out[f"model.1.sub.{config.num_block}.{tail}"] = value
            else:
                index = {"conv_first": 0, "conv_hr": 2 + 3 * num_up, "conv_last": 4 + 3 * num_up}.get(head)
                if index is None:  # conv_upN: after its Upsample, before its LeakyReLU
                    index = 3 * int(head[len("conv_up") :])
                out[f"model.{index}.{tail}"] = value
        else:
            raise CheckpointError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return out


def convert_file(
    src: str | Path, dest: str | Path, *, layout: str = "ours", overwrite: bool = False, half: bool = False
) -> Path:
    """Convert any supported model file into ours (.safetensors) or another tool's layout (.pth, tensors only;
    ncnn: .param and .bin, fp16 weights always); `half`: fp16 weights in ours and the .pth layouts too."""
    weights = load_weights(src)
    dest = Path(dest)
    provenance = dict(weights.metadata)
    provenance["converted_from"] = f"{weights.path.name if weights.path else src} ({weights.layout} layout)"
    if layout == "ours":
        if dest.suffix != ".safetensors":
            raise CheckpointError(f"{dest}: our format is safetensors: name the output *.safetensors")
        return save_model(
            dest,
            weights.state_dict,
            config=weights.config,
            metadata=provenance,
            overwrite=overwrite,
            half=half,
        )
    if layout == "ncnn":
        from .ncnn import ncnn_file_refusal, save_ncnn

        if (problem := ncnn_file_refusal(weights.config)) is not None:
            raise CheckpointError(f"{weights.path or src}: {problem}")
        return save_ncnn(weights.config, weights.state_dict, dest, overwrite=overwrite)[0]
    if dest.suffix not in (".pth", ".pt"):
        raise CheckpointError(f"{dest}: the {layout} layout is a PyTorch file: name the output *.pth")
    try:
        sd = to_layout(weights.config, to_half(weights.state_dict) if half else weights.state_dict, layout)
    except (
        CheckpointError
    ) as exc:  # what the model is that the layout cannot hold: named with the model's file
        raise CheckpointError(f"{weights.path or src}: {exc}") from None
    # BasicSR and Real-ESRGAN look for params_ema, then params; both point at the same storages (saved once).
    payload: dict[str, Any] = {"params_ema": sd, "params": sd} if layout == "basicsr" else sd
    with _writing(dest, overwrite) as tmp:
        torch.save(payload, tmp)
    return dest


# --- network interpolation ----------------------------------------------------------------------------------------
def interpolate_state_dicts(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """theta = (1 - alpha) * theta_a + alpha * theta_b, key by key (the paper's network interpolation)."""
    if not 0.0 <= alpha <= 1.0:
        raise CheckpointError(f"alpha must be in [0, 1], got {alpha}")
    if a.keys() != b.keys():
        only = sorted(set(a) ^ set(b))
        raise CheckpointError(f"incompatible architectures: key {only[0]!r} is in only one of the two models")
    out: dict[str, Tensor] = {}
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise CheckpointError(
                f"incompatible architectures: {key} has shape {tuple(ta.shape)} in A and {tuple(tb.shape)} in B"
            )
        out[key] = torch.lerp(ta.float(), tb.float(), alpha)
    return out


def interpolate_weights(
    a: LoadedWeights, b: LoadedWeights, alpha: float, *, labels: tuple[str, str] | None = None
) -> LoadedWeights:
    """The mix of `a` and `b`, its metadata naming them by `labels` (default: their file names; interpolate_files
    gives the paths as the user gave them: every trained model is a model.safetensors)."""
    if a.config != b.config:
        raise CheckpointError(f"incompatible architectures: A is {a.config}, B is {b.config}")
    sd = interpolate_state_dicts(a.state_dict, b.state_dict, alpha)
    label_a, label_b = labels if labels is not None else (_label(a), _label(b))
    meta = {"interpolated": f"(1 - {alpha}) * {label_a} + {alpha} * {label_b}"}
    # the inputs' record (a zoo model's licence above all, a trained model's esrgan.training) goes with the mix,
    # each input's under its side's prefix; an input that is itself a mix brings its own inputs' records, nested:
    # a.a.license, a.b.esrgan.training, ...
    for side, w in (("a", a), ("b", b)):
        for key, value in w.metadata.items():
            if _is_provenance(key):
                meta[f"{side}.{key}"] = value
    return LoadedWeights(a.config, sd, "ours", meta, None)


_PROVENANCE_KEYS = (
    "license",
    "name",
    "source",
    "converted_from",
    "interpolated",
    "esrgan.training",  # a trained model's run: its config, steps, data (esrgan.train)
    "esrgan.perceptual_weights",  # its stage 2's VGG19: vgg19-imagenet or random
)


def _is_provenance(key: str) -> bool:
    """A metadata key interpolate_weights carries over: one of _PROVENANCE_KEYS, or one under a.* / b.* (the inputs'
    record of an earlier mix), at any depth."""
    while key[:2] in ("a.", "b."):
        key = key[2:]
    return key in _PROVENANCE_KEYS


def interpolate_files(
    a: str | Path,
    b: str | Path,
    alpha: float,
    dest: str | Path,
    *,
    overwrite: bool = False,
    labels: tuple[str, str] | None = None,
) -> Path:
    """Write the mix of the model files `a` and `b`; its metadata names them by `labels`, default input_label of
    each (the path as given, relative to the current folder when under it)."""
    if Path(dest).suffix != ".safetensors":  # what is written is ours: never under another tool's name
        raise CheckpointError(f"{dest}: our format is safetensors: name the output *.safetensors")
    if labels is None:
        labels = (input_label(a), input_label(b))
    mixed = interpolate_weights(load_weights(a), load_weights(b), alpha, labels=labels)
    return save_model(
        dest, mixed.state_dict, config=mixed.config, metadata=mixed.metadata, overwrite=overwrite
    )


# --- description --------------------------------------------------------------------------------------------------
def describe(path: str | Path) -> str:
    """Human-readable summary of a model file for `esrgan info`."""
    weights = load_weights(path)
    cfg = weights.config
    with torch.device("meta"):
        params = count_parameters(build_generator(cfg))
    lines = [f"file:        {weights.path}", f"layout:      {weights.layout}"]
    if isinstance(cfg, CompactConfig):
        lines += [
            "arch:        SRVGGNetCompact (Real-ESRGAN's compact generator)",
            f"scale:       x{cfg.scale} (pixel shuffle, plus the nearest upscale of the input)",
            f"features:    {cfg.num_feat}, convs: {cfg.num_conv} + 2, activation: PReLU",
        ]
    else:
        lines += [
            "arch:        RRDBNet (ESRGAN)",
            f"scale:       x{cfg.scale}"
            + (f" (pixel-unshuffle by {cfg.unshuffle}, x4 trunk)" if cfg.unshuffle > 1 else "")
            + ("" if cfg.pixel_unshuffle or cfg.scale >= 4 else " (native, original ESRGAN design)"),
            f"features:    {cfg.num_feat}, blocks: {cfg.num_block}, growth: {cfg.num_grow}",
            *(
                ["residual:    bicubic upscale of the input added to the output"]
                if cfg.image_residual
                else []
            ),
            *(["variant:     ESRGAN+ (a 1x1 residual path in every dense block)"] if cfg.plus else []),
        ]
    lines += [
        f"channels:    {cfg.num_in_ch} in, {cfg.num_out_ch} out",
        f"parameters:  {params:,}",
        *([f"weights:     {weights.stored}"] if weights.stored else []),
    ]
    lines += [
        f"{_shown(k)}: {_shown(v)}" for k, v in sorted(weights.metadata.items()) if k != "esrgan.config"
    ]
    return "\n".join(lines)


def _shown(text: object, limit: int = 300) -> str:
    """A file's metadata as one safe line: control characters escaped (a file cannot forge report lines or send
    terminal escape sequences), at most `limit` characters."""
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))
    return escaped if len(escaped) <= limit else escaped[:limit] + f"... ({len(escaped)} characters)"


def _label(w: LoadedWeights) -> str:
    return w.path.name if w.path else "model"


def input_label(spec: str | Path) -> str:
    """A model as the user named it, for a record: a name or relative path as given, an absolute path under the
    current folder relative to it (runs/gan/model.safetensors, not /home/.../runs/gan/model.safetensors)."""
    path = Path(spec)
    if path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except (ValueError, OSError):
            return str(path)
    return str(spec)


def _short(key: str, n: int = 100) -> str:
    """A key from the file as it may appear in a message: crafted ones can be megabytes long."""
    return key if len(key) <= n else key[:n] + "..."


def _preview(keys: Any, n: int = 4) -> str:
    items = [_short(str(k)) for k in list(keys)[:n]]
    return ", ".join(items) + (", ..." if len(list(keys)) > n else "") if items else "(none)"
