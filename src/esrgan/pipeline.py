"""The batch pipeline of `esrgan upscale`: inputs -> jobs -> reader -> model -> writer, with reporting. One place for
what the CLI, the web page (`esrgan serve`) and video share: output writing (atomic, PNG level, format/quality),
the skip-existing / --overwrite rules, per-file errors and the summary.

    sources, problems = collect_inputs(["photos/"], exclude=Path("out"))
    jobs = plan_jobs(sources, Path("out"), scale=up.scale)
    result = upscale_files(up, jobs)          # -> BatchResult; result.summary() is the CLI's last line

Overlap: the model runs in the calling thread while a reader thread decodes the next images and writer threads
encode and write finished ones, connected by bounded queues (`Channel`): at most QUEUE_ITEMS images and
QUEUE_BYTES bytes wait between two stages (an image larger than that still passes alone), so memory stays a few
images whatever the batch size. Pillow's decoders/encoders, zlib and torch release the GIL, so threads suffice.
On the CPU the reader and writers run at the lowest scheduling priority: the model's threads keep the cores, and
decoding/encoding fill the gaps (as equals they slowed the model's OpenMP threads: see _yield_to_the_model).
Videos are one job each, run by the model stage through esrgan.video.upscale_video, which overlaps its own frame
decoding and encoding; so are animated images (GIF, APNG, WebP) written to a format that holds an animation
(esrgan.animation.upscale_animation). The pipeline gives them the same skip/error/summary handling.

Ctrl-C (KeyboardInterrupt in the model stage; `esrgan upscale` raises one for SIGTERM too) stops the reader after
its current decode and the writers after their current file (written whole and atomically: a rerun skips it);
queued results are dropped, no temporary file stays.

torchrun: with WORLD_SIZE > 1 rank 0 lists the inputs and plans the jobs, and sends the list to the other ranks
(`Shard.share_jobs`); each rank takes those with index % world == rank (`Shard.take`), writes its own outputs
atomically and skips existing ones, so a rerun does only what is missing; rank 0 gathers the counts
(torch.distributed, gloo) and prints one summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TextIO, TypeVar

from .defaults import DEFAULT_NAME
from .errors import EsrganError, format_bytes, one_line, out_of_memory, shown
from .imageio import DICOM_SUFFIXES, IMAGE_SUFFIXES, in_hand, list_images
from .video import CONTAINERS, VIDEO_SUFFIXES

if TYPE_CHECKING:
    from .imageio import ImageData
    from .upscale import MemoryPlan, Progress, Upscaler

T = TypeVar("T")

_PICKED_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES | VIDEO_SUFFIXES
"""Files picked up when a folder or glob is given: images, DICOM files and videos (a file named explicitly is
tried whatever its name)."""

DEFAULT_OUTPUT_DIR = Path("upscaled")

QUEUE_ITEMS = 2
"""Images waiting between two stages (decoded for the model, upscaled for the writers), besides those in work."""
QUEUE_BYTES = 1 << 30
"""Bytes of pixels waiting or being written between two stages; an item larger than this passes alone."""


def default_writers() -> int:
    """Writer threads: cores - 1, at most 8, so that encoding keeps up with a GPU (a 2048x2048 PNG at level 1 takes
    ~180 ms on one core, a fast GPU upscales 512 -> 2048 in less), one on a 2-core machine. Pillow releases the GIL
    while it encodes into a file (not into a BytesIO), so the threads encode in parallel."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


# --- inputs and jobs -------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One file to upscale: its source and destination."""

    src: Path
    dst: Path


@dataclass
class BatchResult:
    written: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)  # destination already there (no --overwrite)
    # temporary files of killed runs removed before the batch (path, bytes)
    leftovers: list[tuple[Path, int]] = field(default_factory=list)
    device: str = ""
    precisions: dict[str, int] = field(default_factory=dict)  # precision really used -> files written in it
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, one-line reason)
    seconds: float = 0.0  # wall time of the batch

    def summary(self) -> str:
        text = f"{len(self.written)} upscaled, {len(self.skipped)} skipped (output exists), {len(self.failed)} failed"
        if self.failed:
            text += (
                ": "
                + ", ".join(name for name, _ in self.failed[:5])
                + (" ..." if len(self.failed) > 5 else "")
            )
        if self.precisions:
            used = [f"{p} ({n} file{'s' if n > 1 else ''})" for p, n in self.precisions.items()]
            text += f"; computed on {self.device} in " + (
                next(iter(self.precisions)) if len(used) == 1 else ", ".join(used)
            )
        return text

    def merge(self, other: BatchResult) -> None:
        """Add another part's files and counts (another rank's): one summary for the whole batch."""
        self.written += other.written
        self.skipped += other.skipped
        self.leftovers += other.leftovers
        self.failed += other.failed
        for p, n in other.precisions.items():
            self.precisions[p] = self.precisions.get(p, 0) + n
        devices = [d for d in dict.fromkeys(self.device.split(", ") + other.device.split(", ")) if d]
        self.device = ", ".join(devices)
        self.seconds = max(self.seconds, other.seconds)

    def to_json(self) -> str:
        """What another rank needs for the summary, as JSON (ranks exchange text, never pickles)."""
        return json.dumps(dataclasses.asdict(self), default=str)  # paths as text

    @classmethod
    def from_json(cls, text: str) -> BatchResult:
        d = json.loads(text)
        jobs = lambda js: [Job(Path(j["src"]), Path(j["dst"])) for j in js]  # noqa: E731
        return cls(
            written=jobs(d["written"]),
            skipped=jobs(d["skipped"]),
            leftovers=[(Path(p), int(n)) for p, n in d["leftovers"]],
            device=str(d["device"]),
            precisions={str(k): int(v) for k, v in d["precisions"].items()},
            failed=[(str(a), str(b)) for a, b in d["failed"]],
            seconds=float(d["seconds"]),
        )


