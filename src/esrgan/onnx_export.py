"""ONNX export of a generator (RRDBNet or SRVGGNetCompact; dynamic batch, height and width) and an onnxruntime
forward function. A compact model's forward pass has no size-dependent step: it is exported as it is.

The exported graph is the network proper: pixel-unshuffle (x1/x2 Real-ESRGAN models) -> trunk -> upsampling tail.
The reflect padding to a multiple of the unshuffle factor and the crop afterwards depend on the input size with
Python-level branches that a traced graph would freeze at the export size, so they live in onnx_forward instead;
the graph itself wants height and width divisible by the factor (recorded, with the hyperparameters, in the model's
metadata under "esrgan.config"). Every export is checked with onnxruntime against PyTorch before the file appears.

Needs the optional packages onnx and onnxruntime (`pip install "esrgan[onnx]"`).
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .archs import Generator, GeneratorConfig, arch_name, build_generator
from .atomic import OutputExistsError, atomic_path, cannot_write_reason
from .compact import SRVGGNetCompact
from .errors import EsrganError
from .generator import RRDBNet, upscale_input

# torch.onnx.export's choice of the TorchScript exporter; torch before 2.4 has only that one, and no `dynamo` argument
TORCHSCRIPT_EXPORTER: dict[str, Any] = (
    {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
)

DEFAULT_OPSET = 17
MIN_OPSET = 11  # pixel-unshuffle (SpaceToDepth) and the resizes' modes as RRDBNet uses them


def _max_opset() -> int:
    """The highest opset this torch's TorchScript exporter targets (its own constant; 20 if it has moved)."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):
        return 20


CHECK_PSNR_DB = 80.0  # fp32 ONNX vs fp32 PyTorch differ only in summation order: far above this
_CHECK_SIZE = 32  # side of the check input (a multiple of every unshuffle factor)

__all__ = ["DEFAULT_OPSET", "TORCHSCRIPT_EXPORTER", "OnnxForward", "export_onnx", "onnx_forward"]


