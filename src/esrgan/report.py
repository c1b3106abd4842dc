"""The visual report of `esrgan evaluate --report DIR`: one mosaic per image and an index page with the numbers.

Whole-image PSNR/SSIM differences of a few tenths of a dB say little about what a viewer sees, so every image gets
the same zoomed crop from bicubic, each model and HR side by side (nearest-neighbour zoom: no smoothing added by the
viewer), labelled with that image's scores. The crop is chosen where the bicubic baseline loses the most (largest
windowed squared error on Y): the region where super-resolution has something to do, and the same region for
every model, so runs with different models stay comparable.

Files: DIR/<image>_mosaic.png, DIR/index.html, DIR/index.md (same content; the Markdown renders on code hosts):
report_files lists them, so that a caller can refuse the ones that exist before any work is done.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path, atomic_write_bytes
from .metrics import rgb_to_y
from .results import BICUBIC, EvalResult, ImageResult, Scores, table_rows

__all__ = [
    "INDEX_FILES",
    "choose_crop",
    "mosaic",
    "mosaic_path",
    "report_files",
    "write_index",
    "write_mosaic",
]

INDEX_FILES = ("index.html", "index.md")  # written in this order, after every mosaic

CROP = (
    96  # HR pixels on a side: small enough to see pixels when zoomed, large enough to recognise the content
)
PANEL = 288  # panel side in screen pixels (the crop is zoomed by PANEL // crop)
MAX_COLUMNS = 5
_FONT_SIZE = 15
_LINE = 19
_PAD = 8
_BG = (255, 255, 255)
_TEXT = (20, 20, 20)
_GOOD = (0, 120, 40)
_BAD = (190, 30, 30)
_BOX = (255, 40, 40)


def choose_crop(hr: np.ndarray, baseline: np.ndarray, size: int, border: int = 0) -> tuple[int, int]:
    """(top, left) of the size x size window, inside ``border``, where ``baseline`` differs most from ``hr`` on Y.

    Windowed sums come from an integral image, so every position is considered. 16-bit images are compared as
    they are (their scale does not move the window), not through 8-bit previews.
    """
    err = (rgb_to_y(hr) - rgb_to_y(baseline)) ** 2
    h, w = err.shape
    if h - 2 * border < size or w - 2 * border < size:
        border = 0  # a small image: better a crop touching the border than none
    region = err[border : h - border, border : w - border]
    ii = np.pad(region.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = ii[size:, size:] - ii[:-size, size:] - ii[size:, :-size] + ii[:-size, :-size]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top) + border, int(left) + border


def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=_FONT_SIZE)


def _pil(img: np.ndarray) -> Image.Image:
    """An image panel; a 16-bit result (`esrgan evaluate --bit-depth 16`) as its 8-bit preview."""
    if img.dtype == np.uint16:
        img = np.round(img / 257.0).astype(np.uint8)
    return Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).convert("RGB")


def _label_lines(method: str, s: Scores, base: Scores) -> list[tuple[str, tuple[int, int, int]]]:
    """Name, scores, and for models the difference to bicubic coloured by whether it is better."""
    lines = [(method, _TEXT), (f"PSNR {s.psnr:.2f} dB   SSIM {s.ssim:.4f}", _TEXT)]
    extra = [f"{k} {v:.{d}f}" for k, v, d in (("NIQE", s.niqe, 2), ("LPIPS", s.lpips, 3)) if v is not None]
    if extra:
        lines.append(("   ".join(extra), _TEXT))
    if method != BICUBIC:
        better = [s.psnr > base.psnr, s.ssim > base.ssim]
        parts = [f"{s.psnr - base.psnr:+.2f} dB", f"{s.ssim - base.ssim:+.4f}"]
        if s.niqe is not None and base.niqe is not None:
            parts.append(f"NIQE {s.niqe - base.niqe:+.2f}")
            better.append(s.niqe < base.niqe)
        if s.lpips is not None and base.lpips is not None:
            parts.append(f"LPIPS {s.lpips - base.lpips:+.3f}")
            better.append(s.lpips < base.lpips)
        wins = sum(better)
        colour = _GOOD if wins == len(better) else _BAD if wins == 0 else _TEXT
        lines.append(("vs bicubic: " + "  ".join(parts), colour))
    return lines


def mosaic(
    hr: np.ndarray,
    outputs: dict[str, np.ndarray],
    item: ImageResult,
    *,
    scale: int,
    crop_border: int = 0,
    crop: int = CROP,
) -> Image.Image:
    """The mosaic of one image: HR overview with the crop marked, then the crop from every method and from HR."""
    h, w = hr.shape[:2]
    size = max(1, min(crop, h, w))
    top, left = choose_crop(hr, outputs[BICUBIC], size, crop_border)
    zoom = max(1, PANEL // size)
    side = size * zoom

    overview = _pil(hr)
    overview.thumbnail((side, side), Image.Resampling.LANCZOS)
    f = overview.width / w
    ImageDraw.Draw(overview).rectangle(
        [left * f, top * f, (left + size) * f - 1, (top + size) * f - 1], outline=_BOX, width=2
    )
    base = item.scores[BICUBIC]
    panels: list[tuple[Image.Image, list[tuple[str, tuple[int, int, int]]]]] = [
        (
            overview,
            [
                (f"{item.name}  {w}x{h}", _TEXT),
                (f"crop {size}x{size} at x={left}, y={top}", _TEXT),
                (f"x{scale}; crop shown {zoom}x (nearest)", _TEXT),
            ],
        )
    ]
    for method, out in outputs.items():
        tile = _pil(out[top : top + size, left : left + size]).resize((side, side), Image.Resampling.NEAREST)
        panels.append((tile, _label_lines(method, item.scores[method], base)))
    hr_tile = _pil(hr[top : top + size, left : left + size]).resize((side, side), Image.Resampling.NEAREST)
    hr_lines = [("HR (ground truth)", _TEXT)]
    if item.hr_niqe is not None:
        hr_lines.append((f"NIQE {item.hr_niqe:.2f}", _TEXT))
    panels.append((hr_tile, hr_lines))

    font = _font()
    text_h = _LINE * max(len(lines) for _, lines in panels) + _PAD
    cols = min(MAX_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / cols)
    cell_w, cell_h = side + _PAD, side + text_h + _PAD
    # a label may be wider than its panel (long model names): widen the cells rather than cut the text
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest = max(draw_probe.textlength(t, font=font) for _, lines in panels for t, _ in lines)
    cell_w = max(cell_w, int(widest) + _PAD * 2)
    canvas = Image.new("RGB", (cols * cell_w + _PAD, rows * cell_h + _PAD), _BG)
    draw = ImageDraw.Draw(canvas)
    for k, (img, lines) in enumerate(panels):
        x0 = _PAD + (k % cols) * cell_w
        y0 = _PAD + (k // cols) * cell_h
        canvas.paste(img, (x0 + (side - img.width) // 2, y0 + (side - img.height) // 2))
        for j, (text, colour) in enumerate(lines):
            draw.text((x0, y0 + side + 4 + j * _LINE), text, fill=colour, font=font)
    return canvas


def mosaic_path(report_dir: Path, name: str) -> Path:
    """Where the mosaic of the image named ``name`` in the tables (evaluate.image_names) is written."""
    return report_dir / f"{name}_mosaic.png"


def report_files(report_dir: Path, names: list[str]) -> list[Path]:
    """Every file a report of the images named ``names`` writes in report_dir, in the order they are written: a
    mosaic per image (an image that fails gets none), then the index pages. Nothing else there is touched."""
    return [mosaic_path(report_dir, name) for name in names] + [report_dir / f for f in INDEX_FILES]


def write_mosaic(
    report_dir: Path,
    item: ImageResult,
    hr: np.ndarray,
    outputs: dict[str, np.ndarray],
    result: EvalResult,
    *,
    overwrite: bool = False,
) -> Path:
    """Write DIR/<image>_mosaic.png atomically and return its path; an existing file is replaced only with
    overwrite (else OutputExistsError, and nothing is written)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    img = mosaic(hr, outputs, item, scale=result.scale, crop_border=result.crop_border)
    dest = mosaic_path(report_dir, item.name)
    with atomic_path(dest, overwrite=overwrite) as tmp:
        img.save(tmp, format="PNG", optimize=True)
    return dest


