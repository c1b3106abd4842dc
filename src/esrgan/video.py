"""Video: every frame of a clip through an Upscaler, with sound, timing and tags kept (PyAV, no ffmpeg binary).

    from esrgan import Upscaler
    from esrgan.video import upscale_video
    up = Upscaler.from_pretrained("realesrgan-x4plus")
    upscale_video(up, "clip.mp4", "clip_x4.mp4")            # or up.upscale_video("clip.mp4", "clip_x4.mp4")

What is kept: every frame's timestamp in the source's time base (so the frame rate, 30000/1001 and variable frame
rates included, and the frame count), audio streams copied packet for packet (re-encoded only where the output
container cannot hold them, with a note saying so), subtitle streams where the container can hold them (else
dropped, with a note), attachments (fonts) into Matroska (else dropped, with a note), chapters, container and
stream metadata, the tracks' dispositions (default, forced, ...), the rotation (display matrix), the sample aspect
ratio (non-square pixels) and the colour tags (range, primaries, transfer, matrix; the YUV <-> RGB conversions
around the model use the source's matrix and range).

How (and why):
- Three threads with small bounded queues: decode (FFmpeg, to RGB), the model (this thread), encode (FFmpeg), so
  decoding and encoding overlap with the model and memory is a few frames whatever the length of the clip.
- Resume by segments: the frames are encoded in segments of `segment_frames` frames (each from a fresh encoder, so
  it starts with a key frame and depends on no other segment), kept as packet files in a hidden work folder next to
  the output (`.NAME.segments/`), each written under a temporary name and renamed when complete. A killed run
  leaves complete segments there and nothing under the output's name; a rerun with the same source, model and
  settings (a fingerprint in the folder says so) keeps the complete segments, decodes past their frames without
  running the model and upscales from the first missing segment on. At the end the segments are muxed with the
  audio and subtitle packets into a temporary file, which is renamed to the output; then the folder is removed.
  Segments rather than a frame-exact restart because an encoder's state cannot be saved: a restart inside a
  segment would need a key frame there anyway, which is what a segment boundary is.
- Errors are VideoError (an EsrganError): one line naming the file.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import heapq
import json
import numbers
import os
import queue
import shutil
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import EsrganError

if TYPE_CHECKING:
    from .upscale import Upscaler

VIDEO_SUFFIXES = frozenset(
    [
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".ts",
        ".mts",
        ".m2ts",
        ".mpg",
        ".mpeg",
        ".wmv",
        ".flv",
        ".3gp",
        ".ogv",
    ]
)
"""Files treated as videos (picked up from folders and globs like images)."""

CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
"""Output containers, chosen by the output's suffix (FFmpeg muxer names)."""

CODECS = {"h264": "libx264", "h265": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1", "ffv1": "ffv1"}
"""--codec names and the FFmpeg encoders behind them (all in PyAV's wheels)."""

DEFAULT_CRF = {"h264": 18, "h265": 20, "vp9": 24, "av1": 24}
"""Constant-quality defaults: visually near-lossless, as an upscale deserves (lower = better and bigger)."""

CRF_RANGE = {"h264": (0, 51), "h265": (0, 51), "vp9": (0, 63), "av1": (1, 63)}
"""The CRF each encoder takes, checked before any work. Measured with PyAV's FFmpeg: libx264 took -1 as its default
(23) and 52 and up as 51, without a word; x265 refuses 52 and up, libvpx-vp9 64, SVT-AV1 64 and takes 0 as its
default (35) (refused only when the encoder opened, with a message that blamed the frame size)."""

DEFAULT_SEGMENT_FRAMES = 240
"""Frames per resumable segment: about 10 s at 24-25 fps, the usual x264 key frame interval (250), so segments
cost almost nothing in size; a kill loses at most this many frames of work."""

QUEUE_FRAMES = 4  # frames in flight between decoder, model and encoder (bounded memory)
ENCODER_BYTES = {"h264": 230, "h265": 240, "vp9": 170, "av1": 250, "ffv1": 60}
"""Host memory an encoder holds, in bytes per output pixel of 8-bit video (twice that for 10-bit and more): PyAV
encoding 60 frames of 1920x1088 with FFmpeg's defaults on a 2-core AMD EPYC Zen 4 grew by 224 (libx264), 236
(libx265), 166 (libvpx-vp9), 247 (SVT-AV1) and 58 (ffv1) bytes a pixel (libx264 186 and ffv1 53 at 3840x2176):
lookahead and reference frames, several planes each. libx264 with 2, 8 and 24 threads (thread_count): 227, 224 and
229 bytes a pixel, so its lookahead, not the threads, holds the memory: the figures hold on bigger machines."""
_SEGMENT_MAGIC = b"ESRGAN-SEGMENT-1\n"
_RECORD = struct.Struct("<qqqBI")  # pts, dts, duration, key frame, size
_NONE = -(2**63)


class VideoError(EsrganError):
    """A video that cannot be read or written (not a video, corrupt, truncated, no video stream, too large)."""


FrameProgress = Callable[[int, int | None], None]
"""on_frame(done, total): frames done so far (kept segments included) and the total when known."""


@dataclass
class VideoResult:
    src: Path
    dst: Path
    frames: int  # frames in the output
    duration: float  # seconds of video in the output
    seconds: float  # wall time of this run
    resumed: int = 0  # frames kept from segments of an earlier, interrupted run
    upscaled: int = 0  # frames this run put through the model
    notes: list[str] = field(default_factory=list)  # streams re-encoded or dropped, and why

    def summary(self) -> str:
        speed = self.upscaled / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"{self.src} -> {self.dst}: {self.frames} frames, {self.duration:.2f} s of video, "
            f"{self.seconds:.1f} s ({speed:.2f} frames/s)"
        )
        if self.resumed:
            text += f", resumed: {self.resumed} frames kept from the interrupted run"
        return text


