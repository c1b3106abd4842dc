"""Evaluation results: the types `esrgan evaluate` fills in and the ways they are written (text table, JSON, CSV).

A module of its own so that esrgan.evaluate (which computes them) and esrgan.report (which draws them) both import
it and not each other.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes

__all__ = [
    "BICUBIC",
    "METRICS",
    "EvalResult",
    "ImageResult",
    "Inference",
    "Scores",
    "format_table",
    "table_rows",
    "write_csv",
    "write_json",
]

BICUBIC = "bicubic"
"""Name of the baseline column: MATLAB bicubic upscaling of the LR image."""


@dataclass(frozen=True)
class Scores:
    psnr: float  # dB, Y channel; inf for an exact reconstruction
    ssim: float
    niqe: float | None  # None when NIQE was not asked for or the image is too small for it
    lpips: float | None = None  # None when LPIPS was not asked for or the cropped image is too small for it


@dataclass(frozen=True)
class Inference:
    """How a model's output was computed: these change its scores (bf16 moves PSNR by up to 0.06 dB an image, the
    tiles' blending and the engines' arithmetic by less), so every table, file and report states them."""

    device: str  # torch's name of it: "cpu", "cuda:0"
    precision: str  # as computed, not as asked: "fp32", "bf16", "fp16"
    engine: str  # esrgan.device.ModelRunner's: "ncnn", "packed", "module", "compiled"
    tile: int | None = (
        None  # tile side in LR pixels, 0 = the whole image in one pass; None = no image run yet
    )

    def tile_text(self) -> str:
        return "-" if self.tile is None else "whole image" if self.tile == 0 else f"{self.tile}"


@dataclass
class ImageResult:
    name: str  # file stem (the file name where stems collide: evaluate.image_names), the key everything else uses
    file: Path
    hr_size: tuple[int, int]  # (height, width) after cutting to a multiple of the scale
    scores: dict[str, Scores]  # method -> scores; bicubic first, then the models in the order given
    hr_niqe: float | None = None  # the reference image's own NIQE: what "natural" scores on this image
    seconds: dict[str, float] = field(default_factory=dict)  # model -> upscaling time for this image
    mosaic: Path | None = None  # the visual report's mosaic of this image, when one was written
    inference: dict[str, Inference] = field(default_factory=dict)  # model -> how its output here was computed


@dataclass
class EvalResult:
    hr_dir: Path
    lr_dir: Path | None
    scale: int
    crop_border: int
    round_y: bool
    niqe: bool
    methods: list[str]  # bicubic, then one name per model
    sources: dict[str, str]  # model name -> what the user passed (zoo name or file)
    sr_dirs: dict[str, Path] = field(
        default_factory=dict
    )  # column name -> folder of SR results made elsewhere
    lpips: str | None = None  # the LPIPS network ("alex", "vgg") when LPIPS was computed
    loaded: dict[str, Inference] = field(
        default_factory=dict
    )  # model -> device, precision and engine as loaded
    tile: int | None = None  # the tile asked for (None: automatic, from the free memory; 0: whole images)
    bit_depth: int = 8  # 16: LR, outputs and metrics at 16-bit precision (esrgan.evaluate, module docstring)
    value_range: tuple[float, float] | None = (
        None  # measurements mapped from these stored values (else their own)
    )
    images: list[ImageResult] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)
    seconds: float = 0.0  # wall time of the whole evaluation

    def scored(self, key: str) -> list[ImageResult]:
        """The images a mean of metric `key` covers: those where every method (and for NIQE the HR) has a finite
        value, so that every method's mean, and so every difference of means, is over the same images. An image
        left out: NIQE or LPIPS missing for one method (too small, a flat output), or an exact reconstruction
        (infinite PSNR), which would make the set's mean infinite."""
        out = []
        for im in self.images:
            values = [getattr(im.scores[m], key) for m in self.methods]
            if key == "niqe":
                values.append(im.hr_niqe)
            if all(v is not None and math.isfinite(v) for v in values):
                out.append(im)
        return out

    def mean(self, method: str) -> Scores:
        """Mean over the evaluated images, as the literature reports a set; each metric over `scored(metric)`."""

        def over(key: str) -> float | None:
            values = [getattr(im.scores[method], key) for im in self.scored(key)]
            return float(np.mean(values)) if values else None

        psnr, ssim = over("psnr"), over("ssim")
        return Scores(
            psnr=math.nan if psnr is None else psnr,  # no image (or every one exact): no mean
            ssim=math.nan if ssim is None else ssim,
            niqe=over("niqe"),
            lpips=over("lpips"),
        )

    def mean_hr_niqe(self) -> float | None:
        """The HR's mean NIQE over the images the methods' NIQE means cover."""
        values = [im.hr_niqe for im in self.scored("niqe") if im.hr_niqe is not None]
        return float(np.mean(values)) if values else None

    def mean_counts(self) -> dict[str, int]:
        """How many images each metric's mean covers (all of them, unless `scored` left some out)."""
        return {key: len(self.scored(key)) for key, _, _ in _metrics(self)}

    def inference(self, method: str) -> dict[str, str] | None:
        """How ``method``'s outputs were computed, over the scored images (several values joined by ", ", in the
        order first met: a NaN's fp32 recomputation, automatic tiles that differ with the image size); None for
        what no model computed (bicubic)."""
        if method not in self.loaded:
            return None
        runs = [im.inference[method] for im in self.images if method in im.inference] or [self.loaded[method]]

        def joined(values: list[str]) -> str:
            return ", ".join(dict.fromkeys(values))

        tiles = joined([r.tile_text() for r in runs])
        asked = (
            "automatic" if self.tile is None else "whole images" if self.tile == 0 else f"at most {self.tile}"
        )
        return {
            "device": joined([r.device for r in runs]),
            "precision": joined([r.precision for r in runs]),
            "engine": joined([r.engine for r in runs]),
            "tile": f"{tiles} ({asked})",
        }

    def inference_text(self) -> str:
        """One line for the table's note and the report: each model's device, precision, engine and tile."""
        parts = []
        for m in self.methods:
            info = self.inference(m)
            if info is not None:
                parts.append(
                    f"{m} on {info['device']} in {info['precision']} ({info['engine']} engine), tile "
                    f"{info['tile']}"
                )
        return "inference: " + "; ".join(parts) if parts else ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: protocol, per-image scores, means and failures."""
        return {
            "protocol": {
                "scale": self.scale,
                "crop_border": self.crop_border,
                "metric_channel": "Y (BT.601, MATLAB rgb2ycbcr)",
                "round_y": self.round_y,
                "lr": str(self.lr_dir)
                if self.lr_dir
                else f"MATLAB bicubic downscale of HR, rounded to uint{self.bit_depth}",
                "bit_depth": self.bit_depth,
                "value_range": None if self.value_range is None else list(self.value_range),
                "niqe": self.niqe,
                "lpips": self.lpips,
                # per model: device, precision as computed, engine, tile side in LR pixels ("whole image": one pass)
                "inference": {m: info for m in self.methods if (info := self.inference(m)) is not None},
            },
            "hr_dir": str(self.hr_dir),
            "methods": self.methods,
            "models": {
                m: {"source": self.sources[m], "seconds": sum(im.seconds.get(m, 0.0) for im in self.images)}
                for m in self.methods[1:]
                if m in self.sources
            },
            "sr_dirs": {m: str(folder) for m, folder in self.sr_dirs.items()},  # columns of saved SR results
            "images": [
                {
                    "name": im.name,
                    "file": str(im.file),
                    "hr_size": list(im.hr_size),
                    "hr_niqe": im.hr_niqe,
                    "scores": {m: self._scores_dict(s) for m, s in im.scores.items()},
                    "seconds": im.seconds,
                    "inference": {
                        m: {"precision": r.precision, "engine": r.engine, "tile": r.tile_text()}
                        for m, r in im.inference.items()
                    },
                    "mosaic": str(im.mosaic) if im.mosaic else None,
                }
                for im in self.images
            ],
            "mean": {m: self._scores_dict(self.mean(m)) for m in self.methods},
            "mean_images": self.mean_counts(),  # per metric, the images its mean covers (see EvalResult.scored)
            "failed": [{"file": str(p), "error": msg} for p, msg in self.failed],
            "seconds": self.seconds,
        }

    def _scores_dict(self, s: Scores) -> dict[str, float | str | None]:
        """One method's scores; the lpips key only when LPIPS was computed in this run."""
        out = {"psnr": _json_float(s.psnr), "ssim": _json_float(s.ssim), "niqe": _json_float(s.niqe)}
        if self.lpips is not None:
            out["lpips"] = _json_float(s.lpips)
        return out