def _protocol(result: EvalResult) -> str:
    lr = (
        f"LR files from {result.lr_dir}"
        if result.lr_dir
        else "LR = MATLAB bicubic downscale of HR, rounded to uint" + str(result.bit_depth)
    )
    if result.bit_depth == 16:
        lr += "; at 16-bit precision (files read at 16 bits, LR and outputs on 16-bit levels, metrics unrounded)"
    y = "rounded" if result.round_y else "unrounded"
    text = (
        f"x{result.scale}; {lr}; HR cut to a multiple of {result.scale}; PSNR (dB) and SSIM on the BT.601 Y channel "
        f"({y}), {result.crop_border}-pixel border cropped; higher is better"
    )
    if result.niqe:
        text += "; NIQE: no-reference, lower is better (HR NIQE: the ground truth's own score)"
    if result.lpips:
        text += f"; LPIPS ({result.lpips}, v0.1) on RGB of the same region, lower is better"
    text += "; Δ = model - bicubic."
    how = result.inference_text()
    return text + (f" {how[0].upper()}{how[1:]}." if how else "")


def _models_line(result: EvalResult) -> str:
    models = [f"{m} ({result.sources[m]})" for m in result.methods[1:] if m in result.sources]
    saved = [f"{m} ({folder})" for m, folder in result.sr_dirs.items()]
    parts = [f"Models: {', '.join(models)}." if models else "No model."]
    if saved:
        parts.append(f"SR results read from folders: {', '.join(saved)}.")
    return " ".join(parts) + f" Wall time {result.seconds:.1f} s for {len(result.images)} images."


