"""Fast RRDBNet inference: on the CPU, oneDNN convolutions with pre-packed weights, channels-last, fused epilogues.

PackedRRDBNet is a forward function (float32 NCHW in, float32 NCHW out) for the tiling code, chosen on the CPU by
esrgan.device.ModelRunner (the one place that picks a forward pass). It is a hand-written forward pass over the
model's weights that calls oneDNN's fused convolution op (torch.ops.mkldnn._convolution_pointwise, the op
torch.compile's CPU backend emits) directly:

- weights converted once to the compute dtype and reordered once into oneDNN's blocked layout (eager PyTorch
  reorders every weight on every call);
- activations channels-last (NHWC), the layout oneDNN's direct convolutions want: fp32 NCHW eager runs at ~120
  GFLOP/s per core here, channels-last at ~180-190 of a ~225 ceiling;
- LeakyReLU fused into the convolution, and the dense block's "x5 * 0.2 + x" fused too (0.2 folded into conv5's
  weights, the residual added in the convolution's epilogue): fewer passes over memory and fewer thread barriers;
- one dense-block buffer of num_feat + 4 * num_grow channels per call, each conv writing its slice once, instead of
  torch.cat re-copying all earlier features for every conv (measured: the same speed, since oneDNN copies a strided
  channel slice to a contiguous input anyway; kept for its simpler memory profile);
- the upsampling tail in row stripes, so its scale**2-sized maps never dominate the memory (see _tail).

Not torch.compile by default (ModelRunner's engine="compiled" is there to measure it): `torch._inductor.config.freezing = True` (needed for the same weight packing) gave
wrong outputs for this network, and compiling without it costs ~50 s per input shape (minutes on a loaded machine)
for a few percent (bench/speed.py measures both). Numbers and the ideas that did not pay: docs/benchmarks.md ("Speed").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import EsrganError
from .generator import RRDBNet, upscale_input

_ONE = [1, 1]  # every RRDBNet conv is 3x3, stride 1, padding 1, dilation 1
_MAX_PACKS = 4  # packed weight sets kept per conv (one per input shape; tiling uses one or two shapes)
TAIL_BYTES = 64 << 20  # largest tail feature map computed at once (see PackedRRDBNet._tail)
# Trunk rows of context for a tail stripe: each 3x3 conv spoils one row at its own resolution next to a stripe
# edge, which is at most 1/2 + 1/4 + ... + 2 / scale <= 2 trunk rows for every RRDBNet tail.
_HALO = 2

__all__ = ["PackedRRDBNet"]


class _PackedConv:
    """One 3x3 conv: weights in the compute dtype, reordered for oneDNN once per input shape."""

    def __init__(self, conv: nn.Module, dtype: torch.dtype, scale: float = 1.0) -> None:
        assert isinstance(conv, nn.Conv2d) and conv.bias is not None
        weight = conv.weight.detach().float().cpu() * scale
        self.weight = weight.to(dtype)
        self.bias = (conv.bias.detach().float().cpu() * scale).to(dtype)
        self._packs: dict[tuple[int, ...], Tensor] = {}

    def _packed(self, x: Tensor) -> Tensor:
        key = tuple(x.shape)
        packed = self._packs.get(key)
        if packed is None:
            # The blocked format oneDNN picks depends on the input shape; packing for another shape would still be
            # correct, but oneDNN would then reorder the weights again on every call.
            # (the type stub lacks the input_size argument that the op takes)
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]
                self.weight.to_mkldnn(), _ONE, _ONE, _ONE, 1, list(key)
            )
            if len(self._packs) >= _MAX_PACKS:
                self._packs.pop(next(iter(self._packs)))
            self._packs[key] = packed
        return packed

    def __call__(self, x: Tensor, *, lrelu: bool) -> Tensor:
        attr, scalars = ("leaky_relu", [0.2]) if lrelu else ("none", [])
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed(x), self.bias, _ONE, _ONE, _ONE, 1, attr, scalars, ""
        )

    def plus(self, x: Tensor, residual: Tensor) -> Tensor:
        """conv(x) + residual, the addition done in the convolution's epilogue."""
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, self._packed(x), self.bias, _ONE, _ONE, _ONE, 1, "add", 1.0, None, [], None
        )


def _plus_weight(rdb: object, dtype: torch.dtype) -> Tensor | None:
    conv = getattr(rdb, "conv1x1", None)
    return conv.weight.detach().float().cpu().to(dtype) if isinstance(conv, nn.Conv2d) else None


