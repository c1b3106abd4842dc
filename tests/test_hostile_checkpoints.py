"""Hostile model files: mutated real files and crafted ones end in a clean load or one CheckpointError, nothing else.

The short Hypothesis run here is part of CI; `tools/fuzz_checkpoints.py` runs the same property much longer.
"""

from __future__ import annotations

import json
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import run_cli, tiny_rrdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from esrgan import checkpoints
from esrgan.checkpoints import load_weights, save_model, to_layout
from esrgan.errors import CheckpointError
from esrgan.generator import RRDB, RRDBConfig, RRDBNet
from esrgan.lpips import NETS, backbone_features, load_lpips
from esrgan.train import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint
from esrgan.upscale import Upscaler


def _seed_files(folder: Path) -> dict[str, bytes]:
    """Real model files of every container we read, from a tiny RRDBNet."""
    model = tiny_rrdb(scale=2)
    sd = model.state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": sd}, folder / "zip.pth")
    torch.save(sd, folder / "legacy.pth", _use_new_zipfile_serialization=False)
    save_model(folder / "ours.safetensors", model)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


SEEDS = _seed_files(Path(tempfile.mkdtemp(prefix="esrgan-fuzz-seeds-")))


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, val in ops:
        if not buf:
            break
        i = pos % len(buf)
        if kind == 0:  # flip a byte
            buf[i] ^= (val % 255) + 1
        elif kind == 1:  # truncate
            del buf[i:]
        elif kind == 2:  # insert bytes
            buf[i:i] = bytes([val % 256]) * (1 + val % 7)
        else:  # overwrite with a large little-endian integer (sizes, offsets, header lengths)
            buf[i : i + 8] = struct.pack("<Q", (val * 0x9E3779B97F4A7C15) % 2**64)
    return bytes(buf)


def _load_or_refuse(path: Path) -> None:
    try:
        load_weights(path)
    except CheckpointError as exc:
        msg = str(exc)
        assert path.name in msg, msg  # names the file
        assert "\n" not in msg, msg  # one line


@pytest.mark.parametrize("name", sorted(SEEDS))
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2**31), st.integers(0, 2**31)), min_size=1, max_size=4
    )
)
def test_mutated_model_files_load_or_fail_cleanly(
    tmp_path: Path, name: str, ops: list[tuple[int, int, int]]
) -> None:
    path = tmp_path / name
    path.write_bytes(_mutate(SEEDS[name], ops))
    _load_or_refuse(path)


