"""Fuzz esrgan.imageio.read_image with mutated real photos in every format it accepts.

The property (shared with tests/test_hostile_images.py): every input ends in an ImageData or in one ImageError
whose message is one line starting with the file's path; never another exception, a hang, a memory blow-up or an
interpreter crash.

    python tools/fuzz_images.py mutate --cases 20000 [--timeout 10] [--memory-mb 2048] [--findings DIR]
    python tools/fuzz_images.py atheris CORPUS_DIR -max_total_time=600 -timeout=10 -rss_limit_mb=2048

`mutate` runs deterministic byte mutations (case i always gives the same file) in a worker process under
RLIMIT_AS with a per-case time limit; a worker that hangs or dies is recorded and replaced, and the offending
input is saved to --findings. `atheris` is coverage-guided (libFuzzer over Pillow's and our Python code); its
corpus starts from the same seed files, and libFuzzer's own -timeout/-rss_limit_mb enforce the limits.
"""

from __future__ import annotations

import argparse
import io
import logging
import multiprocessing as mp
import os
import random
import resource
import struct
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
from PIL import Image

from esrgan.errors import ImageError
from esrgan.imageio import ImageData, read_image, write_image

Ops = list[tuple[int, int, int]]


# --- seed files -----------------------------------------------------------------------------------------------------


def _photos() -> tuple[np.ndarray, np.ndarray]:
    """Small crops of two real photographs (scikit-image): RGB 32x24 (face) and grey 24x32 (camera)."""
    from skimage import data

    return (
        np.ascontiguousarray(data.astronaut()[60:92, 180:204]),
        np.ascontiguousarray(data.camera()[200:224, 200:232]),
    )