def resolved(path: Path) -> Path:
    """path.resolve(), or where a symbolic link on the way loops, the absolute path as written: Path.resolve raises
    RuntimeError on a loop (Python 3.10-3.12; OSError since), and a link to itself at -o or at an output's name
    was a traceback."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def collect_inputs(
    inputs: list[str], *, recursive: bool = False, exclude: Path | None = None
) -> tuple[list[tuple[Path, Path | None]], list[tuple[str, str]]]:
    """Expand files, folders and globs (also for shells that do not) into (file, folder it was found under) pairs.

    The folder (None for files named directly) lets outputs keep sub-folder structure. Files under `exclude` (the
    output folder) are skipped when found by a folder or glob, so a rerun never upscales its own outputs.
    Returns (found, problems) where problems are (argument, reason) for arguments that matched nothing, and
    (folder, reason) for folders that could not be read (a sub-folder too: its images would be lost without a word).
    """
    excl = resolved(exclude) if exclude is not None else None
    found: list[tuple[Path, Path | None]] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(path: Path, base: Path | None) -> None:
        key = resolved(path)
        if key not in seen:
            seen.add(key)
            found.append((path, base))

    def unreadable(folder: Path, exc: OSError) -> None:
        problems.append((str(folder), f"cannot read folder ({exc.strerror or exc})"))

    def listed(folder: Path) -> list[Path]:
        return list_images(
            folder,
            recursive=recursive,
            exclude=excl,
            suffixes=_PICKED_SUFFIXES,
            on_error=unreadable,
            sniff=_named_otherwise_dicom,
        )

    for arg in inputs:
        path = Path(arg).expanduser()
        try:
            if path.is_dir():
                before = len(problems)
                images = listed(path)
                if not images and len(problems) == before:  # an unreadable folder already has its line
                    problems.append((arg, _why_no_images(path, recursive, excl)))
                for p in images:
                    add(p, path)
            elif path.exists():
                add(path, None)
            elif _is_glob(arg):
                import glob

                matches = sorted(glob.glob(str(path), recursive=recursive))
                files = [
                    Path(m)
                    for m in matches
                    if Path(m).is_file() and Path(m).suffix.lower() in _PICKED_SUFFIXES
                ]
                files = [p for p in files if excl is None or not resolved(p).is_relative_to(excl)]
                for m in matches:
                    if Path(m).is_dir():
                        files += listed(Path(m))
                if not files:
                    problems.append((arg, "no image matches this pattern"))
                for p in files:
                    add(p, None)
            else:
                problems.append((arg, "no such file or folder"))
        except OSError as exc:  # a parent folder that may not be searched...: this argument fails alone
            problems.append((arg, exc.strerror or one_line(exc)))
    return found, problems


def _why_no_images(folder: Path, recursive: bool, exclude: Path | None) -> str:
    """The reason a folder argument gave nothing: empty, its images in sub-folders, or all inside the output folder
    (`esrgan upscale io -o io`: its images are outputs of an earlier run, or would be mistaken for them)."""
    if exclude is not None and list_images(folder, recursive=recursive, suffixes=_PICKED_SUFFIXES):
        return f"its images are all in the output folder {exclude}, so they are not inputs; give another -o"
    return "folder has no images" + ("" if recursive else " (use --recursive)")


def _format_scale(scale: float) -> str:
    return str(int(scale)) if float(scale).is_integer() else f"{scale:g}"


_WRITABLE_IMAGE = "a .png, .jpg, .webp, .tif, .bmp or .gif image"
_WRITABLE_VIDEO = "a .mp4, .mkv, .mov, .webm or .avi video"


def _named_otherwise_dicom(path: Path) -> bool:
    """A DICOM file under a name that does not say so (IM0001, a UID): read 132 bytes of files of unknown names."""
    from .dicom import is_dicom

    try:
        return path.is_file() and is_dicom(path)  # a regular file: opening a FIFO would wait for a writer
    except OSError:
        return False


def output_folder(output: Path | None) -> Path | None:
    """The folder outputs go to: ./upscaled by default, None when -o names a file (an image extension)."""
    from .imageio import WRITE_FORMATS

    if output is None:
        return DEFAULT_OUTPUT_DIR
    try:
        os.stat(output)
    except OSError as exc:  # no such folder yet is fine; a loop is said here, once, not for every file
        if exc.errno == errno.ELOOP:
            raise EsrganError(
                f"-o {output}: {exc.strerror} (a symbolic link that leads back to itself)"
            ) from None
    suffix = output.suffix.lower()
    if output.is_dir():
        return output
    if suffix in WRITE_FORMATS or suffix in CONTAINERS:
        return None
    if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
        # a file we read but cannot write (x.ppm, x.ts; x.gif before GIF was written): taken as a folder name, it
        # made a folder "x.gif/"
        raise EsrganError(
            f"-o {output}: esrgan does not write {suffix} files; name {_WRITABLE_IMAGE}, {_WRITABLE_VIDEO}, or a folder"
        )
    return output


def repeated_outputs(jobs: list[Job]) -> dict[int, str]:
    """The jobs whose output is also an earlier job's (d1/a.png and d2/a.png into one folder): index -> why, in one
    line. The first keeps the output; the others fail, or the last one written would replace the others' silently."""
    first: dict[Path, Path] = {}
    repeated = {}
    for k, job in enumerate(jobs):
        key = resolved(job.dst)
        if key in first:
            repeated[k] = (
                f"output {job.dst} is also the output of {first[key]}; use a --name with more fields"
            )
        else:
            first[key] = job.src
    return repeated


