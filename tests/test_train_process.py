"""Training in real processes: SIGTERM and Ctrl-C handling, a save killed by the kernel mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from test_train import log_records, tiny, write_config

from esrgan.errors import CheckpointError
from esrgan.train import latest_checkpoint, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_interrupted_save_leaves_the_previous_checkpoint_intact(
    photos: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = tiny(photos, tmp_path, "fsize", train={"total_steps": 4}, checkpoint={"every": 2, "keep_last": 1})
    train(cfg)
    ckpt = cfg.run_dir / "checkpoints" / "step_00000004.ckpt"
    before = ckpt.read_bytes()
    # resume to step 6 in a process that may not write files larger than half a checkpoint: the kernel stops the
    # next save part-way (SIGXFSZ), as a full disk or a crash would
    config_path = write_config(tiny(photos, tmp_path, "fsize", train={"total_steps": 6},
                                    checkpoint={"every": 2, "keep_last": 1}), tmp_path / "fsize.yaml")  # fmt: skip
    limit = len(before) // 2
    code = (
        "import resource, sys; from esrgan.cli import main; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        f"sys.exit(main(['train', {str(config_path)!r}, '--resume']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert ckpt.read_bytes() == before
    assert [p.name for p in (cfg.run_dir / "checkpoints").glob("step_*.ckpt")] == ["step_00000004.ckpt"]
    # and training continues from it
    result = train(tiny(photos, tmp_path, "fsize", train={"total_steps": 6}), resume=True)
    assert result.step == 6 and not result.interrupted


def test_sigterm_finishes_the_step_saves_and_exits(photos: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = tiny(photos, tmp_path, "sig", train={"total_steps": 100000})
    config_path = write_config(cfg, tmp_path / "sig.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "esrgan.cli", "train", str(config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    log_path = cfg.run_dir / "log.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        log_path.exists() and len(log_path.read_text().splitlines()) >= 4
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # saved, and the shell's status for it (was 0)
    assert "stopped at step" in out and "--resume" in out
    step = int(out.split("stopped at step ")[1].split(";")[0])
    assert load_checkpoint(latest_checkpoint(cfg.run_dir))["step"] == step >= 3
    assert log_records(cfg.run_dir)[-1]["event"] == "interrupted"


def test_a_second_training_of_a_running_run_is_refused_and_a_killed_run_leaves_no_lock(
    photos: tuple[Path, Path], tmp_path: Path
) -> None:
    """Two `esrgan train` of one run at once (a second terminal, a scheduler's retry) wrote into each other's
    checkpoints and pruned them. While one runs, a resume or a fresh start of the same run is one line; once it is
    gone, even by kill -9 (the kernel drops the lock with the process; its forked DataLoader workers, which live on
    a few seconds, hold no copy), the run resumes at once."""
    from esrgan.train import TrainingError

    cfg = tiny(
        photos,
        tmp_path,
        "busy",
        train={"total_steps": 100000},
        checkpoint={"every": 2, "keep_last": 2},
        data={"num_workers": 2},  # forked workers, which outlive a killed trainer for a few seconds
    )
    config_path = write_config(cfg, tmp_path / "busy.yaml")
    # a file, not a pipe: waiting for a pipe's end would wait for the orphaned workers
    log = tmp_path / "busy.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "esrgan.cli", "train", str(config_path)],
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((cfg.run_dir / "checkpoints").glob("step_*.ckpt")):
            time.sleep(0.1)
        assert proc.poll() is None, log.read_text()
        for resume in (True, False):
            with pytest.raises(TrainingError, match="another esrgan train is running in this folder"):
                train(cfg, resume=resume)
        elsewhere = tiny(photos, tmp_path, "other", train={"total_steps": 1})  # another run is not held up
        assert train(elsewhere).step == 1
    finally:
        proc.kill()
        proc.wait(timeout=60)
    # at once: the killed trainer's forked DataLoader workers, still alive, held its lock for a few seconds
    step = load_checkpoint(latest_checkpoint(cfg.run_dir))["step"]
    cfg.train.total_steps = step + 1
    assert train(cfg, resume=True).step == step + 1


def test_a_run_refused_before_it_wrote_anything_leaves_no_folder(
    photos: tuple[Path, Path], tmp_path: Path
) -> None:
    """The lock is taken on the run folder, which a fresh run creates first: refused (here: no such resume
    checkpoint), it removes the folder again, so a later fresh run is not told the folder "already holds a run"."""
    cfg = tiny(photos, tmp_path / "out", "fresh", train={"total_steps": 1})
    with pytest.raises(CheckpointError):
        train(cfg, resume=tmp_path / "missing.ckpt")
    assert not cfg.run_dir.exists()
    assert train(cfg).step == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_group_signal_with_dataloader_workers_saves_and_resumes(
    photos: tuple[Path, Path], tmp_path: Path, sig: signal.Signals
) -> None:
    """A terminal's Ctrl-C, systemd's stop or a scheduler's SIGTERM hits the whole process group, DataLoader workers
    included: still a clean save. (Workers die of SIGTERM; before the fix DataLoader's SIGCHLD handler then raised
    "worker killed by signal" in the middle of the step and the run crashed without saving.)"""
    cfg = tiny(photos, tmp_path, "ctrlc", train={"total_steps": 100000}, data={"num_workers": 2})
    config_path = write_config(cfg, tmp_path / "ctrlc.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "esrgan.cli", "train", str(config_path)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    log_path = cfg.run_dir / "log.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        log_path.exists() and len(log_path.read_text().splitlines()) >= 4
    ):
        time.sleep(0.1)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err  # 130 for Ctrl-C: `train psnr && train gan` no longer goes on
    step = int(out.split("stopped at step ")[1].split(";")[0])
    assert load_checkpoint(latest_checkpoint(cfg.run_dir))["step"] == step >= 3
    cfg.train.total_steps = step + 2
    assert train(cfg, resume=True).step == step + 2


def test_a_workers_death_pending_with_the_stop_signal_is_not_reported_as_a_race() -> None:
    """A group SIGTERM kills the DataLoader workers too; their SIGCHLD is often pending when the stop handler runs
    (Python runs the handlers of signals that arrived together in number order). The handler swapped DataLoader's
    SIGCHLD handler for SIG_DFL, so Python then printed "OSError: Signal 17 ignored due to race condition" with a
    traceback (1 run in 4 of a new user's `kill -TERM -- -PGID`). Both signals made pending at once here."""
    code = """if True:
        import os, signal
        from esrgan.train import _StopSignal
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # stands for DataLoader's handler
        both = {signal.SIGTERM, signal.SIGCHLD}
        signal.pthread_sigmask(signal.SIG_BLOCK, both)
        with _StopSignal() as stop:
            os.kill(os.getpid(), signal.SIGCHLD)  # a worker killed by the group's signal
            os.kill(os.getpid(), signal.SIGTERM)  # this process's own
            signal.pthread_sigmask(signal.SIG_UNBLOCK, both)  # both handlers run here, SIGTERM's first
            stop.release_workers(None)
        print(stop.signum, signal.getsignal(signal.SIGCHLD) is not signal.SIG_DFL)
    """
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(int(signal.SIGTERM)), "True"]  # stopped; DataLoader's handler back
    assert "SIGTERM received" in proc.stderr
    assert "race condition" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_cpu_recipe_script_runs_both_stages_and_evaluates(tmp_path: Path) -> None:
    """scripts/train_cpu_recipe.sh, the documented proof-of-learning recipe, end to end with one step each: stage 1,
    Set5/Set14 evaluation, stage 2 without a VGG19 (VGG=none: L1 + GAN), evaluation of both generators."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".venv" / "bin" / "esrgan").exists():
        pytest.skip("the recipe script runs .venv/bin/esrgan: set up with scripts/setup.sh")
    photos = {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "chelsea": skdata.chelsea()}
    (tmp_path / "data" / "hr").mkdir(parents=True)
    for name, img in photos.items():  # whole photos: the recipe shrinks them, then cuts 96x96 patches
        Image.fromarray(img).save(tmp_path / "data" / "hr" / f"{name}.png")
    for bench_set in ("Set5", "Set14"):
        (tmp_path / "bench" / bench_set).mkdir(parents=True)
        for name, img in photos.items():
            Image.fromarray(img[:192, :192]).save(tmp_path / "bench" / bench_set / f"{name}.png")
    # one step a stage, in batches of 2 (the configs': 16, 8): this checks the stages, not what they learn
    env = {**os.environ, "DATA": str(tmp_path / "data"), "RUNS": str(tmp_path / "runs"),
           "BENCH": str(tmp_path / "bench"), "STEPS1": "1", "STEPS2": "1", "VGG": "none",
           # chelsea (451x300) shrunk 4x would be under the 96 px patch; a list value passes through unglobbed
           "SET1": "data.hr_downscale=[1.0,2.0] data.flip=false data.batch_size=2",
           "SET2": "data.batch_size=2"}  # fmt: skip
    proc = subprocess.run(
        ["bash", str(repo / "scripts" / "train_cpu_recipe.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,  # 9 minutes on a 2-core Zen 1 under a load of 5
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "runs"
    assert "stage 2 WITHOUT a perceptual loss" in proc.stderr
    stage1 = yaml.safe_load((runs / "cpu_x4_psnr" / "config.yaml").read_text())
    assert stage1["data"]["hr_downscale"] == [1.0, 2.0] and stage1["data"]["flip"] is False  # SET1 reached it
    stage2 = yaml.safe_load((runs / "cpu_x4_gan" / "config.yaml").read_text())
    assert stage1["data"]["batch_size"] == stage2["data"]["batch_size"] == 2  # and SET2 stage 2
    assert stage2["losses"]["perceptual_weight"] == 0 and stage2["losses"]["pixel_weight"] == 1.0
    assert stage2["losses"]["gan_reduction"] == "mean"
    assert stage2["train"]["pretrained_g"] == str(runs / "cpu_x4_psnr" / "model.safetensors")
    for run, models in (("cpu_x4_psnr", 1), ("cpu_x4_gan", 2)):
        for bench_set in ("Set5", "Set14"):
            result = json.loads((runs / run / f"eval_{bench_set}.json").read_text())
            assert len(result["methods"]) == 1 + models and len(result["images"]) == 3
            assert (runs / run / f"report_{bench_set}" / "index.md").exists()

    # A rerun with the same RUNS keeps what is finished (it used to stop: "already holds a run") ...
    models = {run: (runs / run / "model.safetensors").read_bytes() for run in ("cpu_x4_psnr", "cpu_x4_gan")}
    evaluated = {p: p.stat().st_mtime_ns for p in runs.glob("*/eval_*.json")}

    def recipe_again() -> subprocess.CompletedProcess[str]:
        script = str(repo / "scripts" / "train_cpu_recipe.sh")
        return subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=600)

    again = recipe_again()
    assert again.returncode == 0, again.stderr[-3000:]
    for stage, run in ((1, "cpu_x4_psnr"), (2, "cpu_x4_gan")):
        assert f"stage {stage}: already trained in {runs / run}" in again.stdout
        assert (runs / run / "model.safetensors").read_bytes() == models[run]
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/eval_*.json")} == evaluated  # nothing re-evaluated
    # ... and continues an interrupted stage from its last checkpoint (here: stage 2 stopped before its export)
    (runs / "cpu_x4_gan" / "model.safetensors").unlink()
    resumed = recipe_again()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"stage 2: continuing the interrupted run in {runs / 'cpu_x4_gan'}" in resumed.stdout
    import torch
    from safetensors.torch import load, load_file

    weights, before = load_file(runs / "cpu_x4_gan" / "model.safetensors"), load(models["cpu_x4_gan"])
    assert weights.keys() == before.keys()
    assert all(torch.equal(weights[k], before[k]) for k in weights)  # the checkpoint's weights, exactly
    for bench_set in ("Set5", "Set14"):  # the new model is evaluated again
        assert (runs / "cpu_x4_gan" / f"eval_{bench_set}.json").stat().st_mtime_ns > evaluated[
            runs / "cpu_x4_gan" / f"eval_{bench_set}.json"
        ]


@pytest.mark.slow
def test_cpu_recipe_script_with_the_compact_generator(tmp_path: Path) -> None:
    """ARCH=compact: the same recipe (both stages, the evaluations) with Real-ESRGAN's compact generator."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from esrgan.checkpoints import load_weights
    from esrgan.compact import CompactConfig

    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".venv" / "bin" / "esrgan").exists():
        pytest.skip("the recipe script runs .venv/bin/esrgan: set up with scripts/setup.sh")
    (tmp_path / "data" / "hr").mkdir(parents=True)
    Image.fromarray(skdata.astronaut()).save(tmp_path / "data" / "hr" / "astronaut.png")
    for bench_set in ("Set5", "Set14"):
        (tmp_path / "bench" / bench_set).mkdir(parents=True)
        Image.fromarray(skdata.coffee()[:192, :192]).save(tmp_path / "bench" / bench_set / "coffee.png")
    # one step a stage, in batches of 2 (the configs' 16 and 8): this checks the stages, not what they learn
    env = {**os.environ, "DATA": str(tmp_path / "data"), "RUNS": str(tmp_path / "runs"),
           "BENCH": str(tmp_path / "bench"), "STEPS1": "1", "STEPS2": "1", "VGG": "none", "ARCH": "compact",
           "SET1": "data.batch_size=2", "SET2": "data.batch_size=2"}  # fmt: skip
    script = str(repo / "scripts" / "train_cpu_recipe.sh")
    proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "runs"
    for run in ("cpu_x4_compact_psnr", "cpu_x4_compact_gan"):
        assert load_weights(runs / run / "model.safetensors").config == CompactConfig(
            num_feat=64, num_conv=16
        )
        assert json.loads((runs / run / "eval_Set5.json").read_text())["images"]
    stage2 = yaml.safe_load((runs / "cpu_x4_compact_gan" / "config.yaml").read_text())
    assert stage2["train"]["pretrained_g"] == str(runs / "cpu_x4_compact_psnr" / "model.safetensors")
    wrong = subprocess.run(["bash", script], env={**env, "ARCH": "swinir"}, capture_output=True, text=True)
    assert wrong.returncode == 2 and "ARCH must be rrdbnet or compact" in wrong.stderr


