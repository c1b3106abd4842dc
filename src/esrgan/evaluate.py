"""`esrgan evaluate`: score models against the bicubic baseline by the super-resolution literature's protocol.

The protocol (esrgan-recipe.md, "Evaluation protocol"; shared/data/README.md) is followed step by step, because
each step moves the numbers by more than the differences papers report:

1. HR is cut to a multiple of the scale (top-left kept), so LR x scale has exactly the HR size. A grey HR is RGB
   of three equal channels, as BasicSR's test reads it: the models get RGB and their RGB output is scored.
2. LR = MATLAB bicubic downscale of that HR, rounded to uint8 (the LR PNGs of the benchmarks are 8-bit), unless LR
   files are given (paired by name).
3. The baseline is the MATLAB bicubic upscale of LR, each model's output comes through the upscale path; both are
   rounded to uint8, as a saved result would be.
4. PSNR/SSIM on the BT.601 Y channel (unrounded unless round_y, see esrgan.metrics), ``crop_border`` = scale
   pixels cut from every side; NIQE (lower is better) on the same cropped region.
5. LPIPS (lower is better), when a loaded esrgan.lpips.LPIPS is given, on the same cropped region in RGB.

One bad image (unreadable, wrong LR size, too small for SSIM, a failed forward pass) is reported and skipped; the
rest of the folder is still evaluated.

Measurements (DICOM slices, float or signed TIFFs) are scored as training and `esrgan upscale` feed them to a model:
stretched to 16 bits from their [min, max], or from ``value_range`` (the stored values `--value-range LO:HI` and
`data.value_range` take), first frame and colour (or first) band; paired LR and SR files that are measurements need
``value_range`` (each stretched from its own range would not be on the HR's scale) and fail their image without.

``bit_depth=16`` (models trained with `data.bit_depth: 16`, 16-bit validation images) runs the same protocol at
16 bits: HR read at 16 bits (an 8-bit file's levels times 257), LR, baseline and model outputs rounded to 16-bit
levels (the models compute 16-bit images in fp32), and every metric on the 0..255 scale with 16-bit precision
(values / 257). Its figures are comparable with each other, not with the literature's 8-bit ones.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, EsrganError, ImageError, one_line, out_of_memory
from .imagedata import orient, unorient
from .imageio import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    ImageData,
    from_float,
    is_measurement,
    own_range,
    read_image,
    to_float,
    write_image,
)
from .imageio import list_images as _list_images
from .metrics import psnr, ssim
from .resize import imresize_np
from .results import BICUBIC, EvalResult, ImageResult, Inference, Scores, format_table, write_csv, write_json
from .zoo import is_model_file

if TYPE_CHECKING:
    from .lpips import LPIPS
    from .upscale import Upscaler

__all__ = [
    "BICUBIC",
    "EvalResult",
    "ImageResult",
    "Scores",
    "evaluate",
    "format_table",
    "write_csv",
    "write_json",
]


# --- inputs ---------------------------------------------------------------------------------------------------------
def list_images(folder: Path) -> list[Path]:
    """esrgan.imageio.list_images (DICOM files too), with a missing folder as an ImageError naming it."""
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    return _list_images(folder, suffixes=IMAGE_SUFFIXES | DICOM_SUFFIXES)


def _read(path: Path, value_range: tuple[float, float] | None, what: str | None = None) -> ImageData:
    """An image of the evaluation: a photograph as it is, a measurement as training reads it (module docstring;
    as stored: a paired LR made by GDAL carries no orientation tag, and HR, LR and SR compare where their
    georeferencing agrees). `what` (LR, SR): a paired file, whose measurement needs `value_range` to share the HR's
    scale."""
    if not is_measurement(path):
        return read_image(path)
    if what is not None and value_range is None and own_range(path):
        raise ImageError(
            f"{path}: a measurement file as {what}: stretched from its own [min, max] it is not on the HR's scale; "
            "give --value-range LO:HI (the stored values every file is mapped from)"
        )
    return read_image(path, measurements=True, value_range=value_range)


def _find_paired(
    folder: Path,
    hr: Path,
    candidates: Sequence[str],
    what: str,
    *,
    shared: bool = False,
    own: str | None = None,
) -> Path:
    """The first of ``candidates`` (file stems, in order) that is an image in ``folder``; else an ImageError naming
    the folder, HR file ``hr`` and every name looked for. Several images of one candidate stem (a.png, a.bmp): the
    one with the HR's suffix, else an error naming them. ``shared``: another HR image has ``hr``'s stem (a.png beside
    a.bmp), so only files with the HR's suffix pair with it (either HR would take a lone a_x4.png: the wrong one's
    scores were given without a word); ``own``: a stem that is ``hr``'s alone, taken first with any suffix."""
    by_stem: dict[str, list[Path]] = {}
    for p in list_images(folder):
        by_stem.setdefault(p.stem, []).append(p)
    if own is not None and len(by_stem.get(own, [])) == 1:
        return by_stem[own][0]
    suffix = hr.suffix.lower()
    for c in candidates:
        found = by_stem.get(c, [])
        same = [p for p in found if p.suffix.lower() == suffix]
        if len(same) == 1:
            return same[0]
        if shared or not found:
            continue
        if len(found) > 1:
            raise ImageError(
                f"{folder}: several {what} images for {hr.name} ({', '.join(sorted(p.name for p in found))}); "
                f"keep one, or name it with {hr.name}'s suffix"
            )
        return found[0]
    kept = (
        f" with the suffix {hr.suffix}, as another HR image has its stem"
        if shared
        else " with an image suffix"
    )
    raise ImageError(f"{folder}: no {what} image for {hr.stem!r} (looked for {', '.join(candidates)}{kept})")