def _taken(dst: Path) -> bool:
    """Something other than a folder is at dst (a file, a FIFO, a link to one): an output that exists, skipped
    without --overwrite; a link that leads nowhere or to itself too, before the model (the write would refuse to
    replace it). A folder there is no output: the destination's probe says so, as an error. So does it for a dst
    that cannot be looked up (a name too long: Path.exists raised ENAMETOOLONG, which stopped the batch)."""
    try:
        return os.path.lexists(dst) and not dst.is_dir()
    except OSError:
        return False


def plan_jobs(
    sources: list[tuple[Path, Path | None]],
    output: Path | None,
    *,
    name: str = DEFAULT_NAME,
    format: str | None = None,
    scale: float | str,
    model: str = "",
) -> list[Job]:
    """Destination of each source: -o FILE (one input, image extension), else a folder (default ./upscaled).

    name: pattern with {name} (input stem), {scale} (a number, or a target size's label), {ext} and {model}; {ext}
    is --format's extension, else the input's when we can write that format (a GIF's only when it is animated: a
    still one is written as PNG, which keeps every colour), else png. Sources found under a folder keep their
    sub-folders.
    """
    from .imageio import WRITE_FORMATS, is_animated

    out = output_folder(output)
    if out is None:
        assert output is not None
        if len(sources) != 1:
            raise EsrganError(f"{output}: -o names a file but there are {len(sources)} inputs; give a folder")
        src = sources[0][0]
        src_video, out_video = src.suffix.lower() in VIDEO_SUFFIXES, output.suffix.lower() in CONTAINERS
        if src_video != out_video:
            kinds = ("an image", "a video")
            raise EsrganError(
                f"-o {output} names {kinds[out_video]} but {src} is {kinds[src_video]}; "
                f"name {_WRITABLE_VIDEO if src_video else _WRITABLE_IMAGE}, or a folder"
            )
        named = WRITE_FORMATS.get(output.suffix.lower())
        asked = None if format is None else {"JPG": "JPEG", "TIF": "TIFF"}.get(format.upper(), format.upper())
        if named is not None and asked is not None and named != asked:  # was: PNG bytes in a file named .jpg
            raise EsrganError(f"-o {output} names a {named} file but --format is {format}; make them agree")
        return [Job(src, output)]
    jobs = []
    for src, base in sources:
        suffix = src.suffix.lower()
        # a DICOM slice named IM0001 or by its UID (1.2.840....7): DICOM out, and the whole name kept (the UID's
        # last part is no suffix: slices 1.2.3.6 and 1.2.3.7 would both become 1.2.3_x4.dcm)
        unnamed_dicom = suffix not in _PICKED_SUFFIXES and _named_otherwise_dicom(src)
        stem = src.name if unnamed_dicom else src.stem
        if suffix in VIDEO_SUFFIXES:  # a video keeps its container where we can write it
            ext = suffix.lstrip(".") if suffix in CONTAINERS else "mkv"
        elif format is not None:
            ext = {"jpeg": "jpg", "tif": "tiff"}.get(format.lower(), format.lower())
        elif unnamed_dicom:
            ext = "dcm"
        elif suffix == ".gif":  # an animation stays one; a still GIF gains every colour as a PNG
            ext = "gif" if is_animated(src) else "png"
        else:
            ext = suffix.lstrip(".") if suffix in WRITE_FORMATS else "png"
        label = scale if isinstance(scale, str) else _format_scale(scale)  # a target size's label as it is
        try:
            filename = name.format(name=stem, scale=label, ext=ext, model=model)
        except (KeyError, IndexError, ValueError) as exc:
            raise EsrganError(
                f"bad --name pattern {name!r} ({exc}); use {{name}}, {{scale}}, {{ext}}, {{model}}"
            ) from None
        if not filename.strip() or filename.endswith(("/", os.sep)) or Path(filename).name in ("", ".", ".."):
            # an empty name would make the output folder itself the destination of every file
            raise EsrganError(f"bad --name pattern {name!r}: it gives no file name for {src}")
        folder = out / src.parent.relative_to(base) if base is not None else out
        jobs.append(Job(src, folder / filename))
    return jobs


# --- writing ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputOptions:
    """How outputs are written: format (None: from the extension), JPEG/WEBP quality, PNG zlib level (None: the
    fast default, esrgan.imageio.DEFAULT_PNG_COMPRESSION) and whether an existing file is replaced. stream: write
    PNG and TIFF outputs row by row as the model makes them (imageio.write_image_rows) whenever the image allows
    (Upscaler.stream_reason); without it only an output that would not fit in the memory free is streamed."""

    format: str | None = None
    quality: int | None = None
    png_compression: int | None = None
    overwrite: bool = False
    stream: bool = False


def write_streamed(
    upscaler: Upscaler,
    image: ImageData,
    dst: Path,
    output: OutputOptions,
    *,
    on_tile: Progress | None = None,
) -> tuple[int, int]:
    """Upscale `image` into `dst` row band by row band as the model makes them (Upscaler.upscale_rows into
    imageio.write_image_rows: a PNG or TIFF output is never held whole), atomically; returns the output's (height,
    width). Only where upscaler.stream_reason(image) is None. A forward pass out of memory begins the file again
    with smaller tiles (Upscaler.retrying; the partial file is removed). The C heap is told to give freed blocks
    back (device.freed_memory_returned), as Upscaler.host_bytes' estimate of a streamed upscale assumes: slower,
    for the least memory. The batch's streamed outputs and the web page's go through it."""
    from .device import freed_memory_returned
    from .imageio import write_image_rows

    size = upscaler.output_size(image.height, image.width)

    def write(tile: int) -> None:  # the tile `retrying` chose for this attempt
        with freed_memory_returned():
            write_image_rows(
                dst,
                image,
                size,
                upscaler.upscale_rows(image, on_tile=on_tile, tile=tile),
                format=output.format,
                overwrite=output.overwrite,
                png_compression=output.png_compression,
            )

    upscaler.retrying(image.height, image.width, image.pixels.dtype, write)
    return size


