"""Peak memory of one `esrgan serve` job (the web page's): the upscale, its result written, and the page's previews
(the bicubic "before" at the result's size and, for a TIFF result, an 8-bit "after"), against the server's own
estimate (UpscalerEngine.memory_needed), which decides whether a job is refused before the model runs.

    .venv/bin/python bench/serve_memory.py [--sizes 512,768,1024] [--formats png,tif,rgba,stream]
                                           [--baseline-src DIR] [--times-only]

Each case runs in a child process: a JobService with a tiny random x4 RRDBNet (1 block, 8 features: the model's
own memory is small, so what differs is the result's and the previews' handling), a first 64x64 job to load the
model and warm the allocators, then the peak RSS is reset (/proc/self/clear_refs) and one job on a crop of
scikit-image's astronaut tiled to SIZE x SIZE is run. "peak" is VmHWM minus the RSS before that job. Format
"stream": the PNG job written as it is computed (the server's way since session 28 for a result that does not fit
whole: forced here whatever the memory free), against UpscalerEngine.streamed_memory_needed. --baseline-src:
the same cases with the package from another checkout's src/ (e.g. `git worktree add /tmp/base HEAD~1`), in the
same run, for the ratio. A second table times the "before" preview alone, in this process (best of 3): made whole
(MATLAB bicubic of the input at the result's size in float32, as until session 27) and a band of rows at a time
(serve._before_rows), for the same sizes at x4 and one downscale.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def _status(field: str) -> int:
    """A /proc/self/status field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(size: int, fmt: str, model: Path) -> dict[str, float]:
    from PIL import Image
    from skimage import data

    from esrgan import serve
    from esrgan.imageio import read_image
    from esrgan.upscale import Upscaler

    service = serve.JobService(serve.file_models({"m": model}), limits=serve.Limits(max_pixels=64 * 2**20))
    if (
        fmt == "stream"
    ):  # the streamed path, whatever the memory free (the check would choose it only when short)
        # (streamed, reserve) since session 32, a bool before (a --baseline-src checkout's)
        plan = "tuple" in str(serve.JobService._check_memory.__annotations__.get("return"))
        service._check_memory = lambda job, engine, image: (True, 0) if plan else True  # type: ignore[method-assign]

    def run(pixels: np.ndarray) -> dict[str, object]:
        job_id, folder = service.new_folder()
        ext = {"png": "PNG", "tif": "TIFF", "rgba": "PNG", "stream": "PNG"}[fmt]
        if fmt == "rgba":  # a transparency gradient across the photo
            ramp = np.linspace(0, 255, pixels.shape[1], dtype=np.uint8)[None, :].repeat(pixels.shape[0], 0)
            pixels = np.dstack([pixels, ramp])
        Image.fromarray(pixels).save(folder / "input", format=ext)
        service.submit(job_id, folder, f"photo.{ext.lower()}", serve.JobOptions(model="m"))
        while (job := service.get(job_id)) is not None and job["state"] not in ("done", "error"):
            time.sleep(0.02)
        assert job is not None and job["state"] == "done", job
        return job

    photo = np.tile(data.astronaut(), (3, 3, 1))
    big = np.ascontiguousarray(photo[:size, :size])
    with tempfile.TemporaryDirectory() as tmp:
        if fmt == "rgba":
            ramp = np.linspace(0, 255, size, dtype=np.uint8)[None, :].repeat(size, 0)
            Image.fromarray(np.dstack([big, ramp])).save(Path(tmp) / "in.png")
        else:
            Image.fromarray(big).save(Path(tmp) / "in.png")
        engine = serve.UpscalerEngine(Upscaler.from_file(model, device="cpu"))
        image = read_image(Path(tmp) / "in.png")
        streamed = engine.streamed_memory_needed(image) if fmt == "stream" else None
        estimate = engine.memory_needed(image)[0] if streamed is None else streamed
        del engine, image
    run(np.ascontiguousarray(photo[:64, :64]))
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status("VmRSS")
    start = time.perf_counter()
    job = run(big)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") - before
    service.close()
    out = (int(job["out_width"]), int(job["out_height"]))  # type: ignore[call-overload]
    return {"peak": peak, "estimate": estimate, "seconds": seconds, "out_w": out[0], "out_h": out[1]}