def _markdown(result: EvalResult) -> str:
    header, rows = table_rows(result)
    out = [f"# Evaluation of {result.hr_dir}", "", _protocol(result), "", _models_line(result), ""]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    if result.failed:
        out += ["", "## Not evaluated", ""] + [f"- {reason}" for _, reason in result.failed]
    for im, row in zip(result.images, rows, strict=False):
        out += ["", f"## {im.name}", "", "| " + " | ".join(header) + " |"]
        out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        out.append("| " + " | ".join(row) + " |")
        if im.mosaic is not None:
            out += ["", f"![{im.name}]({quote(im.mosaic.name)})"]
    return "\n".join(out) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
    "tbody tr:last-child{font-weight:bold}section tbody tr:last-child{font-weight:normal}"
    "img{max-width:100%;image-rendering:pixelated}"
)


def _html(result: EvalResult) -> str:
    header, rows = table_rows(result)
    title = html.escape(f"Evaluation of {result.hr_dir}")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1><p>{html.escape(_protocol(result))}</p><p>{html.escape(_models_line(result))}</p>",
        _html_table(header, rows),
    ]
    if result.failed:
        items = "".join(f"<li>{html.escape(reason)}</li>" for _, reason in result.failed)
        parts.append(f"<h2>Not evaluated</h2><ul>{items}</ul>")
    for im, row in zip(result.images, rows, strict=False):
        parts.append(f"<section><h2>{html.escape(im.name)}</h2>{_html_table(header, [row])}")
        if im.mosaic is not None:
            src = quote(im.mosaic.name)
            parts.append(f"<img src='{src}' alt='{html.escape(im.name)}: crops from every method'>")
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_index(result: EvalResult, report_dir: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """DIR/index.html and DIR/index.md: the results table, then every image's row and mosaic. Each is written
    atomically; an existing one is replaced only with overwrite (else OutputExistsError)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    html_name, md_name = INDEX_FILES
    return (
        atomic_write_bytes(report_dir / html_name, _html(result).encode(), overwrite=overwrite),
        atomic_write_bytes(report_dir / md_name, _markdown(result).encode(), overwrite=overwrite),
    )
