"""esrgan.pipeline: the overlapped batch (reader -> model -> writers) on real photos, its per-file errors, skip and
Ctrl-C behaviour, the PNG compression level, and torchrun sharding with two gloo processes on the CPU."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo_preserving_rrdb, run_cli
from PIL import Image

from esrgan.checkpoints import save_model
from esrgan.device import ModelRunner
from esrgan.generator import RRDBNet
from esrgan.imageio import ImageData, list_images, read_image, write_image
from esrgan.pipeline import BatchResult, Job, collect_inputs, plan_jobs, upscale_files
from esrgan.upscale import Upscaler

pytestmark = pytest.mark.usefixtures("one_thread")


def photo_folder(root: Path, photo: np.ndarray, n: int, *, size: int = 40) -> Path:
    """n crops of the photo at different places, PNG and JPEG alternately."""
    root.mkdir(parents=True)
    for k in range(n):
        top, left = (37 * k) % (512 - size), (91 * k) % (512 - size)
        crop = Image.fromarray(photo[top : top + size, left : left + size])
        if k % 2 == 0:
            crop.save(root / f"p{k:02d}.png")
        else:
            crop.save(root / f"p{k:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", photo_preserving_rrdb(0))


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("format", ["png", "jpg"])
def test_overlapped_batch_writes_the_same_files_as_one_at_a_time(
    tmp_path: Path, photo: np.ndarray, format: str
) -> None:
    folder = photo_folder(tmp_path / "in", photo, 7)
    up = Upscaler(photo_preserving_rrdb(0), device="cpu", precision="fp32", tile=0)
    sources, problems = collect_inputs([str(folder)])
    assert not problems and len(sources) == 7
    results = {}
    for overlap in (False, True):
        out = tmp_path / f"out-{overlap}"
        jobs = plan_jobs(sources, out, format=format, scale=up.scale)
        result = upscale_files(up, jobs, format=format, progress="quiet", overlap=overlap, writers=3)
        assert (len(result.written), len(result.skipped), len(result.failed)) == (7, 0, 0)
        assert [j.src.name for j in result.written] == sorted(p.name for p in folder.iterdir())  # batch order
        assert result.precisions == {"fp32": 7} and result.device == "cpu"
        results[overlap] = outputs(out)
    assert results[True] == results[False]  # byte for byte
    first = read_image(tmp_path / "out-True" / f"p00_x4.{format}")
    assert (first.height, first.width) == (160, 160)


def test_bad_files_are_one_line_each_and_the_overlapped_batch_goes_on(
    tmp_path: Path, photo: np.ndarray, model_file: Path
) -> None:
    folder = photo_folder(tmp_path / "in", photo, 6)
    (folder / "p02.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # truncated: fails in the reader
    (folder / "p05.jpg").write_bytes(
        (folder / "p04.png").read_bytes()[:300]
    )  # cut short: fails in the reader
    (folder / "sub").mkdir()
    (folder / "p03.jpg").rename(folder / "sub" / "p03.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_bytes(b"")  # a file where p03's output folder goes: fails in a writer
    r = run_cli(
        "upscale", folder, "-o", out, "--recursive", "--model", model_file, "--device", "cpu", cwd=tmp_path
    )
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("esrgan: error:")]
    assert len(errors) == 3, r.stderr
    for name in ("p02.png", "p03.jpg", "p05.jpg"):
        assert sum(name in line for line in errors) == 1, errors
    assert "sub is a file, not a folder" in next(line for line in errors if "p03.jpg" in line)
    assert sorted(p.name for p in out.iterdir()) == ["p00_x4.png", "p01_x4.jpg", "p04_x4.png", "sub"]
    assert "3 upscaled, 0 skipped (output exists), 3 failed" in r.stdout
    assert not list(out.glob(".*.part"))


def test_png_compression_level(tmp_path: Path, photo: np.ndarray, model_file: Path) -> None:
    """Levels change the size, never the pixels; 16-bit PNGs follow the level too; out of range is refused."""
    folder = photo_folder(tmp_path / "in", photo, 1, size=96)
    sizes = {}
    for level in ("0", "9"):
        out = tmp_path / f"out{level}"
        r = run_cli("upscale", folder, "-o", out, "--model", model_file, "--device", "cpu",
                    "--png-compression", level, cwd=tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr
        sizes[level] = (out / "p00_x4.png").stat().st_size
    assert sizes["9"] < sizes["0"] / 2  # level 0 stores: 384*384*3 bytes and a little more
    assert sizes["0"] > 384 * 384 * 3
    a, b = read_image(tmp_path / "out0" / "p00_x4.png"), read_image(tmp_path / "out9" / "p00_x4.png")
    assert np.array_equal(a.pixels, b.pixels)
    deep = ImageData(pixels=photo[:64, :64].astype(np.uint16) * 257, bit_depth=16)
    small, big = write_image(tmp_path / "d9.png", deep, png_compression=9), tmp_path / "d0.png"
    write_image(big, deep, png_compression=0)
    assert small.stat().st_size < big.stat().st_size
    assert np.array_equal(read_image(small).pixels, read_image(big).pixels)
    r = run_cli("upscale", folder, "--model", model_file, "--png-compression", "10", cwd=tmp_path)
    assert r.returncode == 2 and "--png-compression" in r.stderr


def _sigint_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT handled by default and not blocked, as a command started from a terminal
    has it (a signal ignored or blocked in the test process would be inherited: the full CI suite saw the CLI ignore
    Ctrl-C, exit 0, where the test alone passed)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def _signal_state(pid: int) -> str:
    """The child's blocked / ignored / caught signal masks (Linux), for the failure message."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return "no /proc status"
    return ", ".join(x for x in lines if x.startswith(("SigBlk", "SigIgn", "SigCgt")))


