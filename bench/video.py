"""Frames per second of `esrgan upscale clip.mp4` end to end, against the model alone on the same frames.

    .venv/bin/python bench/video.py [--frames 50] [--size 96x64] [--real-frames 4] [--codecs h264,ffv1] [--batch 1,4]

"model alone": the frames decoded into memory first, then Upscaler.upscale_image on each (what the pipeline's
middle thread does). "end to end": esrgan.video.upscale_video from the clip file to an output file (decode, RGB
conversion, model, YUV conversion, encode into segments, final mux with the audio), decode and encode on their
own threads. The clip is made here (tools/make_clip.py: a moving pattern with a sine-wave track, 25 fps).
Models: "tiny" (RRDBNet 2 blocks x 16 features, x4: the pipeline's overhead shows), and realesrgan-x4plus (23
blocks x 64, the default model) on --real-frames frames when its weights are on this machine. "forward passes only": the
model's forward on the frames stacked --batch at a time, without tiling or conversions (is batching faster?).
The CPU, torch's thread count and the load average are printed with the table: on a shared machine say so;
--repeat N keeps the best of N runs of each tiny-model row (the real model's rows run once). The clip and the
outputs go to a bench-video-* folder in $TMPDIR, removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from hostinfo import cpu_name


def decoded_frames(clip: Path, count: int) -> list[np.ndarray]:
    import av

    with av.open(str(clip)) as c:
        out = []
        for f in c.decode(video=0):
            out.append(f.to_ndarray(format="rgb24"))
            if len(out) == count:
                break
    return out


def model_alone(up: object, frames: list[np.ndarray]) -> float:
    """Seconds for Upscaler.upscale_image on each frame (what the pipeline's model thread does)."""
    from esrgan.imageio import ImageData

    start = time.perf_counter()
    for f in frames:
        up.upscale_image(ImageData(f))  # type: ignore[attr-defined]
    return time.perf_counter() - start


def forward_only(up: object, frames: list[np.ndarray], batch: int) -> float:
    """Seconds for the forward passes alone (no tiling, no conversions), `batch` frames per pass."""
    import torch

    start = time.perf_counter()
    for i in range(0, len(frames), batch):
        x = torch.from_numpy(np.stack(frames[i : i + batch])).permute(0, 3, 1, 2).float() / 255
        up.runner(x)  # type: ignore[attr-defined]
    return time.perf_counter() - start


def end_to_end(up: object, clip: Path, dst: Path, codec: str, count: int, batch: int) -> float:
    """Seconds for esrgan.video.upscale_video over the first `count` frames of the clip."""
    from esrgan.video import upscale_video

    start = time.perf_counter()
    result = upscale_video(up, clip, dst, codec=codec, frames=(0, count), overwrite=True, frame_batch=batch)  # type: ignore[arg-type]
    assert result.frames == count
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument(
        "--size", default=None, help="clip size WxH (default: 96x64 on a CPU, 640x360 on a GPU)"
    )
    parser.add_argument("--model", default="realesrgan-x4plus", help="the real model: a name or a file")
    parser.add_argument(
        "--real-frames",
        type=int,
        help="frames for the real model (default: 4 on a CPU, --frames on a GPU; 0 = skip)",
    )
    parser.add_argument("--codecs", default="h264,ffv1")
    parser.add_argument("--batch", default="1,4", help="frames per forward pass in the batching rows")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="best of N runs per row, tiny model (shared CPUs)"
    )
    parser.add_argument("--smoke", action="store_true", help="toy sizes: checks the script, not speed")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (the clip and the outputs) in $TMPDIR"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-video-"))
    try:
        return run(args, work)
    finally:
        if args.keep:
            print(f"(work folder kept: {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from make_clip import make_clip

    from esrgan.device import resolve_device
    from esrgan.errors import EsrganError
    from esrgan.generator import RRDBNet
    from esrgan.upscale import Upscaler

    device = resolve_device(args.device)
    gpu = device.type != "cpu"
    if args.smoke:
        args.frames, args.real_frames, args.repeat, args.size, args.codecs = 6, 2, 1, "48x32", "h264"
    size = args.size or ("640x360" if gpu else "96x64")
    real_frames = args.real_frames if args.real_frames is not None else (args.frames if gpu else 4)
    w, h = (int(v) for v in size.split("x"))
    clip = make_clip(work / "clip.mp4", size=(w, h), fps=25, seconds=args.frames / 25)
    torch.manual_seed(0)
    cases: list[tuple[str, Upscaler, int]] = [
        ("tiny", Upscaler(RRDBNet(num_feat=16, num_block=2, num_grow=8, scale=4), device=str(device),
                          precision=args.precision), args.frames),
    ]  # fmt: skip
    if real_frames > 0:
        try:
            real = Upscaler.from_pretrained(args.model, device=str(device), precision=args.precision)
            cases.append((Path(args.model).stem, real, min(real_frames, args.frames)))
        except EsrganError as exc:
            print(f"({args.model} skipped: {exc})")
    load = os.getloadavg()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads; load average {load[0]:.1f} {load[1]:.1f} at the start; "
          f"model on {where}")  # fmt: skip
    print(f"clip: {w}x{h}, 25 fps, H.264 with AAC; outputs x4 = {4 * w}x{4 * h}\n")
    print("| model | frames | run | precision | frames/s | vs model alone |")
    print("|---|---:|---|---|---:|---:|")
    for name, up, count in cases:
        frames = decoded_frames(clip, count)
        model_alone(up, frames[:1])  # warm up (weights packed, kernels chosen)
        repeat = args.repeat if name == "tiny" or gpu else 1

        def best(run: Callable[[], float], repeat: int = repeat) -> float:
            return min(run() for _ in range(repeat))

        base = count / best(partial(model_alone, up, frames))
        print(f"| {name} | {count} | model alone (upscale_image) | {up.dtype} | {base:.2f} | 1.00 |")
        for batch in (int(b) for b in args.batch.split(",")):
            fps = count / best(partial(forward_only, up, frames, batch))
            label = f"forward passes only, {batch} frame{'s' if batch > 1 else ''} per pass"
            print(f"| {name} | {count} | {label} | {up.dtype} | {fps:.2f} | {fps / base:.2f} |")
        runs = [(codec, 1) for codec in args.codecs.split(",")]
        runs += [(runs[0][0], int(b)) for b in args.batch.split(",") if int(b) > 1]
        for codec, batch in runs:
            dst = work / f"{name}_{codec}.mkv"

            fps = count / best(partial(end_to_end, up, clip, dst, codec, count, batch))
            label = f"end to end, {codec}" + (f", --frame-batch {batch}" if batch > 1 else "")
            print(f"| {name} | {count} | {label} | {up.dtype} | {fps:.2f} | {fps / base:.2f} |")
    load = os.getloadavg()
    print(f"\nload average {load[0]:.1f} {load[1]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