def measure(src: Path, size: int, fmt: str, model: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "2"}
    command = [sys.executable, __file__, "--child", str(size), fmt, str(model)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{src}: size {size} {fmt} failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def whole_preview(image: object, size: tuple[int, int]) -> np.ndarray:
    """The "before" preview as it was made until session 27: the MATLAB bicubic of the whole input, in float32."""
    from esrgan.imageio import from_float
    from esrgan.resize import imresize_np

    return from_float(np.clip(imresize_np(image.to_float(), size=size), 0.0, 1.0), 8)  # type: ignore[attr-defined]


def preview_times(sizes: list[int]) -> None:
    from skimage import data

    from esrgan import serve
    from esrgan.imageio import ImageData

    photo = np.tile(data.astronaut(), (3, 3, 1))
    print("\n| input | preview | whole | bands | bands / whole |\n|---|---|---|---|---|")
    cases = [((s, s), (4 * s, 4 * s)) for s in sizes] + [((1024, 1024), (400, 400))]
    for (h, w), size in cases:
        image = ImageData(pixels=np.ascontiguousarray(photo[:h, :w]))
        best = {}
        for name, make in (
            ("whole", lambda image=image, size=size: whole_preview(image, size)),
            ("bands", lambda image=image, size=size: list(serve._before_rows(image, size))),
        ):
            times = []
            for _ in range(3):
                start = time.perf_counter()
                make()
                times.append(time.perf_counter() - start)
            best[name] = min(times)
        print(
            f"| {w}x{h} | {size[1]}x{size[0]} | {best['whole']:.3f} s | {best['bands']:.3f} s |"
            f" {best['bands'] / best['whole']:.2f} |",
            flush=True,
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="512,768,1024")
    parser.add_argument("--formats", default="png,tif")
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare with")
    parser.add_argument("--times-only", action="store_true", help="only the preview times")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(SRC))
    import torch
    from hostinfo import cpu_name

    from esrgan.checkpoints import save_model
    from esrgan.generator import RRDBNet

    torch.manual_seed(0)
    mib = 2**20
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"# {cpu_name()}, {os.cpu_count()} CPUs; torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}"
    )
    if args.times_only:
        preview_times(sizes)
        return
    print(
        "| input | result | format | peak (this checkout) | estimate | estimate / peak |"
        + (" peak (baseline) | estimate (baseline) | peak / baseline |" if args.baseline_src else "")
    )
    print("|---|---|---|---|---|---|" + ("---|---|---|" if args.baseline_src else ""))
    with tempfile.TemporaryDirectory() as tmp:
        model = save_model(
            Path(tmp) / "tiny-x4.safetensors", RRDBNet(num_feat=8, num_block=1, num_grow=8, scale=4)
        )
        for size in sizes:
            for fmt in args.formats.split(","):
                new = measure(SRC, size, fmt, model)
                row = (
                    f"| {size}x{size} | {new['out_w']:.0f}x{new['out_h']:.0f} | {fmt} | {new['peak'] / mib:.0f} MiB"
                    f" | {new['estimate'] / mib:.0f} MiB | {new['estimate'] / new['peak']:.2f} |"
                )
                if args.baseline_src:
                    old = measure(args.baseline_src, size, fmt, model)
                    row += (
                        f" {old['peak'] / mib:.0f} MiB | {old['estimate'] / mib:.0f} MiB |"
                        f" {new['peak'] / old['peak']:.2f} |"
                    )
                print(row, flush=True)
    preview_times(sizes)


if __name__ == "__main__":
    main()