def _safetensors_with_header(header: dict[str, object], body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@pytest.mark.parametrize(
    ("label", "content"),
    [
        ("huge-header-length", struct.pack("<Q", 2**62) + b"{}"),
        (
            "absurd-shape",
            _safetensors_with_header(
                {
                    "conv_first.weight": {
                        "dtype": "F32",
                        "shape": [2**20, 2**20, 3, 3],
                        "data_offsets": [0, 16],
                    }
                },
                b"\0" * 16,
            ),
        ),
        (
            "offsets-past-end",
            _safetensors_with_header(
                {"conv_first.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 2**40]}}, b"\0" * 8
            ),
        ),
        (
            "integer-weights",
            _safetensors_with_header(
                {"conv_first.weight": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8
            ),
        ),
    ],
)
def test_crafted_safetensors_are_refused(tmp_path: Path, label: str, content: bytes) -> None:
    path = tmp_path / f"{label}.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=label):
        load_weights(path)


def test_wrong_dtype_weights_are_refused(tmp_path: Path) -> None:
    sd = {
        k: (v * 100).to(torch.int32)
        for k, v in RRDBNet(num_feat=8, num_block=1, num_grow=4).state_dict().items()
    }
    torch.save(sd, tmp_path / "int.pth")
    with pytest.raises(CheckpointError, match="floating-point"):
        load_weights(tmp_path / "int.pth")


def test_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    """A .pth whose tensor record is a deflated 1 GB of zeros (a 1 MB file)."""
    src = tmp_path / "src.pth"
    torch.save({"w": torch.zeros(4)}, src)
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith("data/0"):
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(entry, "w", force_zip64=True) as fh:
                    chunk = b"\0" * 2**24
                    for _ in range(64):
                        fh.write(chunk)
            else:
                zout.writestr(info, zin.read(info.filename))
    assert bomb.stat().st_size < 10 * 2**20
    with pytest.raises(CheckpointError, match="compressed"):
        load_weights(bomb)


# --- architecture inference: a file is only as deep as the blocks it holds ----------------------------------------
def _one_line_naming(exc: pytest.ExceptionInfo[BaseException], path: Path) -> str:
    msg = str(exc.value)
    assert str(path) in msg, msg
    assert "\n" not in msg, msg
    return msg


@pytest.fixture
def forbid_building(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it once the test's files are written: from then on, constructing any RRDB block (on any device, the meta
    one included) fails the test. The checks must refuse a bad file from its keys and shapes alone."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an RRDB block was built while loading a bad file")

    return lambda: monkeypatch.setattr(RRDB, "__init__", refuse)


@pytest.mark.parametrize(
    ("layout", "stray", "expected"),
    [
        ("basicsr", "body.100000.rdb1.conv1.weight", r"body\.100000 but only body\.0-1: not an RRDBNet"),
        ("esrgan", "RRDB_trunk.100000.RDB1.conv1.weight", r"RRDB_trunk\.100000 but only RRDB_trunk\.0-1"),
        (
            "old",
            "model.1.sub.100000.RDB1.conv1.0.weight",
            r"model\.1\.sub\.100000 but only model\.1\.sub\.0-1",
        ),
    ],
)
def test_one_stray_block_key_is_refused_before_any_model_is_built(
    tmp_path: Path, forbid_building: Callable[[], None], layout: str, stray: str, expected: str
) -> None:
    """The audit's 69 KB file: a real 2-block model plus one key claiming block 100000. The old inference built
    (and checked against) a 100,001-block model: minutes of CPU and ~2 GB before "missing key"."""
    model = tiny_rrdb(num_block=2)
    sd = to_layout(model.config, model.state_dict(), layout)
    sd[stray] = torch.zeros(1)
    path = tmp_path / f"{layout}.pth"
    torch.save(sd, path)
    forbid_building()
    with pytest.raises(CheckpointError, match=expected) as info:
        load_weights(path)
    _one_line_naming(info, path)


def test_a_missing_block_is_named(tmp_path: Path, forbid_building: Callable[[], None]) -> None:
    sd = {k: v for k, v in tiny_rrdb(num_block=3).state_dict().items() if not k.startswith("body.1.")}
    torch.save({"params_ema": sd}, tmp_path / "gap.pth")
    forbid_building()
    with pytest.raises(CheckpointError, match=r"body\.2 but only body\.0-0") as info:
        load_weights(tmp_path / "gap.pth")
    _one_line_naming(info, tmp_path / "gap.pth")


def test_block_index_too_long_for_int_is_an_unexpected_key(tmp_path: Path) -> None:
    """Python refuses int() of a string of over 4300 digits (ValueError, a traceback before): the key is just not a
    block key, and the message shows a short prefix of it."""
    sd = tiny_rrdb().state_dict()
    sd["body." + "9" * 5000 + ".rdb1.conv1.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "digits.pth")
    with pytest.raises(CheckpointError, match=r"unexpected key 'body\.999") as info:
        load_weights(tmp_path / "digits.pth")
    assert len(_one_line_naming(info, tmp_path / "digits.pth")) < 400


def test_thousands_of_real_blocks_are_refused_unbuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that does hold every key of N tiny blocks is refused past MAX_BLOCKS (lowered here to 2 so that the
    file stays small): building costs ~5 ms of Python per block, whatever the file's size."""
    monkeypatch.setattr(checkpoints, "MAX_BLOCKS", 2)
    torch.save(tiny_rrdb(num_block=3).state_dict(), tmp_path / "deep.pth")
    with pytest.raises(CheckpointError, match=r"3 blocks .*more than the 2") as info:
        load_weights(tmp_path / "deep.pth")
    _one_line_naming(info, tmp_path / "deep.pth")
    torch.save(tiny_rrdb(num_block=2).state_dict(), tmp_path / "ok.pth")
    assert load_weights(tmp_path / "ok.pth").config.num_block == 2


@pytest.mark.parametrize(
    "config",
    [
        RRDBConfig(num_feat=8, num_block=2, num_grow=4, scale=4),
        RRDBConfig(num_in_ch=1, num_out_ch=1, num_feat=5, num_block=1, num_grow=3, scale=1),
        RRDBConfig(num_feat=6, num_block=1, num_grow=2, scale=2, pixel_unshuffle=False),
        RRDBConfig(num_feat=4, num_block=3, num_grow=2, scale=8),
    ],
)
def test_expected_shapes_are_the_models_state_dict(config: RRDBConfig) -> None:
    """check_state_dict works from expected_shapes instead of a built model: they must agree key for key, in order."""
    with torch.device("meta"):
        reference = {k: tuple(v.shape) for k, v in RRDBNet.from_config(config).state_dict().items()}
    assert list(checkpoints.expected_shapes(config).items()) == list(reference.items())


def _with_config_metadata(tmp_path: Path, name: str, **changes: object) -> Path:
    """Our own file of a real model whose esrgan.config metadata is changed as given."""
    src = save_model(tmp_path / "src.safetensors", tiny_rrdb())
    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    meta["esrgan.config"] = json.dumps({**json.loads(meta["esrgan.config"]), **changes})
    path = tmp_path / name
    path.write_bytes(safetensors_save(tensors, metadata=meta))
    return path


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"num_block": 100000}, r"metadata says .*num_block=100000.* but the tensors say .*num_block=1"),
        ({"image_residual": "yes"}, r"image_residual is 'yes', not bool"),
        ({"num_feat": "8"}, r"num_feat is '8', not int"),
        ({"num_block": True}, r"num_block is True, not int"),
        ({"depth": 3}, r"unknown field 'depth'"),
    ],
)
def test_our_metadata_is_checked_against_the_tensors_unbuilt(
    tmp_path: Path, forbid_building: Callable[[], None], changes: dict[str, object], expected: str
) -> None:
    """The metadata is as hostile as the tensors: a claimed architecture that the tensors do not have, or a value
    of the wrong type (a string "yes" used to pass as a true image_residual), is refused before anything is built."""
    path = _with_config_metadata(tmp_path, "meta.safetensors", **changes)
    forbid_building()
    with pytest.raises(CheckpointError, match=expected) as info:
        load_weights(path)
    _one_line_naming(info, path)


