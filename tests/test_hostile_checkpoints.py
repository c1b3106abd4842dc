"""Hostile model files: mutated real files and crafted ones end in a clean load or one CheckpointError, nothing else.

The short Hypothesis run here is part of CI; `tools/fuzz_checkpoints.py` runs the same property much longer.
"""

from __future__ import annotations

import json
import struct
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_rrdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esrgan.checkpoints import load_weights, save_model
from esrgan.errors import CheckpointError
from esrgan.generator import RRDBNet


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