def is_video(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def parse_frames(text: str) -> tuple[int, int | None]:
    """--frames A:B -> (A, B): frames A to B-1, 0-based, like a Python slice; A: or :B leave an end open."""
    start, sep, stop = text.partition(":")
    try:
        a = int(start) if start.strip() else 0
        b = int(stop) if stop.strip() else None
    except ValueError:
        raise EsrganError(f"--frames wants A:B (frame numbers, e.g. 0:100), not {text!r}") from None
    if not sep or a < 0 or (b is not None and b <= a):
        raise EsrganError(f"--frames wants A:B with 0 <= A < B (e.g. 0:100), not {text!r}")
    return a, b


def _frame_range(frames: Any) -> tuple[int, int | None]:
    """upscale_video's `frames` checked as parse_frames checks --frames: (A, B) of whole numbers, 0 <= A < B, B None
    for the end. Unchecked, (-5, 10) wrote frames 0-9 and said 15 frames, and (3.5, 8) was a ValueError."""

    def whole(value: Any) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    if isinstance(frames, tuple | list) and len(frames) == 2:
        a, b = frames
        if whole(a) and a >= 0 and (b is None or (whole(b) and b > a)):
            return int(a), None if b is None else int(b)
    raise EsrganError(
        f"frames wants (A, B) with whole numbers 0 <= A < B (B None: to the end), not {frames!r}"
    )


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise EsrganError("videos need PyAV: pip install 'esrgan[video]' (or pip install av)") from None
    av.logging.set_level(av.logging.PANIC)  # FFmpeg's own chatter; errors reach us as exceptions
    return av


# --- the work folder: fingerprint and segments --------------------------------------------------------------------
_MODEL_DIGESTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _model_digest(upscaler: Upscaler) -> str:
    """SHA-256 of the model's weights (cached per model): a rerun with another model must not reuse segments."""
    model = upscaler.model
    if model not in _MODEL_DIGESTS:
        h = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        _MODEL_DIGESTS[model] = h.hexdigest()
    return _MODEL_DIGESTS[model]


def work_folder(dst: Path) -> Path:
    """The hidden folder next to the output that holds the segments of an unfinished run (a name too long to take
    its 10 more bytes shortened as atomic.temp_stem shortens temporary files: a 250-byte output name failed)."""
    from .atomic import temp_stem

    return dst.parent / f".{temp_stem(dst.parent, dst.name)}.segments"


def _segment_path(work: Path, index: int) -> Path:
    return work / f"seg{index:06d}.pkt"


class _SegmentWriter:
    """One segment file, written as the packets come (memory: one packet), under a temporary name until complete.

    Layout: magic, records (pts, dts, duration, key frame, size, data), a last record with key = 255 holding the
    encoder's extradata, then the extradata's length (so it can be read from the end). close() fsyncs and renames
    the file: a segment is complete or absent.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.part")
        self.fh = open(self.tmp, "wb")  # noqa: SIM115 (closed by close or abort)
        self.fh.write(_SEGMENT_MAGIC)

    def write(self, packets: list[Any]) -> None:
        for p in packets:
            if p.pts is None:
                raise VideoError(f"{self.path}: the encoder gave a packet without a timestamp")
            data = bytes(p)
            dts = _NONE if p.dts is None else p.dts
            self.fh.write(_RECORD.pack(p.pts, dts, p.duration or 0, 1 if p.is_keyframe else 0, len(data)))
            self.fh.write(data)

    def close(self, extradata: bytes) -> None:
        self.fh.write(_RECORD.pack(0, 0, 0, 255, len(extradata)))
        self.fh.write(extradata)
        self.fh.write(struct.pack("<I", len(extradata)))
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


Record = tuple[int, int | None, int, bool, bytes]


def _read_segment(path: Path, *, data: bool = True) -> tuple[bytes, Iterator[Record]]:
    """(extradata, records): the records are read one at a time; data=False skips the packets' bytes."""
    fh = open(path, "rb")  # noqa: SIM115 (closed by the generator)
    try:
        if fh.read(len(_SEGMENT_MAGIC)) != _SEGMENT_MAGIC:
            raise VideoError(f"{path}: not a segment file (remove the folder {path.parent} and rerun)")
        fh.seek(-4, os.SEEK_END)
        (n,) = struct.unpack("<I", fh.read(4))
        fh.seek(-4 - n, os.SEEK_END)
        extradata = fh.read(n)
        fh.seek(len(_SEGMENT_MAGIC))
    except BaseException:
        fh.close()
        raise

    def records() -> Iterator[Record]:
        with fh:
            while head := fh.read(_RECORD.size):
                pts, dts, duration, key, size = _RECORD.unpack(head)
                if key == 255:
                    return
                if data:
                    yield pts, None if dts == _NONE else dts, duration, bool(key), fh.read(size)
                else:
                    fh.seek(size, os.SEEK_CUR)
                    yield pts, None if dts == _NONE else dts, duration, bool(key), b""

    return extradata, records()


# --- settings -----------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """Everything decided before the first frame: streams, sizes, encoder settings, frame range."""

    container: str
    codec: str  # our name (h264, ...)
    encoder: str  # FFmpeg's (libx264, ...)
    pix_fmt: str
    rgb_format: str  # rgb24 or rgb48le: what the model sees
    crf: int | None
    width: int
    height: int
    out_width: int
    out_height: int
    time_base: Fraction
    rate: Fraction | None
    start: int
    stop: int | None
    total: int | None  # frames expected in the output, when the source says
    colour: dict[str, int]
    rotation: int
    sar: Fraction | None = (
        None  # the sample (pixel) aspect ratio of an anamorphic source; None: square pixels
    )

    def encoder_options(self) -> dict[str, str]:
        if self.crf is None:
            return {}
        options = {"crf": str(self.crf)}
        if self.encoder == "libvpx-vp9":
            options["b"] = "0"  # constant quality, not constrained quality
        if self.encoder == "libx265":
            options["x265-params"] = "log-level=error"
        return options


_REFUSED_AT_HEADER = {("mov", "vp9"), ("mov", "av1")}
"""Containers that take a codec's stream but refuse it when their header is written, at the final mux, after every
frame was upscaled (FFmpeg's mov muxer: "vp9 only supported in MP4", a bare "Invalid argument" through PyAV).
Measured by encoding a frame of every CODECS entry into every CONTAINERS format with PyAV's FFmpeg: these two are
the only such pairs (the others are refused by add_stream, which _plan asks first, or are written)."""


def _choose_codec(codec: str | None, container: str) -> tuple[str, str]:
    name = (codec or ("vp9" if container == "webm" else "h264")).lower()
    name = {"hevc": "h265", "x264": "h264", "x265": "h265", "avc": "h264"}.get(name, name)
    if name not in CODECS:
        raise EsrganError(f"unknown video codec {codec!r}; one of {', '.join(CODECS)}")
    return name, CODECS[name]


def _plan(
    av: Any,
    inp: Any,
    vin: Any,
    first: Any,
    src: Path,
    dst: Path,
    upscaler: Upscaler,
    *,
    codec: str | None,
    crf: int | None,
    pix_fmt: str | None,
    frames: tuple[int, int | None] | None,
) -> _Plan:
    container = CONTAINERS[dst.suffix.lower()]
    name, encoder = _choose_codec(codec, container)
    probe = av.open(_NullSink(), "w", format=container)
    try:
        if (container, name) in _REFUSED_AT_HEADER:
            raise ValueError(name)
        probe.add_stream(encoder)
    except ValueError:
        raise VideoError(
            f"{src}: cannot write {dst}: a {dst.suffix} file cannot hold {name} video; use .mkv"
        ) from None
    finally:
        probe.close()
    h, w = first.height, first.width
    oh, ow = upscaler.output_size(h, w)
    formats = [f.name for f in av.Codec(encoder, "w").video_formats or []]
    bits = max(c.bits for c in first.format.components)
    if pix_fmt is None and name == "ffv1":  # lossless: keep the model's RGB output as it is
        pix_fmt = "gbrp16le" if bits > 8 else "bgr0"
    elif pix_fmt is None:
        pix_fmt = first.format.name if first.format.name in formats else None
        if pix_fmt is None:
            high = [f for f in ("yuv420p10le", "gbrp10le") if f in formats]
            pix_fmt = high[0] if bits > 8 and high else ("yuv420p" if "yuv420p" in formats else formats[0])
    elif formats and pix_fmt not in formats:
        more = f", ... ({len(formats)} in all)" if len(formats) > 8 else ""
        raise EsrganError(
            f"{name} cannot encode pixel format {pix_fmt!r}; it takes {', '.join(formats[:8])}{more}"
        )
    fmt = av.VideoFormat(pix_fmt)
    if (fmt.chroma_width(ow) * 2 == ow + 1 and ow % 2) or (fmt.chroma_height(oh) * 2 == oh + 1 and oh % 2):
        raise VideoError(
            f"{src}: the output would be {ow}x{oh}, odd-sized, which {pix_fmt} cannot hold; choose an --outscale "
            "(or --width / --height) giving an even size, or --pix-fmt yuv444p"
        )
    out_bits = max(c.bits for c in fmt.components)
    ctx = vin.codec_context
    colour = {
        key: int(getattr(first, key) or getattr(ctx, key) or 0)
        for key in ("color_range", "color_primaries", "color_trc", "colorspace")
    }
    rate = vin.average_rate or vin.guessed_rate or vin.base_rate
    # frames that play: the header's count (an MP4's nb_frames) includes the samples an edit list hides (an MP4 cut
    # without re-encoding keeps the packets from the key frame before the cut), the stream's duration does not
    total: int | None = vin.frames or None
    if vin.duration and rate:
        shown = round(float(vin.duration * vin.time_base * rate))
        total = min(total, shown) if total is not None else shown
    elif total is None and inp.duration and rate and len(inp.streams) == 1:
        total = round(inp.duration / 1_000_000 * float(rate))
    start, stop = frames if frames is not None else (0, None)
    if total is not None:
        total = max(0, min(total, stop if stop is not None else total) - start)
    return _Plan(
        container=container,
        codec=name,
        encoder=encoder,
        pix_fmt=pix_fmt,
        rgb_format="rgb48le" if bits > 8 and out_bits > 8 else "rgb24",
        crf=(crf if crf is not None else DEFAULT_CRF.get(name)) if name != "ffv1" else None,
        width=w,
        height=h,
        out_width=ow,
        out_height=oh,
        time_base=vin.time_base,
        rate=Fraction(rate) if rate else None,
        start=start,
        stop=stop,
        total=total,
        colour=colour,
        rotation=int(first.rotation or 0),
        sar=_sample_aspect(vin),
    )


def _sample_aspect(vin: Any) -> Fraction | None:
    """The source's sample aspect ratio where its pixels are not square (DVD, PAL and HDV video, anamorphic
    widescreen: 720x576 at 16:15 is shown 768x576): FFmpeg's guess, the container's value (MP4 pasp, Matroska's
    display size) before the bitstream's. The model scales both sides alike, so the output has the same ratio."""
    sar = vin.sample_aspect_ratio or vin.codec_context.sample_aspect_ratio
    return Fraction(sar) if sar and sar > 0 and sar != 1 else None


class _NullSink:
    """A write-only file for probing what a container accepts (nothing is kept)."""

    def write(self, data: bytes) -> int:
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0


def _fingerprint(src: Path, upscaler: Upscaler, plan: _Plan, segment_frames: int) -> dict[str, Any]:
    stat = src.stat()
    return {
        "source": str(src.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "model": _model_digest(upscaler),
        "outscale": upscaler.outscale,
        **({"fit": list(upscaler.fit)} if upscaler.fit is not None else {}),  # only when set: old runs resume
        "precision": str(upscaler.dtype),
        "tile": upscaler.tile,
        "tile_overlap": upscaler.tile_overlap,
        "codec": plan.encoder,
        "crf": plan.crf,
        "pix_fmt": plan.pix_fmt,
        "frames": [plan.start, plan.stop],
        "segment_frames": segment_frames,
        **(
            {"sar": str(plan.sar)} if plan.sar else {}
        ),  # in the encoder's headers; only when set: old runs resume
    }


@contextlib.contextmanager
def _work_lock(work: Path, src: Path, dst: Path) -> Iterator[None]:
    """An exclusive flock on WORK/.lock for the whole run: a second esrgan writing the same output stops at once
    instead of mixing its segments in (the kernel drops the lock of a killed run). No flock (Windows): no lock."""
    work.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    fd = os.open(work / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise VideoError(
                    f"{src}: cannot write {dst}: another esrgan is writing this output now (its work folder "
                    f"{work} is locked)"
                ) from None
        yield
    finally:
        os.close(fd)


def _prepare_work(work: Path, fingerprint: dict[str, Any]) -> int:
    """Keep the complete segments of an interrupted run of this very job; return how many lead without a gap.

    Called with the work folder locked (_work_lock): everything in it but the lock file belongs to earlier runs.
    """
    stamp = work / "job.json"
    try:
        same = json.loads(stamp.read_text()) == fingerprint
    except (OSError, ValueError):
        same = False
    if not same:
        for old in work.iterdir():
            if old.name == ".lock":
                continue
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        tmp = work / ".job.json.part"
        tmp.write_text(json.dumps(fingerprint, indent=1))
        os.replace(tmp, stamp)
        return 0
    for stale in work.glob(".*.part"):
        stale.unlink()
    kept = 0
    while _segment_path(work, kept).is_file():
        kept += 1
    for later in work.glob("seg*.pkt"):  # segments after a gap cannot happen; be safe
        if int(later.stem[3:]) >= kept:
            later.unlink()
    return kept


# --- the pipeline -------------------------------------------------------------------------------------------------
@dataclass
class _Frame:
    index: int  # in the output, from 0
    pts: int  # in the source's video time base, shifted so a --frames range starts at 0
    duration: int
    pixels: np.ndarray | None  # HxWx3 RGB (uint8 or uint16); None for frames of kept segments
    origin: int = 0  # the source's timestamp that pts 0 stands for (frame A's for a --frames range, else 0)


_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue[Any], stop: threading.Event) -> Any:
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _END


def _decode_frames(av: Any, inp: Any, vin: Any, src: Path, plan: _Plan, skip: int) -> Iterator[_Frame]:
    """Frames in presentation order with their timestamps; the first `skip` ones without pixels."""
    last_pts: int | None = None
    offset: int | None = None
    index = -1
    default_duration = round(1 / (plan.rate * plan.time_base)) if plan.rate else 1
    try:
        for frame in inp.decode(vin):
            index += 1
            if index < plan.start:
                continue
            if plan.stop is not None and index >= plan.stop:
                break
            _check_frame_size(src, index, frame.width, frame.height, (plan.width, plan.height))
            pts = (
                frame.pts
                if frame.pts is not None
                else (last_pts + default_duration if last_pts is not None else 0)
            )
            if last_pts is not None and pts <= last_pts:  # broken timestamps: keep them increasing
                pts = last_pts + 1
            last_pts = pts
            if offset is None:
                offset = pts if plan.start > 0 else 0
            out = index - plan.start
            pixels = None
            if out >= skip:
                pixels = frame.reformat(
                    format=plan.rgb_format, src_color_range=plan.colour["color_range"] or None
                ).to_ndarray()
            yield _Frame(out, pts - offset, frame.duration or default_duration, pixels, offset)
    except av.error.FFmpegError as exc:
        # EINVAL is also how the decoder refuses a frame over its max_pixels (see _video_stream): say both
        why = " or a frame far over the pixel limit" if getattr(exc, "errno", None) == errno.EINVAL else ""
        raise VideoError(f"{src}: corrupt video{why} after frame {max(index, 0)} ({_reason(exc)})") from None


def _check_frame_size(
    src: Path, index: int, width: int, height: int, expected: tuple[int, int], limit: int | None = None
) -> None:
    """Every frame has the first frame's size (and the first is within the pixel limit). The header's size is
    checked against the limit before decoding, but a frame may differ from it: a crafted file's later frame far
    over the limit, or a stream that changes resolution, which used to be squeezed into the first frame's size
    without a word. Both are refused in one line naming the frame."""
    if limit is not None and width * height > limit:
        raise VideoError(
            f"{src}: frame {index + 1} is {width}x{height}, over the limit of {limit} pixels "
            f"({limit / 2**20:.3g} megapixels; --max-megapixels raises it)"
        )
    if (width, height) != expected:
        raise VideoError(
            f"{src}: frame {index + 1} is {width}x{height}, not {expected[0]}x{expected[1]} as the video "
            "began: videos that change resolution are not supported (split the video where it changes)"
        )


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())


class _SegmentEncoder:
    """Encodes frames into segment files of `size` frames, each from a fresh encoder (closed, self-contained)."""

    def __init__(self, av: Any, plan: _Plan, work: Path, size: int, global_header: bool) -> None:
        self.av, self.plan, self.work, self.size = av, plan, work, size
        self.global_header = global_header
        self.ctx: Any = None
        self.writer: _SegmentWriter | None = None
        self.segment = -1

    def _open(self) -> Any:
        av, plan = self.av, self.plan
        ctx = av.CodecContext.create(plan.encoder, "w")
        _configure(ctx, plan)
        if self.global_header:
            ctx.flags |= av.codec.context.Flags.global_header
        with _quiet_encoder(plan):
            ctx.open()
        return ctx

    def add(self, frame: _Frame, pixels: np.ndarray) -> None:
        segment = frame.index // self.size
        if segment != self.segment:
            self.finish()
            self.segment = segment
            self.ctx = self._open()
            self.writer = _SegmentWriter(_segment_path(self.work, segment))
        assert self.writer is not None
        self.writer.write(self.ctx.encode(_to_video_frame(self.av, pixels, frame, self.plan)))

    def finish(self) -> None:
        if self.ctx is None or self.writer is None:
            return
        self.writer.write(self.ctx.encode(None))
        self.writer.close(bytes(self.ctx.extradata or b""))
        self.writer, self.ctx = None, None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
        self.writer, self.ctx = None, None


def _check_encoder_opens(av: Any, plan: _Plan, src: Path) -> None:
    """Open the encoder as the first segment will, so that a size it refuses is said before the first frame is
    upscaled (libx264 and SVT-AV1 stop at 16384 pixels a side, x265 refuses some shapes and frames under 16x16;
    FFmpeg says only "Generic error in an external library", after the first frame's work). Where it refuses
    256x256 frames too (all of them open that size), the size is not the reason and the message says so: x265
    refuses yuva420p, which it lists, at any size (said as "cannot encode 384x256 video", too large)."""
    try:
        _open_encoder(av, plan)
    except (av.error.FFmpegError, ValueError) as exc:
        reason = _reason(exc)
    else:
        return
    size = f"{plan.out_width}x{plan.out_height}"
    try:
        _open_encoder(av, replace(plan, out_width=256, out_height=256))
    except (av.error.FFmpegError, ValueError):
        crf = f", crf {plan.crf}" if plan.crf is not None else ""
        raise VideoError(
            f"{src}: {plan.codec} ({plan.encoder}) cannot encode video with pixel format {plan.pix_fmt}{crf}, "
            f"at any size ({reason}); choose another --pix-fmt or --codec"
        ) from None
    if max(plan.out_width, plan.out_height) < 256:
        raise VideoError(
            f"{src}: {plan.codec} ({plan.encoder}) cannot encode {size} video ({reason}): too small for it; "
            "choose a larger --outscale (or --width / --height) or another --codec"
        )
    others = {"vp9": "--codec vp9", "ffv1": "--codec ffv1 (in .mkv)"}
    instead = " or ".join(v for k, v in others.items() if k != plan.codec)
    raise VideoError(
        f"{src}: {plan.codec} ({plan.encoder}) cannot encode {size} video ({reason}); {instead} takes larger "
        "frames, or choose a smaller --outscale (or --width / --height)"
    )


def _open_encoder(av: Any, plan: _Plan) -> None:
    ctx = av.CodecContext.create(plan.encoder, "w")
    _configure(ctx, plan)
    try:
        with _quiet_encoder(plan):
            ctx.open()
    finally:
        del ctx  # never encoded into: closed when collected


def _configure(ctx: Any, plan: _Plan) -> None:
    ctx.width, ctx.height, ctx.pix_fmt = plan.out_width, plan.out_height, plan.pix_fmt
    ctx.time_base = plan.time_base
    if plan.rate:
        ctx.framerate = plan.rate
    if plan.sar:  # in the bitstream's headers, and (through the stream's parameters) the container's
        ctx.sample_aspect_ratio = plan.sar
    for key, value in plan.colour.items():
        if value:
            setattr(ctx, key, value)
    ctx.options = plan.encoder_options()


@contextlib.contextmanager
def _quiet_encoder(plan: _Plan) -> Iterator[None]:
    """Around opening an encoder: SVT-AV1 has no log option through FFmpeg; it reads SVT_LOG (1 = errors) when an
    encoder opens, and otherwise printed ~40 lines of banner and settings per segment (and, at our threads' low
    priority, "Failed to set thread priority"). Set for the opening only and removed after: the environment is the
    caller's process's, which child processes inherit (it was left set). A value the user set is kept."""
    if plan.encoder != "libsvtav1" or "SVT_LOG" in os.environ:
        yield
        return
    os.environ["SVT_LOG"] = "1"
    try:
        yield
    finally:
        os.environ.pop("SVT_LOG", None)


def _to_video_frame(av: Any, pixels: np.ndarray, frame: _Frame, plan: _Plan) -> Any:
    rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format=plan.rgb_format)
    colourspace = plan.colour["colorspace"]
    out = rgb.reformat(
        format=plan.pix_fmt,
        dst_colorspace=colourspace if colourspace not in (0, 2) else None,
        dst_color_range=plan.colour["color_range"] or None,
    )
    for key, value in plan.colour.items():
        if value:
            setattr(out, key, value)
    out.pts = frame.pts
    out.time_base = plan.time_base
    out.duration = frame.duration
    return out