# --- channel counts the image pipeline cannot feed -------------------------------------------------------------------
@pytest.mark.parametrize(("num_in", "num_out"), [(4, 4), (2, 2), (1, 3), (3, 1)])
def test_upscaler_refuses_models_it_cannot_feed_at_load(tmp_path: Path, num_in: int, num_out: int) -> None:
    """An image reaches the model as RGB (an RGB model) or one plane at a time (a grey model, 1 in and 1 out), and
    its output is the image's colour: a 4-channel model used to load and then fail on every image after the full
    compute (3 in, 1 out: turned colour images grey)."""
    model = tiny_rrdb(num_in_ch=num_in, num_out_ch=num_out)
    path = tmp_path / f"ch{num_in}_{num_out}.pth"
    torch.save(model.state_dict(), path)
    expected = (
        rf"{num_in} input and {num_out} output channels.*RGB models \(3 channels in and 3 out\) and grey"
    )
    with pytest.raises(CheckpointError, match=expected) as info:
        Upscaler.from_file(path, device="cpu")
    _one_line_naming(info, path)
    with pytest.raises(CheckpointError, match=expected) as info:
        Upscaler.from_pretrained(str(path), device="cpu")
    _one_line_naming(info, path)
    with pytest.raises(CheckpointError, match=expected):
        Upscaler(model, device="cpu")


def test_cli_refuses_a_four_channel_model_in_one_line(tmp_path: Path) -> None:
    model_path = tmp_path / "rgba-model.pth"
    torch.save(tiny_rrdb(num_in_ch=4, num_out_ch=4).state_dict(), model_path)
    Image.new("RGB", (16, 12), (200, 40, 90)).save(tmp_path / "in.png")
    r = run_cli(
        "upscale", tmp_path / "in.png", "-o", tmp_path / "out.png", "--model", model_path, cwd=tmp_path
    )
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        f"esrgan: error: {model_path}: a model with 4 input and 4 output channels; esrgan upscales with RGB "
        "models (3 channels in and 3 out) and grey ones (1 in and 1 out)"
    ]
    assert not (tmp_path / "out.png").exists()


# --- LPIPS weights and training checkpoints go through the same safe reader ------------------------------------------
class _CreatesMarker:
    """Unpickling this runs code: exec() creates the marker file (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _malicious(path: Path, marker: Path, payload: dict[str, object]) -> Path:
    """A real torch.save file holding the code-running object beside plain values; checks that it is live."""
    torch.save({**payload, "x": _CreatesMarker(marker)}, path)
    probe = marker.with_name("probe-" + marker.name)
    torch.save(_CreatesMarker(probe), path.with_name("probe.pth"))
    torch.load(path.with_name("probe.pth"), weights_only=False)  # unsafe on purpose: proves the payload works
    assert probe.exists()
    return path


def _zip_bomb(src: Path, dest: Path, megabytes: int = 64) -> Path:
    """src with its first tensor record replaced by a deflated run of zeros (a small file that inflates hugely)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        done = False
        for info in zin.infolist():
            if not done and "/data/" in info.filename:
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(entry, "w", force_zip64=True) as fh:
                    for _ in range(megabytes):
                        fh.write(b"\0" * 2**20)
                done = True
            else:
                zout.writestr(info, zin.read(info.filename))
    assert done and dest.stat().st_size < megabytes * 2**20 // 10
    return dest


