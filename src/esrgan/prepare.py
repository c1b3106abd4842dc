"""Training-data preparation as in the paper: cut large HR images into overlapping sub-images (480x480, step 240).

DIV2K/Flickr2K images are 2K wide; decoding a whole PNG to take one 128x128 patch makes training I/O-bound, so
ESRGAN (through BasicSR's extract_subimages) pre-cuts them. Crops lie on a grid with the given step, plus a last crop
flush with the right/bottom border when the strip the grid leaves uncovered is wider than ``min_size`` pixels.

With ``lr_scale`` the matching LR sub-images are written too (OUT_DIR/LR_x{scale}): the HR image is cut to a
multiple of the scale, downscaled whole with MATLAB bicubic (rounded to the input's integer type), and the LR crop
taken at the scaled position, so the LR crop is exactly the classic LR image of that region (no invented borders).
"""

from __future__ import annotations

import itertools
import multiprocessing
import stat
import struct
import sys
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .atomic import cannot_write_reason
from .errors import ConfigError, EsrganError, shown
from .imageio import IMAGE_SUFFIXES, ImageData, list_images, read_image, write_image

__all__ = ["PrepareResult", "crop_origins", "prepare"]


@dataclass(frozen=True)
class _Settings:
    out_dir: Path
    size: int
    step: int
    min_size: int
    lr_scale: int | None
    overwrite: bool


@dataclass
class PrepareResult:
    images: int = 0  # images cut successfully
    too_small: int = 0  # of those, images smaller than one sub-image (nothing written)
    crops: int = 0  # HR sub-images written (as many LR ones when lr_scale is set)
    kept: int = 0  # sub-images already there (a rerun after an interruption), left as they were
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)


def crop_origins(length: int, size: int, step: int, min_size: int = 0) -> list[int]:
    """Top (or left) coordinates of the crops along one axis; empty when the image is smaller than ``size``."""
    if length < size:
        return []
    origins = list(range(0, length - size + 1, step))
    if length - (origins[-1] + size) > min_size:
        origins.append(length - size)
    return origins


def _crop(img: ImageData, top: int, left: int, height: int, width: int) -> ImageData:
    """A region keeping bit depth, alpha, ICC profile and EXIF."""
    rows, cols = slice(top, top + height), slice(left, left + width)
    alpha = None if img.alpha is None else np.ascontiguousarray(img.alpha[rows, cols])
    return replace(img, pixels=np.ascontiguousarray(img.pixels[rows, cols]), alpha=alpha)


def _downscale(img: ImageData, scale: int) -> ImageData:
    """MATLAB bicubic 1/scale of colour and alpha, rounded back to the image's integer type."""
    from .resize import imresize_np

    def down(a: np.ndarray) -> np.ndarray:
        limit = np.iinfo(a.dtype).max
        return np.clip(np.round(imresize_np(a, scale=1 / scale)), 0, limit).astype(a.dtype)

    return replace(img, pixels=down(img.pixels), alpha=None if img.alpha is None else down(img.alpha))