def find_lr(lr_dir: Path, hr: Path, scale: int, *, shared: bool = False) -> Path:
    """The LR file paired with HR file ``hr``: its stem, or the usual benchmark suffixes (``x4``, ``_x4``,
    ``_LRBI_x4``); ``shared``: see _find_paired."""
    stem = hr.stem
    candidates = (stem, f"{stem}x{scale}", f"{stem}_x{scale}", f"{stem}_LRBI_x{scale}")
    return _find_paired(lr_dir, hr, candidates, "LR", shared=shared)


def find_sr(sr_dir: Path, hr: Path, scale: int, *, shared: bool = False) -> Path:
    """The SR result paired with HR file ``hr``: the LR pairing's names (its stem, ``x4``, ``_x4`` as `esrgan
    upscale` names its outputs, ``_LRBI_x4``), then ``_out`` (Real-ESRGAN's inference script), ``_SR`` and
    ``_x4_SR``; where another HR image has its stem (``shared``), first the name `--save-images` gives it
    (``a_png`` for a.png beside a.bmp; any suffix), then those with the HR's suffix only."""
    stem = hr.stem
    candidates = (
        stem,
        f"{stem}x{scale}",
        f"{stem}_x{scale}",
        f"{stem}_LRBI_x{scale}",
        f"{stem}_out",
        f"{stem}_SR",
        f"{stem}_x{scale}_SR",
    )
    own = hr.name.replace(".", "_") if shared else None  # saved_image's name for it
    return _find_paired(sr_dir, hr, candidates, "SR", shared=shared, own=own)


def _pixels_at(img: ImageData, bits: int = 8) -> np.ndarray:
    """Pixels as uint8 HxWxC (C = 1 or 3): the protocol's data range is 255, so 16-bit files are rounded to 8 bits.
    With `bits` 16: uint16, an 8-bit file's levels times 257."""
    if bits == 16:
        return img.pixels if img.bit_depth == 16 else img.pixels.astype(np.uint16) * np.uint16(257)
    return img.pixels if img.bit_depth == 8 else from_float(to_float(img.pixels), 8)


