"""Long-run fuzz of the model-file readers: .pth (zip and legacy), .safetensors, ncnn .param and .bin.

The property of tests/test_hostile_checkpoints.py, run for many more cases: every mutated file ends in a loaded
model or one CheckpointError whose message is one line naming the file; never another exception, a hang, a
memory blow-up or an interpreter crash. The seeds and the mutation are the tests' own (tiny real RRDBNet files;
ncnn files written as Real-ESRGAN's converter lays them out, from tests/test_ncnn.py). Each .pth/.safetensors case
goes all the way through load_model (unwrap, layout detection, strict load), each ncnn case through load_ncnn.

    python tools/fuzz_checkpoints.py --cases 20000 [--timeout 30] [--memory-mb 3072] [--findings DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tools"))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers are forked: no OpenMP pool may exist before the fork

import torch  # noqa: E402
from fuzz_images import run_watched  # noqa: E402
from test_hostile_checkpoints import SEEDS as MODEL_SEEDS  # noqa: E402
from test_hostile_checkpoints import _mutate  # noqa: E402
from test_ncnn import TINY, random_model, write_ncnn  # noqa: E402

from esrgan.checkpoints import load_model  # noqa: E402
from esrgan.errors import CheckpointError  # noqa: E402
from esrgan.ncnn import load_ncnn  # noqa: E402


def seed_files() -> dict[str, bytes]:
    """The tests' model files plus a tiny x4 ncnn pair (net.param text graph, net.bin fp16-tagged blobs)."""
    seeds = dict(MODEL_SEEDS)
    with tempfile.TemporaryDirectory() as tmp:
        param, weights = write_ncnn(random_model(TINY), Path(tmp))
        seeds["net.param"] = param.read_bytes()
        seeds["net.bin"] = weights.read_bytes()
    return seeds


def make_case(seeds: dict[str, bytes], index: int) -> tuple[str, bytes]:
    names = sorted(seeds)
    name = names[index % len(names)]
    rng = random.Random(index)
    ops = [(rng.randrange(4), rng.randrange(2**31), rng.randrange(2**31)) for _ in range(rng.randint(1, 4))]
    return name, _mutate(seeds[name], ops)


def check(seeds: dict[str, bytes], name: str, data: bytes, folder: Path) -> str:
    """'loaded' or 'refused'; AssertionError for a malformed refusal; anything else escapes."""
    if name.startswith("net."):  # the mutated half of an ncnn pair beside the intact other half
        param, weights = folder / "net.param", folder / "net.bin"
        param.write_bytes(data if name == "net.param" else seeds["net.param"])
        weights.write_bytes(data if name == "net.bin" else seeds["net.bin"])
        path, load = folder / name, lambda: load_ncnn(param, weights)
    else:
        path = folder / name
        path.write_bytes(data)
        load = lambda: load_model(path)  # noqa: E731
    try:
        load()
    except CheckpointError as exc:
        msg = str(exc)
        if path.name not in msg or "\n" in msg:
            raise AssertionError(f"CheckpointError is not one line naming the file: {msg!r}") from None
        return "refused"
    return "loaded"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--first", type=int, default=0, help="first case number (to resume or shard a run)")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per case before it counts as a hang"
    )
    parser.add_argument(
        "--memory-mb", type=int, default=3072, help="RLIMIT_AS of the worker (torch needs ~0.7 GB)"
    )
    parser.add_argument("--findings", type=Path, help="folder for inputs that broke the property")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = seed_files()
    start = time.perf_counter()
    counts = run_watched(
        lambda i: make_case(seeds, i),
        lambda name, data, folder: check(seeds, name, data, folder),
        args.cases,
        timeout=args.timeout,
        memory_mb=args.memory_mb,
        findings=args.findings,
        first=args.first,
    )
    seconds = time.perf_counter() - start
    print(
        f"cases {args.first}..{args.first + args.cases - 1} over {', '.join(sorted(seeds))}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f" ({seconds:.0f} s)"
    )
    return 1 if counts["FINDING"] else 0


if __name__ == "__main__":
    sys.exit(main())