def test_ctrl_c_leaves_whole_outputs_only_and_a_rerun_does_the_rest(
    tmp_path: Path, photo: np.ndarray, model_file: Path
) -> None:
    # 192-pixel inputs at PNG level 9: the batch lasts seconds after its first file on any machine, so the
    # Ctrl-C lands mid-batch (with 128 pixels a busy CI run once exited 0: the batch was over before it)
    folder = photo_folder(tmp_path / "in", photo, 24, size=192)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "esrgan.cli", "upscale", str(folder), "-o", str(out), "--model",
               str(model_file), "--device", "cpu", "--tile", "32", "--png-compression", "9"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_in_a_terminal)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:  # the first finished file: the batch is under way
        if "->" in line:
            break
    signals = _signal_state(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, f"{signals}; stderr: {stderr}"
    assert "esrgan: error: interrupted" in stderr
    done = sorted(p.name for p in out.iterdir())
    assert 1 <= len(done) < 24
    assert not [n for n in done if n.endswith(".part")]  # no temporary file stays
    for name in done:  # every output there is whole
        image = read_image(out / name)
        assert (image.height, image.width) == (768, 768)
    mtimes = {n: (out / n).stat().st_mtime_ns for n in done}
    r = run_cli(*command[3:], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{24 - len(done)} upscaled, {len(done)} skipped (output exists), 0 failed" in r.stdout
    assert {n: (out / n).stat().st_mtime_ns for n in done} == mtimes


def _until_a_writer_is_in_a_file(proc: subprocess.Popen[str], out: Path) -> None:
    """Wait until an output's temporary file is there (a writer is in the middle of it), or the process has ended."""
    while proc.poll() is None and not list(out.glob(".*.part")):
        time.sleep(0.005)


@pytest.mark.parametrize(
    ("signals", "status", "said"),
    [([signal.SIGTERM], 143, "terminated"), ([signal.SIGINT, signal.SIGTERM], 130, "interrupted")],
    ids=["sigterm", "sigint-then-sigterm"],
)
def test_sigterm_stops_a_batch_as_ctrl_c_does_and_a_second_signal_waits_for_the_writers(
    tmp_path: Path,
    photo: np.ndarray,
    model_file: Path,
    signals: list[signal.Signals],
    status: int,
    said: str,
) -> None:
    """SIGTERM (`timeout`, systemd, a scheduler, torchrun's agent) killed `esrgan upscale` at once (status -15): the
    outputs being written stayed as hidden `.part` files. One Ctrl-C under torchrun can reach a rank as SIGINT and
    then SIGTERM (its agent sends SIGTERM when it gets a second signal), which did the same. Now SIGTERM stops the
    batch as Ctrl-C does (status 143), and a second signal soon after the first is the same request. The signals
    come while a writer is in the middle of a file."""
    folder = photo_folder(tmp_path / "in", photo, 8, size=256)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "esrgan.cli", "upscale", str(folder), "-o", str(out), "--model",
               str(model_file), "--device", "cpu", "--tile", "32", "--png-compression", "9"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_in_a_terminal)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:  # the first finished file: the batch is under way
        if "->" in line:
            break
    _until_a_writer_is_in_a_file(proc, out)
    for sig in signals:
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == status, stderr
    assert f"esrgan: error: {said}" in stderr
    done = sorted(p.name for p in out.iterdir())
    assert 1 <= len(done) < 8
    assert not [n for n in done if n.endswith(".part")]  # no temporary file stays
    for name in done:  # every output there is whole
        image = read_image(out / name)
        assert (image.height, image.width) == (1024, 1024)
    if len(signals) == 1:
        r = run_cli(*command[3:], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert f"{8 - len(done)} upscaled, {len(done)} skipped (output exists), 0 failed" in r.stdout


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_after_the_files_being_written(
    tmp_path: Path, photo: np.ndarray, model_file: Path
) -> None:
    """SIGTERM to torchrun (a scheduler's stop, `timeout`; a Ctrl-C that reaches it twice ends the same way): its
    agent passes SIGTERM on to every rank, which died at once, the files being written left as `.part` files. Now
    each rank stops as for Ctrl-C and says so; the outputs there are whole."""
    folder = photo_folder(tmp_path / "in", photo, 12, size=256)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "esrgan.cli", "upscale", str(folder), "-o", str(out), "--model", str(model_file),
               "--device", "cpu", "--tile", "32", "--png-compression", "9"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if "->" in line:
            break
    _until_a_writer_is_in_a_file(proc, out)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    said = [line for line in stderr.splitlines() if line.startswith("esrgan: error:")]
    assert said == ["esrgan: error: terminated"] * 2, stderr  # each rank
    done = sorted(p.name for p in out.iterdir())
    assert 1 <= len(done) < 12
    assert not [n for n in done if n.endswith(".part")]
    for name in done:
        image = read_image(out / name)
        assert (image.height, image.width) == (1024, 1024)


def test_sigterm_to_a_rank_waiting_for_the_others_ends_it_at_once(tmp_path: Path, photo: np.ndarray) -> None:
    """A rank that has done its part waits in the end-of-batch gather (gloo, in C++), where a Python signal handler
    cannot run: since the batch handled SIGTERM itself, a SIGTERM to that rank (a scheduler stopping one process)
    waited until every other rank had done all its work, then reported the finished batch as failed. Its files are
    whole there: SIGTERM ends it at once, and torchrun then stops the other rank, whose large files are not all
    done yet."""
    torch.manual_seed(0)
    model = save_model(tmp_path / "slow.safetensors", RRDBNet(num_feat=32, num_block=3, num_grow=16, scale=4))
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(4):  # taken by index: rank 0 the two small ones, rank 1 the two large ones
        side = 16 if k % 2 == 0 else 384
        Image.fromarray(np.ascontiguousarray(photo[:side, :side])).save(folder / f"a{k}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "esrgan.cli", "upscale", str(folder), "-o", str(out), "--model", str(model),
               "--device", "cpu", "--precision", "fp32", "--tile", "384"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        while not ((out / "a0_x4.png").exists() and (out / "a2_x4.png").exists()):
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.05)
        time.sleep(0.5)  # rank 0 is in the gather
        ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        rank0 = [pid for pid in ranks if b"\0RANK=0\0" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()]
        assert len(rank0) == 1, ranks
        os.kill(int(rank0[0]), signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode != 0
    done = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert done[:2] == ["a0_x4.png", "a2_x4.png"] and len(done) < 4, (done, stderr[-2000:])


def test_a_rank_result_crosses_as_json_and_merges_as_the_original() -> None:
    """Ranks exchange their results as JSON text (not pickles): every field comes back, names in any script."""
    part = BatchResult(
        written=[Job(Path("in/été.png"), Path("out/été_x4.png"))],
        skipped=[Job(Path("in/b.jpg"), Path("out/b_x4.jpg"))],
        leftovers=[(Path("out/.c_x4.png.tmp"), 1234)],
        device="cuda:1",
        precisions={"fp16": 1},
        failed=[("in/d.png", "truncated PNG")],
        seconds=2.5,
    )
    back = BatchResult.from_json(part.to_json())
    assert back == part
    total = BatchResult()
    total.merge(back)
    assert (
        total.summary()
        == part.summary()
        == ("1 upscaled, 1 skipped (output exists), 1 failed: in/d.png; computed on cuda:1 in fp16")
    )


@pytest.mark.slow
def test_torchrun_two_ranks_share_the_batch_and_print_one_summary(
    tmp_path: Path, photo: np.ndarray, model_file: Path
) -> None:
    """`torchrun --nproc-per-node 2 -m esrgan.cli upscale DIR -o OUT` with gloo on the CPU: every file once, by the
    rank of its index, one summary; a rerun after removing two outputs does only those two."""
    folder = photo_folder(tmp_path / "in", photo, 9)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "esrgan.cli", "upscale", str(folder), "-o", str(out), "--model", str(model_file),
               "--device", "cpu", "--precision", "fp32"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in folder.iterdir())
    assert sorted(p.name for p in out.iterdir()) == [n.replace(".", "_x4.") for n in names]
    for rank in (0, 1):  # index % 2 == rank, in the sorted order every rank planned
        mine = [line for line in r.stdout.splitlines() if line.startswith(f"[rank {rank}/2] ")]
        assert sorted(Path(line.split()[3]).name for line in mine) == names[rank::2], r.stdout
    summaries = [line for line in r.stdout.splitlines() if line.startswith("esrgan upscale:")]
    assert summaries == [
        "esrgan upscale: 9 upscaled, 0 skipped (output exists), 0 failed; computed on cpu in fp32"
    ]
    (out / "p03_x4.jpg").unlink()
    (out / "p04_x4.png").unlink()
    r = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    summaries = [line for line in r.stdout.splitlines() if line.startswith("esrgan upscale:")]
    assert summaries == [
        "esrgan upscale: 2 upscaled, 7 skipped (output exists), 0 failed; computed on cpu in fp32"
    ]
    assert sorted(p.name for p in out.iterdir()) == [n.replace(".", "_x4.") for n in names]


def torchrun(
    *args: str | Path, cwd: Path, script: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc-per-node 2 -m esrgan.cli ARGS` (or `SCRIPT ARGS`): two gloo ranks on the CPU,
    one thread each."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *(["-m", "esrgan.cli"] if script is None else [str(script)]), *map(str, args)]  # fmt: skip
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=environ)


_LISTS_LATE = """
import os, sys, time
import esrgan.pipeline
from esrgan.cli import main
if os.environ["RANK"] == "1":  # rank 1 lists the inputs only once the file GO exists: it started later
    listing = esrgan.pipeline.collect_inputs
    def late(*args, **kwargs):
        while not os.path.exists(os.environ["GO"]):
            time.sleep(0.05)
        return listing(*args, **kwargs)
    esrgan.pipeline.collect_inputs = late
sys.exit(main())
"""


@pytest.mark.slow
def test_torchrun_ranks_take_their_part_of_rank_0s_list_when_a_file_arrives_between_listings(
    tmp_path: Path, photo: np.ndarray, model_file: Path
) -> None:
    """A file arriving while the ranks list the folder (a folder being filled; a rank that starts later on another
    machine): each rank took every other file of its own list, so with rank 1 listing after a new p00a.png came,
    p01, p03 and p05 were done by no rank, p02 and p04 by both, and the summary said all went well (exit 0). Now
    rank 0 lists and every rank takes its part of that one list. Rank 1's late listing is made sure by a wrapper
    (_LISTS_LATE) that holds it until rank 0 has written its first output and the new file is there."""
    folder = photo_folder(tmp_path / "in", photo, 6)
    out, go = tmp_path / "out", tmp_path / "go"
    script = tmp_path / "lists_late.py"
    script.write_text(_LISTS_LATE)
    finished = threading.Event()

    def arrive() -> None:  # once rank 0 has begun: a new file that sorts second, then rank 1 may list
        while not (out / "p00_x4.png").exists() and not finished.wait(0.05):
            pass
        Image.fromarray(photo[300:340, 300:340]).save(folder / "p00a.png")
        go.touch()

    thread = threading.Thread(target=arrive)
    thread.start()
    try:
        r = torchrun("upscale", folder, "-o", out, "--model", model_file, "--device", "cpu",
                     cwd=tmp_path, script=script, env={"GO": str(go)})  # fmt: skip
    finally:
        finished.set()
        thread.join()
    assert r.returncode == 0, r.stderr
    names = [f"p{k:02d}" for k in range(6)]  # p00a.png came after the listing: the next run does it
    assert sorted(p.stem for p in out.iterdir()) == [f"{n}_x4" for n in names]
    done = [Path(line.split()[3]).stem for line in r.stdout.splitlines() if " -> " in line]
    assert sorted(done) == names, r.stdout  # each once
    assert "esrgan upscale: 6 upscaled, 0 skipped (output exists), 0 failed" in r.stdout


@pytest.mark.slow
def test_torchrun_finds_two_inputs_with_one_output_on_different_ranks(
    tmp_path: Path, photo: np.ndarray, model_file: Path
) -> None:
    """d1/a.png and d2/a.png into one folder: one process says that the second's output is the first's and fails
    it; under torchrun each rank checked only its own files, so rank 1 skipped d2/a.png as "exists" (exit 0), and
    with --overwrite the rank that wrote last won. Now rank 0 checks the whole list, as one process does."""
    crops = {"d1": photo[100:140, 200:240], "d2": np.zeros((40, 40, 3), np.uint8)}
    for folder, crop in crops.items():
        (tmp_path / folder).mkdir()
        Image.fromarray(crop).save(tmp_path / folder / "a.png")
    out = tmp_path / "out"
    for extra in ((), ("--overwrite",)):
        r = torchrun("upscale", "d1", "d2", "-o", "out", "--model", model_file, "--device", "cpu", *extra,
                     cwd=tmp_path)  # fmt: skip
        assert r.returncode == 1, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("esrgan: error:")]
        assert errors == [
            "esrgan: error: d2/a.png: output out/a_x4.png is also the output of d1/a.png; "
            "use a --name with more fields"
        ]
        assert "esrgan upscale: 1 upscaled, 0 skipped (output exists), 1 failed: d2/a.png" in r.stdout
        assert sorted(p.name for p in out.iterdir()) == ["a_x4.png"]
        upscaled = read_image(out / "a_x4.png").pixels[::4, ::4].astype(float)
        distance = {folder: np.abs(upscaled - crop).mean() for folder, crop in crops.items()}
        assert distance["d1"] < distance["d2"] / 2, distance  # d1's picture, not the black d2's


@pytest.mark.slow
def test_torchrun_says_what_stops_a_batch_before_its_work_once(
    tmp_path: Path, photo: np.ndarray, model_file: Path
) -> None:
    """Nothing to upscale, or -o naming a file for two inputs: every rank said so (the lines twice over two ranks);
    now rank 0 alone, and the exit status is still 1."""
    (tmp_path / "empty").mkdir()
    folder = photo_folder(tmp_path / "in", photo, 2)
    for args, said in (
        (("empty", "-o", "out"), ["empty: folder has no images (use --recursive)", "nothing to upscale"]),
        ((folder, "-o", "one.png"), ["one.png: -o names a file but there are 2 inputs; give a folder"]),
    ):
        r = torchrun("upscale", *args, "--model", model_file, "--device", "cpu", cwd=tmp_path)
        assert r.returncode == 1
        errors = [line for line in r.stderr.splitlines() if line.startswith("esrgan: error:")]
        assert errors == [f"esrgan: error: {line}" for line in said], r.stderr
        assert not (tmp_path / "out").exists() and not (tmp_path / "one.png").exists()


def _children(pid: int) -> list[int]:
    """The processes whose parent is pid (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_a_rank_whose_partner_dies_says_so_in_one_line(
    tmp_path: Path, photo: np.ndarray, model_file: Path
) -> None:
    """Two machines (two torchrun agents, --nnodes 2, one rank each): rank 1 has done its small files and waits for
    rank 0 at the end when rank 0 is killed. It printed gloo's traceback ("RuntimeError: ... Connection reset by
    peer ... GLHF!"); now one line that says what happened, what is written, and to rerun."""
    names = []
    for k in range(6):  # big files at even places (rank 0's), small ones at odd places (rank 1's)
        name, size = (f"big{k}.png", 256) if k % 2 == 0 else (f"small{k}.png", 16)
        Image.fromarray(photo[40 * k : 40 * k + size, :size]).save(tmp_path / name)
        names.append(name)
    with socket.socket() as sock:  # a free port for rank 0's agent to serve the rendezvous on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "esrgan.cli", "upscale", *names,
               "-o", "out", "--model", str(model_file), "--device", "cpu", "--tile", "32",
               "--png-compression", "9"]  # fmt: skip
    agents = []
    for node in (0, 1):
        agents.append(subprocess.Popen([*command[:3], "--node-rank", str(node), *command[3:]], cwd=tmp_path,
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    mine = [tmp_path / "out" / f"small{k}_x4.png" for k in (1, 3, 5)]
    # rank 1 has written its files and waits for rank 0 (or is about to)
    while agents[0].poll() is None and not all(p.exists() for p in mine):
        time.sleep(0.05)
    for worker in _children(agents[0].pid):
        os.kill(worker, signal.SIGKILL)
    said = [agent.communicate(timeout=300)[0] for agent in agents]
    assert all(agent.returncode != 0 for agent in agents)
    assert (
        "esrgan: error: [rank 1/2] another rank stopped before the end; this rank's 3 files are written; "
        "rerun to finish" in said[1].splitlines()
    ), said[1]
    assert "RuntimeError" not in said[1] and "Connection reset" not in said[1], said[1]


def test_out_of_memory_is_told_from_real_allocation_failures() -> None:
    """What makes one file fail alone instead of ending the batch: torch's CPU allocator raises a plain RuntimeError
    ("DefaultCPUAllocator: can't allocate memory"), numpy a MemoryError; other RuntimeErrors are bugs and still
    stop the batch. (End to end under a real RLIMIT_AS: tests/test_faults.py.)"""
    import torch

    from esrgan.pipeline import out_of_memory

    with pytest.raises(RuntimeError) as by_torch:
        torch.empty(2**50, dtype=torch.uint8)  # 1 PiB: more than any address space
    with pytest.raises(MemoryError) as by_numpy:
        np.empty(2**50, dtype=np.uint8)
    with pytest.raises(RuntimeError) as mismatch:
        torch.nn.functional.conv2d(torch.zeros(1, 3, 4, 4), torch.zeros(8, 4, 3, 3))
    assert out_of_memory(by_torch.value) and out_of_memory(by_numpy.value)
    assert not out_of_memory(mismatch.value) and not out_of_memory(ValueError("out of memory"))


def test_recursive_listing_does_not_follow_links_to_folders(tmp_path: Path, photo: np.ndarray) -> None:
    """The listing walks folders itself (to report unreadable ones): like pathlib's rglob it must not follow a link
    to a folder, which may loop (a link to the parent) or leave the tree."""
    folder = photo_folder(tmp_path / "in", photo, 1)
    (folder / "sub").mkdir()
    Image.fromarray(photo[:40, :40]).save(folder / "sub" / "deep.png")
    (folder / "sub" / "loop").symlink_to(folder)
    (folder / "sub" / "link.png").symlink_to(folder / "sub" / "deep.png")  # a link to a file is a file
    found, problems = collect_inputs([str(folder)], recursive=True)
    assert problems == []
    assert sorted(p.relative_to(folder).as_posix() for p, _ in found) == [
        "p00.png",
        "sub/deep.png",
    ]  # the link resolves to deep.png: once
    assert sorted(p.name for p in list_images(folder, recursive=True)) == ["deep.png", "link.png", "p00.png"]


def test_outputs_that_cannot_be_written_fail_before_the_model_and_camera_exif_goes_to_tiff(
    tmp_path: Path, photo: np.ndarray
) -> None:
    """Found by a review, each after the model had run (or, for the first, stopping the whole batch):
    - a camera JPEG's EXIF (an Exif sub-IFD: DateTimeOriginal, ExposureTime) written as 8-bit TIFF: Pillow's libtiff
      writer raised RuntimeError, a traceback; now tifffile writes it (IFD0's descriptive tags kept, a warning);
    - an EXIF past JPEG's 65533-byte segment: refused after the work; now written without it, with a warning;
    - a destination that is a folder was "skipped (exists)", exit 0; a file where a folder should be failed after
      the work: now each is one line before anything is computed (the model's forward passes are counted by a hook
      on the real module);
    - a legal name whose temporary file would be too long failed after the work: now it is written (the temporary
      file's name is shortened)."""
    src = tmp_path / "in"
    src.mkdir()
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS 5D"
    exif.get_ifd(0x8769)[0x9003] = "2020:01:01 10:00:00"
    exif.get_ifd(0x8769)[0x829A] = (1, 125)
    Image.fromarray(photo[100:148, 200:248]).save(src / "camera.jpg", exif=exif.tobytes(), quality=92)
    big = Image.Exif()
    big[0x013B] = "x" * 70_000  # Artist: a 70 kB EXIF
    Image.fromarray(photo[200:240, 100:140]).save(src / "big.png", exif=big.tobytes())
    names = ["blocked.png", "folder.png", "L" * 240 + ".png"]
    for name in names:
        Image.fromarray(photo[:16, :16]).save(src / name)
    model = photo_preserving_rrdb()
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    up = Upscaler(
        model, device="cpu", precision="fp32", tile=0, copy_model=False
    )  # the hook counts its passes
    up.runner = ModelRunner(up.model, up.device, torch.float32, engine="module")  # so that the hook sees it
    out = tmp_path / "out"
    (out / "folder_x4.png").mkdir(parents=True)
    (out / "sub").write_bytes(b"a file where a folder should be")
    jobs = [
        Job(src / "camera.jpg", out / "camera_x4.tif"),
        Job(src / "big.png", out / "big_x4.jpg"),
        Job(src / "blocked.png", out / "sub" / "blocked_x4.png"),
        Job(src / "folder.png", out / "folder_x4.png"),
        Job(src / names[2], out / ("L" * 240 + "_x4.png")),  # 247 bytes: legal; `.NAME.XXXXXXXX.part`: not
    ]
    with pytest.warns(Warning) as caught:
        result = upscale_files(up, jobs, progress="quiet", overlap=False)
    assert [j.src.name for j in result.written] == ["camera.jpg", "big.png", names[2]] and len(calls) == 3
    reasons = {Path(src_).name: reason for src_, reason in result.failed}
    assert reasons["blocked.png"].endswith(
        f"cannot write {out / 'sub' / 'blocked_x4.png'} ({out / 'sub'} is a file, not a folder)"
    )
    assert reasons["folder.png"].endswith(f"cannot write {out / 'folder_x4.png'} (a folder has its name)")
    assert not result.skipped
    tif = read_image(out / "camera_x4.tif")
    assert (tif.height, tif.width) == (192, 192) and tif.exif is not None
    kept = Image.Exif()
    kept.load(tif.exif)
    assert (kept[0x010F], kept[0x0110]) == ("Canon", "EOS 5D")
    with Image.open(out / "big_x4.jpg") as im:
        assert im.size == (160, 160) and not im.info.get("exif")
    messages = [str(w.message) for w in caught]
    assert any("TIFF keeps only make/model" in m for m in messages)
    assert any("the EXIF is 70" in m and "more than a JPEG holds (65533); not written" in m for m in messages)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["camera_x4.tif", "big_x4.jpg", "folder_x4.png", "sub", "L" * 240 + "_x4.png"]
    )


def test_a_failing_input_leaves_no_folder_and_a_fifo_output_is_skipped_before_the_model(
    tmp_path: Path, photo: np.ndarray
) -> None:
    """The destination probe makes no folder (an input that fails later left empty output folders behind), and
    anything but a folder at the destination is an output that exists: a FIFO there was skipped only after the
    model had run."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(photo[:16, :16]).save(src / "fine.png")
    model = photo_preserving_rrdb()
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    up = Upscaler(
        model, device="cpu", precision="fp32", tile=0, copy_model=False
    )  # the hook counts its passes
    up.runner = ModelRunner(up.model, up.device, torch.float32, engine="module")
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "fine_x4.png")
    jobs = [
        Job(src / "broken.png", out / "deep" / "er" / "broken_x4.png"),
        Job(src / "fine.png", out / "fine_x4.png"),
    ]
    result = upscale_files(up, jobs, progress="quiet", overlap=False)
    assert len(result.failed) == 1 and [j.src.name for j in result.skipped] == ["fine.png"] and not calls
    assert sorted(p.name for p in out.iterdir()) == ["fine_x4.png"]  # no out/deep/er/


def test_an_output_name_too_long_for_the_file_system_fails_alone_before_the_model(
    tmp_path: Path, photo: np.ndarray, model_file: Path
) -> None:
    """A legal input name 4 bytes short of the limit gives an output name 3 bytes over it (`_x4`). With the output
    folder there (a rerun, any -o that exists), looking the output up raised ENAMETOOLONG out of the batch: no file
    done, no summary; in a new folder the file failed only after the model had run for it (the probe tried the
    shortened temporary name). Now one line for that file before the model, and the batch goes on."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    src = tmp_path / "in"
    src.mkdir()
    long = "L" * (limit - 4) + ".png"
    for k, name in enumerate(("a.png", long, "b.png")):
        Image.fromarray(photo[40 * k : 40 * k + 16, :16]).save(src / name)
    model = photo_preserving_rrdb()
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    up = Upscaler(
        model, device="cpu", precision="fp32", tile=0, copy_model=False
    )  # the hook counts its passes
    up.runner = ModelRunner(up.model, up.device, torch.float32, engine="module")  # so that the hook sees it
    sources, _ = collect_inputs([str(src)])
    for out, overwrite in (
        (tmp_path / "there", False),
        (tmp_path / "there", True),
        (tmp_path / "new", False),
    ):
        if out.name == "there":
            out.mkdir(exist_ok=True)
            for name in os.listdir(out):
                (out / name).unlink()
        calls.clear()
        jobs = plan_jobs(sources, out, scale=up.scale)
        result = upscale_files(up, jobs, progress="quiet", overwrite=overwrite)
        dst = out / (long[:-4] + "_x4.png")
        assert result.failed == [
            (
                str(src / long),
                f"{src / long}: cannot write {dst} (name too long: {limit + 3} bytes, at most {limit})",
            )
        ]
        assert [j.src.name for j in result.written] == ["a.png", "b.png"] and len(calls) == 2
        assert sorted(os.listdir(out)) == ["a_x4.png", "b_x4.png"]
    r = run_cli("upscale", src, "-o", "there", "--model", model_file, "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"esrgan: error: {src / long}: cannot write there/{long[:-4]}_x4.png (name too long: {limit + 3} bytes, "
        f"at most {limit})"
    ]
    assert "esrgan upscale: 0 upscaled, 2 skipped (output exists), 1 failed" in r.stdout


def test_a_symbolic_link_loop_at_the_output_folder_or_an_output_is_one_line(
    tmp_path: Path, photo: np.ndarray, model_file: Path
) -> None:
    """A link to itself as -o, or where one output goes: Path.resolve raised RuntimeError (Python 3.10-3.12), a
    traceback. Now -o is refused in one line, and an output's link is something at its name: skipped without
    --overwrite (before the model), replaced with it."""
    folder = photo_folder(tmp_path / "in", photo, 2)  # p00.png, p01.jpg
    (tmp_path / "loop").symlink_to("loop")
    r = run_cli("upscale", folder, "-o", "loop", "--model", model_file, "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"esrgan: error: -o loop: {os.strerror(errno.ELOOP)} (a symbolic link that leads back to itself)"
    ]
    out = tmp_path / "out"
    out.mkdir()
    (out / "p00_x4.png").symlink_to("p00_x4.png")
    r = run_cli("upscale", folder, "-o", out, "--model", model_file, "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "esrgan upscale: 1 upscaled, 1 skipped (output exists), 0 failed" in r.stdout
    assert os.readlink(out / "p00_x4.png") == "p00_x4.png"
    r = run_cli(
        "upscale", folder, "-o", out, "--model", model_file, "--device", "cpu", "--overwrite", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert "esrgan upscale: 2 upscaled, 0 skipped (output exists), 0 failed" in r.stdout
    assert read_image(out / "p00_x4.png").height == 160 and not (out / "p00_x4.png").is_symlink()


def test_a_warning_names_its_file_once_whatever_spaces_the_name_has(
    tmp_path: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    """A warning raised while a file is encoded is named by the file in hand; one whose text already named it
    (write_image's own: "NAME: JPEG has no alpha channel") got the name twice when the name had a newline or two
    spaces, which the line's whitespace collapsing changed (found by a review). Now once, escaped as Python does."""
    from esrgan.pipeline import warnings_as_lines

    rgba = ImageData(pixels=np.ascontiguousarray(photo[:16, :16]), alpha=np.full((16, 16), 128, np.uint8))
    with warnings_as_lines():
        for name in ("two  spaces.jpg", "new\nline.jpg"):
            write_image(tmp_path / name, rgba)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"esrgan: warning: {tmp_path}/two  spaces.jpg: JPEG has no alpha channel; composited on white",
        f"esrgan: warning: {tmp_path}/new\\nline.jpg: JPEG has no alpha channel; composited on white",
    ]


def test_error_lines_of_processes_sharing_a_pipe_stay_whole(tmp_path: Path) -> None:
    """torchrun's ranks write to one stderr pipe: each `esrgan: error:` line goes in one write with its newline
    (print() wrote the end apart, and a CI run saw two ranks' "terminated" on one line, then an empty one). Two
    real processes, unbuffered as a rank's stderr can be, 3000 lines each into one pipe: every line whole."""
    code = "from esrgan.cli import _err\nfor _ in range(3000):\n    _err('terminated')\n"
    read, write = os.pipe()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=write, env=env) for _ in range(2)]
    os.close(write)
    with os.fdopen(read, "r") as stream:
        lines = stream.read().splitlines()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert lines == ["esrgan: error: terminated"] * 6000
