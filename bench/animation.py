"""Animated images (esrgan.animation): where the time of an animation goes, what repeated frames save, and the
memory its held frames take against the estimate the batch refuses by (docs/benchmarks.md, "Animations").

    .venv/bin/python bench/animation.py [--model realesr-animevideov3] [--size 160x120] [--frames 24]
                                        [--gif PATH] [--rss-outscale 8]

1. An animation made from a real photograph (scikit-image's astronaut): a pan of --frames frames, about every
   second one a view seen before (the pauses and cycles GIFs are made of), written by Pillow as GIF, APNG and
   lossless WebP. For each: esrgan.animation.upscale_animation end to end, and its parts measured apart: decoding
   (read_frames alone), the model (Upscaler.upscale_image of the distinct frames), holding and writing the output
   (AnimationWriter.add and save); the output's size. Baseline, in the same process: what one did before, every
   frame exported as a PNG and put through Upscaler.upscale_file (splitting and reassembling not counted).
2. A real GIF (--gif; default: pyenv's install recording where this machine has it): frames, distinct frames and
   the time to decode them all: the share of the model's work that repeated frames save on real content.
3. Peak memory: a fresh process per format upscales the pan at --rss-outscale (bigger frames, so the held frames
   stand out of torch's own memory) and reports its peak RSS above what it held after a warm-up on one frame,
   against esrgan.animation.animation_memory (what the batch checks before the first frame).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hostinfo import cpu_name
from PIL import Image

from esrgan.imagedata import ImageData

FORMATS = ("gif", "png", "webp")


def make_pan(folder: Path, frames: int, width: int, height: int) -> dict[str, Path]:
    """The astronaut panned, one step forward and half a step back: views 0, 1, 0, 2, 1, 3, 2, ... (no frame equal
    to the one before it, which Pillow's writers would merge into one)."""
    from skimage import data

    photo = data.astronaut()
    order = [0] + [v for step in range(1, frames) for v in (step, step - 1)]
    order = order[:frames]
    views = [
        np.ascontiguousarray(photo[40 + 3 * v : 40 + 3 * v + height, 60 + 5 * v : 60 + 5 * v + width])
        for v in range(max(order) + 1)
    ]
    images = [Image.fromarray(views[v]) for v in order]
    paths = {}
    for fmt in FORMATS:
        path = folder / f"pan.{fmt}"
        options = {"lossless": True} if fmt == "webp" else {}
        images[0].save(path, save_all=True, append_images=images[1:], duration=80, loop=0, **options)
        paths[fmt] = path
    return paths


def rss_child(model: str, src: str, outscale: float) -> None:
    """--rss-child: upscale src at outscale in this fresh process and print the peak RSS growth and the estimate."""
    from esrgan import Upscaler
    from esrgan.animation import animation_memory, upscale_animation
    from esrgan.imageio import AnimationWriter, read_frames

    up = Upscaler.from_pretrained(model, outscale=outscale)
    with read_frames(src) as frames:
        count, size, first = frames.count, frames.size, frames.first
    up.upscale_image(first)  # warm-up: the model's working memory is in the baseline
    before = _rss_now()
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / f"out{Path(src).suffix}"
        upscale_animation(up, src, dst)
        height, width = up.output_size(*size)
        fmt = AnimationWriter(dst, first).fmt
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    held = animation_memory(count, height, width, fmt)
    checked = held + up.host_bytes(first)[0]
    row = {
        "growth": peak - before,
        "held": held,
        "checked": checked,
        "size": f"{width}x{height}",
        "frames": count,
    }
    print(json.dumps(row))


def _rss_now() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesr-animevideov3", help="model name or file")
    parser.add_argument(
        "--size", default="160x120", help="frame size WxH of the made animation (default 160x120)"
    )
    parser.add_argument("--frames", type=int, default=24, help="frames of the made animation (default 24)")
    parser.add_argument("--gif", type=Path, default=Path.home() / ".pyenv" / "install_local_python.gif")
    parser.add_argument(
        "--rss-outscale", type=float, default=8.0, help="outscale of the memory rows (default 8)"
    )
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1], float(args.rss_child[2]))
        return

    from esrgan import Upscaler
    from esrgan.animation import frame_key, upscale_animation
    from esrgan.imageio import AnimationWriter, read_frames

    width, height = (int(v) for v in args.size.split("x"))
    up = Upscaler.from_pretrained(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench-animation-"))
    paths = make_pan(work, args.frames, width, height)
    with read_frames(paths["png"]) as frames:
        up.upscale_image(frames.first)  # warm-up
    print(f"# {cpu_name()}; model {args.model} ({up.precision_for(np.uint8)}), {args.frames} frames of "
          f"{width}x{height} (views 0, 1, 0, 2, 1, ...), x{up.scale:g}")  # fmt: skip
    print()
    print("| input -> output | end to end s | frames/s | decode s | model s | hold + write s | output KiB | "
          "every frame as a PNG s | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for fmt in FORMATS:
        src = paths[fmt]
        t = time.perf_counter()
        result = upscale_animation(up, src, work / f"out.{fmt}", overwrite=True)
        total = time.perf_counter() - t
        decode = model = write = 0.0
        writer = AnimationWriter(work / f"parts.{fmt}", _first(src))
        seen: dict[bytes, int] = {}
        with read_frames(src) as frames:
            it = iter(frames)
            while True:
                t = time.perf_counter()
                item = next(it, None)
                decode += time.perf_counter() - t
                if item is None:
                    break
                image, duration = item
                key = frame_key(image)
                if key in seen:
                    t = time.perf_counter()
                    writer.repeat(seen[key], duration)
                    write += time.perf_counter() - t
                    continue
                t = time.perf_counter()
                out = up.upscale_image(image)
                model += time.perf_counter() - t
                t = time.perf_counter()
                seen[key] = writer.add(out, duration)
                write += time.perf_counter() - t
        t = time.perf_counter()
        writer.save(overwrite=True)
        write += time.perf_counter() - t
        # baseline: every frame as a PNG file, upscaled one by one
        frames_dir = work / f"frames-{fmt}"
        frames_dir.mkdir(exist_ok=True)
        with Image.open(src) as im:
            for k in range(im.n_frames):
                im.seek(k)
                im.convert("RGB").save(frames_dir / f"{k:04d}.png")
        t = time.perf_counter()
        for png in sorted(frames_dir.glob("[0-9]*.png")):
            up.upscale_file(png, frames_dir / f"up_{png.name}", overwrite=True)
        baseline = time.perf_counter() - t
        size = (work / f"out.{fmt}").stat().st_size / 1024
        print(f"| {fmt} -> {fmt} ({result.upscaled} of {result.frames} frames through the model) | {total:.2f} | "
              f"{result.frames / total:.2f} | {decode:.2f} | {model:.2f} | {write:.2f} | {size:.0f} | "
              f"{baseline:.2f} | {baseline / total:.2f}x |")  # fmt: skip

    if args.gif.is_file():
        print()
        t = time.perf_counter()
        keys, count = set(), 0
        with read_frames(args.gif) as frames:
            h, w = frames.size
            for image, _ in frames:
                count += 1
                keys.add(frame_key(image))
        seconds = time.perf_counter() - t
        print(f"{args.gif} ({w}x{h}): {count} frames, {len(keys)} distinct: the model runs "
              f"{len(keys) / count:.0%} of the frames; decoding them all {seconds:.2f} s")  # fmt: skip

    print()
    print(f"peak memory above the warmed-up process, upscaling the pan at --outscale {args.rss_outscale:g}:")
    print()
    print("| output | frames | frame size | peak RSS growth MiB | frames' estimate MiB (animation_memory) | "
          "checked MiB (and one frame's upscale: Upscaler.host_bytes) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for fmt in FORMATS:
        proc = subprocess.run(
            [sys.executable, __file__, "--rss-child", args.model, str(paths[fmt]), str(args.rss_outscale)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {fmt} | {row['frames']} | {row['size']} | {row['growth'] / 2**20:.0f} | "
              f"{row['held'] / 2**20:.0f} | {row['checked'] / 2**20:.0f} |")  # fmt: skip


def _first(src: Path) -> ImageData:
    """The animation's first frame, with its metadata (what AnimationWriter takes as `like`)."""
    from esrgan.imageio import read_frames

    with read_frames(src) as frames:
        return frames.first


if __name__ == "__main__":
    main()
