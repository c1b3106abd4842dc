"""Outputs written whole vs row by row as they are computed (`esrgan upscale --stream`, and what the batch does by
itself when a whole output would not fit in memory): wall time and peak RSS of each `esrgan upscale` run, one
process each, on one large photo.

    python bench/stream.py [--image PHOTO] [--model FILE] [--limit-mib N]

PHOTO: default scikit-image's astronaut tiled 6 x 4 (3072 x 2048). FILE: default a small compact x4 network
(4 features, 1 conv: the model's time is small, so what differs is the output's handling). --limit-mib: also run
the PNG case in a v1 memory cgroup of the command's own baseline (measured on a small image) plus N MiB (root and
cgroup v1 only; default 600), where the batch streams because it must (and returns freed memory to the system,
device.freed_memory_returned). Ratios are against the whole-image run of the same format in the same process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from hostinfo import cpu_name  # bench/, the script's own folder
from PIL import Image

V1_MEMORY = Path("/sys/fs/cgroup/memory")


def run(args: list[str], limit: int | None = None, cgroup: bool = False) -> tuple[float, float, int, str]:
    """(seconds, peak RSS MiB, cgroup peak bytes or 0, stdout) of `esrgan ARGS`, in a cgroup when asked."""
    command = [sys.executable, "-m", "esrgan.cli", *args]
    group = None
    if cgroup:
        group = V1_MEMORY / f"esrgan-bench-{uuid.uuid4().hex[:8]}"
        group.mkdir()
        if limit is not None:
            (group / "memory.limit_in_bytes").write_text(str(limit))
        quoted = " ".join(f"'{a}'" for a in command)
        command = ["sh", "-c", f"echo $$ > {group / 'cgroup.procs'} && exec {quoted}"]
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        out = proc.stdout.read() if proc.stdout else ""
        err = proc.stderr.read() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(
                f"esrgan {' '.join(args)} failed ({os.waitstatus_to_exitcode(status)}): {err[-500:]}"
            )
        peak = int((group / "memory.max_usage_in_bytes").read_text()) if group else 0
        return seconds, usage.ru_maxrss / 1024, peak, out
    finally:
        if group is not None:
            group.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--limit-mib", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        image = args.image
        if image is None:
            from skimage import data

            image = tmp / "astronaut-6x4.png"
            Image.fromarray(np.tile(data.astronaut(), (6, 4, 1))).save(image, compress_level=1)
        model = args.model
        if model is None:
            import torch

            from esrgan.checkpoints import save_model
            from esrgan.compact import CompactConfig, SRVGGNetCompact

            torch.manual_seed(0)
            model = save_model(
                tmp / "compact.safetensors", SRVGGNetCompact(CompactConfig(num_feat=4, num_conv=1))
            )
        with Image.open(image) as im:
            width, height = im.size
        print(f"{cpu_name()}, {os.cpu_count()} cores; {image.name} {width}x{height}, model {model.name}")
        print(f"{'output':<28} {'seconds':>8} {'x whole':>8} {'peak RSS MiB':>13} {'x whole':>8}")
        for ext in ("png", "tif"):
            base: tuple[float, float] | None = None
            for mode, extra in (("whole", []), ("--stream", ["--stream"])):
                out = tmp / f"out-{mode.strip('-')}.{ext}"
                seconds, rss, _, _ = run(
                    ["upscale", str(image), "-o", str(out), "--model", str(model), *extra]
                )
                base = base or (seconds, rss)
                label = f"{ext.upper()} {mode}"
                print(f"{label:<28} {seconds:8.1f} {seconds / base[0]:8.2f} {rss:13.0f} {rss / base[1]:8.2f}")
                out.unlink()
            if ext == "png":
                png_whole = base
        can_limit = os.geteuid() == 0 and (V1_MEMORY / "memory.limit_in_bytes").is_file()
        if can_limit and args.limit_mib:
            small = tmp / "small.png"
            with Image.open(image) as im:
                im.crop((0, 0, 64, 64)).save(small)
            _, _, baseline, _ = run(
                ["upscale", str(small), "-o", str(tmp / "s.png"), "--model", str(model)], None, True
            )
            limit = baseline + args.limit_mib * 2**20
            out = tmp / "out-limited.png"
            seconds, rss, peak, stdout = run(
                ["upscale", str(image), "-o", str(out), "--model", str(model)], limit, True
            )
            how = "streamed" if "as computed" in stdout else "whole"
            label = f"PNG in {limit / 2**20:.0f} MiB ({how})"
            assert png_whole is not None
            print(
                f"{label:<28} {seconds:8.1f} {seconds / png_whole[0]:8.2f} {rss:13.0f} {rss / png_whole[1]:8.2f}"
                f"   (cgroup peak {peak / 2**20:.0f} MiB; the command's own baseline {baseline / 2**20:.0f} MiB)"
            )


if __name__ == "__main__":
    main()