def _to_u8(x: np.ndarray, bits: int = 8) -> np.ndarray:
    """Round to uint8 (uint16 with `bits` 16) as MATLAB converts a double: halves away from zero, floor(x + 0.5)
    (np.round rounds them to even, and MATLAB-bicubic x2 sums land exactly on .5 for some pixels of real photos)."""
    top, dtype = (255, np.uint8) if bits == 8 else (65535, np.uint16)
    return np.clip(np.floor(x + 0.5), 0, top).astype(dtype)


def _on_255(img: np.ndarray) -> np.ndarray:
    """What the metrics take (data range 255): uint8 as it is, uint16 as float64 / 257 (16-bit precision kept)."""
    return img / 257.0 if img.dtype == np.uint16 else img


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Cut height and width down to multiples of ``scale``, keeping the top-left corner."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def bicubic_down(hr: np.ndarray, scale: int) -> np.ndarray:
    """The protocol's LR image: MATLAB bicubic 1/scale, rounded to uint8 (a uint16 image: to uint16)."""
    return _to_u8(imresize_np(hr, scale=1 / scale), 16 if hr.dtype == np.uint16 else 8)


def bicubic_up(lr: np.ndarray, scale: int) -> np.ndarray:
    """The baseline: MATLAB bicubic x scale, rounded to uint8 (a uint16 image: to uint16)."""
    return _to_u8(imresize_np(lr, scale=scale), 16 if lr.dtype == np.uint16 else 8)


# --- models ---------------------------------------------------------------------------------------------------------
@dataclass
class _Model:
    name: str
    source: str
    scale: int
    upscaler: Upscaler

    def run(self, lr: np.ndarray, turn: int = 1) -> tuple[np.ndarray, Inference]:
        """The model's output for uint8 (uint16) LR, of the same type, and how it was computed (precision as
        computed, tile as used). turn: the HR's orientation tag (a measurement raster, held as stored): the model
        sees the LR as it is shown, as `esrgan upscale` runs it, and its output is turned back."""
        out = unorient(self.upscaler.upscale(orient(lr, turn)), turn)
        up = self.upscaler
        tile = up.last_tile if up.last_tile < max(lr.shape[:2]) else 0  # a tile the image fits in: one pass
        engine = up.runner_for(lr.dtype).engine
        return out, Inference(str(up.device), up.last_precision, engine, tile)

    def inference(self, bits: int = 8) -> Inference:
        """Device, precision and engine for images of `bits`, as loaded (no image run yet)."""
        up = self.upscaler
        dtype = np.dtype(np.uint8 if bits == 8 else np.uint16)
        runner = up.runner_for(dtype)
        return Inference(str(up.device), up.precision_for(dtype.type), runner.engine)


def model_name(spec: str) -> str:
    """Column name of a model: the zoo name as given, or a file's stem."""
    return Path(spec).stem if is_model_file(spec) else spec


def sr_name(folder: str | Path) -> str:
    """Column name of a folder of SR results: the folder's name."""
    path = Path(folder)
    return path.name or path.resolve().name or str(path)


@dataclass
class _SavedResults:
    """A folder of SR results made elsewhere (another tool, an earlier run), scored as a column of its own."""

    name: str
    folder: Path


def _load_model(spec: str, *, device: str, precision: str, tile: int | None) -> Upscaler:
    """The Upscaler of a model file or zoo name: the path `esrgan upscale` uses (tiling, precision and device
    fallbacks included), so the numbers are those of the outputs users get."""
    from .upscale import Upscaler

    options: dict[str, Any] = {"device": device, "precision": precision, "tile": tile}
    up = (
        Upscaler.from_file(spec, **options)
        if is_model_file(spec)
        else Upscaler.from_pretrained(spec, **options)
    )
    up.keep_grey = (
        False  # a grey HR is scored on the model's own RGB output (BasicSR's test), not made grey again
    )
    return up


