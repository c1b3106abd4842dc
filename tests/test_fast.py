"""The fast CPU engine computes the same image as the eager model: fp32 to rounding, bf16 within a stated bound."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import psnr, tiny_rrdb

from esrgan.device import ModelRunner, cpu_packs_bf16, resolve_precision
from esrgan.errors import EsrganError, ModelNotAvailableError
from esrgan.generator import RRDBNet
from esrgan.tiling import upscale_tiled

# bf16 keeps 8 significant bits: each conv's output is off by ~2^-9 relative. Measured on real photos: the tiny
# random models below give 68-86 dB, realesrgan-x4plus (69 chained RDBs) 54 dB on a 32x32 crop, ~52 dB on others.
BF16_TINY_DB = 60.0
BF16_REAL_DB = 50.0
FP32_DB = 80.0  # fp32 paths differ from eager only in summation order (~1e-7): > 120 dB in practice

needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN"
)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0


CPU = torch.device("cpu")


def packed(model: RRDBNet, precision: str) -> ModelRunner:
    """The packed engine: the Upscaler's pick on the CPU in bf16, and in fp32 where ncnn is not installed."""
    if precision == "bf16" and not cpu_packs_bf16():
        pytest.skip("oneDNN cannot pack bf16 weights on this CPU (needs AVX512BW+VL+DQ or AVX-NE-CONVERT)")
    runner = ModelRunner(
        model, CPU, {"fp32": torch.float32, "bf16": torch.bfloat16}[precision], engine="packed"
    )
    assert runner.engine == "packed"
    return runner


def tiny(**kw: object) -> RRDBNet:
    """16 features, 2 blocks: enough for bf16's error to show (PSNR of the raw, unclamped outputs)."""
    return tiny_rrdb(num_feat=16, num_block=2, num_grow=8, **kw)  # type: ignore[arg-type]


def eager(model: RRDBNet, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


ARCHS = [
    {"scale": 4},
    {"scale": 8},
    {"scale": 2},  # Real-ESRGAN x2: pixel-unshuffle by 2
    {"scale": 1},  # pixel-unshuffle by 4
    {"scale": 2, "pixel_unshuffle": False},  # ESRGAN community x2: one upsampling stage
    {"scale": 1, "pixel_unshuffle": False},  # no upsampling stage
    {"scale": 4, "image_residual": True},  # the CPU recipe's: bicubic upscale of the input added
    {"scale": 2, "image_residual": True},  # ... with unshuffle padding and cropping around it
]


@needs_onednn
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: "-".join(f"{k}{v}" for k, v in a.items()))
def test_packed_engine_matches_eager_on_photo(arch: dict[str, object], photo: np.ndarray) -> None:
    model = tiny(**arch)
    # 37x41: odd, not a multiple of the unshuffle factors, so the padding and cropping are exercised
    x = to_tensor(photo[60:97, 180:221])
    ref = eager(model, x)
    out32 = packed(model, "fp32")(x)
    assert out32.shape == ref.shape and out32.dtype == torch.float32 and out32.is_contiguous()
    assert psnr(out32, ref) >= FP32_DB
    assert float((out32 - ref).abs().max()) < 1e-5
    out16 = packed(model, "bf16")(x)
    assert out16.shape == ref.shape and out16.dtype == torch.float32
    assert BF16_TINY_DB <= psnr(out16, ref) < 120  # really computed in bf16, and close


@needs_onednn
def test_repeated_calls_and_new_shapes_stay_correct(photo_small: np.ndarray) -> None:
    """Weights are packed per input shape: a second shape, then the first again, must all be right."""
    model = tiny()
    fn = packed(model, "fp32")
    a, b = to_tensor(photo_small), to_tensor(photo_small[:24, :32])
    first = fn(a)
    assert torch.equal(fn(a), first)
    assert psnr(fn(b), eager(model, b)) >= FP32_DB
    assert torch.equal(fn(a), first)
    batch = torch.cat([a, a.flip(-1)])
    out = fn(batch)
    assert psnr(out[1:], eager(model, batch[1:])) >= FP32_DB


@needs_onednn
def test_engine_leaves_the_model_alone(photo_small: np.ndarray) -> None:
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    packed(model, "bf16")(to_tensor(photo_small))
    after = model.state_dict()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())


def test_plain_path_is_the_eager_model(photo_small: np.ndarray) -> None:
    model = tiny()
    x = to_tensor(photo_small)
    fn = ModelRunner(model, CPU, torch.float32, engine="module")
    assert fn.engine == "module" and not fn.channels_last
    assert torch.equal(fn(x), eager(model, x))