def _global_header(av: Any, container: str) -> bool:
    """Whether the container wants codec headers out of band (mp4, mkv, ...)."""
    probe = av.open(_NullSink(), "w", format=container)
    try:
        return bool(probe.format.flags & 0x40)  # AVFMT_GLOBALHEADER
    finally:
        probe.close()


def upscale_video(
    upscaler: Upscaler,
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    codec: str | None = None,
    crf: int | None = None,
    pix_fmt: str | None = None,
    frames: tuple[int, int | None] | None = None,
    segment_frames: int = DEFAULT_SEGMENT_FRAMES,
    overwrite: bool = False,
    max_pixels: int | None = None,
    frame_batch: int = 1,
    on_frame: FrameProgress | None = None,
) -> VideoResult:
    """Upscale every frame of src (or frames A..B-1) into dst, whose suffix picks the container.

    codec: h264 (default; vp9 for .webm), h265, vp9, av1 or ffv1 (lossless). crf: constant quality (default per
    codec, see DEFAULT_CRF). pix_fmt: default the source's when the encoder takes it, else yuv420p. frame_batch:
    frames per forward pass where a frame is one tile (see upscale_frames). An existing dst raises
    OutputExistsError unless overwrite; an interrupted run is resumed from its complete segments.
    """
    from .atomic import OutputExistsError, atomic_path
    from .imageio import DEFAULT_MAX_PIXELS

    av = _import_av()
    src, dst = Path(src), Path(dst)
    started = time.perf_counter()
    # the video runs on a copy (its fit_even, host_reserve and caps); the precision it ends in goes back to the caller's
    caller, upscaler = upscaler, copy.copy(upscaler)
    if dst.suffix.lower() not in CONTAINERS:
        raise EsrganError(f"{dst}: unknown video container; use one of {', '.join(sorted(CONTAINERS))}")
    if segment_frames < 1 or frame_batch < 1:
        raise EsrganError(
            f"segment_frames and frame_batch must be >= 1, not {segment_frames} and {frame_batch}"
        )
    if frames is not None:  # before the work folder is made: (3.5, 8) failed after, and left it
        frames = _frame_range(frames)
    name, _ = _choose_codec(codec, CONTAINERS[dst.suffix.lower()])
    if crf is not None and name not in CRF_RANGE:  # ffv1: was ignored without a word
        raise EsrganError(f"--crf does not apply to {name}, which is lossless")
    if crf is not None and not CRF_RANGE[name][0] <= crf <= CRF_RANGE[name][1]:
        low, high = CRF_RANGE[name]
        raise EsrganError(
            f"--crf {crf} is outside {name}'s range, {low} to {high} (lower is better and bigger)"
        )
    if (
        dst.is_dir()
    ):  # not an output that exists: said before any frame (was "skip", or a rename error at the end)
        raise VideoError(f"{src}: cannot write {dst} (a folder has its name)")
    if not overwrite and dst.exists():
        raise OutputExistsError(dst)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    with _open_input(av, src) as inp:
        vin = _video_stream(inp, src, limit)
        w, h = vin.codec_context.width, vin.codec_context.height
        if w * h > limit:
            raise VideoError(
                f"{src}: {w}x{h} frames are over the limit of {limit} pixels ({limit / 2**20:.3g} megapixels; "
                "--max-megapixels raises it)"
            )
        first = _first_frame(av, inp, vin, src)
        # the limit again (the header may differ from the frames); the plan takes its size from this frame
        _check_frame_size(src, 0, first.width, first.height, (first.width, first.height), limit)
        fit = upscaler.fit
        if fit is not None:
            upscaler.fit_even = True  # the free side even, as subsampled chroma wants (FFmpeg's scale=W:-2)
            # the target is the video as shown: turned a quarter, its width is the frames' height; and a frame of
            # non-square pixels is shown sar times as wide as it is stored (the stored width for a width shown:
            # divided by sar, rounded to even as a free side is)
            if int(first.rotation or 0) % 180:
                fit = (fit[1], fit[0])
            sar = _sample_aspect(vin)
            if sar and fit[0] is not None:
                fit = (max(2, 2 * round(fit[0] / sar / 2)), fit[1])
            upscaler.fit = fit
        plan = _plan(
            av, inp, vin, first, src, dst, upscaler, codec=codec, crf=crf, pix_fmt=pix_fmt, frames=frames
        )
    _check_memory(src, plan, upscaler, frame_batch)
    _check_encoder_opens(av, plan, src)  # before any frame is upscaled
    work = work_folder(dst)
    with _work_lock(work, src, dst):
        kept_segments = _prepare_work(work, _fingerprint(src, upscaler, plan, segment_frames))
        skip = kept_segments * segment_frames
        result = VideoResult(src, dst, 0, 0.0, 0.0)
        kept = False
        try:
            with _open_input(av, src) as inp:
                vin = _video_stream(inp, src, limit)
                vin.thread_type = "AUTO"
                count, first, end, origin = _run_frames(
                    av,
                    upscaler,
                    inp,
                    vin,
                    src,
                    plan,
                    work,
                    segment_frames,
                    skip,
                    on_frame,
                    result,
                    frame_batch,
                )
                if count == 0:
                    raise VideoError(
                        f"{src}: no frames" + (" in the --frames range" if frames is not None else "")
                    )
                try:
                    _check_complete(inp, vin, src, plan, count, end + origin)
                except VideoError as exc:
                    # said only after every frame was upscaled (where a stream ends is known only once it is decoded):
                    # the work is kept, not thrown away on a check that may be wrong about an unusual file
                    kept = True
                    raise VideoError(
                        f"{exc}; the {count} frames upscaled are kept in {work} (a rerun reuses them; remove the "
                        "folder if the source is bad)"
                    ) from None
            result.frames = count
            result.duration = float((end - first) * plan.time_base)
            result.resumed = min(skip, count)
            with _open_input(av, src) as inp, atomic_path(dst, overwrite=overwrite) as tmp:
                _mux(av, inp, tmp, work, plan, segment_frames, count, end, result)
        except EsrganError:
            if not kept:  # a bad input found before the work fails again on a rerun: nothing worth keeping
                shutil.rmtree(work, ignore_errors=True)
            raise
        except av.error.FFmpegError as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise VideoError(f"{src}: {_reason(exc)}") from None
        shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.perf_counter() - started
    caller.last_precision = upscaler.last_precision  # fp32 for 10-bit frames: the batch's summary says so
    return result