def _json_float(v: float | None) -> float | str | None:
    """JSON has no inf/nan: an exact reconstruction's PSNR is written as the string "inf"."""
    if v is None or math.isfinite(v):
        return v
    return str(v)


# --- output ---------------------------------------------------------------------------------------------------------
def _fmt(v: float | None, digits: int) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if math.isfinite(v) else str(v)


def _delta(v: float | None, base: float | None, digits: int) -> str:
    if v is None or base is None or not (math.isfinite(v) and math.isfinite(base)):
        return ""
    return f"{v - base:+.{digits}f}"


METRICS = (("psnr", "PSNR", 3), ("ssim", "SSIM", 4), ("niqe", "NIQE", 3), ("lpips", "LPIPS", 4))
"""(field, header, decimals) of every metric, in table order; the table, CSV and report share these."""


def _metrics(result: EvalResult) -> list[tuple[str, str, int]]:
    off = {"niqe"} if not result.niqe else set()
    if result.lpips is None:
        off.add("lpips")
    return [m for m in METRICS if m[0] not in off]


def table_rows(result: EvalResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per image, then the mean) of the results table: for every method each metric, and for
    the models its difference to bicubic right after it."""
    header = ["image"]
    for method in result.methods:
        for _, label, _ in _metrics(result):
            header.append(f"{method} {label}")
            if method != BICUBIC:
                header.append("Δ")
    if result.niqe:
        header.append("HR NIQE")
    rows = []
    entries: list[tuple[str, dict[str, Scores], float | None]] = [
        (im.name, im.scores, im.hr_niqe) for im in result.images
    ]
    if result.images:
        entries.append(
            (
                f"mean ({len(result.images)})",
                {m: result.mean(m) for m in result.methods},
                result.mean_hr_niqe(),
            )
        )
    for name, scores, hr_niqe in entries:
        row = [name]
        base = scores[BICUBIC]
        for method in result.methods:
            for key, _, digits in _metrics(result):
                v = getattr(scores[method], key)
                row.append(_fmt(v, digits))
                if method != BICUBIC:
                    row.append(_delta(v, getattr(base, key), digits))
        if result.niqe:
            row.append(_fmt(hr_niqe, 3))
        rows.append(row)
    return header, rows


def format_table(result: EvalResult) -> str:
    """The per-image table and the mean as aligned text (Y-PSNR dB, Y-SSIM, NIQE lower = better; Δ vs bicubic)."""
    header, rows = table_rows(result)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for k, r in enumerate([header, *rows]):
        if rows and k == len(rows):  # the mean row (none when no image was scored)
            lines.append("  ".join("-" * w for w in widths))
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    note = (
        f"x{result.scale}, Y channel (BT.601{', rounded' if result.round_y else ''}), {result.crop_border}-pixel border "
        "cropped"
        + (
            ", at 16-bit precision (files read at 16 bits, LR and outputs on 16-bit levels)"
            if result.bit_depth == 16
            else ""
        )
        + "; PSNR in dB (higher is better), SSIM (higher is better)"
        + (", NIQE (lower is better)" if result.niqe else "")
        + (f", LPIPS-{result.lpips} on RGB (lower is better)" if result.lpips else "")
        + "; Δ = model - bicubic"
    )
    if result.inference_text():
        note += "\n" + result.inference_text()
    counts = result.mean_counts()
    partial = [
        f"{label} over {counts[key]} of {len(result.images)}"
        for key, label, _ in _metrics(result)
        if result.images and counts[key] < len(result.images)
    ]
    if partial:  # the means cover the same images for every method: name what was left out
        note += (
            "\nmeans: "
            + ", ".join(partial)
            + " images (the others lack the score for some method: too small, a "
            "flat output, or an exact reconstruction's infinite PSNR)"
        )
    return "\n".join([*lines, note])


def write_json(result: EvalResult, path: str | Path, *, overwrite: bool = False) -> Path:
    """The whole result as JSON, written atomically; an existing file is replaced only with overwrite (else
    OutputExistsError, and nothing is written)."""
    data = json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"
    return atomic_write_bytes(path, data.encode(), overwrite=overwrite)


def write_csv(result: EvalResult, path: str | Path, *, overwrite: bool = False) -> Path:
    """One row per (image, method) plus the mean rows (image = "mean"), with the differences to bicubic; written
    atomically, an existing file replaced only with overwrite (else OutputExistsError)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = ["psnr", "ssim", "niqe"] + (["lpips"] if result.lpips is not None else [])
    how = ["device", "precision", "engine", "tile"]  # how a model's output was computed; empty for bicubic
    # the protocol's depth on every row: a 16-bit evaluation's file must not read as an 8-bit one
    w.writerow(["image", "method", *keys, *(f"{k}_delta" for k in keys), *how, "bit_depth"])
    entries: list[tuple[str, dict[str, Scores], ImageResult | None]] = [
        (im.name, im.scores, im) for im in result.images
    ]
    if result.images:
        entries.append(("mean", {m: result.mean(m) for m in result.methods}, None))
    for name, scores, im in entries:
        base = scores[BICUBIC]
        for method in result.methods:
            sc = scores[method]
            deltas = ["" if method == BICUBIC else _csv_delta(getattr(sc, k), getattr(base, k)) for k in keys]
            w.writerow(
                [
                    name,
                    method,
                    *(_csv(getattr(sc, k)) for k in keys),
                    *deltas,
                    *_csv_how(result, method, im),
                    result.bit_depth,
                ]
            )
    return atomic_write_bytes(path, buf.getvalue().encode(), overwrite=overwrite)


def _csv_how(result: EvalResult, method: str, im: ImageResult | None) -> list[str]:
    """Device, precision, engine and tile of a model's row: this image's, or over the set for the mean row."""
    if im is not None and method in im.inference:
        r = im.inference[method]
        return [r.device, r.precision, r.engine, r.tile_text()]
    info = result.inference(method)
    return (
        ["", "", "", ""]
        if info is None
        else [info["device"], info["precision"], info["engine"], info["tile"]]
    )


def _csv(v: float | None) -> str:
    return "" if v is None else repr(v)


def _csv_delta(v: float | None, base: float | None) -> str:
    if v is None or base is None or not (math.isfinite(v) and math.isfinite(base)):
        return ""  # as the table leaves it blank
    return repr(v - base)
