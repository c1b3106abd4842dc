"""kill -9 `esrgan upscale clip.mp4` in the middle of a clip, many times, and check the resume.

After each kill: nothing under the output's name (nor a partial file anywhere but the hidden work folder), at
least the segments finished before the kill are in the work folder; the rerun of the same command says it resumed
from them (at least that many frames kept) and writes the whole clip, whose every frame equals the image upscale
of the source frame (FFV1, lossless) and whose timestamps are the source's.

    python tools/kill_video.py --rounds 10 [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from make_clip import make_clip

SEGMENT = 10  # frames per segment
FRAMES = 100  # 4 s at 25 fps


def make_inputs(work: Path) -> tuple[Path, Path]:
    """A 4 s 96x64 clip with sound and a tiny x2 model file."""
    import torch

    from esrgan.checkpoints import save_model
    from esrgan.generator import RRDBNet

    work.mkdir(parents=True, exist_ok=True)
    clip = make_clip(work / "clip.mp4", seconds=FRAMES / 25)
    torch.manual_seed(0)
    model = save_model(work / "tiny_x2.safetensors", RRDBNet(num_feat=8, num_block=1, num_grow=4, scale=2),
                       overwrite=True)  # fmt: skip
    return clip, model


def command(clip: Path, dst: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "esrgan.cli", "upscale", str(clip), "-o", str(dst), "--model", str(model),
            "--codec", "ffv1", "--segment-frames", str(SEGMENT), "--device", "cpu",
            "--precision", "fp32"]  # fmt: skip


@dataclass
class Round:
    delay: float
    segments_before_kill: int
    resumed_frames: int
    problems: list[str] = field(default_factory=list)
    killed: bool = True  # False: the run had finished before the kill (the kill window outran the clip)


def expected_frames(clip: Path, model: Path) -> tuple[list[Fraction], list[np.ndarray]]:
    """The source's timestamps and the image upscale of every source frame."""
    import av

    from esrgan.upscale import Upscaler

    up = Upscaler.from_file(model, device="cpu", precision="fp32", tile=0)
    with av.open(str(clip)) as c:
        v = c.streams.video[0]
        pairs = [(f.pts * v.time_base, up.upscale(f.to_ndarray(format="rgb24"))) for f in c.decode(v)]
    return [t for t, _ in pairs], [img for _, img in pairs]


def check_output(dst: Path, expected: tuple[list[Fraction], list[np.ndarray]]) -> list[str]:
    import av

    problems = []
    with av.open(str(dst)) as c:
        v = c.streams.video[0]
        got = [(f.pts * v.time_base, f.to_ndarray(format="rgb24")) for f in c.decode(v)]
    times, images = expected
    if len(got) != len(images):
        return [f"{len(got)} frames in the output, expected {len(images)}"]
    for n, ((t, img), t_ref, ref) in enumerate(zip(got, times, images, strict=True)):
        if abs(t - t_ref) > Fraction(1, 1000):
            problems.append(f"frame {n} at {t} s, expected {t_ref} s")
        if not np.array_equal(img, ref):
            problems.append(f"frame {n} differs from the image upscale")
    return problems[:5]


def kill_round(
    work: Path,
    rng: random.Random,
    env: dict[str, str],
    *,
    max_delay: float = 1.0,
    expected: tuple[list[Fraction], list[np.ndarray]] | None = None,
    name: str = "out",
) -> Round:
    """Start the clip, kill -9 it once two segments are finished (plus a random delay), check, rerun, check."""
    clip, model = (work / "clip.mp4", work / "tiny_x2.safetensors")
    if not clip.exists():
        make_inputs(work)
    if expected is None:
        expected = expected_frames(clip, model)
    dst = work / name / "clip_x2.mkv"
    segments = dst.parent / f".{dst.name}.segments"
    proc = subprocess.Popen(command(clip, dst, model), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)  # fmt: skip
    deadline = time.monotonic() + 120
    seen: list[float] = []  # when the first and the second segment appeared
    while time.monotonic() < deadline and proc.poll() is None and len(seen) < 2:
        if len(list(segments.glob("seg*.pkt"))) > len(seen):
            seen.append(time.monotonic())
        time.sleep(0.01)
    # the delay stays within the time the rest of the clip takes (the segments so far tell the rate): on a fast
    # machine a fixed window outran the clip and the "kill" hit a finished run
    left = (FRAMES // SEGMENT - 2) * (seen[1] - seen[0]) if len(seen) == 2 else max_delay
    delay = rng.uniform(0.0, min(max_delay, 0.5 * left))
    time.sleep(delay)
    finished = proc.poll() is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    problems = []
    kept = len(list(segments.glob("seg*.pkt")))
    if finished:  # nothing was killed: not a finding about the resume, but say so
        return Round(
            delay, kept, 0, [] if proc.returncode == 0 else [f"exited {proc.returncode}"], killed=False
        )
    if dst.exists():
        problems.append(f"{dst.name} exists after the kill (kept {kept} segments)")
    strays = [p.name for p in dst.parent.iterdir() if p != segments] if dst.parent.exists() else []
    if strays:
        problems.append(f"left beside the output: {strays}")
    rerun = subprocess.run(command(clip, dst, model), capture_output=True, text=True, timeout=600, env=env)
    resumed = 0
    if rerun.returncode != 0:
        problems.append(f"rerun failed ({rerun.returncode}): {rerun.stderr.strip()[-300:]}")
    else:
        match = re.search(r"resumed: (\d+) frames kept", rerun.stdout)
        resumed = int(match.group(1)) if match else 0
        if resumed < kept * SEGMENT:
            problems.append(f"rerun kept {resumed} frames, but {kept} segments were finished: {rerun.stdout}")
        problems += check_output(dst, expected)
        if segments.exists():
            problems.append("work folder left after the rerun")
    return Round(delay, kept, resumed, problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="kill-video-"))
    clip, model = make_inputs(work)
    expected = expected_frames(clip, model)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(args.seed)
    start = time.perf_counter()
    failed = missed = 0
    for i in range(args.rounds):
        r = kill_round(work, rng, env, expected=expected, name=f"out{i:03d}")
        failed += bool(r.problems)
        missed += not r.killed
        what = (f"{r.segments_before_kill} segments kept, rerun resumed from frame {r.resumed_frames}" if r.killed
                else "the run had finished before the kill (not counted)")  # fmt: skip
        print(f"round {i + 1:3d}: kill {r.delay:.2f} s after 2 segments, {what}"
              + (f"  PROBLEM {r.problems}" if r.problems else ""), flush=True)  # fmt: skip
    print(f"{args.rounds - missed} kills ({missed} rounds finished first), rounds with problems: {failed} "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
