"""`esrgan demo`: upscale a real photograph bundled with scikit-image and show bicubic next to the model.

The photo is scikit-image's `chelsea` (a cat, 451x300, public domain, shipped in the package's data folder), so
the demo needs no download. The comparison picture puts the same zoomed crop of the MATLAB-bicubic upscale and of
the model's output side by side, under a view of the whole image with the crop marked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import EsrganError
from .imageio import ImageData, write_image
from .resize import imresize_np
from .upscale import Upscaler
from .zoo import DEFAULT_MODEL

CROP = 64  # LR pixels of the zoomed crop
PANEL = 384  # pixels of each zoomed panel in the comparison


@dataclass(frozen=True)
class DemoResult:
    input: Path
    output: Path
    comparison: Path
    seconds: float
    device: str
    precision: str
    skipped: bool


def demo_photo() -> np.ndarray:
    """The bundled photograph as HxWx3 uint8."""
    try:
        from skimage import data
    except ImportError:
        raise EsrganError(
            'the demo photo comes with scikit-image: pip install "esrgan[demo]" (scripts/setup.sh does)'
        ) from None
    return np.ascontiguousarray(data.chelsea())


def run_demo(
    output: Path,
    *,
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
) -> DemoResult:
    """Upscale the photo and write input, output and comparison PNGs into `output`.

    Existing demo files are left as they are (and reported) unless overwrite is set: like every command here, the
    demo never replaces a file it was not asked to.
    """
    upscaled = sorted(output.glob("chelsea_x*.png"))
    paths = (
        output / "chelsea.png",
        upscaled[0] if upscaled else output / "chelsea_x4.png",
        output / "comparison.png",
    )
    if not overwrite and all(p.is_file() for p in paths):
        return DemoResult(*paths, seconds=0.0, device="-", precision="-", skipped=True)
    photo = demo_photo()
    upscaler = Upscaler.from_pretrained(model, device=device, precision=precision)  # a name or a file
    paths = (
        paths[0],
        output / f"chelsea_x{upscaler.model.scale}.png",
        paths[2],
    )  # named by the model's scale
    there = [p for p in paths if p.exists()]
    if there and not overwrite:  # some demo files but not all: never replaced unasked
        raise EsrganError(
            f"{there[0]}: already there (a demo file of another run, or yours): --overwrite replaces the demo's "
            "files, or choose another folder with -o"
        )
    start = time.perf_counter()
    sr = upscaler.upscale(photo)
    seconds = time.perf_counter() - start
    scale = upscaler.model.scale
    bicubic = np.clip(np.rint(imresize_np(photo, scale=scale)), 0, 255).astype(np.uint8)
    for path, pixels in ((paths[0], photo), (paths[1], sr)):
        write_image(path, ImageData(pixels=pixels), overwrite=True)
    write_image(paths[2], ImageData(pixels=comparison(bicubic, sr, scale, model)), overwrite=True)
    return DemoResult(
        *paths,
        seconds=seconds,
        device=str(upscaler.device),
        precision=upscaler.last_precision,
        skipped=False,
    )


def detail_crop(image: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the size x size window with the most gradient energy: where upscaling shows."""
    grey = image.astype(np.float32).mean(axis=2)
    energy = np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1, :]
    integral = np.pad(energy, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    h, w = energy.shape
    if h < size or w < size:
        return 0, 0
    sums = (
        integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    )
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y), int(x)


def comparison(bicubic: np.ndarray, sr: np.ndarray, scale: int, model: str) -> np.ndarray:
    """Whole image (crop marked) above two zoomed panels: bicubic | model."""
    lr_h, lr_w = bicubic.shape[0] // scale, bicubic.shape[1] // scale
    crop = min(CROP, lr_h, lr_w)
    y, x = detail_crop(bicubic[::scale, ::scale], crop)
    box = (x * scale, y * scale, (x + crop) * scale, (y + crop) * scale)
    panels = [
        Image.fromarray(img).crop(box).resize((PANEL, PANEL), Image.Resampling.NEAREST)
        for img in (bicubic, sr)
    ]
    gap, label_h = 8, 28
    width = 2 * PANEL + gap
    overview = Image.fromarray(sr)
    overview = overview.resize(
        (width, round(overview.height * width / overview.width)), Image.Resampling.LANCZOS
    )
    ratio = width / sr.shape[1]
    canvas = Image.new("RGB", (width, overview.height + gap + label_h + PANEL), "white")
    canvas.paste(overview, (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([round(v * ratio) for v in box], outline=(255, 40, 40), width=3)
    font = ImageFont.load_default(size=18)
    top = overview.height + gap
    for i, (panel, label) in enumerate(zip(panels, (f"bicubic x{scale}", f"{model} x{scale}"), strict=True)):
        left = i * (PANEL + gap)
        draw.text((left + 4, top + 4), label, fill="black", font=font)
        canvas.paste(panel, (left, top + label_h))
    return np.asarray(canvas)
