"""kill -9 `esrgan train` at random moments, many times, and check that nothing is lost.

A tiny model trains on 128x128 crops of real photos (scikit-image) with a checkpoint after every step, so most
kills land in or near a checkpoint write. After each kill: every file under a checkpoint's final name
(step_*.ckpt) loads and holds the step its name says, config.yaml is intact, the newest checkpoint is not older
than before the round, and the next round's `--resume` starts exactly from it (its "resume" log record). A last
uninterrupted run finishes and writes a loadable model.

    python tools/kill_training.py --rounds 40 [--seed 0] [--min-delay 0.5] [--max-delay 6] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import make_photos  # noqa: E402  (the training tests' photos)
from test_train import tiny  # noqa: E402  (the training tests' tiny config)

from esrgan.config import config_to_yaml, load_config  # noqa: E402
from esrgan.train import load_checkpoint, step_checkpoints  # noqa: E402


@dataclass
class Round:
    delay: float  # seconds between start (or the first logged step of a warm round) and kill -9
    resumed_from: int | None  # step the run said it resumed from (None: fresh start or killed before saying)
    newest: int | None  # newest checkpoint step after the kill
    checkpoints: int  # step_*.ckpt files present (all verified)
    partial_files: (
        int  # new temporary .part files: this kill landed inside a write (the next run removes them)
    )
    problems: list[str]


def _log_records(run_dir: Path) -> tuple[list[dict[str, object]], int]:
    """Parsed log.jsonl records and the number of unparsable lines."""
    path = run_dir / "log.jsonl"
    if not path.exists():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return records, bad


def verify_run_dir(run_dir: Path) -> tuple[int | None, int, int, list[str]]:
    """(newest step, number of checkpoints, .part files, problems): every final-named file must be whole."""
    problems = []
    ckpts = step_checkpoints(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else []
    newest = None
    for path in ckpts:
        try:
            state = load_checkpoint(path)
        except Exception as exc:  # any failure here is exactly what the tool looks for
            problems.append(f"{path.name}: {type(exc).__name__}: {exc}")
            continue
        if f"step_{int(state['step']):08d}.ckpt" != path.name:
            problems.append(f"{path.name}: holds step {state['step']}")
        newest = int(state["step"])
    if (run_dir / "config.yaml").exists():
        try:
            load_config(run_dir / "config.yaml")
        except Exception as exc:
            problems.append(f"config.yaml: {type(exc).__name__}: {exc}")
    parts = list((run_dir / "checkpoints").glob("*.part")) if (run_dir / "checkpoints").is_dir() else []
    return newest, len(ckpts), len(parts), problems


def _wait_for_records(run_dir: Path, count: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and len(_log_records(run_dir)[0]) < count:
        time.sleep(0.05)


def _command(config: Path, resume: bool, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "esrgan.cli",
        "train",
        str(config),
        *(["--resume"] if resume else []),
        *extra,
    ]


def kill_rounds(
    rounds: int,
    work: Path,
    *,
    seed: int = 0,
    min_delay: float = 0.5,
    max_delay: float = 6.0,
    warm: bool | None = None,
) -> tuple[list[Round], Path]:
    """Run the rounds in work/; returns them and the run folder.

    Kill moments: uniform in [min_delay, max_delay] seconds after the start (start-up, model building, resume
    included), or, for warm rounds, 0-0.5 s after the run logged its first step. warm=None alternates.
    """
    rng = random.Random(seed)
    if not (work / "photos").exists():
        (work / "photos").mkdir(parents=True)
        make_photos(work / "photos")
    photos = (work / "photos" / "train", work / "photos" / "val")
    cfg = tiny(photos, work, "killed", train={"total_steps": 1_000_000},
               checkpoint={"every": 1, "keep_last": 3}, logging={"every": 1, "progress": False})  # fmt: skip
    config = work / "killed.yaml"
    config.write_text(config_to_yaml(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results: list[Round] = []
    newest: int | None = None
    for _ in range(rounds):
        before, _, _, _ = verify_run_dir(cfg.run_dir)
        parts_before = set((cfg.run_dir / "checkpoints").glob("*.part"))
        records_before = len(_log_records(cfg.run_dir)[0])
        delay = rng.uniform(min_delay, max_delay)
        proc = subprocess.Popen(_command(config, before is not None), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, env=env)  # fmt: skip
        if warm is True or (warm is None and len(results) % 2):
            delay = rng.uniform(0.0, 0.5)  # from this run's first logged step: lands among steps and saves
            _wait_for_records(cfg.run_dir, records_before + 2, proc, timeout=120)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        newest_now, count, _, problems = verify_run_dir(cfg.run_dir)
        records, bad_lines = _log_records(cfg.run_dir)
        if bad_lines:
            problems.append(f"log.jsonl: {bad_lines} unparsable lines")
        resumed = [r for r in records[records_before:] if r.get("event") == "resume"]
        resumed_from = int(str(resumed[0]["step"])) if resumed else None
        if resumed_from is not None and resumed_from != before:
            problems.append(f"resumed from step {resumed_from}, newest checkpoint was {before}")
        if newest is not None and (newest_now is None or newest_now < newest):
            problems.append(f"newest checkpoint went back from {newest} to {newest_now}")
        newest = newest_now if newest_now is not None else newest
        new_parts = set((cfg.run_dir / "checkpoints").glob("*.part")) - parts_before
        results.append(Round(delay, resumed_from, newest_now, count, len(new_parts), problems))
    return results, cfg.run_dir


def finish(work: Path, run_dir: Path, extra_steps: int = 3) -> tuple[int, int, str]:
    """Resume without a kill for a few more steps: (newest step before, final step, problems or '').

    After it every checkpoint must still load, and no temporary file of a killed save may be left."""
    from esrgan.checkpoints import load_model

    newest, _, _, _ = verify_run_dir(run_dir)
    if newest is None:
        return -1, -1, "no checkpoint at all after the kills"
    target = newest + extra_steps
    proc = subprocess.run(
        _command(work / "killed.yaml", True, "--set", f"train.total_steps={target}"),
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    if proc.returncode != 0 or f"finished {target} steps" not in proc.stdout:
        return newest, -1, f"final resume failed ({proc.returncode}): {proc.stderr.strip()[-300:]}"
    load_model(run_dir / "model.safetensors")
    _, _, parts, problems = verify_run_dir(run_dir)
    if parts:  # the resumed run removes what killed saves left behind
        problems.append(f"{parts} .part files of killed saves left after the resume")
    return newest, target, "; ".join(problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--min-delay", type=float, default=0.5, help="earliest kill, seconds after the start")
    parser.add_argument("--max-delay", type=float, default=6.0, help="latest kill, seconds after the start")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="kill-training-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rounds, run_dir = kill_rounds(args.rounds, work, seed=args.seed, min_delay=args.min_delay,
                                  max_delay=args.max_delay)  # fmt: skip
    for i, r in enumerate(rounds, 1):
        print(f"round {i:3d}: kill after {r.delay:4.1f} s, resumed from {r.resumed_from}, newest {r.newest}, "
              f"{r.checkpoints} checkpoints, {r.partial_files} new .part" + (f"  PROBLEM {r.problems}" if r.problems else ""))  # fmt: skip
    newest, final, problem = finish(work, run_dir)
    failed = sum(bool(r.problems) for r in rounds) + bool(problem)
    mid_write = sum(r.partial_files > 0 for r in rounds)
    print(f"{len(rounds)} kills, {mid_write} of them inside a checkpoint write (a new .part left behind), "
          f"{sum(r.resumed_from is not None for r in rounds)} runs resumed before being killed; final resume "
          f"{newest} -> {final}: {problem or 'ok'}; rounds with problems: {failed} "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
