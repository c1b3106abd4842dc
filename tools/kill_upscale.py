"""kill -9 `esrgan upscale` in the middle of a batch of real photos, many times, and check that nothing is lost.

After each kill: every file under an output's final name decodes completely (no partial output), and rerunning the
same command finishes the rest without touching the finished files (same bytes, same mtime): existing outputs
are skipped by default (`--overwrite` replaces them).

    python tools/kill_upscale.py --rounds 20 [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from esrgan.imageio import read_image

EXPECTED_OUTPUTS = 6


def make_batch(folder: Path, model_path: Path) -> list[Path]:
    """Six real photos (scikit-image; PNG, JPEG, 16-bit-free) and a tiny x2 model file."""
    import torch
    from skimage import data

    from esrgan.checkpoints import save_model
    from esrgan.generator import RRDBNet

    folder.mkdir(parents=True, exist_ok=True)
    photos = {"astronaut.png": data.astronaut(), "coffee.jpg": data.coffee(), "chelsea.png": data.chelsea(),
              "rocket.jpg": data.rocket(), "camera.png": data.camera(), "immuno.png": data.immunohistochemistry()}  # fmt: skip
    paths = []
    for name, pixels in photos.items():
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / name, quality=92)
        paths.append(folder / name)
    torch.manual_seed(0)
    save_model(model_path, RRDBNet(num_feat=8, num_block=1, num_grow=4, scale=2), overwrite=True)
    return paths


def command(inputs: Path, out: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "esrgan.cli", "upscale", str(inputs), "-o", str(out), "--model", str(model),
            "--tile", "128", "--device", "cpu", "--precision", "fp32"]  # fmt: skip


@dataclass
class Round:
    delay: float
    finished_before_kill: int  # outputs present after the kill (all verified to decode)
    partial_files: int  # temporary .part files the kill left (never under a final name)
    problems: list[str]


def verify_outputs(out: Path) -> tuple[dict[str, tuple[int, bytes]], list[str]]:
    """{name: (mtime_ns, bytes)} of the final-named outputs, and the problems (a file that does not decode)."""
    found, problems = {}, []
    for path in sorted(out.glob("*")) if out.is_dir() else []:
        if path.name.startswith(".") and path.name.endswith(".part"):
            continue
        try:
            read_image(path)
        except Exception as exc:  # a partial output is what the tool looks for
            problems.append(f"{path.name} does not decode: {exc}")
        found[path.name] = (path.stat().st_mtime_ns, path.read_bytes())
    return found, problems


def kill_round(
    inputs: Path, out: Path, model: Path, rng: random.Random, env: dict[str, str], *, max_delay: float = 2.0
) -> Round:
    """Start a batch in an empty output folder, kill -9 it once one output exists, verify, rerun, verify."""
    proc = subprocess.Popen(command(inputs, out, model), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)  # fmt: skip
    deadline = time.monotonic() + 120

    def finished() -> bool:  # a final name, not the hidden .part file an atomic write goes through
        return any(not p.name.startswith(".") for p in out.glob("*_x2.*"))

    while time.monotonic() < deadline and proc.poll() is None and not finished():
        time.sleep(0.02)
    delay = rng.uniform(0.0, max_delay)  # the other files are being read, upscaled tile by tile, or written
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before, problems = verify_outputs(out)
    parts = len(list(out.glob(".*.part")))
    rerun = subprocess.run(command(inputs, out, model), capture_output=True, text=True, timeout=600, env=env)
    if rerun.returncode != 0:
        problems.append(f"rerun failed ({rerun.returncode}): {rerun.stderr.strip()[-300:]}")
    after, after_problems = verify_outputs(out)
    problems += after_problems
    if len(after) != EXPECTED_OUTPUTS:
        problems.append(f"{len(after)} outputs after the rerun, expected {EXPECTED_OUTPUTS}")
    for name, (mtime, data) in before.items():
        if after.get(name) != (mtime, data):
            problems.append(f"{name} was redone or changed by the rerun")
    if f"{len(before)} skipped" not in rerun.stdout:
        problems.append(f"rerun did not report {len(before)} skipped: {rerun.stdout.strip()}")
    return Round(delay, len(before), parts, problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="kill-upscale-"))
    model = work / "tiny_x2.safetensors"
    make_batch(work / "in", model)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(args.seed)
    rounds = []
    start = time.perf_counter()
    for i in range(args.rounds):
        r = kill_round(work / "in", work / f"out{i:03d}", model, rng, env)
        rounds.append(r)
        print(f"round {i + 1:3d}: kill {r.delay:.2f} s after the first output, {r.finished_before_kill} finished, "
              f"{r.partial_files} .part" + (f"  PROBLEM {r.problems}" if r.problems else ""), flush=True)  # fmt: skip
    failed = sum(bool(r.problems) for r in rounds)
    print(f"{len(rounds)} kills; {sum(r.finished_before_kill for r in rounds)} outputs finished before a kill, all "
          f"kept by the rerun; {sum(r.partial_files for r in rounds)} .part files left; rounds with problems: "
          f"{failed} ({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