def _names(specs: Sequence[str], sr_dirs: Sequence[str | Path] = ()) -> list[str]:
    """Unique column names, the models' then the SR folders': a file's stem, a zoo name, a folder's name; where
    two of them are the same (every trained model is a model.safetensors), each of those takes as many of its
    parent folders as tell it apart (psnr/model, gan/model). The same file twice, or a name that is still the
    same, gets #2, #3."""
    import os

    def parts(path: str | Path, leaf: str) -> tuple[str, ...]:
        """`leaf`, then the names of the folders above it, nearest first."""
        full = Path(os.path.abspath(Path(path).expanduser()))
        return (leaf, *(p.name for p in full.parents if p.name))

    items = [parts(spec, model_name(spec)) if is_model_file(spec) else (spec,) for spec in specs]
    items += [parts(d, sr_name(d)) for d in sr_dirs]
    distinct = list(dict.fromkeys(items))  # the same file given twice: one label, then #2
    depth = dict.fromkeys(distinct, 1)

    def label(item: tuple[str, ...]) -> str:
        return "/".join(reversed(item[: depth[item]]))

    while True:
        counts = Counter(label(item) for item in distinct)
        longer = [i for i in distinct if counts[label(i)] > 1 and depth[i] < len(i)]
        if not longer:
            break
        for item in longer:
            depth[item] += 1
    out: list[str] = []
    for item in items:
        base = label(item)
        name, k = base, 1
        while name in out or name == BICUBIC:
            k += 1
            name = f"{base}#{k}"
        out.append(name)
    return out


# --- scoring --------------------------------------------------------------------------------------------------------
def _niqe(img: np.ndarray, crop_border: int, bits: int = 8) -> float | None:
    """NIQE of the cropped image; None when it has fewer than two 96x96 blocks or is too flat to fit (a blank
    output leaves no block with a distribution: numpy then warns and the score is NaN)."""
    from .niqe import niqe

    # grey as RGB of three equal channels, as PSNR/SSIM take it (rgb_to_y): the same pixels, the same score
    if img.ndim == 2 or img.shape[2] == 1:
        img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            value = niqe(img, crop_border=crop_border, bits=bits)
    except (ValueError, np.linalg.LinAlgError):
        return None
    return value if math.isfinite(value) else None


def crop(img: np.ndarray, border: int) -> np.ndarray:
    """The scored region: ``border`` pixels cut from every side."""
    return img[border : img.shape[0] - border, border : img.shape[1] - border]