def write_output(dst: Path, image: ImageData, options: OutputOptions = OutputOptions()) -> Path:
    """Write one result atomically (esrgan.atomic through esrgan.imageio.write_image): the writer stage of the batch
    and the web page's results. An existing dst raises OutputExistsError unless options.overwrite."""
    from .imageio import write_image

    return write_image(
        dst,
        image,
        format=options.format,
        quality=options.quality,
        overwrite=options.overwrite,
        png_compression=options.png_compression,
    )


# --- bounded queues between stages -----------------------------------------------------------------------------------
class Stopped(Exception):
    """The pipeline was stopped (Ctrl-C or a fatal error elsewhere) while a stage waited on a queue."""


class Channel(Generic[T]):
    """A FIFO between two stages, bounded by items and by bytes (an item always enters an empty channel).

    The bytes an item brings stay counted until the consumer calls release(size) (when it is done with the item),
    so an image being written still counts: a stage cannot run ahead of the next by more than the bounds. put and
    get raise Stopped once `stop` is set; both wait in short slices, so Ctrl-C reaches a waiting main thread.
    """

    def __init__(self, stop: threading.Event, *, items: int = QUEUE_ITEMS, nbytes: int = QUEUE_BYTES) -> None:
        self.stop = stop
        self.items = items
        self.nbytes = nbytes
        self._queue: deque[tuple[T, int]] = deque()
        self._held = 0
        self._cond = threading.Condition()

    def put(self, item: T, size: int = 0) -> None:
        with self._cond:
            while len(self._queue) >= self.items or (self._held and self._held + size > self.nbytes):
                if self.stop.is_set():
                    raise Stopped
                self._cond.wait(0.1)
            if self.stop.is_set():
                raise Stopped
            self._queue.append((item, size))
            self._held += size
            self._cond.notify_all()

    def get(self) -> tuple[T, int]:
        with self._cond:
            while not self._queue:
                if self.stop.is_set():
                    raise Stopped
                self._cond.wait(0.1)
            if self.stop.is_set():
                raise Stopped
            got = self._queue.popleft()
            self._cond.notify_all()
            return got

    def release(self, size: int) -> None:
        with self._cond:
            self._held -= size
            self._cond.notify_all()

    def drained(self) -> None:
        """Wait until every item put has been taken and released (the writers are done with what they got)."""
        with self._cond:
            while self._queue or self._held:
                if self.stop.is_set():
                    raise Stopped
                self._cond.wait(0.1)