def _refused_in_one_line(call: Callable[[], object], path: Path, expected: str) -> str:
    with pytest.raises(CheckpointError, match=expected) as info:
        call()
    msg = _one_line_naming(info, path)
    assert "weights_only=False" not in msg and "weights_only set to False" not in msg, msg
    return msg


@pytest.fixture
def alex_files(tmp_path: Path) -> tuple[Path, Path]:
    """Real torchvision-format AlexNet features and LPIPS lin-layer files (random weights, the published shapes)."""
    spec = NETS["alex"]
    torch.manual_seed(0)
    backbone = {f"features.{k}": v for k, v in backbone_features(spec).state_dict().items()}
    torch.save(backbone, tmp_path / "alexnet.pth")
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(spec.channels)}
    torch.save(lin, tmp_path / "alex.pth")
    return tmp_path / "alexnet.pth", tmp_path / "alex.pth"


@pytest.mark.parametrize("which", ["backbone", "lin"])
def test_lpips_weights_with_code_are_refused_unrun(
    tmp_path: Path, alex_files: tuple[Path, Path], which: str
) -> None:
    marker = tmp_path / "pwned"
    good_backbone, good_lin = alex_files
    bad = _malicious(tmp_path / f"evil-{which}.pth", marker, {"features.0.weight": torch.zeros(1)})
    backbone, lin = (bad, good_lin) if which == "backbone" else (good_backbone, bad)
    msg = _refused_in_one_line(
        lambda: load_lpips("alex", backbone_weights=backbone, lin_weights=lin),
        bad,
        r"cannot read as .*: refused: a pickle that refers to the Python object `(builtins\.)?exec`",
    )
    assert "published URL" in msg
    assert not marker.exists()
    assert isinstance(
        load_lpips("alex", backbone_weights=good_backbone, lin_weights=good_lin), torch.nn.Module
    )


def test_lpips_zip_bomb_and_oversized_files_are_refused_unread(
    tmp_path: Path, alex_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone, lin = alex_files
    bomb = _zip_bomb(lin, tmp_path / "bomb.pth")
    _refused_in_one_line(
        lambda: load_lpips("alex", backbone_weights=backbone, lin_weights=bomb), bomb, "compressed"
    )
    monkeypatch.setattr(checkpoints, "MAX_FILE_BYTES", 1000)  # the lin file is a few KB, the backbone 10 MB
    _refused_in_one_line(
        lambda: load_lpips("alex", backbone_weights=backbone, lin_weights=lin), backbone, "larger than"
    )


def _training_state() -> dict[str, object]:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": 3,
        "generator": {"w": torch.ones(2)},
    }


def test_training_checkpoint_with_code_is_refused_unrun(tmp_path: Path) -> None:
    """What `esrgan train --resume X` reads: a real checkpoint with a code-running object among its values."""
    marker = tmp_path / "pwned"
    bad = _malicious(tmp_path / "step_3.ckpt", marker, _training_state())
    msg = _refused_in_one_line(
        lambda: load_checkpoint(bad),
        bad,
        r"refused: a pickle that refers to the Python object `(builtins\.)?exec`",
    )
    assert "not written by" in msg
    assert not marker.exists()


def test_training_checkpoint_bombs_and_crafted_values_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.save(_training_state(), tmp_path / "good.ckpt")
    assert load_checkpoint(tmp_path / "good.ckpt")["step"] == 3
    bomb = _zip_bomb(tmp_path / "good.ckpt", tmp_path / "bomb.ckpt")
    _refused_in_one_line(lambda: load_checkpoint(bomb), bomb, "compressed")
    torch.save({**_training_state(), "version": torch.ones(3)}, tmp_path / "tensor-version.ckpt")
    _refused_in_one_line(
        lambda: load_checkpoint(tmp_path / "tensor-version.ckpt"),
        tmp_path / "tensor-version.ckpt",
        "checkpoint version a Tensor is not 1",
    )
    torch.save([1, 2], tmp_path / "list.ckpt")
    _refused_in_one_line(
        lambda: load_checkpoint(tmp_path / "list.ckpt"), tmp_path / "list.ckpt", "holds a list"
    )
    monkeypatch.setattr(checkpoints, "MAX_CHECKPOINT_BYTES", 100)
    _refused_in_one_line(
        lambda: load_checkpoint(tmp_path / "good.ckpt"), tmp_path / "good.ckpt", "larger than"
    )