def _lpips(metric: LPIPS, sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float | None:
    """LPIPS of the cropped region (RGB, grey repeated); None when it is smaller than the network accepts."""
    a, b = crop(sr, crop_border), crop(hr, crop_border)
    if min(a.shape[:2]) < metric.spec.min_size:
        return None
    return metric(a, b)


def score(
    sr: np.ndarray,
    hr: np.ndarray,
    *,
    crop_border: int,
    round_y: bool = False,
    with_niqe: bool = True,
    lpips: LPIPS | None = None,
) -> Scores:
    """Y-PSNR, Y-SSIM and (optionally) NIQE and LPIPS of one result against its HR image (uint8, or uint16 scored
    with 16-bit precision on the 0..255 scale)."""
    a, b = _on_255(sr), _on_255(hr)
    bits = 16 if sr.dtype == np.uint16 else 8
    return Scores(
        psnr=psnr(a, b, crop_border=crop_border, round_y=round_y),
        ssim=ssim(a, b, crop_border=crop_border, round_y=round_y),
        niqe=_niqe(a, crop_border, bits) if with_niqe else None,
        lpips=_lpips(lpips, sr, hr, crop_border) if lpips is not None else None,
    )


def _resolve_scale(scale: int | None, models: list[_Model]) -> int:
    if scale is not None and scale < 1:  # before the models' scales: --scale 0 is wrong whatever they are
        raise ConfigError(f"scale must be >= 1, got {scale}")
    scales = {m.scale for m in models}
    if scale is None:
        if len(scales) > 1:
            raise ConfigError(
                "models of different scales cannot share one evaluation: "
                + ", ".join(f"{m.name} x{m.scale}" for m in models)
            )
        return scales.pop() if scales else 4
    for m in models:
        if m.scale != scale:
            raise ConfigError(f"{m.source}: the model upscales x{m.scale}, but --scale is {scale}")
    return scale


def evaluate(
    hr_dir: str | Path,
    models: Sequence[str] = (),
    *,
    sr_dirs: Sequence[str | Path] = (),
    lr_dir: str | Path | None = None,
    scale: int | None = None,
    crop_border: int | None = None,
    niqe: bool = True,
    lpips: LPIPS | None = None,
    round_y: bool = False,
    tile: int | None = None,
    precision: str = "fp32",
    device: str = "auto",
    save_images: str | Path | None = None,
    report_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    overwrite: bool = False,
    bit_depth: int = 8,
    value_range: tuple[float, float] | None = None,
) -> EvalResult:
    """Evaluate bicubic and each model on every image of ``hr_dir``; see the module docstring for the protocol.

    models: zoo names or model files (all of one scale; ``scale`` defaults to theirs, 4 without a model); none:
    the bicubic baseline alone. sr_dirs: folders of SR results made elsewhere, each a column named by the folder,
    paired with the HR images by name (find_sr); a missing one, or one whose size is neither the HR's cut to a
    multiple of the scale nor the HR file's own (then cut the same way), fails that image. precision: fp32 by default,
    as the papers' numbers are computed ("auto" = the device's fastest, bf16 on a CPU with native bf16, which moves
    PSNR by up to 0.06 dB an image); device, precision as computed, engine and tile are recorded in the result
    (EvalResult.inference). crop_border defaults to the scale. lpips: a loaded metric (esrgan.lpips.load_lpips) adds an LPIPS column. save_images: write every result as
    DIR/<method>/<image>.png; a file already there is refused before any model is loaded (one line naming the
    first) unless overwrite. report_dir: mosaics and an index page (esrgan.report); the files of those names already
    there are refused in the same way unless overwrite (other files there are left alone). progress receives one
    line per image and per skipped file. bit_depth: 8 (the literature's protocol) or 16 (module docstring; saved
    images are 16-bit PNGs, the report's mosaics 8-bit previews). value_range: the (lo, hi) of stored values
    measurements are mapped from (module docstring).
    """
    start = time.perf_counter()
    hr_path = Path(hr_dir)
    lr_path = Path(lr_dir) if lr_dir is not None else None
    files = list_images(hr_path)
    # checked before any model is loaded: an empty table and exit 0 would look like a finished evaluation
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES | DICOM_SUFFIXES))
        raise ImageError(f"{hr_path}: folder has no images (looked for {suffixes})")
    if lr_path is not None and not lr_path.is_dir():
        raise ImageError(f"{lr_path}: not a folder")
    for folder in sr_dirs:
        if not Path(folder).is_dir():
            raise ImageError(f"{folder}: not a folder (SR results)")
        if Path(folder).resolve() == hr_path.resolve():
            raise ImageError(f"{folder}: --sr is the HR folder: every image would be scored against itself")
    if save_images is not None:  # never written into a folder this evaluation reads, --overwrite or not
        inputs = [hr_path, *([lr_path] if lr_path is not None else []), *map(Path, sr_dirs)]
        for out in (Path(save_images), *(Path(save_images) / m for m in (BICUBIC, *_names(models, sr_dirs)))):
            if any(out.resolve() == Path(d).resolve() for d in inputs):
                raise ImageError(
                    f"{out}: --save-images would write into a folder this evaluation reads its images from; "
                    "give another folder"
                )
    if scale is not None and scale < 1:  # before any model is loaded
        raise ConfigError(f"scale must be >= 1, got {scale}")
    if type(bit_depth) is not int or bit_depth not in (8, 16):
        raise ConfigError(f"bit depth must be 8 or 16, got {bit_depth!r}")
    if bit_depth == 16 and round_y:
        raise ConfigError(
            "--round-y rounds Y to integers as MATLAB does on 8-bit images: not with bit depth 16"
        )
    names = _names(models, sr_dirs)
    _check_outputs(files, names, save_images, report_dir, overwrite)
    loaded = []
    for name, spec in zip(names, models, strict=False):
        up = _load_model(spec, device=device, precision=precision, tile=tile)
        loaded.append(_Model(name, spec, up.model.config.scale, up))
    saved = [_SavedResults(name, Path(d)) for name, d in zip(names[len(models) :], sr_dirs, strict=True)]
    s = _resolve_scale(scale, loaded)
    border = s if crop_border is None else crop_border
    if border < 0:
        raise ConfigError(f"crop border must be >= 0, got {border}")
    result = EvalResult(
        hr_dir=hr_path,
        lr_dir=lr_path,
        scale=s,
        crop_border=border,
        round_y=round_y,
        niqe=niqe,
        lpips=lpips.net if lpips is not None else None,
        methods=[BICUBIC, *names],
        sources={m.name: m.source for m in loaded},
        sr_dirs={r.name: r.folder for r in saved},
        loaded={m.name: m.inference(bit_depth) for m in loaded},
        tile=tile,
        bit_depth=bit_depth,
        value_range=value_range,
    )
    say = progress or (lambda line: None)
    shown = image_names(files)
    stems = Counter(p.stem for p in files)
    for i, path in enumerate(files, 1):
        try:
            item = _evaluate_one(
                path,
                shown[path],
                result,
                loaded,
                saved,
                lpips,
                save_images,
                report_dir,
                overwrite,
                shared=stems[path.stem] > 1,
            )
        except (EsrganError, OSError, ValueError, MemoryError, RuntimeError) as exc:
            memory = isinstance(exc, (MemoryError, RuntimeError))
            if memory and not out_of_memory(exc):
                raise
            if memory:  # that image alone: the other images are scored, the tables written
                reason = f"{path}: out of memory while scoring it ({one_line(exc)[:120] or 'MemoryError'})"
            else:
                reason = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            result.failed.append((path, reason))
            say(f"[{i}/{len(files)}] skipped {reason}")
            continue
        result.images.append(item)
        say(
            f"[{i}/{len(files)}] {item.name}: {' | '.join(_brief(m, item.scores[m]) for m in result.methods)}"
        )
    result.seconds = time.perf_counter() - start
    if report_dir is not None:
        from .report import write_index

        write_index(result, Path(report_dir), overwrite=overwrite)
    return result


