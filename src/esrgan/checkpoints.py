"""One loading pipeline for every RRDBNet model file, and our own safetensors format.

read (safely) -> unwrap -> detect layout -> infer hyperparameters from shapes -> rename to our layout -> check
every key and shape -> load strictly. Layouts in the wild (see the recipe):

- ``ours`` / ``basicsr``: conv_first, body.{i}.rdb{k}.conv{j}, conv_body, conv_up{n}, conv_hr, conv_last
  (BasicSR >= 1.0, Real-ESRGAN; usually wrapped as {"params_ema": ...} / {"params": ...}).
- ``esrgan``: conv_first, RRDB_trunk.{i}.RDB{k}.conv{j}, trunk_conv, upconv{n}, HRconv, conv_last
  (the ESRGAN repository after its 2019 rename, BSRGAN, RealSR).
- ``old``: model.0, model.1.sub.{i}.RDB{k}.conv{j}.0, model.1.sub.{nb}, model.{3,6,...}, HR conv, last conv
  (the original RRDB_ESRGAN_x4.pth release and most community models of the upscale wiki).

Pickle-based files are only read with ``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is
refused, never executed. Our own files are safetensors with the hyperparameters in the metadata.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .atomic import OutputExistsError, atomic_path
from .errors import CheckpointError
from .generator import RRDBConfig, RRDBNet, count_parameters, to_half

LAYOUTS = ("ours", "basicsr", "esrgan", "old")
FORMAT_VERSION = "1"
# RRDBNet files are ~67 MB in fp32 at paper size; anything past this is not a generator and is refused unread.
MAX_FILE_BYTES = 2 * 1024**3
_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g", "netG", "generator", "g_ema")
_PREFIXES = ("module.", "_orig_mod.", "net_g.", "generator.")


@dataclass
class LoadedWeights:
    """A model file read and canonicalised: everything needed to build and fill an RRDBNet."""

    config: RRDBConfig
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
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:4] == b"7767" or path.suffix == ".param":
        return "ncnn"
    return "unknown"


def read_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a model file without executing anything: returns (raw object as stored, safetensors metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file")
    if size > MAX_FILE_BYTES:
        raise CheckpointError(f"{path}: {size / 1e9:.1f} GB is larger than any RRDBNet model file; refused")
    kind = _sniff(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    if kind in ("torch-zip", "pickle"):
        return _read_torch(path), {}
    if kind == "ncnn":
        raise CheckpointError(f"{path}: ncnn model: use load_weights(), which reads .param/.bin pairs")
    raise CheckpointError(f"{path}: not a model file (expected .pth/.pt, .safetensors or ncnn .param)")


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({_first_line(exc)})") from None
    return tensors, metadata


def _check_zip(path: Path) -> None:
    """PyTorch writes its zip archives uncompressed: a compressed or oversized entry is a crafted file (a zip bomb)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:  # "zip file version 13.7"
        raise CheckpointError(f"{path}: corrupt PyTorch zip archive ({_first_line(exc)})") from None
    if len(entries) > 100_000:
        raise CheckpointError(f"{path}: {len(entries)} archive entries; refused")
    for info in entries:
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path}: archive entry {info.filename!r} is compressed; PyTorch never does that; refused"
            )
    total = sum(info.file_size for info in entries)
    if total > MAX_FILE_BYTES:
        raise CheckpointError(f"{path}: archive claims {total / 1e9:.1f} GB of data; refused")