def _metadata_errors(av: Any) -> dict[str, str]:
    """av.open's argument for metadata that is not UTF-8 (a title written in Latin-1): PyAV before 19 decodes it
    strictly unless told to replace it (the open failed: UnicodeDecodeError); 19 dropped the argument (a TypeError
    for every video) and decodes with surrogateescape, which writes the same bytes back."""
    major = int(str(av.__version__).split(".")[0])
    return {"metadata_errors": "replace"} if major < 19 else {}


@contextlib.contextmanager
def _open_input(av: Any, src: Path) -> Iterator[Any]:
    if not src.is_file():
        raise VideoError(f"{src}: no such file")
    try:
        inp = av.open(str(src), **_metadata_errors(av))
    except av.error.FFmpegError as exc:
        raise VideoError(f"{src}: not a video FFmpeg can read ({_reason(exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{src}: cannot read ({_reason(exc)})") from None
    try:
        yield inp
    finally:
        inp.close()


def _video_stream(inp: Any, src: Path, max_pixels: int | None = None) -> Any:
    """The video stream (not cover art). max_pixels: also FFmpeg's decoder limit, so that a frame larger than the
    stream's header says (a crafted file: a 16x16 header, then a 16000x16000 PNG frame) is refused by the decoder
    before it is allocated, not after; twice our own limit, which each frame is checked against exactly (the
    decoder counts padded sizes)."""
    for stream in inp.streams.video:
        if stream.disposition & 0x400:  # AV_DISPOSITION_ATTACHED_PIC: cover art, not a video
            continue
        if stream.codec_context is None or not stream.codec_context.width:
            continue
        if max_pixels is not None:
            stream.codec_context.options = {
                **dict(stream.codec_context.options or {}),
                "max_pixels": str(2 * max_pixels + 2**20),
            }
        return stream
    kinds = ", ".join(sorted({s.type for s in inp.streams})) or "no streams"
    raise VideoError(f"{src}: has no video stream ({kinds})")