def image_names(files: Sequence[Path]) -> dict[Path, str]:
    """Each image's name in the tables, files and report: its stem, or its file name where two files share a stem
    (a.png, a.bmp) or the stem is "mean" (the summary rows' name), so no two rows or mosaics take one name."""
    stems = Counter(p.stem for p in files)
    return {p: p.name if stems[p.stem] > 1 or p.stem == "mean" else p.stem for p in files}


def saved_image(folder: Path, method: str, path: Path, name: str) -> Path:
    """Where save_images writes `method`'s result for HR image `path` (its name in the tables: image_names)."""
    file_stem = path.stem if name == path.stem else name.replace(".", "_")  # a.png, a.bmp -> a_png, a_bmp
    return folder / method / f"{file_stem}.png"


def _check_saved_images(files: Sequence[Path], names: Sequence[str], folder: Path, overwrite: bool) -> None:
    """Refuse, in one line naming the first (in the order they would be written), files that save_images would
    replace: an earlier evaluation's results or anything else under those names is never overwritten unasked; and,
    with or without overwrite, two images whose results would get one name (a.png beside a.bmp is saved as a_png,
    which an a_png.png of the same folder is too: the second replaced the first)."""
    shown = image_names(files)
    taken: dict[Path, Path] = {}
    for path in files:
        dst = saved_image(folder, BICUBIC, path, shown[path])
        if dst in taken:
            raise EsrganError(
                f"{taken[dst]} and {path}: both would be saved as {dst.name} under --save-images; rename one"
            )
        taken[dst] = path
    for path in files:
        for method in () if overwrite else (BICUBIC, *names):
            dst = saved_image(folder, method, path, shown[path])
            if dst.exists() or dst.is_symlink():
                raise EsrganError(
                    f"{dst}: already exists; --save-images does not replace files unless --overwrite is given "
                    "(overwrite=True in Python), or give another folder"
                )