class _Graph(nn.Module):
    """RRDBNet.forward without the size-dependent pad and crop (see the module docstring)."""

    def __init__(self, model: RRDBNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        m = self.model
        base = upscale_input(x, m.config) if m.config.image_residual else None
        if m.config.unshuffle > 1:
            x = F.pixel_unshuffle(x, m.config.unshuffle)
        feat = m.conv_first(x)
        feat = feat + m.conv_body(m.body(feat))
        for name in m.upsample_names:
            feat = m.lrelu(getattr(m, name)(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        out = m.conv_last(m.lrelu(m.conv_hr(feat)))
        return out if base is None else out + base


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise EsrganError(f'ONNX support needs the {module} package: pip install "esrgan[onnx]"') from None


def _check_input(config: GeneratorConfig) -> Tensor:
    """A smooth, image-like input (values in [0, 1], gradients and edges), deterministic across machines."""
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, _CHECK_SIZE), torch.linspace(0, 1, _CHECK_SIZE), indexing="ij"
    )
    planes = [
        0.5 + 0.4 * torch.sin(6.0 * xx + 4.0 * yy + c) * (xx > 0.3 + 0.1 * c) for c in range(config.num_in_ch)
    ]
    return torch.stack(planes)[None].clamp(0, 1)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def export_onnx(
    model: Generator | str | Path,
    dest: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Write `model` (an RRDBNet or SRVGGNetCompact, a model file or a model name) as ONNX with dynamic N, H, W;
    returns the path, which must end in .onnx.

    Uses the TorchScript exporter (dynamo=False): it needs no onnxscript and handles this static graph fully.
    The file is written only if onnxruntime's output matches PyTorch's to >= CHECK_PSNR_DB dB. A module given is
    exported from a float32 copy on the CPU: its dtype, device and train/eval mode are left as they were. A file's
    or a named model's provenance (licence, name, source, ...: what `esrgan convert` keeps) goes into the ONNX
    metadata beside esrgan.config and esrgan.arch, with converted_from naming the file.
    """
    _require("onnx")
    top = _max_opset()
    if (
        not MIN_OPSET <= opset <= top
    ):  # before torch prints its graph and warnings for an opset it cannot target
        raise EsrganError(
            f"opset {opset}: this torch exports opsets {MIN_OPSET}-{top} (default {DEFAULT_OPSET})"
        )
    dest = Path(dest)
    if dest.is_dir():  # even with overwrite: a folder is never replaced by a file
        raise EsrganError(f"{dest}: is a folder, not a file; give the name of the .onnx file to write")
    # before any work: an ONNX file under a model's name (even the input's, with --overwrite) is no model
    if dest.suffix != ".onnx":
        raise EsrganError(f"{dest}: the export is an ONNX file: name it *.onnx")
    provenance: dict[str, str] = {}
    if isinstance(model, RRDBNet | SRVGGNetCompact):
        model = _export_copy(model)
    else:
        from .checkpoints import build_model, load_weights
        from .zoo import resolve_model_path

        path = resolve_model_path(model)
        weights = load_weights(path)
        model = build_model(weights)
        provenance = {k: v for k, v in weights.metadata.items() if not k.startswith("esrgan.")}
        provenance["converted_from"] = f"{path.name} ({weights.layout} layout)"  # as esrgan convert writes it
    graph = _Graph(model) if isinstance(model, RRDBNet) else model
    try:
        _write(graph, model.config, dest, opset, overwrite, provenance)
    except OutputExistsError:
        raise
    except OSError as exc:  # a read-only folder, a full disk, a file where a folder should be
        raise EsrganError(f"{dest}: cannot write ({cannot_write_reason(dest, exc)})") from None
    return dest


def _export_copy(model: Generator) -> Generator:
    """A float32 copy of `model` on the CPU, in eval mode, sharing nothing with it: the caller's module keeps its
    dtype, device and mode, and a model on a GPU is exported on the CPU, where the check input is. Built on the
    meta device and filled from the state dict (no GPU copy on the way); a subclass or a module with other keys
    (weight_norm's) is deep-copied instead."""
    import copy

    if type(model) in (RRDBNet, SRVGGNetCompact):
        with torch.device("meta"):
            copied = build_generator(model.config)
        copied = copied.to_empty(device="cpu").float()
        try:
            copied.load_state_dict(model.state_dict(), strict=True)  # copy_: any dtype and device to CPU fp32
            return copied.eval().requires_grad_(False)
        except RuntimeError:  # other keys than the architecture's
            pass
    return copy.deepcopy(model).to("cpu", torch.float32).eval().requires_grad_(False)


def _write(
    graph: nn.Module,
    config: GeneratorConfig,
    dest: Path,
    opset: int,
    overwrite: bool,
    provenance: dict[str, str] | None = None,
) -> None:
    """Export to a temporary file, add the metadata, check it against PyTorch, then rename it to dest."""
    onnx = _require("onnx")
    sample = _check_input(config)
    # the output's spatial sizes are its own: scale x the input's (one name for both would say they are equal)
    dyn_in = {0: "batch", 2: "height", 3: "width"}
    dyn_out = {0: "batch", 2: "out_height", 3: "out_width"}
    with atomic_path(dest, overwrite=overwrite) as tmp:
        try:
            # The legacy exporter is deliberate (see the docstring); its DeprecationWarning would only confuse users.
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    graph,
                    (sample,),
                    str(tmp),
                    **TORCHSCRIPT_EXPORTER,
                    opset_version=opset,
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_axes={"input": dyn_in, "output": dyn_out},
                )
        except (RuntimeError, ValueError) as exc:  # e.g. an opset torch cannot target
            raise EsrganError(f"{dest}: ONNX export failed: {str(exc).splitlines()[0]}") from None
        proto = onnx.load(str(tmp))
        for key, value in (
            *sorted((provenance or {}).items()),
            ("esrgan.config", json.dumps(config.to_dict())),
            ("esrgan.arch", arch_name(config)),
        ):
            meta = proto.metadata_props.add()
            meta.key, meta.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        with torch.inference_mode():
            want = graph(sample).numpy()
        got = onnx_forward(tmp)(sample).numpy()
        quality = _psnr(got, want)
        if got.shape != want.shape or quality < CHECK_PSNR_DB:
            raise EsrganError(
                f"{dest}: onnxruntime output differs from PyTorch ({quality:.1f} dB < {CHECK_PSNR_DB} dB); not written"
            )


class OnnxForward:
    """An exported RRDBNet run by onnxruntime on the CPU: float32 NCHW in, float32 NCHW out (the tiling Forward).

    Pads the input to a multiple of the unshuffle factor and crops the output, as RRDBNet.forward does.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        ort = _require("onnxruntime")
        self.path = Path(path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise EsrganError(
                f"{self.path}: not a loadable ONNX model ({str(exc).splitlines()[0]})"
            ) from None
        meta = self.session.get_modelmeta().custom_metadata_map
        text = meta.get("esrgan.config")
        if text is None:
            raise EsrganError(f"{self.path}: no esrgan.config metadata (not exported by esrgan export-onnx)")
        from .checkpoints import config_from_metadata

        # checked as a model file's metadata is (types, ranges): an .onnx file is as hostile as any model file;
        # files of earlier releases have no esrgan.arch: RRDBNet, the only architecture then
        self.config: GeneratorConfig = config_from_metadata(
            self.path, text, meta.get("esrgan.arch", "RRDBNet")
        )

    def __call__(self, x: Tensor) -> Tensor:
        factor, scale = self.config.unshuffle, self.config.scale
        h, w = x.shape[-2:]
        x = x.float()
        pad_h, pad_w = (-h) % factor, (-w) % factor
        if pad_h or pad_w:  # same rule as RRDBNet.forward
            mode = "reflect" if h > pad_h and w > pad_w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        (out,) = self.session.run(["output"], {"input": np.ascontiguousarray(x.numpy())})
        # the graph adds the bicubic upscale of the padded input, as RRDBNet.forward does
        return torch.from_numpy(out[..., : h * scale, : w * scale]).contiguous()


def onnx_forward(path: str | Path, *, threads: int | None = None) -> OnnxForward:
    """The onnxruntime backend, same contract as esrgan.device.ModelRunner."""
    return OnnxForward(path, threads=threads)
