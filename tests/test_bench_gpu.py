"""bench/gpu.py is what a GPU session runs with its few device minutes: its rows must work before it gets there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_smoke(
    tmp_path: Path, section: str, *extra: str
) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    """bench/gpu.py --smoke --only SECTION on this machine: the process and the rows of its --json."""
    out = tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--only", section, *extra, "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())["rows"]


@pytest.mark.slow
def test_gpu_bench_smoke_runs_the_upscaling_rows_on_the_cpu(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    proc, rows = run_smoke(tmp_path, "infer", "--repeats", "1")
    names = [r["row"] for r in rows]
    assert any(n.startswith("model alone") for n in names) and any(n.startswith("Upscaler") for n in names)
    assert all(r["ms"] > 0 for r in rows if "ms" in r)
    assert "| row |" in proc.stdout  # the Markdown table for docs/benchmarks.md


@pytest.mark.slow
def test_gpu_bench_upscaling_rows_take_a_compact_model_file(tmp_path: Path) -> None:
    """--model a compact file (Real-ESRGAN's realesr-animevideov3 as a later lease would carry it): its rows, its
    own operation count in the TFLOP/s, no per-block compile (RRDBNet's)."""
    pytest.importorskip("skimage")
    import torch

    from esrgan.checkpoints import save_model
    from esrgan.compact import CompactConfig, SRVGGNetCompact

    torch.manual_seed(0)
    model = save_model(
        tmp_path / "compact.safetensors", SRVGGNetCompact(CompactConfig(num_feat=8, num_conv=2))
    )
    proc, rows = run_smoke(tmp_path, "infer", "--repeats", "1", "--model", str(model))
    assert f"model: {model}" in proc.stdout
    alone = [r for r in rows if r["row"].startswith("model alone")]
    assert alone and all(r["TFLOP/s"] > 0 for r in alone)
    assert not any("compile_blocks" in r["row"] for r in rows)


@pytest.mark.slow
def test_gpu_bench_training_rows_run_in_the_order_a_short_lease_asks(tmp_path: Path) -> None:
    """bench/gpu_lease.sh puts the rows still unmeasured first (--first) and leaves known ones out (--skip-row):
    every training row, the torchrun and resume rows included, runs here at toy sizes in that order."""
    pytest.importorskip("skimage")
    proc, rows = run_smoke(
        tmp_path,
        "train",
        "--first",
        "resume",
        "--first",
        "NCCL",
        "--skip-row",
        "NCHW",
        "--skip-row",
        "LR made",
    )
    names = [r["row"] for r in rows]
    assert names[0].startswith("resume") and "torchrun 1 process" in names[1], names
    assert not any("NCHW" in n or "LR made" in n for n in names), names
    assert names[2:] == [
        "stage 1 fp32, CUDA graph",
        "stage 1 fp32, 16-bit data (IEEE convolutions), CUDA graph",
        "stage 1 bf16, channels-last, CUDA graph",
        "stage 1 bf16, channels-last, eager",
        "stage 1 bf16, CUDA graph, realesrgan degradation on the GPU",
        "stage 2 bf16 (VGG19 + D), CUDA graph",
        "stage 2 Real-ESRGAN bf16 (U-Net D, 5 VGG19 layers, 12 x 256, pair pool), CUDA graph",
    ]
    assert rows[0]["note"] == "bit-exact"  # 10 + 10 steps resumed = 20 straight, on this CPU
    assert rows[1]["note"] == "DDP in a process group"  # gloo here, NCCL on a GPU: the same code path
    assert all(r["it/s"] > 0 for r in rows[1:]), rows
    assert not any(r.get("note", "").startswith("failed") for r in rows), rows  # guarded() marks a crash so
    assert "| row |" in proc.stdout


def test_the_torchrun_row_says_why_the_process_group_did_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session 6's NCCL row failed for a reason the bench did not keep. Here NCCL is asked of a torch without it
    (what a GPU machine whose NCCL cannot start looks like to train): the row still trains, through the real
    torchrun, and its note carries train's own one-line reason."""
    pytest.importorskip("skimage")
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "gpu.py")
    assert spec is not None and spec.loader is not None
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    data = tmp_path / "photos"
    gpu.photos(data, 2)
    monkeypatch.setenv("ESRGAN_DIST_BACKEND", "nccl")
    import torch.distributed as dist

    if dist.is_nccl_available():
        pytest.skip("this torch has NCCL: the group would start")
    row = gpu.ddp_run("nccl", data, tmp_path / "runs", 4, True, gpu.NCCL_NO_TRANSPORTS)
    assert row["it/s"] > 0, row
    assert row["note"].startswith("NO PROCESS GROUP: ") and "nccl could not start" in row["note"], row


def test_gpu_bench_refuses_to_measure_without_a_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py")],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "--smoke" in proc.stderr


@pytest.mark.slow
def test_gpu_bench_video_rows_are_rows_of_its_table(tmp_path: Path) -> None:
    """bench/video.py's table becomes rows with a frames/s column: the printed table stays one valid Markdown table."""
    pytest.importorskip("av")
    proc, rows = run_smoke(tmp_path, "video")
    ends = [r for r in rows if "end to end" in r["row"]]
    assert ends and all(r["frames/s"] > 0 and "x the model alone" in r["note"] for r in ends)
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ") or line.startswith("|---")]
    assert len(table) == len(rows) + 2
    assert len({line.count("|") for line in table}) == 1  # every row has the header's cells


@pytest.mark.slow
def test_a_part_cut_by_its_time_limit_starts_no_new_row_and_keeps_what_it_measured(tmp_path: Path) -> None:
    """bench/gpu_lease.sh ends each part with `timeout`, which sends SIGTERM to the part's process group. train()
    takes SIGTERM as a request to finish the step, save and return: the bench then went on with its next row, so a
    part ran on past its limit into the next part's minutes. Now the cut row is kept, marked, and nothing else runs."""
    import signal
    import time

    pytest.importorskip("skimage")
    work, out = tmp_path / "work", tmp_path / "rows.json"
    cmd = [sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--only", "train", "--first", "stage 2",
           "--work", str(work), "--json", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    log = work / "runs" / "stage_2_bf16_(VGG19_+_D)_CUDA_graph" / "log.jsonl"
    deadline = time.monotonic() + 300
    while not (log.exists() and "it_per_s" in log.read_text()):  # stage 2 has started stepping
        assert proc.poll() is None and time.monotonic() < deadline, "stage 2 never logged a step"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)  # as timeout does: the bench, its DataLoader workers, all of them
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stdout[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["stage 2 bf16 (VGG19 + D), CUDA graph"], rows
    assert "CUT SHORT by SIGTERM at step" in rows[0]["note"], rows
    assert sorted(p.name for p in (work / "runs").iterdir()) == [log.parent.name]  # no other row started
    assert "stopped by SIGTERM" in stdout and "| row |" in stdout  # the table of what was measured


def load_gpu_bench() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "gpu.py")
    assert spec is not None and spec.loader is not None
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    return gpu


def test_the_resume_row_compares_the_whole_checkpoint(photos: tuple[Path, Path], tmp_path: Path) -> None:
    """Issue 15 asks that a resumed GPU run continue exactly and the checkpoint format stay as it is: the row
    compared G's weights only. Now every tensor of G, its EMA, D and both optimizers, and the entries; real
    checkpoints of a tiny GAN run, one of them altered in a place the old row never looked."""
    import torch
    from test_train import gan_sections, tiny

    from esrgan.train import load_checkpoint, train

    gpu: Any = load_gpu_bench()
    result = train(tiny(photos, tmp_path, "gan", **gan_sections(None, perceptual=0.0)), stop_at_step=2)
    assert result.checkpoint is not None
    one = load_checkpoint(result.checkpoint)
    assert gpu.compare_checkpoints(one, load_checkpoint(result.checkpoint)) == "bit-exact"
    two = load_checkpoint(result.checkpoint)
    moment = next(iter(two["optim_d"]["state"].values()))["exp_avg"]
    moment.view(-1)[0] += 0.5
    assert gpu.compare_checkpoints(one, two).startswith("max |d| 5.00e-01 at optim_d.state.")
    del two["generator_ema"]
    assert gpu.compare_checkpoints(one, two) == "CHECKPOINT ENTRIES DIFFER: ['generator_ema']"
    assert isinstance(moment, torch.Tensor)


def test_the_lease_keeps_the_fp16_training_row_and_skips_only_what_was_measured() -> None:
    """Issue 15 asks for fp32/bf16/fp16 side by side; the lease passed --no-fp16, and its --skip-row "channels-last,
    eager" would have dropped the fp16 row too (its label holds those words). The lease's own arguments, read from
    the script, applied to the bench's training labels."""
    import re
    import shlex

    gpu: Any = load_gpu_bench()
    script = (REPO / "bench" / "gpu_lease.sh").read_text()
    call = re.search(r"bench/gpu\.py --only train (.*?)--json", script, re.S)
    assert call is not None
    words = shlex.split(call.group(1).replace("\\\n", " "))
    assert "--no-fp16" not in words
    skip = [words[i + 1] for i, w in enumerate(words) if w == "--skip-row"]
    first = [words[i + 1] for i, w in enumerate(words) if w == "--first"]
    labels = ["stage 1 fp32, CUDA graph", "stage 1 bf16, channels-last, CUDA graph", "stage 1 bf16, NCHW, CUDA graph",
              "stage 1 fp16, channels-last, eager (grad scaler)", "stage 1 bf16, channels-last, eager",
              "stage 1 bf16, CUDA graph, LR made on the CPU", "stage 2 bf16 (VGG19 + D), CUDA graph"]  # fmt: skip
    order = [label for label, _ in gpu.order_rows([(label, None) for label in labels], skip, first)]
    assert order == ["stage 1 bf16, channels-last, CUDA graph", "stage 2 bf16 (VGG19 + D), CUDA graph",
                     "stage 1 fp16, channels-last, eager (grad scaler)", "stage 1 fp32, CUDA graph",
                     "stage 1 bf16, NCHW, CUDA graph"]  # fmt: skip