def _check_report(files: Sequence[Path], folder: Path, overwrite: bool) -> None:
    """Refuse, in one line naming the first (in the order they would be written), the files of report_dir that the
    report would replace: its mosaics and index pages (esrgan.report.report_files), never anything else there; and,
    with or without overwrite, a folder under one of those names (a file cannot replace it)."""
    from .report import report_files

    shown = image_names(files)
    for dst in report_files(folder, [shown[p] for p in files]):
        if dst.is_dir() and not dst.is_symlink():
            raise EsrganError(f"{dst}: is a folder; --report writes a file of that name, give another folder")
        if not overwrite and (dst.exists() or dst.is_symlink()):
            raise EsrganError(
                f"{dst}: already exists; --report does not replace files unless --overwrite is given "
                "(overwrite=True in Python), or give another folder"
            )


def _check_outputs(
    files: Sequence[Path],
    names: Sequence[str],
    save_images: str | Path | None,
    report_dir: str | Path | None,
    overwrite: bool,
) -> None:
    if report_dir is not None:
        _check_report(files, Path(report_dir), overwrite)
    if save_images is not None:
        _check_saved_images(files, names, Path(save_images), overwrite)


def check_outputs(
    hr_dir: str | Path,
    models: Sequence[str],
    *,
    sr_dirs: Sequence[str | Path] = (),
    save_images: str | Path | None,
    report_dir: str | Path | None,
    overwrite: bool,
) -> None:
    """What evaluate checks of report_dir and save_images before it loads a model, for a caller with more work
    before that (the CLI loads LPIPS first)."""
    if report_dir is not None or save_images is not None:
        _check_outputs(list_images(Path(hr_dir)), _names(models, sr_dirs), save_images, report_dir, overwrite)


def _saved_result(
    r: _SavedResults,
    path: Path,
    original: tuple[int, ...],
    size: tuple[int, ...],
    scale: int,
    bits: int = 8,
    value_range: tuple[float, float] | None = None,
    *,
    shared: bool = False,
) -> np.ndarray:
    """The SR result of ``r`` for HR ``path`` as uint8 (uint16 with `bits` 16) RGB of the scored size ``size`` (the
    HR cut to a multiple of the scale); one of the HR file's own size ``original`` is cut the same way."""
    file = find_sr(r.folder, path, scale, shared=shared)
    sr = _pixels_at(_read(file, value_range, "SR"), bits)
    if sr.shape[:2] == original and original != size:
        sr = mod_crop(sr, scale)
    if sr.shape[:2] != size:
        raise ImageError(
            f"{path}: SR {file} is {sr.shape[1]}x{sr.shape[0]}, expected {size[1]}x{size[0]} (the HR cut to a "
            f"multiple of {scale}) or the HR's own {original[1]}x{original[0]}"
        )
    return sr if sr.shape[2] == 3 else np.repeat(sr, 3, axis=2)


def planned_outputs(
    hr_dir: str | Path,
    models: Sequence[str],
    *,
    sr_dirs: Sequence[str | Path] = (),
    save_images: str | Path | None,
    report_dir: str | Path | None,
) -> list[tuple[str, Path, str]]:
    """(option, path, "file" or "folder") of everything report_dir and save_images would write for the images of
    hr_dir: the report folder, its mosaics and index pages; the save_images folder, one folder per method and
    every result. For a caller that writes other files in the same run (the CLI's --json and --csv) and must not
    write them over these, nor these over them."""
    if report_dir is None and save_images is None:
        return []
    files = list_images(Path(hr_dir))
    shown = image_names(files)
    out: list[tuple[str, Path, str]] = []
    if report_dir is not None:
        from .report import report_files

        out.append(("--report", Path(report_dir), "folder"))
        out += [("--report", p, "file") for p in report_files(Path(report_dir), [shown[f] for f in files])]
    if save_images is not None:
        folder = Path(save_images)
        out.append(("--save-images", folder, "folder"))
        for method in (BICUBIC, *_names(models, sr_dirs)):
            out.append(("--save-images", folder / method, "folder"))
            out += [("--save-images", saved_image(folder, method, f, shown[f]), "file") for f in files]
    return out