def test_unsupported_precisions_are_refused() -> None:
    with pytest.raises(EsrganError, match="int8"):
        resolve_precision("int8", CPU)
    with pytest.raises(EsrganError, match=r"not RRDBNet on cpu fp16$"):  # as --precision spells it, not torch
        ModelRunner(tiny(), CPU, torch.float16, engine="packed")
    with pytest.raises(EsrganError, match="jit"):
        ModelRunner(tiny(), CPU, torch.float32, engine="jit")


@needs_onednn
def test_drop_in_forward_for_tiling(photo: np.ndarray) -> None:
    """The engine is a tiling Forward: tiled through it == tiled through the eager model (uint8 output)."""
    model = tiny()
    img = to_tensor(photo[:80, :96])[0]

    def plain(x: torch.Tensor) -> torch.Tensor:
        return eager(model, x)

    fast = packed(model, "fp32")
    want = upscale_tiled(plain, img, scale=4, tile=48, overlap=8)
    got = upscale_tiled(fast, img, scale=4, tile=48, overlap=8, batch=2)
    assert got.shape == want.shape == (320, 384, 3)
    assert int(np.abs(got.astype(int) - want).max()) <= 1  # rounding to uint8 may flip by one level


@needs_onednn
def test_real_x4plus_weights_bf16_and_fp32(photo: np.ndarray) -> None:
    from esrgan.zoo import load_model

    try:
        model = load_model("realesrgan-x4plus").eval()
    except ModelNotAvailableError as exc:
        pytest.skip(str(exc))
    x = to_tensor(photo[100:132, 150:182])  # face and helmet edge
    ref = eager(model, x)
    assert psnr(packed(model, "fp32")(x), ref) >= FP32_DB
    assert psnr(packed(model, "bf16")(x), ref) >= BF16_REAL_DB


@needs_onednn
@pytest.mark.skipif(
    os.environ.get("ESRGAN_TEST_COMPILE") != "1",
    reason="inductor compilation takes ~90 s even for a 1-block model on 2 shared cores; ESRGAN_TEST_COMPILE=1 runs it",
)
def test_compiled_path_matches_eager(photo_small: np.ndarray) -> None:
    """torch.compile without freezing (freezing gave wrong outputs for this network)."""
    model = tiny_rrdb()
    x = to_tensor(photo_small)
    fn = ModelRunner(model, CPU, torch.float32, engine="compiled")
    assert psnr(fn(x), eager(model, x)) >= FP32_DB


@needs_onednn
@pytest.mark.parametrize("arch", [{"scale": 4}, {"scale": 8}, {"scale": 1}], ids=str)
def test_tail_in_stripes_is_the_same_image(
    arch: dict[str, object], photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upsampling tail runs in row stripes with a halo to bound memory; the output must not change at all."""
    import esrgan.fast

    model = tiny(**arch)
    x = to_tensor(photo[40:117, 100:161])
    whole = packed(model, "fp32")(x)
    monkeypatch.setattr(esrgan.fast, "TAIL_BYTES", 1)  # smallest stripes (8 trunk rows): many stripe edges
    striped = packed(model, "fp32")(x)
    assert torch.equal(striped, whole)
    assert psnr(striped, eager(model, x)) >= FP32_DB


def test_precision_on_mps_follows_what_this_torch_can_autocast() -> None:
    """MPS autocasts fp16 from torch 2.5 and bf16 from 2.6: `auto` is fp16 where it can be and fp32 before (every
    tile failed in autocast on 2.3/2.4); an explicit bf16 that this torch cannot do is changed with a warning. Only
    the device type is read: no Mac needed."""
    import warnings as _warnings

    from esrgan.device import PrecisionWarning, resolve_precision

    mps = torch.device("mps")
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    assert resolve_precision("auto", mps) == (torch.float16 if version >= (2, 5) else torch.float32)
    assert resolve_precision("fp32", mps) == torch.float32
    with _warnings.catch_warnings(record=True) as seen:
        _warnings.simplefilter("always")
        got = resolve_precision("bf16", mps)
    expected = torch.bfloat16 if version >= (2, 6) else torch.float16 if version >= (2, 5) else torch.float32
    assert got == expected
    assert any(issubclass(w.category, PrecisionWarning) for w in seen) is (expected != torch.bfloat16)