def _cut_one(path: Path, cfg: _Settings) -> tuple[int, int]:
    """(sub-images written, sub-images kept because they exist): outputs are written atomically, so a rerun after an
    interruption writes only what is missing (all of it with overwrite). A file kept is first checked to be the
    sub-image this run would write (_not_our_sub_image); one that is not fails the image before anything of it is
    written."""
    img = read_image(path)
    s = cfg.lr_scale
    lr = None
    if s is not None:
        h, w = img.height - img.height % s, img.width - img.width % s
        if h < cfg.size or w < cfg.size:
            return 0, 0  # no sub-image fits: do not spend a resize on it
        img = _crop(img, 0, 0, h, w)  # LR images of the literature are made from HR cut to a multiple of s
        lr = _downscale(img, s)
    tops = crop_origins(img.height, cfg.size, cfg.step, cfg.min_size)
    lefts = crop_origins(img.width, cfg.size, cfg.step, cfg.min_size)
    crops = [
        (top, left, f"{path.stem}_s{n:03d}.png")
        for n, (top, left) in enumerate(itertools.product(tops, lefts), 1)  # row by row
    ]
    if not cfg.overwrite:
        _check_kept(path, img, crops, cfg)
    written = kept = 0
    for top, left, name in crops:
        hr_dst = cfg.out_dir / name
        lr_dst = cfg.out_dir / f"LR_x{s}" / name
        hr_needed = cfg.overwrite or not hr_dst.exists()
        lr_needed = lr is not None and (cfg.overwrite or not lr_dst.exists())
        if not (hr_needed or lr_needed):
            kept += 1
            continue
        written += 1
        if hr_needed:
            sub = _crop(img, top, left, cfg.size, cfg.size)
            write_image(hr_dst, sub, format="PNG", overwrite=cfg.overwrite)
        if lr is not None and s is not None and lr_needed:
            sub = _crop(lr, top // s, left // s, cfg.size // s, cfg.size // s)
            write_image(lr_dst, sub, format="PNG", overwrite=cfg.overwrite)
    return written, kept


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND" + struct.pack(">I", zlib.crc32(b"IEND"))  # every whole PNG ends so
_COLOUR_TYPES = {0: "grey", 4: "grey+alpha", 2: "RGB", 6: "RGBA"}  # PNG colour type -> words


def _png_layout(img: ImageData) -> tuple[int, int]:
    """(bit depth, PNG colour type) of `img` written as PNG (esrgan.imageio.write_image: 8 or 16 bits, grey or RGB,
    with or without alpha; a photo-like measurement TIFF in its file's integer type)."""
    depth = img.bit_depth
    if img.samples is not None:
        depth = 8 if np.dtype(img.samples.dtype) == np.uint8 else 16
    return depth, {1: 0, 2: 4, 3: 2, 4: 6}[img.channels + (img.alpha is not None)]


def _not_our_sub_image(file: Path, side: int, layout: tuple[int, int]) -> str | None:
    """Why an existing `file` is not the side x side sub-image of this layout that this run would write there, or
    None. Read cheaply, without decoding: its PNG header (signature, IHDR: size, bit depth, colour type) and its
    last 12 bytes, the IEND chunk: our writes are atomic, so a file that does not end with it (truncated, or
    something else under that name) is not ours. Pixels are not compared: a PNG of the right size and type stays."""
    try:
        info = file.stat()
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        with open(file, "rb") as fh:
            head = fh.read(33)
            fh.seek(max(info.st_size - len(_PNG_END), 0))
            tail = fh.read()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[8:16] != b"\x00\x00\x00\rIHDR":
        return "not a PNG file"
    if struct.unpack(">I", head[29:33])[0] != zlib.crc32(head[12:29]):
        return "a damaged PNG header"
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if (width, height) != (side, side):
        return f"{width}x{height}, not {side}x{side}"
    if (depth, colour) != layout:

        def words(d: int, c: int) -> str:
            return f"{d}-bit {_COLOUR_TYPES.get(c, f'colour type {c}')}"

        return f"{words(depth, colour)}, not {words(*layout)}"
    if tail != _PNG_END:
        return "truncated (it does not end with the IEND chunk of a whole PNG)"
    return None


def _check_kept(path: Path, img: ImageData, crops: list[tuple[int, int, str]], cfg: _Settings) -> None:
    """Raise EsrganError naming the first existing file among `path`'s sub-images (HR and LR) that is not what this
    run would write there (_not_our_sub_image), before any of them is written: the image fails alone."""
    layout = _png_layout(img)  # the LR sub-images have the HR's channels and type
    s = cfg.lr_scale
    places = [(cfg.out_dir, cfg.size)]
    if s is not None:
        places.append((cfg.out_dir / f"LR_x{s}", cfg.size // s))
    bad = [
        (dst, problem)
        for _, _, name in crops
        for folder, side in places
        if (dst := folder / name).exists() or dst.is_symlink()
        if (problem := _not_our_sub_image(dst, side, layout)) is not None
    ]
    if bad:
        dst, problem = bad[0]
        k = len(bad) - 1
        more = f", nor {'is' if k == 1 else 'are'} {k} more of its files" if k else ""
        raise EsrganError(
            f"{dst}: {problem}: not the sub-image of {path} this run would keep{more}; remove "
            f"{'them' if k else 'it'}, or rerun with --overwrite to write {path.name}'s sub-images again"
        )


def _work(job: tuple[Path, _Settings]) -> tuple[Path, tuple[int, int], str | None]:
    """One image, in a worker process: never raises, so one bad file cannot stop the run."""
    path, cfg = job
    try:
        return path, _cut_one(path, cfg), None
    except (EsrganError, OSError) as exc:
        return path, (0, 0), str(exc)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # parallelism comes from the processes; nested thread pools only thrash


def prepare(
    hr_dir: str | Path,
    out_dir: str | Path,
    *,
    size: int = 480,
    step: int = 240,
    min_size: int = 0,
    lr_scale: int | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Cut every image of ``hr_dir`` (by suffix, not recursive) into sub-images written to ``out_dir``.

    Sub-images are named ``{stem}_s{NNN}.png``, numbered row by row. Files that cannot be read or written, and files
    whose stem another file already has, are reported on stderr one line each and listed in the result; the others
    are still processed. A folder without images, or an output that cannot be a folder, raises EsrganError.

    Sub-images already in ``out_dir`` are kept (counted in ``kept``) unless ``overwrite``: a rerun after an
    interruption does only what is missing. Each kept file is checked first from its PNG header and end (size, bit
    depth, colour type, whole file; the pixels are not decoded): a file that is not what this run would write fails
    its image (nothing of it written) until it is removed or ``overwrite`` is given. The settings are recorded in ``out_dir/.esrgan-prepare.json``; a rerun
    with other settings would mix two grids under the same names, so it is refused unless ``overwrite``.
    """
    hr_dir, out_dir = Path(hr_dir), Path(out_dir)
    if not hr_dir.is_dir():
        raise EsrganError(f"{hr_dir}: not a directory")
    if out_dir.resolve() == hr_dir.resolve():  # a rerun would cut the sub-images into sub-images
        raise EsrganError(f"{out_dir}: the output folder is the image folder: write the sub-images elsewhere")
    if size <= 0 or step <= 0 or min_size < 0 or workers <= 0:
        raise ConfigError(
            f"size, step and workers must be positive and min_size >= 0 (got {size}, {step}, "
            f"{workers}, {min_size})"
        )
    if lr_scale is not None and (lr_scale <= 0 or size % lr_scale or step % lr_scale):
        raise ConfigError(f"--lr-scale {lr_scale} must divide both --size {size} and --step {step}")
    files = list_images(hr_dir)
    if not files:
        raise EsrganError(
            f"{hr_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}; sub-folders are not read)"
        )
    _make_folder(out_dir)
    _check_settings(
        out_dir,
        {"size": size, "step": step, "min_size": min_size, "lr_scale": lr_scale},
        overwrite,
        tuple(sorted({p.stem for p in files})),
    )
    files, clashes = _same_names(files)
    cfg = _Settings(out_dir, size, step, min_size, lr_scale, overwrite)
    jobs = [(p, cfg) for p in files]

    from tqdm import tqdm

    result = PrepareResult()
    with tqdm(total=len(jobs) + len(clashes), unit="img", disable=not progress, file=sys.stderr) as bar:
        for path, (n, kept), error in itertools.chain(
            ((p, (0, 0), e) for p, e in clashes), _run(jobs, workers)
        ):
            if error is None:
                result.images += 1
                result.crops += n
                result.kept += kept
                result.too_small += n + kept == 0
            else:
                result.failed.append((path, error))
                bar.write(shown(f"skipped: {error}"), file=sys.stderr)
            bar.update()
    return result


def _make_folder(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise EsrganError(f"{out_dir}: is a file, not a folder; give a folder for the sub-images")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only parent, a file where a parent folder should be
        raise EsrganError(
            f"{out_dir}: cannot create the output folder ({cannot_write_reason(out_dir, exc)})"
        ) from None


SETTINGS_FILE = ".esrgan-prepare.json"


def _check_settings(
    out_dir: Path, settings: dict[str, int | None], overwrite: bool, stems: tuple[str, ...] = ()
) -> None:
    """Refuse to add sub-images cut with other settings to a folder prepared before (unless overwrite), then record
    these settings (atomically) for the next run. With overwrite, the earlier grid's sub-images of these images
    (and their LR crops) are removed first: the new grid may have fewer, and an old LR beside a new HR of the same
    name would be a misaligned training pair."""
    import glob
    import json
    import re

    from .atomic import atomic_write_bytes

    record = out_dir / SETTINGS_FILE
    try:
        before = json.loads(record.read_text()) if record.is_file() else None
    except (OSError, ValueError):
        before = None  # unreadable: as if absent (it is ours, rewritten below)
    if isinstance(before, dict) and before != settings and not overwrite:

        def flags(d: Mapping[str, object]) -> str:
            return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in d.items() if v is not None)

        raise EsrganError(
            f"{out_dir}: holds sub-images cut with {flags(before)}, not {flags(settings)}; rerun with the same "
            "settings to finish it, --overwrite to replace them, or give another folder"
        )
    if isinstance(before, dict) and before != settings:  # overwrite: the earlier grid goes
        folders = [
            out_dir,
            *(out_dir / f"LR_x{s}" for s in {before.get("lr_scale"), settings["lr_scale"]} if s),
        ]
        for folder in folders:
            for stem in stems:
                for old in folder.glob(f"{glob.escape(stem)}_s*.png"):
                    if re.fullmatch(rf"{re.escape(stem)}_s\d{{3,}}\.png", old.name):
                        old.unlink(missing_ok=True)
    if before != settings:
        try:
            atomic_write_bytes(record, (json.dumps(settings) + "\n").encode(), overwrite=True)
        except OSError as exc:
            raise EsrganError(f"{record}: cannot write ({cannot_write_reason(record, exc)})") from None


def _same_names(files: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files to cut, (file, reason) of those left out): sub-images are named after the file's stem, so a.png and
    a.jpg (two different photos, often) would write the same a_s001.png...: the second would silently replace the
    first's sub-images (with --overwrite) or be refused one by one after part of it was written. As `esrgan upscale`
    does for two inputs with one output name, the first (in sorted order) is cut and the others are reported as
    failed, before anything is written; the run goes on and ends with exit status 1. Names are compared
    case-insensitively: on macOS and Windows a.png and A.jpg write the same files too."""
    first: dict[str, Path] = {}
    keep: list[Path] = []
    clashes: list[tuple[Path, str]] = []
    for path in files:
        other = first.setdefault(path.stem.casefold(), path)
        if other is path:
            keep.append(path)
        else:
            clashes.append(
                (
                    path,
                    f"{path}: its sub-images would get the names of those of {other} ({path.stem}_s001.png ...); "
                    "rename one of the two",
                )
            )
    return keep, clashes


def _run(
    jobs: list[tuple[Path, _Settings]], workers: int
) -> Iterator[tuple[Path, tuple[int, int], str | None]]:
    if workers == 1 or len(jobs) <= 1:
        yield from map(_work, jobs)
        return
    # spawn, not fork: a forked child inheriting torch's OpenMP state can deadlock
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
        yield from pool.imap_unordered(_work, jobs)