def _read_torch(path: Path) -> dict[str, Any]:
    import pickle

    if _sniff(path) == "torch-zip":
        _check_zip(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: {_unsafe_pickle(exc)}") from None
    except Exception as exc:  # truncated zips, corrupt storages, ...: torch raises many types
        raise CheckpointError(f"{path}: unreadable PyTorch file ({_first_line(exc)})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def _unsafe_pickle(exc: BaseException) -> str:
    """Why a pickle was refused, in our words: what the file holds and the safe way to get its weights.

    PyTorch's own message advises re-running torch.load with weights_only=False, i.e. running the file's code:
    never repeated to the user (only the name of the offending object or opcode is taken from it).
    """
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    opcode = re.search(r"Unsupported operand (\d+)", text)
    if found:
        what = f"a pickle that refers to the Python object `{found.group(1)}` besides tensors"
    elif opcode:
        what = f"a pickle with opcode {opcode.group(1)}, which PyTorch weight files do not use"
    else:
        what = "a pickle holding Python objects besides tensors"
    return (
        f"refused: {what}; loading it could run code from the file, so it was not loaded. If it comes from a "
        "source you trust, get a weights-only copy made where the file came from: "
        "torch.save(model.state_dict(), 'weights.pth') or a .safetensors file (esrgan reads both; "
        "`esrgan convert` turns them into ours)"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# --- canonicalisation ---------------------------------------------------------------------------------------------
def unwrap(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """Find the generator's tensors in a checkpoint: prefer params_ema over params, strip DataParallel prefixes."""
    current: Mapping[str, Any] = obj
    for _ in range(4):  # wrappers nest at most a few levels deep
        if any(isinstance(v, Tensor) for v in current.values()):
            break
        for key in _WRAPPER_KEYS:
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


def detect_layout(sd: Mapping[str, Tensor]) -> str:
    keys = sd.keys()
    if any("conv1x1" in k for k in keys):
        raise CheckpointError(
            "ESRGAN+ checkpoint (conv1x1 keys in the dense blocks) is not supported by RRDBNet"
        )
    if "conv_first.weight" in sd and any(k.startswith("body.") for k in keys):
        return "basicsr"
    if "conv_first.weight" in sd and any(k.startswith("RRDB_trunk.") for k in keys):
        return "esrgan"
    if "model.0.weight" in sd and any(k.startswith("model.1.sub.") for k in keys):
        return "old"
    raise CheckpointError(
        "not an RRDBNet (ESRGAN) model: expected keys like conv_first.weight + body.0.rdb1.conv1.weight, "
        f"RRDB_trunk.*, or model.1.sub.*; found {_preview(keys)}"
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
        m = re.fullmatch(r"RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.(weight|bias)", key)
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
        raise CheckpointError(f"unexpected key {key!r} in an ESRGAN-repository (RRDB_trunk) layout")
    return out


def _rename_old(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    tail_convs: dict[int, dict[str, Tensor]] = {}
    body_idx = [int(m[1]) for k in sd if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", k))]
    num_block = max(body_idx) + 1 if body_idx else 0
    for key, value in sd.items():
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.(?:0\.)?(weight|bias)", key)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
            continue
        m = re.fullmatch(rf"model\.1\.sub\.{num_block}\.(?:0\.)?(weight|bias)", key)
        if m:
            out[f"conv_body.{m[1]}"] = value
            continue
        m = re.fullmatch(r"model\.(\d+)\.(?:0\.)?(weight|bias)", key)
        if m and int(m[1]) != 1:
            tail_convs.setdefault(int(m[1]), {})[m[2]] = value
            continue
        raise CheckpointError(f"unexpected key {key!r} in an old-ESRGAN (model.N) layout")
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


def infer_config(sd: Mapping[str, Tensor]) -> RRDBConfig:
    """Read every hyperparameter off the tensor shapes of a state dict in our layout."""
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
    num_block = 1 + max(int(m[1]) for k in sd if (m := re.match(r"body\.(\d+)\.", k)))
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
    )


def canonicalize(obj: Mapping[str, Any]) -> tuple[RRDBConfig, dict[str, Tensor], str]:
    """Unwrap, detect the layout, rename to ours, infer the hyperparameters and check every tensor."""
    sd = unwrap(obj)
    layout = detect_layout(sd)
    if layout == "esrgan":
        sd = _rename_esrgan(sd)
    elif layout == "old":
        sd = _rename_old(sd)
    config = infer_config(sd)
    return config, check_state_dict(config, sd), layout


def check_state_dict(config: RRDBConfig, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every expected key present with the expected shape, nothing extra, finite float values -> float32 copies."""
    with torch.device("meta"):
        expected = RRDBNet.from_config(config).state_dict()
    missing = [k for k in expected if k not in sd]
    if missing:
        raise CheckpointError(
            f"missing key {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    extra = [k for k in sd if k not in expected]
    if extra:
        raise CheckpointError(
            f"unexpected key {extra[0]!r}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    out: dict[str, Tensor] = {}
    for key, ref in expected.items():
        value = sd[key]
        if tuple(value.shape) != tuple(ref.shape):
            raise CheckpointError(f"{key}: expected shape {tuple(ref.shape)}, file has {tuple(value.shape)}")
        if not value.is_floating_point():
            raise CheckpointError(f"{key}: expected floating-point weights, file has {value.dtype}")
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

        config, sd = load_ncnn(path)
        return LoadedWeights(config, check_state_dict(config, sd), "ncnn", {}, path)
    raw, metadata = read_weights(path)
    try:
        stored = _precision(unwrap(raw))
        config, sd, layout = canonicalize(raw)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if "esrgan.config" in metadata:
        recorded = _config_from_metadata(path, metadata["esrgan.config"])
        # the image residual has no tensors: only the metadata can say it is there
        if replace(recorded, image_residual=False) != config:
            raise CheckpointError(f"{path}: metadata says {recorded} but the tensors say {config}")
        config, layout = recorded, "ours"
    return LoadedWeights(config, sd, layout, metadata, path, stored)


def _precision(sd: Mapping[str, Tensor]) -> str:
    """The dtype the weights were stored in ("float16", "float32", ...; "mixed" when they differ)."""
    kinds = {str(t.dtype).removeprefix("torch.") for t in sd.values() if isinstance(t, Tensor)}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _config_from_metadata(path: Path, text: str) -> RRDBConfig:
    try:
        values = json.loads(text)
        return RRDBConfig(**values)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid esrgan.config metadata ({exc})") from None


def build_model(weights: LoadedWeights) -> RRDBNet:
    model = RRDBNet.from_config(weights.config)
    model.load_state_dict(weights.state_dict, strict=True)
    return model.eval().requires_grad_(False)


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> RRDBNet:
    """Build an RRDBNet from any supported model file, in eval mode with gradients off.

    Files only: names (`esrgan models`) are the zoo's, esrgan.zoo.load_model takes a name or a file.
    """
    return build_model(load_weights(Path(path).expanduser())).to(device)


# --- saving and converting ----------------------------------------------------------------------------------------
def save_model(
    path: str | Path,
    model: RRDBNet | Mapping[str, Tensor],
    *,
    config: RRDBConfig | None = None,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
    half: bool = False,
) -> Path:
    """Write our format: safetensors with the hyperparameters (and provenance) in its metadata, atomically;
    `half`: fp16 weights (half the file; loading makes them float32 again)."""
    from safetensors.torch import save

    if isinstance(model, RRDBNet):
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
            "esrgan.arch": "RRDBNet",
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
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise CheckpointError(f"{dest}: cannot write ({_first_line(exc)})") from None


def to_layout(config: RRDBConfig, sd: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Rename a canonical state dict into another tool's key layout."""
    if config.image_residual and layout != "ours":
        raise CheckpointError(
            f"this model adds a bicubic upscale of its input to its output (image_residual), which {layout!r} "
            "files cannot record: other tools would run it without and get a dark, wrong image; keep --layout ours"
        )
    if layout in ("ours", "basicsr"):
        if layout == "basicsr" and config.scale in (1, 2) and not config.pixel_unshuffle:
            raise CheckpointError("BasicSR's RRDBNet has no native x1/x2 variant: use --layout old or esrgan")
        return dict(sd)
    out: dict[str, Tensor] = {}
    num_up = config.num_upsample
    for key, value in sd.items():
        m = re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", key)
        head, _, tail = key.rpartition(".")
        if layout == "esrgan":
            if m:
                out[f"RRDB_trunk.{m[1]}.RDB{m[2]}.conv{m[3]}.{m[4]}"] = value
            elif head.startswith("conv_up"):
                out[f"upconv{head[len('conv_up') :]}.{tail}"] = value
            else:
                out[f"{ {'conv_body': 'trunk_conv', 'conv_hr': 'HRconv'}.get(head, head) }.{tail}"] = value
        elif layout == "old":
            if m:
                out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"] = value
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
        from .ncnn import save_ncnn

        return save_ncnn(weights.config, weights.state_dict, dest, overwrite=overwrite)[0]
    if dest.suffix not in (".pth", ".pt"):
        raise CheckpointError(f"{dest}: the {layout} layout is a PyTorch file: name the output *.pth")
    sd = to_layout(weights.config, to_half(weights.state_dict) if half else weights.state_dict, layout)
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


def interpolate_weights(a: LoadedWeights, b: LoadedWeights, alpha: float) -> LoadedWeights:
    if a.config != b.config:
        raise CheckpointError(f"incompatible architectures: A is {a.config}, B is {b.config}")
    sd = interpolate_state_dicts(a.state_dict, b.state_dict, alpha)
    meta = {"interpolated": f"(1 - {alpha}) * {_label(a)} + {alpha} * {_label(b)}"}
    return LoadedWeights(a.config, sd, "ours", meta, None)


def interpolate_files(
    a: str | Path, b: str | Path, alpha: float, dest: str | Path, *, overwrite: bool = False
) -> Path:
    mixed = interpolate_weights(load_weights(a), load_weights(b), alpha)
    return save_model(
        dest, mixed.state_dict, config=mixed.config, metadata=mixed.metadata, overwrite=overwrite
    )


# --- description --------------------------------------------------------------------------------------------------
def describe(path: str | Path) -> str:
    """Human-readable summary of a model file for `esrgan info`."""
    weights = load_weights(path)
    cfg = weights.config
    with torch.device("meta"):
        params = count_parameters(RRDBNet.from_config(cfg))
    lines = [
        f"file:        {weights.path}",
        f"layout:      {weights.layout}",
        f"scale:       x{cfg.scale}"
        + (f" (pixel-unshuffle by {cfg.unshuffle}, x4 trunk)" if cfg.unshuffle > 1 else "")
        + ("" if cfg.pixel_unshuffle or cfg.scale >= 4 else " (native, original ESRGAN design)"),
        f"channels:    {cfg.num_in_ch} in, {cfg.num_out_ch} out",
        f"features:    {cfg.num_feat}, blocks: {cfg.num_block}, growth: {cfg.num_grow}",
        *(["residual:    bicubic upscale of the input added to the output"] if cfg.image_residual else []),
        f"parameters:  {params:,}",
        *([f"weights:     {weights.stored}"] if weights.stored else []),
    ]
    lines += [f"{k}: {v}" for k, v in sorted(weights.metadata.items()) if k not in ("esrgan.config",)]
    return "\n".join(lines)


def _label(w: LoadedWeights) -> str:
    return w.path.name if w.path else "model"


def _preview(keys: Any, n: int = 4) -> str:
    items = [str(k) for k in list(keys)[:n]]
    return ", ".join(items) + (", ..." if len(list(keys)) > n else "") if items else "(none)"