class PackedRRDBNet:
    """An RRDBNet forward pass on the CPU in fp32 or bf16 (see the module docstring). Same maths as RRDBNet.forward.

    Holds its own copy of the weights (the model is not modified). Calls with a new input shape pack the weights
    for it (a few ms); keep tile shapes fixed. Safe to call from one thread at a time.
    """

    def __init__(self, model: RRDBNet, dtype: torch.dtype = torch.float32) -> None:
        if dtype not in (torch.float32, torch.bfloat16):
            raise EsrganError(f"the CPU engine computes in fp32 or bf16, not {dtype}")
        if not torch.backends.mkldnn.is_available():
            raise EsrganError("this torch build has no oneDNN (mkldnn); use the plain PyTorch path")
        self.config = model.config
        self.dtype = dtype
        self.first = _PackedConv(model.conv_first, dtype)
        self.blocks = [
            [
                [_PackedConv(getattr(rdb, f"conv{j}"), dtype, 0.2 if j == 5 else 1.0) for j in range(1, 6)]
                for rdb in (rrdb.rdb1, rrdb.rdb2, rrdb.rdb3)
            ]
            for rrdb in model.body
        ]
        # ESRGAN+'s bias-free 1x1 convs (RRDBConfig.plus), one per dense block, in the compute dtype
        self.plus_weights = [
            [_plus_weight(rdb, dtype) for rdb in (rrdb.rdb1, rrdb.rdb2, rrdb.rdb3)] for rrdb in model.body
        ]
        self.body = _PackedConv(model.conv_body, dtype)
        self.ups = [_PackedConv(getattr(model, name), dtype) for name in model.upsample_names]
        self.hr = _PackedConv(model.conv_hr, dtype)
        self.last = _PackedConv(model.conv_last, dtype)

    def _rdb(self, x: Tensor, convs: list[_PackedConv], buf: Tensor, plus: Tensor | None = None) -> Tensor:
        nf, gc = self.config.num_feat, self.config.num_grow
        buf[:, :nf].copy_(x)
        for j in range(4):
            c = nf + j * gc
            buf[:, c : c + gc].copy_(convs[j](buf[:, :c], lrelu=True))
            if plus is not None and j == 1:  # ESRGAN+: x2 += conv1x1(x), before x3, x4 and x5 read it
                buf[:, c : c + gc].add_(F.conv2d(x, plus))
            elif plus is not None and j == 3:  # ESRGAN+: x4 += x2
                buf[:, c : c + gc].add_(buf[:, nf + gc : nf + 2 * gc])
        return convs[4].plus(buf, x)  # conv5 weights carry the 0.2

    def _trunk(self, x: Tensor) -> Tensor:
        cfg = self.config
        feat = self.first(x, lrelu=False)
        n, _, h, w = feat.shape
        buf = torch.empty(n, cfg.num_feat + 4 * cfg.num_grow, h, w, dtype=self.dtype)
        buf = buf.contiguous(memory_format=torch.channels_last)
        t = feat
        for rdbs, pluses in zip(self.blocks, self.plus_weights, strict=True):
            y = t
            for convs, plus in zip(rdbs, pluses, strict=True):
                y = self._rdb(y, convs, buf, plus)
            t = torch.add(t, y, alpha=0.2)
        return self._tail(self.body.plus(t, feat))

    def _tail_rows(self, feat: Tensor) -> Tensor:
        for conv in self.ups:
            feat = conv(F.interpolate(feat, scale_factor=2.0, mode="nearest"), lrelu=True)
        return self.last(self.hr(feat, lrelu=True), lrelu=False)

    def _tail(self, feat: Tensor) -> Tensor:
        """The upsampling tail in horizontal stripes of at most TAIL_BYTES per feature map.

        The tail's maps are scale**2 times the trunk's: a 528x528 tile at x4 has 570 MB bf16 maps, and three of
        them alive at once made 1024x1024 -> 4096x4096 peak at 4 GB RSS. The tail is local (3x3 convs, nearest
        upsampling), so stripes with _HALO trunk rows of context on each side give the same output rows.
        """
        s = 2 ** len(self.ups)
        n, nf, h, w = feat.shape
        rows = max(8, TAIL_BYTES // (w * s * s * nf * feat.element_size()))
        if h <= rows:
            return self._tail_rows(feat)
        out = torch.empty(n, self.config.num_out_ch, h * s, w * s)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            a, b = max(0, r0 - _HALO), min(h, r1 + _HALO)
            part = self._tail_rows(feat[:, :, a:b])
            out[:, :, r0 * s : r1 * s] = part[:, :, (r0 - a) * s : (r1 - a) * s]
        return out

    def __call__(self, x: Tensor) -> Tensor:
        """(N, C, H, W) float32 in [0, 1] -> (N, C_out, H * scale, W * scale) float32, contiguous NCHW."""
        cfg = self.config
        factor = cfg.unshuffle
        h, w = x.shape[-2:]
        with torch.inference_mode():
            x = x.float()
            if factor > 1:  # same padding rule as RRDBNet.forward
                pad_h, pad_w = (-h) % factor, (-w) % factor
                if pad_h or pad_w:
                    mode = "reflect" if h > pad_h and w > pad_w else "replicate"
                    x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
            base = upscale_input(x, cfg) if cfg.image_residual else None  # of the padded input, as RRDBNet's
            if factor > 1:
                x = F.pixel_unshuffle(x, factor)
            x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
            out = self._trunk(x).float()
            out = out if base is None else out + base
            if factor > 1:
                out = out[..., : h * cfg.scale, : w * cfg.scale]
            return out.contiguous()