# --- reporting -------------------------------------------------------------------------------------------------------
class Reporter:
    """Progress over files and tiles: tqdm bars on a terminal, plain lines otherwise, nothing but errors if quiet.

    Safe to call from the pipeline's threads. prefix starts every line (torchrun: the rank)."""

    def __init__(self, total: int, mode: str, *, prefix: str = "") -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode
        self.prefix = prefix
        self.files: Any = None
        self.tiles: Any = None
        self._lock = threading.RLock()
        if mode == "bar":
            from tqdm import tqdm

            self.files = tqdm(total=total, unit="file", desc="files", file=sys.stderr, dynamic_ncols=True)
            self.tiles = tqdm(total=0, unit="tile", desc="tiles", file=sys.stderr, leave=False, position=1)

    def line(self, text: str, *, error: bool = False) -> None:
        if self.mode == "quiet" and not error:
            return
        stream = sys.stderr if error else sys.stdout
        text = shown(self.prefix + text)  # a file name's newline or non-UTF-8 bytes: still one printable line
        with self._lock:
            if self.files is not None:
                self.files.write(text, file=stream)
            else:  # one write with its newline: ranks of torchrun share the pipe, and print() writes the end apart
                stream.write(text + "\n")
                stream.flush()

    def error(self, src: Path | str, reason: str) -> None:
        if (
            str(src) not in reason and one_line(src) in reason
        ):  # one_line(exc) collapsed a newline in the name
            reason = reason.replace(one_line(src), str(src), 1)
        self.line(f"esrgan: error: {reason if str(src) in reason else f'{src}: {reason}'}", error=True)

    def on_tile(self, done: int, total: int) -> None:
        self._count("tile", done, total)

    def on_frame(self, done: int, total: int | None) -> None:
        """The second bar counts a video's frames (with frames/s and the ETA) instead of tiles."""
        self._count("frame", done, total)

    def _count(self, unit: str, done: int, total: int | None) -> None:
        if self.tiles is None:
            return
        with self._lock:
            if self.tiles.unit != unit:
                self.tiles.unit = unit
                self.tiles.set_description_str(f"{unit}s", refresh=False)
                self.tiles.reset(total=0)
            if self.tiles.total != total or done < self.tiles.n:
                self.tiles.reset(total=total)
            self.tiles.update(done - self.tiles.n)

    def file_done(self) -> None:
        if self.files is not None:
            with self._lock:
                self.files.update(1)

    def close(self) -> None:
        for bar in (self.tiles, self.files):
            if bar is not None:
                bar.close()


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Show warnings as `esrgan: warning: ...` lines on stderr (through tqdm, so progress bars stay intact)."""
    import warnings

    from tqdm import tqdm

    from .imageio import file_in_hand

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        where = file_in_hand()  # a decoder's own warning ("Corrupt EXIF data") does not say which file
        raw, token = str(message), "\0file\0"
        if where is not None and str(where) in raw:  # the name kept as it is (a newline or two spaces in it)
            raw = raw.replace(str(where), token)
        elif where is not None:
            raw = f"{token}: {raw}"
        text = " ".join(raw.split()).replace(token, str(where))
        # the line and its newline in one write: tqdm.write writes them apart, and an error line from another stage's
        # thread landed between them ("...(use TIFF)esrgan: error: ...", seen once in CI)
        tqdm.write(f"esrgan: warning: {shown(text)}\n", file=sys.stderr, end="")

    with warnings.catch_warnings():  # both restored at the end: showwarning and the filters
        warnings.showwarning = show
        # Pillow's own warnings are about the file being decoded, and their text does not name it: show them for
        # every file (Python's default shows one text once per process, so a second corrupt file went unsaid)
        warnings.filterwarnings("always", module=r"PIL\.")
        # a retry with smaller tiles is said for every file it happens to (its text does not name the file)
        warnings.filterwarnings("always", message="out of memory with ")  # upscale.OutOfMemoryWarning's
        yield


OUT_OF_MEMORY = "out of memory: try --tile N (smaller tiles) or a smaller --outscale"


# --- the batch -------------------------------------------------------------------------------------------------------
FILE_ERRORS = (EsrganError, OSError, ValueError)
"""What one bad file may raise (undecodable, unwritable, too large...): reported in one line, the batch goes on.
OutputExistsError is a FileExistsError (an OSError) and is caught before these: someone else wrote the file."""


@dataclass
class _Item:
    """A job on its way through the stages."""

    index: int  # 1-based position in the batch, for the [i/n] lines
    job: Job
    start: float = 0.0
    image: ImageData | None = None
    precision: str = ""
    animation: bool = False  # read and upscaled a frame at a time by the model stage (esrgan.animation)


class _Batch:
    """One upscale_files call: the shared state of its stages (results under a lock, the reporter, stop)."""

    def __init__(
        self,
        upscaler: Upscaler,
        jobs: list[Job],
        output: OutputOptions,
        max_pixels: int | None,
        report: Reporter,
        video: dict[str, Any] | None,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        self.upscaler = upscaler
        self.total = len(jobs)
        self.output = output
        self.max_pixels = max_pixels
        self.value_range = value_range
        self.report = report
        self.video = video or {}
        self.result = BatchResult(device=str(upscaler.device))
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.settle: Callable[[], None] = lambda: None
        """Waits until the writers hold no output (run_overlapped sets it): memory they free before a refusal."""

    # results, from any stage
    def written(self, item: _Item, line: str) -> None:
        with self._lock:
            self.result.written.append(item.job)
            used = item.precision
            self.result.precisions[used] = self.result.precisions.get(used, 0) + 1
        self.report.line(f"[{item.index}/{self.total}] {line}")
        self.report.file_done()

    def skipped(self, item: _Item) -> None:
        with self._lock:
            self.result.skipped.append(item.job)
        job = item.job
        self.report.line(
            f"[{item.index}/{self.total}] skip {job.src}: {job.dst} exists (--overwrite replaces it)"
        )
        self.report.file_done()

    def failed(self, item: _Item, reason: str) -> None:
        with self._lock:
            self.result.failed.append((str(item.job.src), reason))
        self.report.error(item.job.src, reason)
        self.report.file_done()

    # stages: each takes an item and returns it for the next stage, or None when the item ended here
    def read(self, item: _Item) -> _Item | None:
        from .animation import is_animation_job
        from .atomic import writable_reason
        from .imageio import DEFAULT_MAX_PIXELS, check_writable, read_image, special_file

        item.start = time.perf_counter()
        problem = special_file(item.job.src)
        if problem is not None:  # checked before anything opens it: open() on a FIFO waits for ever
            self.failed(item, f"{item.job.src}: not a regular file ({problem})")
            return None
        if is_video_job(item.job):
            return item  # read by video.upscale_video in the model stage
        if not self.output.overwrite and _taken(item.job.dst):  # appeared since the batch was planned
            self.skipped(item)
            return None
        reason = writable_reason(item.job.dst)  # before anything is decoded or computed for it
        if reason is not None:
            self.failed(item, f"{item.job.src}: cannot write {item.job.dst} ({reason})")
            return None
        if is_animation_job(item.job.src, item.job.dst, self.output.format):
            item.animation = True  # its frames are read one at a time by the model stage
            return item
        try:
            item.image = read_image(
                item.job.src,
                max_pixels=DEFAULT_MAX_PIXELS if self.max_pixels is None else self.max_pixels,
                measurements=True,
                value_range=self.value_range,
            )
            try:
                size = self.upscaler.output_size(item.image.height, item.image.width)
            except EsrganError as exc:  # a target size this image cannot be scaled to
                raise EsrganError(f"{item.job.src}: {exc}") from None
            # before the model spends its time
            check_writable(item.image, self.output.format, item.job.dst, size)
        except FILE_ERRORS as exc:
            item.image = None
            self.failed(item, one_line(exc))
            return None
        return item

    def _plan(self, image: ImageData, job: Job) -> MemoryPlan:
        """Whether this image's output is written row by row, and the memory its tiles leave out: as
        OutputOptions.stream asks, or as fits in the host memory free now (Upscaler.plan_memory: whole, else
        streamed, else either with smaller tiles); an EsrganError, before the model runs, when no way fits (the
        kernel's OOM killer ended the whole batch without a word). Asked by the model stage when it takes the
        image: before saying no, it waits for the writers to finish the outputs they hold (an earlier image's may
        be what takes the memory)."""
        from .device import host_memory_available
        from .imageio import STREAMED_FORMATS, output_format
        from .upscale import MemoryPlan

        fmt = output_format(job.dst, self.output.format)
        image_reason = self.upscaler.stream_reason(image)  # why the image cannot stream, whatever the format
        why_not = image_reason or (
            None if fmt in STREAMED_FORMATS else f"{fmt} is encoded from the whole image"
        )
        if self.output.stream and why_not is None:
            return MemoryPlan(True, 0)
        free = host_memory_available()
        if free is None:
            return MemoryPlan(False, 0)

        def planned(free: int) -> MemoryPlan | None:
            if why_not is None:
                return self.upscaler.plan_memory(image, free)
            return self.upscaler.plan_memory(image, free, streamed=None)

        plan = planned(free)
        if plan != MemoryPlan(False, 0):  # what the writers hold may be what is missing: wait for them
            self.settle()
            now = host_memory_available()
            free = free if now is None else now
            plan = planned(free)
        if plan is not None:
            return plan
        whole, streamed = self.upscaler.host_bytes(image)[:2]
        if why_not is None:  # no tile fits either way: the output is too large
            need = streamed
            way = "a smaller --outscale (or --width / --height)"
        else:
            need = whole
            way = (
                "--format png or tiff, which are written as they are computed, or a smaller --outscale"
                if image_reason is None
                else "no --outscale / --width / --height: at the model's own scale it is written as it is computed"
                if why_not.startswith("its output is not at the model's own scale")
                else "a smaller --outscale (or --width / --height)"
            )
            way = f"{why_not}; try {way}"
        height, width = self.upscaler.output_size(image.height, image.width)
        raise EsrganError(
            f"{job.src}: the {width}x{height} output needs about {format_bytes(need)} of memory and "
            f"{format_bytes(free)} is free" + (f": {way}" if why_not is not None else f"; try {way}")
        )

    def compute(self, item: _Item) -> _Item | None:
        from .atomic import OutputExistsError

        try:
            if is_video_job(item.job):
                self._video(item)
                return None
            if item.animation:
                self._animation(item)
                return None
            assert item.image is not None
            plan = self._plan(item.image, item.job)
            with self.upscaler.reserving(plan.reserve):  # the tiles leave out what the plan holds beside them
                if plan.streamed:
                    self._stream(item)
                    return None
                # a warning of the model's (smaller tiles after an out-of-memory) names the file
                with in_hand(item.job.src):
                    item.image = self.upscaler.upscale_image(item.image, on_tile=self.report.on_tile)
        except OutputExistsError:
            self.skipped(item)
            return None
        except FILE_ERRORS as exc:
            self.failed(item, one_line(exc))
            return None
        except (MemoryError, RuntimeError) as exc:
            if not out_of_memory(exc):
                raise  # a bug: not a property of this file
            item.image = None
            from .device import release_memory

            release_memory(self.upscaler.device)
            self.failed(item, f"{item.job.src}: {OUT_OF_MEMORY}")
            return None
        item.precision = self.upscaler.last_precision
        return item

    def write(self, item: _Item) -> None:
        from .atomic import OutputExistsError

        assert item.image is not None
        try:
            write_output(item.job.dst, item.image, self.output)
        except OutputExistsError:  # appeared while we worked: someone else wrote it
            self.skipped(item)
        except FILE_ERRORS as exc:
            self.failed(item, one_line(exc))
        except MemoryError:  # encoding a huge result: this file fails, the others may still fit
            self.failed(item, f"{item.job.src}: out of memory while writing {item.job.dst}")
        else:
            seconds = time.perf_counter() - item.start
            self.written(item, f"{item.job.src} -> {item.job.dst} ({seconds:.1f} s)")
        item.image = None

    def _stream(self, item: _Item) -> None:
        """Model and writer in one: the rows go to the file as they are made (write_streamed; the writer stage is
        not used)."""
        image = item.image
        assert image is not None
        item.image = None  # the input goes when the file is done; nothing is queued for the writers
        with in_hand(item.job.src):  # a warning of the model's (smaller tiles) names the file
            write_streamed(self.upscaler, image, item.job.dst, self.output, on_tile=self.report.on_tile)
        item.precision = self.upscaler.last_precision
        seconds = time.perf_counter() - item.start
        self.written(item, f"{item.job.src} -> {item.job.dst} ({seconds:.1f} s, written as computed)")

    def _video(self, item: _Item) -> None:
        from .video import upscale_video

        # the model's warnings (smaller tiles after an out-of-memory) name the video
        with in_hand(item.job.src):
            done = upscale_video(
                self.upscaler, item.job.src, item.job.dst, overwrite=self.output.overwrite,
                max_pixels=self.max_pixels, on_frame=self.report.on_frame, **self.video,
            )  # fmt: skip
        for note in done.notes:
            self.report.line(f"esrgan: note: {item.job.src}: {note}", error=True)
        item.precision = self.upscaler.last_precision
        self.written(item, done.summary())

    def _animation(self, item: _Item) -> None:
        from .animation import upscale_animation

        done = upscale_animation(
            self.upscaler, item.job.src, item.job.dst, format=self.output.format, quality=self.output.quality,
            png_compression=self.output.png_compression, overwrite=self.output.overwrite,
            max_pixels=self.max_pixels, on_frame=self.report.on_frame,
        )  # fmt: skip
        item.precision = self.upscaler.last_precision
        self.written(item, done.summary())

    # drivers
    def run_sequential(self, items: list[_Item]) -> None:
        for item in items:
            got = self.read(item)
            got = self.compute(got) if got is not None else None
            if got is not None:
                self.write(got)

    def run_overlapped(self, items: list[_Item], writers: int) -> None:
        """Reader thread -> model (this thread) -> writer threads."""
        decoded: Channel[_Item | None] = Channel(self.stop)
        upscaled: Channel[_Item | None] = Channel(self.stop)
        self.settle = upscaled.drained
        fatal: list[BaseException] = []

        def guarded(stage: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                if self.upscaler.device.type == "cpu":
                    _yield_to_the_model()
                try:
                    stage()
                except Stopped:
                    pass
                except (
                    BaseException
                ) as exc:  # a bug, MemoryError...: stop the batch, the model stage raises it
                    fatal.append(exc)
                    self.stop.set()

            return run

        def reader() -> None:
            for item in items:
                if self.stop.is_set():
                    return
                got = self.read(item)
                if got is not None:
                    decoded.put(got, _nbytes(got.image))
            decoded.put(None)

        def writer() -> None:
            while True:
                got, size = upscaled.get()
                if got is None:
                    upscaled.put(None)  # for the next writer
                    return
                try:
                    self.write(got)
                finally:
                    upscaled.release(size)

        threads = [threading.Thread(target=guarded(reader), name="esrgan-reader", daemon=True)]
        threads += [
            threading.Thread(target=guarded(writer), name=f"esrgan-writer-{k}", daemon=True)
            for k in range(writers)
        ]
        for t in threads:
            t.start()
        try:
            while True:
                got, size = decoded.get()
                if got is None:
                    break
                try:
                    done = self.compute(got)
                finally:
                    decoded.release(size)
                if done is not None:
                    upscaled.put(done, _nbytes(done.image))
            upscaled.put(None)
            for t in threads[1:]:
                _join(t)
        except Stopped:
            pass
        finally:
            self.stop.set()  # Ctrl-C or a failure: the reader and writers end after their current file
            for t in threads:
                _join(t)
        if fatal:
            raise fatal[0]


def _yield_to_the_model() -> None:
    """Lower this thread's scheduling priority (Linux: threads have their own nice value), best effort.

    On the CPU the model's OpenMP threads use every core; a reader or writer competing with them as an equal
    deschedules one of them and the rest wait for it at the next barrier (measured on 2 cores: the overlapped batch
    ran at 55 % of the one-at-a-time rate). At the lowest priority decoding and encoding fill the moments the
    model leaves cores idle, and when the writers fall behind the model waits on the bounded queue for them."""
    from .imageio import lower_thread_priority

    lower_thread_priority()


def _join(thread: threading.Thread) -> None:
    while thread.is_alive():  # short waits: a second Ctrl-C still reaches the main thread
        thread.join(0.2)


def _nbytes(image: ImageData | None) -> int:
    if image is None:
        return 0
    planes = (image.pixels, image.alpha, image.extra, image.valid)
    return sum(int(p.nbytes) for p in planes if p is not None)


def is_video_job(job: Job) -> bool:
    return job.src.suffix.lower() in VIDEO_SUFFIXES


def upscale_files(
    upscaler: Upscaler,
    jobs: list[Job],
    *,
    format: str | None = None,
    quality: int | None = None,
    png_compression: int | None = None,
    overwrite: bool = False,
    max_pixels: int | None = None,
    value_range: tuple[float, float] | None = None,
    progress: str = "auto",
    video: dict[str, Any] | None = None,
    overlap: bool = True,
    writers: int | None = None,
    prefix: str = "",
    stream: bool = False,
) -> BatchResult:
    """Upscale every job; a file that fails is reported in one line and the batch goes on.

    Existing destinations are skipped unless overwrite, so rerunning after an interruption finishes the rest
    without redoing finished files (writes are atomic: a killed run leaves no partial output under a final name,
    and the temporary files a kill left beside these destinations are removed first, with a line saying so:
    esrgan.atomic.remove_leftovers). progress: "bar" (tqdm), "lines" (one line per file), "quiet" (errors only),
    or "auto" = bar on a terminal, else lines. Videos (by suffix) go through esrgan.video.upscale_video with the
    `video` options (codec, crf, ...). png_compression: zlib level 0-9 of PNG outputs (default: a fast one).
    overlap: decode, upscale and write different files at once (see the module docstring); False runs them one
    after the other. writers: writer threads (default default_writers()). prefix: starts every progress line.
    value_range: (lo, hi) that every band of a measurement TIFF is mapped from (esrgan.datatiff; default: each
    band's own min and max). stream: PNG and TIFF outputs written row by row as they are computed wherever the
    image allows it (OutputOptions.stream); otherwise only those whose whole output would not fit in memory.
    """
    from .atomic import remove_leftovers

    started = time.perf_counter()
    report = Reporter(len(jobs), progress, prefix=prefix)
    batch = _Batch(
        upscaler,
        jobs,
        OutputOptions(format, quality, png_compression, overwrite, stream),
        max_pixels,
        report,
        video,
        value_range,
    )
    result = batch.result
    result.leftovers = remove_leftovers(job.dst for job in jobs)
    if result.leftovers:
        n, size = len(result.leftovers), sum(b for _, b in result.leftovers)
        names = ", ".join(str(p) for p, _ in result.leftovers[:3]) + (" ..." if n > 3 else "")
        report.line(
            f"removed {n} leftover temporary file{'s' if n > 1 else ''} of an interrupted run "
            f"({format_bytes(size)}): {names}"
        )
    repeated = repeated_outputs(jobs)
    todo: list[_Item] = []
    try:
        for i, job in enumerate(jobs, 1):
            item = _Item(i, job)
            if i - 1 in repeated:
                batch.failed(item, repeated[i - 1])
                continue
            if _taken(job.dst) and not overwrite:
                batch.skipped(item)
                continue
            todo.append(item)
        if overlap and len(todo) > 1:
            batch.run_overlapped(todo, default_writers() if writers is None else max(1, writers))
        else:
            batch.run_sequential(todo)
    finally:
        report.close()
    order = {id(job): k for k, job in enumerate(jobs)}
    result.written.sort(key=lambda job: order[id(job)])
    result.skipped.sort(key=lambda job: order[id(job)])
    result.seconds = time.perf_counter() - started
    return result


# --- torchrun: shards of a batch -------------------------------------------------------------------------------------
@dataclass
class Shard:
    """This process's part of a batch under torchrun (WORLD_SIZE, RANK, LOCAL_RANK); rank 0 of 1 otherwise."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    _held: list[Any] = field(default_factory=list, repr=False, compare=False)  # see _all_gather_text

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def prefix(self) -> str:
        """Starts this rank's progress lines: `[rank 1/4] `, nothing for a single process."""
        return f"[rank {self.rank}/{self.world}] " if self.world > 1 else ""

    def take(self, jobs: list[T]) -> list[T]:
        """The jobs of this rank: index % world == rank of the list rank 0 planned (share_jobs)."""
        return jobs[self.rank :: self.world]

    def share_jobs(self, jobs: list[Job] | None = None) -> list[Job] | None:
        """Rank 0's jobs on every rank: rank 0 passes the list it planned, or None when it stops before the work (it
        says why itself); the other ranks pass nothing and get the same. A single process gets its own back.

        Every rank listing the inputs itself gave lists that differ when a file arrives between two ranks' listings
        (a folder being filled, a rank that starts later on another machine): taken by index, some files were done
        by no rank and others by two, and the summary said all went well."""
        if self.world <= 1:
            return jobs
        planned = None if jobs is None else [[str(job.src), str(job.dst)] for job in jobs]
        try:
            with _sigterm_default():  # nothing is written yet
                got = json.loads(self._broadcast_text(json.dumps(planned) if self.main else ""))
        except RuntimeError:  # gloo's errors (DistBackendError is one)
            raise self._lost("before the work began; this rank wrote nothing") from None
        return None if got is None else [Job(Path(src), Path(dst)) for src, dst in got]

    def gather(self, result: BatchResult) -> BatchResult | None:
        """Every rank's result merged, on rank 0 (None on the others); the result itself for a single process."""
        if self.world <= 1:
            return result
        try:
            with _sigterm_default():  # every file of this rank is whole
                texts = self._all_gather_text(result.to_json())
        except RuntimeError:  # gloo's errors (DistBackendError is one)
            n = len(result.written)
            raise self._lost(f"before the end; this rank's {n} file{'s' * (n != 1)} are written") from None
        parts = [BatchResult.from_json(text) for text in texts]
        if not self.main:
            return None
        total = BatchResult()
        for part in parts:
            total.merge(part)
        return total

    def _lost(self, when: str) -> EsrganError:
        """The one line of a rank whose exchange failed because another rank is gone (killed, its machine down):
        gloo's own error was a traceback ending in "Read error ...: Connection reset by peer ... GLHF!"."""
        return EsrganError(f"{self.prefix}another rank stopped {when}; rerun to finish")

    def _broadcast_text(self, text: str) -> str:
        """Rank 0's text on every rank, through two gloo broadcasts (the length, then the UTF-8 bytes); the tensors
        are kept on the Shard, as _all_gather_text's are."""
        import torch
        import torch.distributed as dist

        data = text.encode()
        length = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(length, src=0)
        buffer = torch.zeros(int(length.item()), dtype=torch.uint8)
        if self.main:
            buffer[:] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        dist.broadcast(buffer, src=0)
        self._held += [length, buffer]
        return buffer.numpy().tobytes().decode()

    def _all_gather_text(self, text: str) -> list[str]:
        """Every rank's text, through two gloo all_gathers (lengths, then the padded UTF-8 bytes).

        Not all_gather_object: its tensors die inside torch while gloo's worker thread may still hold them, and then
        the worker frees their Python objects. If that happens while destroy_process_group, holding the GIL, joins
        the worker, both wait for ever: every rank of a sharded batch hung at its end on torch 2.3 (no barrier
        after the gather) and on 2.6 (with one: the barrier's work keeps the gather's). Our tensors are kept on
        the Shard until the group is destroyed, so the worker never frees the last reference."""
        import torch
        import torch.distributed as dist

        data = text.encode()
        length = torch.tensor([len(data)], dtype=torch.int64)
        lengths = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(lengths, length)
        longest = max(int(n.item()) for n in lengths)
        mine = torch.zeros(longest, dtype=torch.uint8)
        mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        theirs = [torch.zeros(longest, dtype=torch.uint8) for _ in range(self.world)]
        dist.all_gather(theirs, mine)
        self._held += [length, *lengths, mine, *theirs]
        return [t[: int(n.item())].numpy().tobytes().decode() for t, n in zip(theirs, lengths, strict=True)]


@contextlib.contextmanager
def _sigterm_default() -> Iterator[None]:
    """SIGTERM's default action (the process ends at once) while a rank waits in a gloo collective, where nothing is
    being written. A Python handler (`esrgan upscale` stops a batch on SIGTERM as on Ctrl-C) runs only once the main
    thread is back from C: blocked in the collective, a SIGTERM to one rank waited until every other rank had done
    all its work, then turned a finished batch into a failed one."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    if not callable(handler):  # SIG_DFL or SIG_IGN: what the process chose stands
        yield
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def shard_from_env() -> Iterator[Shard]:
    """This process's Shard from torchrun's environment; with WORLD_SIZE > 1, joins the process group (gloo: the
    group only carries the end-of-batch counts, whatever device upscales) for the duration, and on CUDA makes
    cuda:LOCAL_RANK the current device, so `--device auto/cuda` means one GPU per rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Shard()
        return
    import datetime

    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and local < torch.cuda.device_count():
        torch.cuda.set_device(local)
    owned = not dist.is_initialized()
    if owned:  # a long timeout: ranks wait for the slowest at the end, which may be hours behind
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    shard = Shard(dist.get_rank(), dist.get_world_size(), local)
    try:
        yield shard
    finally:
        if owned:
            dist.destroy_process_group()  # while `shard` still holds the tensors of its gather: see _all_gather_text