def _first_frame(av: Any, inp: Any, vin: Any, src: Path) -> Any:
    try:
        for frame in inp.decode(vin):
            return frame
    except av.error.FFmpegError as exc:
        why = " or a frame far over the pixel limit" if getattr(exc, "errno", None) == errno.EINVAL else ""
        raise VideoError(f"{src}: corrupt video{why} ({_reason(exc)})") from None
    raise VideoError(f"{src}: the video stream has no frames (truncated or corrupt?)")


def _run_frames(
    av: Any,
    upscaler: Upscaler,
    inp: Any,
    vin: Any,
    src: Path,
    plan: _Plan,
    work: Path,
    segment_frames: int,
    skip: int,
    on_frame: FrameProgress | None,
    result: VideoResult,
    frame_batch: int,
) -> tuple[int, int, int, int]:
    """Decode thread -> model (here) -> encode thread. Returns (frames, first frame's timestamp, end of the last,
    the source's timestamp that timestamp 0 stands for: _Frame.origin)."""
    stop = threading.Event()
    decoded: queue.Queue[Any] = queue.Queue(QUEUE_FRAMES)
    upscaled: queue.Queue[Any] = queue.Queue(QUEUE_FRAMES)
    encoder = _SegmentEncoder(av, plan, work, segment_frames, _global_header(av, plan.container))
    failures: list[BaseException] = []

    def decode() -> None:
        try:
            for frame in _decode_frames(av, inp, vin, src, plan, skip):
                if not _put(decoded, frame, stop):
                    return
            _put(decoded, _END, stop)
        except BaseException as exc:
            _put(decoded, _Failure(exc), stop)

    def encode() -> None:
        try:
            while (item := _get(upscaled, stop)) is not _END:
                frame, pixels = item
                encoder.add(frame, pixels)
            if not stop.is_set():
                encoder.finish()
        except BaseException as exc:
            failures.append(exc)
            stop.set()
        finally:
            encoder.abort()  # an unfinished segment (stopped, or failed): its temporary file goes

    threads = [threading.Thread(target=decode, daemon=True), threading.Thread(target=encode, daemon=True)]
    for t in threads:
        t.start()
    count, first, end, origin = 0, 0, 0, 0
    pending: list[_Frame] = []

    def flush() -> bool:
        """Upscale the pending frames (one forward pass when batched) and hand them to the encoder."""
        outs = upscale_frames(upscaler, [f.pixels for f in pending if f.pixels is not None])
        for frame, out in zip(pending, outs, strict=True):
            result.upscaled += 1
            frame.pixels = None
            if not _put(upscaled, (frame, out), stop):
                return False
            if on_frame is not None:
                on_frame(frame.index + 1, plan.total)
        pending.clear()
        return True

    try:
        while True:
            item = _get(decoded, stop)
            if item is _END:
                if pending and not flush():
                    break
                break
            if isinstance(item, _Failure):
                raise item.exc
            frame: _Frame = item
            if count == 0:
                first, origin = frame.pts, frame.origin
            count, end = frame.index + 1, frame.pts + frame.duration
            if frame.pixels is not None:
                pending.append(frame)
                if len(pending) >= frame_batch and not flush():
                    break
            elif on_frame is not None:
                on_frame(count, plan.total)
        _put(upscaled, _END, stop)
        threads[1].join()
    finally:
        stop.set()
        for t in threads:
            t.join()
    if failures:
        exc = failures[0]
        if isinstance(exc, EsrganError):
            raise exc
        if isinstance(exc, av.error.FFmpegError):
            raise VideoError(f"{src}: encoding with {plan.codec} failed ({_reason(exc)})") from None
        raise exc
    return count, first, end, origin