def _brief(method: str, s: Scores) -> str:
    return f"{method} {s.psnr:.2f} dB {s.ssim:.4f}"


def _evaluate_one(
    path: Path,
    name: str,
    result: EvalResult,
    models: list[_Model],
    saved: list[_SavedResults],
    lpips: LPIPS | None,
    save_images: str | Path | None,
    report_dir: str | Path | None,
    overwrite: bool = False,
    *,
    shared: bool = False,
) -> ImageResult:
    """One HR image scored by every method; ``shared``: another HR image has its stem (see _find_paired)."""
    s, border, bits = result.scale, result.crop_border, result.bit_depth
    read = _read(path, result.value_range)
    turn = read.samples.orientation if read.samples is not None else 1
    original = _pixels_at(read, bits)
    # grey as RGB of three equal channels, as BasicSR's test reads it: the LR is RGB, the model's RGB output is
    # scored as it is (not averaged back to grey); PSNR, SSIM and NIQE of the equal channels are the grey's
    hr = mod_crop(original if original.shape[2] == 3 else np.repeat(original, 3, axis=2), s)
    if min(hr.shape[:2]) - 2 * border < 11:  # before any resizing: a 1x1 HR has no LR to make
        raise ImageError(
            f"{path}: {original.shape[1]}x{original.shape[0]} is too small to score at x{s} (SSIM needs 11x11 "
            f"after cutting to a multiple of {s} and cropping {border} pixels on each side)"
        )
    if result.lr_dir is not None:
        lr_file = find_lr(result.lr_dir, path, s, shared=shared)
        lr = _pixels_at(_read(lr_file, result.value_range, "LR"), bits)
        want = (hr.shape[0] // s, hr.shape[1] // s)
        if lr.shape[:2] != want:
            raise ImageError(  # the HR path first, as every failure of this image; each file named once
                f"{path}: LR {lr_file} is {lr.shape[1]}x{lr.shape[0]}, expected {want[1]}x{want[0]} "
                f"(HR cut to a multiple of {s}, divided by {s})"
            )
        if lr.shape[2] == 1:  # a grey LR file: RGB of three equal channels, as the HR
            lr = np.repeat(lr, 3, axis=2)
    else:
        lr = bicubic_down(hr, s)

    outputs = {BICUBIC: bicubic_up(lr, s)}
    seconds: dict[str, float] = {}
    inference: dict[str, Inference] = {}
    for m in models:
        t0 = time.perf_counter()
        out, inference[m.name] = m.run(lr, turn)
        seconds[m.name] = time.perf_counter() - t0
        if out.shape[:2] != hr.shape[:2]:
            raise EsrganError(
                f"{path}: {m.name} returned {out.shape[1]}x{out.shape[0]}, expected the HR size"
            )
        outputs[m.name] = out
    for r in saved:
        outputs[r.name] = _saved_result(
            r, path, original.shape[:2], hr.shape[:2], s, bits, result.value_range, shared=shared
        )
    scores = {
        name: score(out, hr, crop_border=border, round_y=result.round_y, with_niqe=result.niqe, lpips=lpips)
        for name, out in outputs.items()
    }
    item = ImageResult(
        name=name,
        file=path,
        hr_size=(hr.shape[0], hr.shape[1]),
        scores=scores,
        hr_niqe=_niqe(_on_255(hr), border, bits) if result.niqe else None,
        seconds=seconds,
        inference=inference,
    )
    if save_images is not None:
        # checked before the models were loaded; one that appeared since fails this image (OutputExistsError)
        for method, out in outputs.items():
            write_image(
                saved_image(Path(save_images), method, path, name),
                ImageData.from_array(out),
                overwrite=overwrite,
            )
    if report_dir is not None:
        from .report import write_mosaic

        # checked before the models were loaded, as save_images
        # the crop is chosen on the 16-bit data, shown in 8-bit previews (esrgan.report)
        item.mosaic = write_mosaic(Path(report_dir), item, hr, outputs, result, overwrite=overwrite)
    return item