def _pil_bytes(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _ppm16(rgb16: np.ndarray) -> bytes:
    h, w = rgb16.shape[:2]
    return f"P6\n{w} {h}\n65535\n".encode() + rgb16.astype(">u2").tobytes()


def seed_images() -> dict[str, bytes]:
    """Real-photo files of every format and layout read_image accepts (and a few it refuses cleanly)."""
    rgb, grey = _photos()
    rgba = np.dstack(
        [rgb, np.linspace(0, 255, rgb.shape[0] * rgb.shape[1]).reshape(rgb.shape[:2]).astype(np.uint8)]
    )
    im, im_grey, im_rgba = Image.fromarray(rgb), Image.fromarray(grey), Image.fromarray(rgba)
    frames = [im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    deep = rgb.astype(np.uint16) * 257 + 3
    seeds = {
        "rgb8.png": _pil_bytes(im, "PNG"),
        "rgba8.png": _pil_bytes(im_rgba, "PNG"),
        "la8.png": _pil_bytes(im_rgba.convert("LA"), "PNG"),
        "palette.png": _pil_bytes(im.convert("P"), "PNG"),
        "grey16.png": _pil_bytes(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
        "animated.png": _pil_bytes(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "rgb.jpg": _pil_bytes(im, "JPEG", quality=90),
        "progressive.jpg": _pil_bytes(im, "JPEG", quality=90, progressive=True),
        "cmyk.jpg": _pil_bytes(im.convert("CMYK"), "JPEG"),
        "lossless.webp": _pil_bytes(im_rgba, "WEBP", lossless=True),
        "lossy.webp": _pil_bytes(im, "WEBP", quality=80),
        "animated.webp": _pil_bytes(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "rgb8.tif": _pil_bytes(im, "TIFF"),
        "lzw.tif": _pil_bytes(im, "TIFF", compression="tiff_lzw"),
        "cmyk.tif": _pil_bytes(im.convert("CMYK"), "TIFF"),
        "grey16.tif": _pil_bytes(Image.fromarray(grey.astype(np.uint16) * 257), "TIFF"),
        "float.tif": _pil_bytes(Image.fromarray(grey.astype(np.float32) / 255), "TIFF"),
        "rgb.bmp": _pil_bytes(im, "BMP"),
        "palette.bmp": _pil_bytes(im.convert("P"), "BMP"),
        "grey.gif": _pil_bytes(im_grey, "GIF"),
        "animated.gif": _pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "rgb8.ppm": _pil_bytes(im, "PPM"),
        "grey.pgm": _pil_bytes(im_grey, "PPM"),
        "rgb16.ppm": _ppm16(deep),
    }
    seeds.update(_measurement_seeds(rgb, grey))
    with tempfile.TemporaryDirectory() as tmp:  # our writer's 16-bit PNG and TIFF (tifffile layout)
        for name in ("rgb16.png", "rgba16.png", "rgb16.tif"):
            pixels = ImageData(pixels=deep, bit_depth=16, alpha=deep[:, :, 0] if "rgba" in name else None)
            seeds[name] = write_image(Path(tmp) / name, pixels).read_bytes()
    return seeds


def _measurement_seeds(rgb: np.ndarray, grey: np.ndarray) -> dict[str, bytes]:
    """Measurement TIFFs (esrgan.datatiff) as GDAL lays them out: float with NaN, int16 with GeoTIFF tags and
    GDAL nodata, six uint16 bands planar, RGB + an unspecified extra sample."""
    import tifffile

    grey = np.ascontiguousarray(grey.T)  # the same size as rgb

    def tiff(array: np.ndarray, **kw: object) -> bytes:
        buf = io.BytesIO()
        tifffile.imwrite(buf, array, **kw)
        return buf.getvalue()

    reflectance = rgb.astype(np.float32) / 600.0
    reflectance[:8, :8] = np.nan
    geo = [
        (33550, 12, 3, (10.0, 10.0, 0.0), True),
        (33922, 12, 6, (0.0, 0.0, 0.0, 500000.0, 4200000.0, 0.0), True),
        (34735, 3, 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633), True),
        (42113, 2, 0, "-9999", True),
    ]
    dem = grey.astype(np.int16) * 12 - 500
    dem[-4:, -4:] = -9999
    bands = (
        np.stack([rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2], grey, 255 - grey, grey // 2]).astype(np.uint16)
        * 257
    )
    return {
        "ct.dcm": _dicom(dem),
        "us.dcm": _dicom(rgb),
        "reflectance.tif": tiff(reflectance, photometric="rgb"),
        "dem_geo.tif": tiff(dem, extratags=geo),
        "bands6.tif": tiff(bands, photometric="minisblack", planarconfig="separate"),
        "rgbn.tif": tiff(np.dstack([rgb, grey]), photometric="rgb", extrasamples=[0]),
    }


def _dicom(pixels: np.ndarray) -> bytes:
    """A DICOM Part 10 file of pixels (int16 grey or uint8 RGB), as pydicom writes a CT or ultrasound export."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("seed.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = CTImageStorage, "1.2.3.4.5", "1.2.3.4"
    ds.Rows, ds.Columns = pixels.shape[:2]
    colour = pixels.ndim == 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = (3, "RGB") if colour else (1, "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelSpacing = [0.5, 0.5]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --- mutations ------------------------------------------------------------------------------------------------------


_EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def apply_ops(data: bytes, ops: Ops) -> bytes:
    """Mutate data: (kind, position, value) per op; positions wrap around, so any integers are valid."""
    buf = bytearray(data)
    for kind, pos, val in ops:
        if not buf:
            break
        i = pos % len(buf)
        kind %= 6
        if kind == 0:  # flip bits of one byte
            buf[i] ^= (val % 255) + 1
        elif kind == 1:  # truncate
            del buf[i:]
        elif kind == 2:  # insert a run of one byte
            buf[i:i] = bytes([val % 256]) * (1 + val % 7)
        elif kind == 3:  # a large 64-bit integer (sizes, offsets, lengths)
            buf[i : i + 8] = struct.pack("<Q", (val * 0x9E3779B97F4A7C15) % 2**64)
        elif (
            kind == 4
        ):  # a boundary value in a 16- or 32-bit field, either byte order (widths, heights, counts)
            extreme = _EXTREMES[val % len(_EXTREMES)]
            width = 2 if extreme <= 0xFFFF and val % 2 else 4
            order = "<" if (val >> 8) % 2 else ">"
            buf[i : i + width] = struct.pack(
                order + ("H" if width == 2 else "I"), extreme % (1 << (8 * width))
            )
        else:  # duplicate a slice elsewhere (repeated chunks, markers, IFDs)
            j = val % len(buf)
            piece = bytes(buf[i : i + 1 + val % 64])
            buf[j:j] = piece
    return bytes(buf)


def random_ops(rng: random.Random) -> Ops:
    return [(rng.randrange(6), rng.randrange(2**32), rng.randrange(2**32)) for _ in range(rng.randint(1, 4))]


def case(seeds: dict[str, bytes], index: int) -> tuple[str, bytes]:
    """Case number index: always the same seed file and the same mutations."""
    names = sorted(seeds)
    name = names[index % len(names)]
    return name, apply_ops(seeds[name], random_ops(random.Random(index)))


# --- the property ---------------------------------------------------------------------------------------------------


def read_or_refuse(path: Path) -> str:
    """'decoded' or 'refused'; raises AssertionError on a malformed refusal, and lets anything else escape.

    Read twice: as a photograph (what training and evaluation do) and as `esrgan upscale` reads (measurement
    TIFFs too); a decoded measurement TIFF is also written back, which must succeed or be one ImageError."""
    first = _read_or_refuse(path, measurements=False)
    return _read_or_refuse(path, measurements=True) if first == "refused" or _is_tiff(path) else first


def _write_back(image: ImageData, out: Path) -> None:
    """A decoded measurement TIFF must write back as one: no error at all (what it holds was checked on the way
    in), and the file it writes must read back with the same planes."""
    write_image(out, image, overwrite=True)
    again = read_image(out, measurements=True)
    if again.pixels.shape != image.pixels.shape or (again.extra is None) != (image.extra is None):
        raise AssertionError(f"written back as {again.pixels.shape}, read as {image.pixels.shape}")
    out.unlink()


def _is_tiff(path: Path) -> bool:
    return path.read_bytes()[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _read_or_refuse(path: Path, *, measurements: bool) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings (animated, EXIF dropped, ...) are allowed outcomes
            image = read_image(path, measurements=measurements)
            if image.samples is not None:
                _write_back(image, path.with_name("written.tif"))
    except ImageError as exc:
        msg = str(exc)
        if not msg.startswith(f"{path}: ") or "\n" in msg:
            raise AssertionError(f"ImageError message is not one line naming the file: {msg!r}") from None
        return "refused"
    if image.pixels.size == 0 or image.height * image.width > 64 * 1024 * 1024:
        raise AssertionError(f"decoded an impossible image {image.pixels.shape}")
    return "decoded"


# --- the long run: a worker process under limits, watched by the parent ----------------------------------------------


MakeCase = Callable[[int], tuple[str, bytes]]
Check = Callable[[str, bytes, Path], str]
CLEAN = ("decoded", "refused", "loaded")


def _worker(conn: Connection, make_case: MakeCase, check: Check, start: int, stop: int, memory_mb: int,
            folder: str) -> None:  # fmt: skip
    limit = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.disable(logging.CRITICAL)  # tifffile logs every malformed tag it skips
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # libtiff prints its complaints to the C stderr
    for i in range(start, stop):
        name, data = make_case(i)
        conn.send(("start", i))
        try:
            outcome = check(name, data, Path(folder))
        except BaseException as exc:  # the point of the tool: record whatever escapes
            outcome = f"escaped {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        conn.send(("done", i, outcome))
    conn.send(("finished", stop))


def run_watched(
    make_case: MakeCase,
    check: Check,
    cases: int,
    *,
    timeout: float,
    memory_mb: int,
    findings: Path | None,
    first: int = 0,
) -> Counter[str]:
    """Run cases [first, first + cases) in a worker process under RLIMIT_AS, watched for hangs and deaths.

    A hung worker is killed, a dead one replaced; either way the case is a finding and the run goes on with the
    next case. Returns outcome counts ('decoded', 'refused', 'loaded', 'FINDING', 'hang', 'worker died').
    """
    counts: Counter[str] = Counter()
    ctx = mp.get_context("fork")  # case data and checks reach the worker without pickling
    next_case, stop = first, first + cases
    with tempfile.TemporaryDirectory(prefix="fuzz-") as folder:
        while next_case < stop:
            parent, child = ctx.Pipe()
            args = (child, make_case, check, next_case, stop, memory_mb, folder)
            proc = ctx.Process(target=_worker, args=args, daemon=True)
            proc.start()
            child.close()
            current, failure = next_case, ""
            while True:
                if not parent.poll(timeout):
                    failure = f"hang (over {timeout:g} s)"
                    proc.kill()
                    break
                try:
                    msg = parent.recv()
                except EOFError:
                    proc.join(5)
                    failure = f"worker died (exit code {proc.exitcode})"
                    break
                if msg[0] == "start":
                    current = msg[1]
                elif msg[0] == "done":
                    counts[msg[2] if msg[2] in CLEAN else "FINDING"] += 1
                    if msg[2] not in CLEAN:
                        _save_finding(findings, make_case, msg[1], msg[2])
                    next_case = msg[1] + 1
                else:
                    next_case = stop
                    break
            proc.join(5)
            parent.close()
            if failure:
                counts["FINDING"] += 1
                counts[failure.split(" (")[0]] += 1
                _save_finding(findings, make_case, current, failure)
                next_case = current + 1
    return counts


def _save_finding(findings: Path | None, make_case: MakeCase, index: int, outcome: str) -> None:
    name, data = make_case(index)
    print(f"case {index} ({name}): {outcome}", file=sys.stderr, flush=True)
    if findings is not None:
        findings.mkdir(parents=True, exist_ok=True)
        (findings / f"case{index:07d}-{name}").write_bytes(data)


def run_mutations(
    cases: int, *, timeout: float, memory_mb: int, findings: Path | None, first: int = 0
) -> Counter[str]:
    """The image fuzz: mutated seed files through read_or_refuse."""
    seeds = seed_images()

    def check(name: str, data: bytes, folder: Path) -> str:
        path = folder / "case.img"
        path.write_bytes(data)
        return read_or_refuse(path)

    return run_watched(lambda i: case(seeds, i), check, cases, timeout=timeout, memory_mb=memory_mb,
                       findings=findings, first=first)  # fmt: skip


# --- coverage-guided: atheris ---------------------------------------------------------------------------------------


def run_atheris(argv: list[str]) -> None:
    import atheris  # optional: pip install atheris

    corpus = next((a for a in argv if not a.startswith("-")), None)
    if corpus is not None:
        Path(corpus).mkdir(parents=True, exist_ok=True)
        for name, data in seed_images().items():
            (Path(corpus) / name).write_bytes(data)
    folder = Path(tempfile.mkdtemp(prefix="atheris-images-"))
    path = folder / "case.img"

    def one_input(data: bytes) -> None:
        path.write_bytes(data)
        read_or_refuse(path)

    logging.disable(logging.CRITICAL)
    atheris.instrument_all()  # Pillow's and our Python code are already imported: instrument them in place
    atheris.Setup([sys.argv[0], *argv], one_input)
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("mutate", help="deterministic mutations in a limited worker process")
    m.add_argument("--cases", type=int, default=20000)
    m.add_argument("--first", type=int, default=0, help="first case number (to resume or shard a run)")
    m.add_argument("--timeout", type=float, default=10.0, help="seconds per case before it counts as a hang")
    m.add_argument("--memory-mb", type=int, default=2048, help="RLIMIT_AS of the worker")
    m.add_argument("--findings", type=Path, help="folder for inputs that broke the property")
    sub.add_parser("atheris", help="coverage-guided (libFuzzer flags follow)", add_help=False)
    args, rest = parser.parse_known_args()
    if args.mode == "atheris":
        run_atheris(rest)
        return 0
    start = time.perf_counter()
    counts = run_mutations(args.cases, timeout=args.timeout, memory_mb=args.memory_mb, findings=args.findings,
                           first=args.first)  # fmt: skip
    seconds = time.perf_counter() - start
    print(f"cases {args.first}..{args.first + args.cases - 1}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f" ({seconds:.0f} s)")  # fmt: skip
    return 1 if counts["FINDING"] else 0


if __name__ == "__main__":
    sys.exit(main())