def frames_memory(plan: _Plan, frame_batch: int) -> int:
    """Host memory the video path holds beside the model, estimated: the frames in flight (the decoded and the
    upscaled queues, a batch, one being converted for the encoder) and the encoder's own (ENCODER_BYTES)."""
    depth = 2 if plan.rgb_format == "rgb48le" else 1  # bytes a sample
    in_flight = (2 * QUEUE_FRAMES + frame_batch + 2) * 3
    encoder = ENCODER_BYTES.get(plan.codec, max(ENCODER_BYTES.values()))
    return plan.out_width * plan.out_height * (in_flight + encoder) * depth


def _check_memory(src: Path, plan: _Plan, upscaler: Upscaler, frame_batch: int) -> None:
    """Refuse, in one line before any frame, a video whose frames and encoder would not fit in the free host memory
    (before, the kernel's OOM killer ended the run without a word, e.g. 1080p at x4, 7680x4320 with h264: about 8 GB);
    else make the (video's own) upscaler's automatic tile leave that memory out (Upscaler.host_reserve)."""
    from .device import host_memory_available
    from .errors import format_bytes

    need = frames_memory(plan, frame_batch)
    free = host_memory_available()
    if free is not None and need > free:
        ways = "a smaller --outscale (or --width / --height)"
        lossless = replace(plan, codec="ffv1")
        if plan.codec != "ffv1" and frames_memory(lossless, 1) <= free:
            ways += ", or --codec ffv1 (lossless, large files)"
        elif frame_batch > 1 and frames_memory(plan, 1) <= free:
            ways += ", or --frame-batch 1"
        raise VideoError(
            f"{src}: the {plan.out_width}x{plan.out_height} frames need about {format_bytes(need)} of memory "
            f"to encode with {plan.codec} (the frames in flight and the encoder's) and {format_bytes(free)} is free: "
            f"try {ways}"
        )
    upscaler.host_reserve = need