def _recipe_until_first_train(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """scripts/train_cpu_recipe.sh with ESRGAN pointing at a stub that records its arguments and fails (the script
    stops at its first `esrgan train`), and an apt-get in PATH that records being called (fetch_photos.sh
    downloads with it): what the script would train on, in a fraction of a second."""
    repo = Path(__file__).resolve().parents[1]
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    for name in ("esrgan", "apt-get"):
        stub = stubs / name
        stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" {name} "$@" >> {calls}\nexit 3\n')
        stub.chmod(0o755)
    path = f"{stubs}:{os.environ.get('PATH', '')}"
    full_env = {**os.environ, "PATH": path, "ESRGAN": str(stubs / "esrgan"), "STEPS1": "1", **env}
    script = str(repo / "scripts" / "train_cpu_recipe.sh")
    proc = subprocess.run(
        ["bash", script], env=full_env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    return proc, calls


def test_cpu_recipe_trains_on_the_photos_in_data_and_never_fetches_into_it(tmp_path: Path) -> None:
    """DATA=/my/photos holding the images themselves (no hr/ folder) had 39 Debian wallpapers downloaded into it
    (fetch_photos.sh) and trained on them. Now a DATA without hr/ is the image folder itself; relative DATA and RUNS
    are the caller's (the script cds to the repository)."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    photos = tmp_path / "my photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(skdata, name)()[:128, :128]).save(photos / f"{name}.jpg")
    before = sorted(p.name for p in photos.iterdir())
    proc, calls = _recipe_until_first_train(tmp_path, DATA="my photos", RUNS="runs", BENCH="bench")
    assert proc.returncode == 3, proc.stderr  # the stub's status: the script reached stage 1's training
    args = calls.read_text().splitlines()
    assert args[:3] == ["esrgan", "train", "configs/cpu_x4_psnr.yaml"], args  # no apt-get: nothing fetched
    assert f"data.hr_dir={photos}" in args and f"output_dir={tmp_path / 'runs'}" in args
    assert f"validation.dir={tmp_path / 'bench' / 'Set5'}" in args
    assert sorted(p.name for p in photos.iterdir()) == before  # no hr/, no .version, no .deb
    # DATA with an hr/ folder: that folder, as before
    (tmp_path / "data" / "hr").mkdir(parents=True)
    (photos / "astronaut.jpg").rename(tmp_path / "data" / "hr" / "astronaut.jpg")
    proc, calls = _recipe_until_first_train(tmp_path, DATA=str(tmp_path / "data"))
    assert (
        proc.returncode == 3 and f"data.hr_dir={tmp_path / 'data' / 'hr'}" in calls.read_text().splitlines()
    )
    # SET2 reaches stage 2, after VGG=none's settings (SKIP1: stage 1's model is there)
    (tmp_path / "runs" / "cpu_x4_psnr").mkdir(parents=True)
    (tmp_path / "runs" / "cpu_x4_psnr" / "model.safetensors").touch()
    proc, calls = _recipe_until_first_train(tmp_path, DATA="data", RUNS="runs", SKIP1="1", VGG="none",
                                            SET2="losses.gan_weight=0.01 data.flip=false")  # fmt: skip
    args = calls.read_text().splitlines()
    assert proc.returncode == 3 and args[:3] == ["esrgan", "train", "configs/cpu_x4_gan.yaml"], args
    assert args[-4:] == ["--set", "losses.gan_weight=0.01", "--set", "data.flip=false"]
    assert "losses.perceptual_weight=0" in args


@pytest.mark.parametrize("folder", ["empty", "missing"])
def test_cpu_recipe_stops_on_a_data_folder_without_images(tmp_path: Path, folder: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photographs here")
    proc, calls = _recipe_until_first_train(tmp_path, DATA=folder)
    assert proc.returncode == 2 and not calls.exists()  # neither a fetch nor a training
    assert len(proc.stderr.splitlines()) == 1 and f"DATA={tmp_path / folder}: " in proc.stderr, proc.stderr
    assert (tmp_path / "empty").exists() and not (tmp_path / "empty" / "hr").exists()


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(
    photos: tuple[Path, Path], tmp_path: Path
) -> None:
    """`esrgan train` killed (kill -9) before its first checkpoint left config.yaml, log.jsonl and sample grids,
    and then neither a fresh start ("already holds a run (log.jsonl)") nor --resume ("no checkpoint") was accepted:
    the folder had to be deleted by hand. Now --resume says in one line that there is no checkpoint and that a
    start without it starts over; the fresh start does, replacing the killed start's files, in one stderr line."""
    # a sample grid at every step; no best.ckpt (a checkpoint: it would hold the run, as any other)
    cfg = tiny(photos, tmp_path, "killed", train={"total_steps": 100000}, validation={"every": 1},
               checkpoint={"every": 100000, "keep_best": False})  # fmt: skip
    config_path = write_config(cfg, tmp_path / "killed.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "esrgan.cli", "train", str(config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    samples = cfg.run_dir / "samples"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(samples.glob("step_*.png"))) < 3:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert len(list(samples.glob("step_*.png"))) >= 3
    assert not list((cfg.run_dir / "checkpoints").glob("step_*.ckpt"))
    resumed = run_cli("train", config_path, "--resume")
    assert resumed.returncode == 1
    assert resumed.stderr == (
        f"esrgan: error: {cfg.run_dir}: no checkpoint to resume from (the run stopped before its first one); "
        "start it without --resume: it starts over\n"
    )
    again = run_cli("train", config_path, "--set", "train.total_steps=2")
    assert again.returncode == 0, again.stderr
    said = [line for line in again.stderr.splitlines() if "starting over" in line]
    assert len(said) == 1 and str(cfg.run_dir) in said[0], again.stderr
    assert [r["event"] for r in log_records(cfg.run_dir) if "event" in r] == ["start", "done"]
    assert sorted(p.name for p in samples.iterdir()) == ["step_00000001.png", "step_00000002.png"]
    assert load_checkpoint(latest_checkpoint(cfg.run_dir))["step"] == 2


def test_a_run_folder_with_a_newline_in_its_name_logs_one_line_per_message(
    photos: tuple[Path, Path], tmp_path: Path
) -> None:
    """Training's log lines name the run folder; a name with a newline (a legal folder name) split them in two.
    They are escaped as errors.shown escapes the other lines now: every stderr line is one message."""
    cfg = tiny(photos, tmp_path, "new\nline", train={"total_steps": 1})
    config_path = write_config(cfg, tmp_path / "newline.yaml")
    cfg.run_dir.mkdir()
    (cfg.run_dir / "log.jsonl").write_text(
        '{"event": "start", "step": 0}\n'
    )  # an earlier start: a warning names it
    r = run_cli("train", config_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines and all(line.split(" ", 1)[0] in ("INFO", "WARNING") for line in lines), r.stderr
    assert any(line.startswith("WARNING") and "new\\nline: an earlier start" in line for line in lines), (
        r.stderr
    )
    assert (tmp_path / "new\nline" / "checkpoints" / "step_00000001.ckpt").is_file()


def test_a_full_disk_stops_training_in_one_line_naming_the_file(
    photos: tuple[Path, Path], tmp_path: Path
) -> None:
    """A 48 kB disk that the log fills at about step 240: one line naming log.jsonl, the step and what to do
    (before: "esrgan: error: No space left on device"), every line of the log whole (a torn last line made it
    unreadable to the next start); with space again, the run starts over and finishes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)],
                                           capture_output=True).returncode:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        config_path = write_config(
            tiny(photos, disk, "log", train={"total_steps": 2000}), tmp_path / "log.yaml"
        )
        r = run_cli("train", config_path, env={"OMP_NUM_THREADS": "1"})
        assert r.returncode == 1, r.stderr[-2000:]
        log_file = disk / "log" / "log.jsonl"
        errors = [line for line in r.stderr.splitlines() if line.startswith("esrgan: error: ")]
        assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        prefix = f"esrgan: error: {log_file}: cannot write (No space left on device); stopped at step "
        assert errors[0].startswith(prefix), errors
        step = int(errors[0][len(prefix) :].split(",")[0])
        assert errors[0].endswith(
            ", before its first checkpoint: free space or fix the folder, then start the run again"
        )
        records = [json.loads(line) for line in log_file.read_text().splitlines()]  # every line whole
        assert records[-1]["step"] == step - 1 > 100
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        again = write_config(tiny(photos, disk, "log", train={"total_steps": 20}), tmp_path / "again.yaml")
        r = run_cli("train", again, env={"OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-2000:]
        assert log_records(disk / "log")[-1]["event"] == "done"
    finally:
        subprocess.run(["umount", str(disk)], check=True)