def upscale_frames(upscaler: Upscaler, frames: list[np.ndarray]) -> list[np.ndarray]:
    """Upscale frames of one size (HxWx3 uint8 or uint16), in one forward pass where that is possible.

    Batched (several frames per forward pass) when they are 8-bit, each fits in one tile (no tiling) and the scale
    is the model's own; then the pass's output goes through the same blending and rounding as a single image
    (esrgan.tiling.upscale_tiled). Otherwise, and always for one frame, Upscaler.upscale_image on each: the one
    entry point for a decoded image. The results agree with upscale_image to within float rounding of the
    batched convolutions (tests/test_video.py: at most 1 level of 255).
    """
    from .imageio import ImageData

    h, w = frames[0].shape[:2]
    native = upscaler.output_size(h, w) == (
        h * upscaler.model.scale,
        w * upscaler.model.scale,
    )
    cap = upscaler.batch_cap
    if cap is not None and len(frames) > cap:  # a batch ran out of memory before: at most cap frames a pass
        return [
            out for k in range(0, len(frames), cap) for out in upscale_frames(upscaler, frames[k : k + cap])
        ]
    if (
        len(frames) == 1
        or frames[0].dtype != np.uint8
        or not native
        or upscaler.tile_size(h, w) != 0
        or upscaler.model.config.num_in_ch != 3  # a grey model: each frame's channels one at a time
        or not upscaler.batch_fits(h, w, len(frames))  # one at a time, each as large as the memory allows
    ):
        return [
            upscaler.upscale_image(ImageData(f, bit_depth=16 if f.dtype == np.uint16 else 8)).pixels
            for f in frames
        ]
    import torch

    from .errors import OutOfMemoryWarning, out_of_memory
    from .tiling import upscale_tiled

    batch = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    try:
        passed = upscaler.runner(batch)
    except (RuntimeError, MemoryError) as exc:
        if not out_of_memory(exc):
            raise
        passed = None  # half as many frames a pass, for these and the batches after them (down to one)
    if passed is None:
        import warnings

        del batch
        upscaler.batch_cap = max(1, len(frames) // 2)
        warnings.warn(
            f"out of memory with {len(frames)} frames a pass on {upscaler.device.type}; trying "
            f"{upscaler.batch_cap} a pass (also for the frames after them)",
            OutOfMemoryWarning,
            stacklevel=2,
        )
        upscaler.release()
        return upscale_frames(upscaler, frames)
    from .imagedata import channels_equal

    outs = []
    for i, f in enumerate(frames):
        # a black-and-white film's frame (R == G == B) as upscale_image makes it: the output's channels averaged
        # (tiled_rows' grey), then equal again; the batched pass left them as the colour model made them, tinted
        grey = channels_equal(f)
        out = upscale_tiled(
            _output_of(passed[i : i + 1]),  # the pass is done: hand its output to the blending
            torch.from_numpy(f).permute(2, 0, 1),
            scale=upscaler.model.scale,
            tile=0,
            overlap=upscaler.tile_overlap,
            out_dtype=np.uint8,
            grey=grey,
        )
        outs.append(np.repeat(out, 3, axis=2) if grey else out)
    return outs


def _output_of(y: Any) -> Callable[[Any], Any]:
    def forward(_tile: Any) -> Any:
        return y

    return forward


def _check_complete(inp: Any, vin: Any, src: Path, plan: _Plan, count: int, end: int) -> None:
    """A clip that ends well before its header says is truncated: refuse it rather than write a short video.
    end: where the last frame ends, in the source's timestamps (with a --frames range, frame A's added back: the
    real time, not A frames at the average rate, which a variable frame rate made seconds off).

    The duration decides where there is one: the header's frame count (an MP4's nb_frames) counts the samples an
    edit list hides, so an MP4 cut without re-encoding (ffmpeg -ss -c copy, LosslessCut: the packets from the key
    frame before the cut are kept, and hidden) has more of them than play; the stream's duration is what plays. The
    count is the check only for a clip that declares no duration."""
    if plan.stop is not None and plan.start + count >= plan.stop:
        return  # the range ended the decoding, not the end of the stream
    expected: float | None = None
    if vin.duration:
        expected = float(vin.duration * vin.time_base)
    else:
        tag = vin.metadata.get("DURATION") or vin.metadata.get("duration")
        if tag:
            expected = _parse_duration(tag)
        elif inp.duration and len(inp.streams) == 1:
            expected = inp.duration / 1_000_000
    if expected is None:
        if vin.frames and plan.start + count < vin.frames:
            raise VideoError(
                f"{src}: truncated or corrupt: {plan.start + count} of {vin.frames} frames decode"
            )
        return
    start = float((vin.start_time or 0) * vin.time_base)
    got = float(end * plan.time_base) - start
    frame = float(1 / plan.rate) if plan.rate else 0.1
    if got < (expected - start) - max(3 * frame, 0.02 * expected):
        raise VideoError(
            f"{src}: truncated or corrupt: video ends at {got:.2f} s of {expected - start:.2f} s"
        )


def _parse_duration(text: str) -> float | None:
    """Matroska's DURATION tag, HH:MM:SS.fffffffff."""
    try:
        hours, minutes, seconds = text.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


# --- the final mux ------------------------------------------------------------------------------------------------
def _mux(
    av: Any,
    inp: Any,
    tmp: Path,
    work: Path,
    plan: _Plan,
    segment_frames: int,
    count: int,
    end: int,
    result: VideoResult,
) -> None:
    """Segments + the source's other streams (copied; audio re-encoded where the container needs it) -> tmp."""
    segments = (count + segment_frames - 1) // segment_frames
    extradata, _ = _read_segment(_segment_path(work, 0))
    out = av.open(str(tmp), "w", format=plan.container)
    try:
        out.metadata.update(
            {k: v for k, v in inp.metadata.items() if k.lower() not in ("encoder", "duration")}
        )
        vout = out.add_stream(plan.encoder, rate=plan.rate)
        _configure(vout.codec_context, plan)
        vout.time_base = plan.time_base
        vin = _video_stream(inp, Path(inp.name))
        _copy_stream_metadata(vin, vout)
        if plan.rotation:
            vout.set_display_rotation(plan.rotation)
        t0 = Fraction(0)
        if plan.start > 0:
            with _open_input(av, Path(inp.name)) as again:
                t0 = _first_time(again, _video_stream(again, Path(inp.name)), plan)
        t1 = t0 + end * plan.time_base if plan.stop is not None else None
        others = _other_streams(av, inp, out, plan, result, vin.index)
        chapters = _chapters(inp, t0, end * plan.time_base)
        if chapters:
            out.set_chapters(chapters)
        with _quiet_encoder(plan):  # opens the encoder (for its headers; no frame is encoded here)
            out.start_encoding()
        if bytes(vout.codec_context.extradata or b"") != extradata:
            raise VideoError(
                f"{inp.name}: the encoder's headers changed between segments; rerun with --overwrite"
            )
        streams = [_segment_packets(av, work, segments, vout, plan.time_base)]
        if others:
            to_mkv = plan.container in ("matroska", "webm") and ("matroska" not in inp.format.name or t0 > 0)
            streams.append(_other_packets(av, inp, others, t0, t1, to_mkv))
        for _, packet in heapq.merge(*streams, key=lambda item: item[0]):
            out.mux(packet)
        for copy in others.values():
            if copy.encoder is not None:
                for packet in copy.encoder.encode(None):
                    out.mux(packet)
    finally:
        out.close()
    if plan.sar:
        _check_sar(av, tmp, plan, result)


def _check_sar(av: Any, tmp: Path, plan: _Plan, result: VideoResult) -> None:
    """A note where the output does not carry the source's sample aspect ratio, read back as a player reads it.

    The encoder's context carries it to the stream's parameters, which MP4 and MOV write (pasp) for any codec, and
    into H.264 and H.265 bitstreams (VUI). Matroska and AVI write it only from the stream's own field, which PyAV
    cannot set, so VP9, AV1 and FFV1 (no aspect ratio in their bitstreams) in .mkv, .webm or .avi lose it: the
    video would be shown with square pixels, too narrow or too wide, without a word."""
    with av.open(str(tmp)) as out:
        got = out.streams.video[0].sample_aspect_ratio or Fraction(1)
    if got != plan.sar:
        sar = plan.sar
        assert sar is not None
        suffix = next(k for k, v in CONTAINERS.items() if v == plan.container)
        keeps = {"matroska": ", or --codec h264 or h265,", "avi": ", or --codec h264,"}.get(
            plan.container, ""
        )
        result.notes.append(
            f"the sample aspect ratio {sar.numerator}:{sar.denominator} is lost ({plan.codec} video in {suffix} "
            f"cannot carry it here): the video is shown {plan.out_width}x{plan.out_height}, not "
            f"{round(plan.out_width * sar)}x{plan.out_height}; .mp4{keeps} keeps it"
        )


def _chapters(inp: Any, t0: Fraction, length: Fraction) -> list[dict[str, Any]]:
    """The source's chapters within the output's span [t0, t0 + length), moved by -t0."""
    out = []
    for chapter in inp.chapters():
        tb = Fraction(chapter["time_base"])
        start, end = max(chapter["start"] * tb - t0, Fraction(0)), min(chapter["end"] * tb - t0, length)
        if end > start:
            out.append({**chapter, "start": round(start / tb), "end": round(end / tb)})
    return out


def _copy_stream_metadata(src_stream: Any, dst_stream: Any) -> None:
    """The stream's tags (title, language, ...; not the encoder's or the statistics) and its disposition: which
    track is the default, a commentary, forced subtitles, ... (a player picks tracks by them)."""
    dst_stream.disposition = src_stream.disposition
    for key, value in src_stream.metadata.items():
        if key.lower() in ("duration", "encoder", "handler_name", "vendor_id", "number_of_frames", "bps"):
            continue
        if key.upper().startswith(("NUMBER_OF_", "_STATISTICS", "BPS", "DURATION")):
            continue
        dst_stream.metadata[key] = value


def _first_time(inp: Any, vin: Any, plan: _Plan) -> Fraction:
    """Time of frame `plan.start` (the output's zero for a --frames range)."""
    for index, frame in enumerate(inp.decode(vin)):
        if index == plan.start:
            return Fraction(frame.pts or 0) * plan.time_base
    return Fraction(0)


@dataclass
class _Copy:
    out: Any  # the output stream
    encoder: Any = None  # an audio encoder stream when re-encoding; None = packets copied


def _other_streams(
    av: Any, inp: Any, out: Any, plan: _Plan, result: VideoResult, video: int
) -> dict[int, _Copy]:
    """Audio and subtitle streams to carry: copied where the container takes their codec, else audio re-encoded.
    Attachments (a Matroska's fonts for its styled subtitles) are copied into Matroska. What is left out, other video
    streams and cover art included, gets a note (they went without a word); data streams (an MP4's chapter track,
    timecodes) do not: the chapters are carried as chapters."""
    supported = out.supported_codecs
    copies: dict[int, _Copy] = {}
    for stream in inp.streams:
        if stream.type == "attachment":
            name = stream.metadata.get("filename") or "unnamed"
            if plan.container == "matroska":
                _copy_stream_metadata(stream, out.add_stream_from_template(stream))
            else:
                result.notes.append(
                    f"attachment #{stream.index} ({name}) dropped: a {out.format.name} file cannot hold attachments"
                )
            continue
        if stream.type == "video" and stream.index != video:
            codec = stream.codec_context.name if stream.codec_context is not None else "unknown codec"
            result.notes.append(
                f"video stream #{stream.index} ({codec}, cover art) dropped: cover art is not carried over"
                if stream.disposition & 0x400  # AV_DISPOSITION_ATTACHED_PIC
                else f"video stream #{stream.index} ({codec}) dropped: only one video stream is upscaled (#{video})"
            )
            continue
        if stream.type not in ("audio", "subtitle") or stream.codec_context is None:
            continue
        codec = stream.codec_context.name
        label = f"{stream.type} stream #{stream.index} ({codec})"
        if codec in supported or (stream.type == "audio" and _can_copy(av, plan.container, stream)):
            try:
                ostream = out.add_stream_from_template(stream)
            except ValueError:
                ostream = None
            if ostream is not None:
                _copy_stream_metadata(stream, ostream)
                copies[stream.index] = _Copy(ostream)
                continue
        if stream.type == "audio":
            target = out.default_audio_codec
            target = {"vorbis": "libopus", "opus": "libopus", "mp2": "aac"}.get(target, target)
            encoder = out.add_stream(target, rate=stream.codec_context.sample_rate)
            encoder.layout = stream.codec_context.layout
            _copy_stream_metadata(stream, encoder)
            copies[stream.index] = _Copy(encoder, encoder)
            result.notes.append(
                f"{label} re-encoded to {target}: a {out.format.name} file cannot hold {codec}"
            )
        else:
            result.notes.append(f"{label} dropped: a {out.format.name} file cannot hold {codec} subtitles")
    return copies


def _can_copy(av: Any, container: str, stream: Any) -> bool:
    probe = av.open(_NullSink(), "w", format=container)
    try:
        probe.add_stream_from_template(stream)
        return True
    except ValueError:
        return False
    finally:
        probe.close()


def _segment_packets(
    av: Any, work: Path, segments: int, vout: Any, tb: Fraction
) -> Iterator[tuple[float, Any]]:
    """The segments' packets as one stream, with decode timestamps made afresh for the whole of it.

    Each segment comes from its own encoder, whose DTS start `delay` frames before its first PTS (B-frames); a
    short last segment may have no B-frames and no delay. Concatenated as they are, the DTS would jump where the
    delay changes. So: one delay D for the stream (the largest any segment needs) and dts_i = the (i - D)th
    smallest PTS, extrapolated backwards by one frame duration for the first D packets. Segments cover
    consecutive, disjoint PTS ranges, so this is valid (dts_i <= pts_i) whenever it is within each segment.
    """
    delay = 0
    sorted_pts: list[list[int]] = []  # per segment, ascending (ints only: small)
    for index in range(segments):
        _, records = _read_segment(_segment_path(work, index), data=False)
        pts_list = [pts for pts, *_ in records]
        order = {p: rank for rank, p in enumerate(sorted(pts_list))}
        delay = max([delay] + [i - order[p] for i, p in enumerate(pts_list)])
        sorted_pts.append(sorted(pts_list))
    seen: list[int] = []  # PTS of the segments reached so far, ascending
    step = (sorted_pts[0][1] - sorted_pts[0][0]) if len(sorted_pts[0]) > 1 else 1
    i = 0
    for index in range(segments):
        seen += sorted_pts[index]
        _, records = _read_segment(_segment_path(work, index))
        for pts, _, duration, key, data in records:
            dts = seen[i - delay] if i >= delay else seen[0] - (delay - i) * step
            i += 1
            packet = av.Packet(data)
            packet.pts, packet.dts, packet.duration = pts, dts, duration
            packet.time_base = tb
            packet.is_keyframe = key
            packet.stream = vout
            yield float(dts * tb), packet


def _other_packets(
    av: Any, inp: Any, copies: dict[int, _Copy], t0: Fraction, t1: Fraction | None, no_negative: bool
) -> Iterator[tuple[float, Any]]:
    """The source's audio/subtitle packets in [t0, t1), moved by -t0; re-encoded audio through its encoder.

    no_negative: Matroska holds a track that starts before 0 only with a codec delay, which a Matroska source
    brings along and an MP4 source (edit lists instead) does not; without it FFmpeg would move every stream later,
    the video too. So for those, packets that would start before 0 (an MP4's AAC priming packet, the packet
    straddling a --frames start) are left out: the video keeps its timestamps exactly and the sound starts at most
    a packet late.
    """
    streams = [s for s in inp.streams if s.index in copies]
    for packet in inp.demux(streams):
        if packet.size == 0 or (packet.pts is None and packet.dts is None):
            continue
        tb = packet.time_base
        copy = copies[packet.stream.index]
        start = Fraction(packet.pts if packet.pts is not None else packet.dts) * tb
        length = Fraction(packet.duration or 0) * tb
        if t0 > 0 and start + length <= t0:
            continue
        if t1 is not None and start >= t1:
            continue
        shift = round(t0 / tb) if t0 else 0
        if packet.stream.type == "subtitle" and start < t0:
            # a cue on screen at a --frames range's start: shown from the start, for what is left of it (it was
            # dropped from Matroska, and written before 0 into MP4, where no player shows it). Its text holds no time.
            cut = shift - round(start / tb)
            for key in ("pts", "dts"):
                if getattr(packet, key) is not None:
                    setattr(packet, key, getattr(packet, key) + cut)
            packet.duration -= cut
            start = t0
        if no_negative and start - t0 < 0:
            continue
        if copy.encoder is None:
            if packet.pts is not None:
                packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = copy.out
            yield float((packet.dts if packet.dts is not None else packet.pts) * tb), packet
            continue
        try:
            decoded = packet.decode()
        except av.error.FFmpegError:
            continue  # a damaged audio packet: skip it, as players do
        for frame in decoded:
            if frame.pts is not None:
                frame.pts -= round(t0 / frame.time_base) if t0 else 0
            for out_packet in copy.encoder.encode(frame):
                yield float((out_packet.dts or 0) * out_packet.time_base), out_packet
