"""Animated images: every frame of a GIF, APNG or animated WebP through an Upscaler, written back as an animation.

    from esrgan import Upscaler
    from esrgan.animation import upscale_animation
    up = Upscaler.from_pretrained("realesrgan-x4plus-anime")
    upscale_animation(up, "sticker.gif", "sticker_x4.gif")   # or up.upscale_file(...), or `esrgan upscale`

Each frame is the full picture a browser shows at that moment (esrgan.imageio.read_frames: each frame drawn onto
the ones before it by their disposal and blend, as Chrome, Firefox and the APNG specification do), upscaled as an
image on its own (alpha included), and written as a full frame with the source's display times and the number of
times it plays (a GIF's loop count N is N + 1 plays, as browsers play it; APNG's and WebP's count plays:
esrgan.imageio.AnimationWriter). Frames equal to an earlier one (a pause, a cycle: common in GIFs) go through the
model once.

Only one input frame is decoded at a time, but the output frames are held until the file is written (Pillow's
encoders take them all at once, and a GIF's palette is made from all of them): about 4 bytes an output pixel, and
the encoder adds about 2 (GIF) or 5 (APNG, WebP) while it writes (esrgan.imageio.ANIMATION_BYTES, measured). That
is checked against the free memory before the first frame (`animation_memory`; where every frame would not fit,
a decoding pass counts the different ones, which are held once), in one line saying what would help. The output is written atomically when the last frame is done: a stopped or failed run leaves nothing (an
animation is not resumed: the video path, esrgan.video, resumes long clips).

GIF output: one palette of 256 colours for the whole animation (as FFmpeg's palettegen makes by default: what does
not move keeps its colour, so it does not flicker, and the encoder writes only what changed), nearest colours
without dithering, transparency all or nothing, display times in whole hundredths of a second (frames under 20 ms
apart left out, with a warning, so that the animation keeps its speed). `--format png` (APNG) or `webp` keep every
colour, alpha level and display time.

Compositing (read_frames, esrgan.imageio.Frames): GIF and APNG frames are decoded one at a time by Pillow, each
from a small file of its own, and composited here as browsers do: the canvas starts transparent, a GIF's
transparent index leaves the pixel under it, disposal 2 clears the frame's area to transparent (Pillow filled it
with the background colour, opaque) and 3 restores it, and an APNG frame blended "over" is alpha-composited as the
specification says (Pillow made a half-transparent square over an opaque frame alpha 191, not 255). Animated WebP
is composited by libwebp. Known limits: a GIF or APNG laid out in a way that frame walk does not follow (a count
of frames other than Pillow's, an empty extension, a first APNG frame smaller than the canvas: broken files) is
composited by Pillow, as before, with Pillow's differences.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .defaults import DEFAULT_MAX_PIXELS
from .errors import EsrganError, format_bytes
from .imageio import (
    ANIMATED_FORMATS,
    ANIMATION_BYTES,
    AnimationWriter,
    is_animated,
    output_format,
    read_frames,
)

if TYPE_CHECKING:
    from .imagedata import ImageData
    from .upscale import Upscaler

FrameProgress = Callable[[int, int | None], None]
"""on_frame(done, total): frames done so far and how many the animation holds."""


@dataclass
class AnimationResult:
    src: Path
    dst: Path
    frames: int  # frames in the output
    upscaled: int  # frames put through the model (the others repeat one of them)
    duration: float  # seconds the animation plays once
    seconds: float  # wall time of this run
    size: tuple[int, int] = (0, 0)  # the output's (height, width)

    def summary(self) -> str:
        repeated = self.frames - self.upscaled
        again = f", {repeated} repeated (upscaled once)" if repeated else ""
        return (
            f"{self.src} -> {self.dst}: {self.frames} frames{again}, {self.duration:.2f} s of animation, "
            f"{self.seconds:.1f} s"
        )


def is_animation_job(src: Path, dst: Path, format: str | None = None) -> bool:
    """Whether src is an animation and dst a format that holds one (GIF, APNG, WebP): upscale_animation's job.
    An animation written to another format (JPEG, TIFF, BMP) is an image: its first frame, with a warning."""
    try:
        fmt = output_format(dst, format)
    except EsrganError:
        return False
    return fmt in ANIMATED_FORMATS and is_animated(src)


ANIMATION_FRAME_BYTES = 1024
"""What a frame costs besides its pixels (Pillow's image object, the encoder's record of it): 100,000 different
4x4 APNG frames took 63 MiB, about 650 bytes a frame beyond their pixels (helper-80's measurement, session 31)."""


def animation_memory(frames: int, height: int, width: int, fmt: str, distinct: int | None = None) -> int:
    """Host memory the output frames of a `fmt` animation take until the file is written, estimated: held as they
    come (a repeated frame is held once: `distinct` of them, default all) and added by the encoder while it writes,
    for every frame (esrgan.imageio.ANIMATION_BYTES, measured)."""
    held, encoder = ANIMATION_BYTES[fmt]
    pixels = height * width * ((frames if distinct is None else distinct) * held + frames * encoder)
    return pixels + frames * ANIMATION_FRAME_BYTES


def distinct_frames(src: Path, max_pixels: int, on_frame: FrameProgress | None = None) -> int:
    """How many different frames the animation src holds: a pass that decodes every frame and hashes it (783
    frames of 640x421 in about 2 s on a 2-core Zen 4), no model. on_frame(0, count) after each frame decoded (none
    upscaled yet): a caller that raises there stops the pass (`esrgan serve` cancels so)."""
    keys = set()
    with read_frames(src, max_pixels=max_pixels) as frames:
        for image, _ in frames:
            keys.add(frame_key(image))
            if on_frame is not None:
                on_frame(0, frames.count)
    return len(keys)


TOO_MUCH = "try a smaller --outscale (or --width / --height), or make it a video (ffmpeg -i in.gif out.mp4) and upscale that"
"""upscale_animation's way out of an animation too large for the memory (`esrgan serve` gives its own)."""


def upscale_animation(
    upscaler: Upscaler,
    src: str | Path,
    dst: str | Path,
    *,
    format: str | None = None,
    quality: int | None = None,
    png_compression: int | None = None,
    overwrite: bool = False,
    max_pixels: int | None = None,
    on_frame: FrameProgress | None = None,
    on_tile: Callable[[int, int], None] | None = None,
    too_much: str = TOO_MUCH,
) -> AnimationResult:
    """Every frame of the animation src through upscaler, written to dst (GIF, PNG as APNG, or WebP: from format
    or dst's extension) with the display times of src and as many plays. An existing dst raises OutputExistsError
    before anything is read unless overwrite; a frame that cannot be decoded, or output frames that would not fit
    in the free memory, raise one EsrganError line naming src; nothing is written unless every frame was done
    (nor when on_frame or on_tile, which each frame's upscale_image is given, raise: `esrgan serve` cancels so).
    too_much: what the memory refusal advises (the CLI's flags by default)."""
    from .atomic import OutputExistsError
    from .device import host_memory_available
    from .imageio import check_writable, in_hand

    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    # on a copy, whose host_reserve is this animation's; the precision it ends in goes back to the caller's
    caller, upscaler = upscaler, copy.copy(upscaler)
    if not overwrite and dst.exists():
        raise OutputExistsError(dst)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    with read_frames(src, max_pixels=limit) as frames:
        height, width = upscaler.output_size(*frames.size)
        check_writable(frames.first, format, dst, (height, width))
        writer = AnimationWriter(
            dst,
            frames.first,
            format=format,
            quality=quality,
            png_compression=png_compression,
            plays=frames.plays,
            default_image=frames.default_image,
        )
        free = host_memory_available()

        def needed(need: int) -> int:
            """The frames held and encoded, and one frame's upscale at the tile it gets with them set aside."""
            with upscaler.reserving(need):
                return need + upscaler.host_bytes(frames.first).whole

        need = animation_memory(frames.count, height, width, writer.fmt)
        different = "all"
        if free is not None and needed(need) > free:  # as if every frame differed: count the ones that do
            need = animation_memory(frames.count, height, width, writer.fmt, 1)
            different = "at least one"  # too much even if one frame were held: no need to count them
            if needed(need) <= free:
                distinct = distinct_frames(src, limit, on_frame)
                need = animation_memory(frames.count, height, width, writer.fmt, distinct)
                different = str(distinct)
        if free is not None and needed(need) > free:
            held, encoded = ANIMATION_BYTES[writer.fmt]
            raise EsrganError(
                f"{src}: the {frames.count} frames of {width}x{height} ({different} different) need about "
                f"{format_bytes(needed(need))} of memory until the {writer.fmt} file is written (one frame's "
                f"upscale, and about {held} bytes an output pixel for each different frame, {encoded} for each "
                f"frame while it is encoded) and {format_bytes(free)} is free: {too_much}"
            )
        upscaler.host_reserve = need
        seen: dict[bytes, int] = {}
        upscaled = 0
        total = 0.0
        with in_hand(src):  # the model's warnings (smaller tiles after an out-of-memory) name the file
            for done, (image, duration) in enumerate(frames, start=1):
                key = frame_key(image)
                if key in seen:
                    writer.repeat(seen[key], duration)
                else:
                    seen[key] = writer.add(upscaler.upscale_image(image, on_tile=on_tile), duration)
                    upscaled += 1
                total += duration
                if on_frame is not None:
                    on_frame(done, frames.count)
        count = frames.count
    caller.last_precision = upscaler.last_precision
    # what the engines now hold (a pass of this size needs nothing more) and a tile a pass ran out of memory with
    caller._passed = max(caller._passed, upscaler._passed)
    if upscaler.tile_cap is not None:
        caller.tile_cap = min(upscaler.tile_cap, caller.tile_cap or upscaler.tile_cap)
    writer.save(overwrite=overwrite)
    return AnimationResult(
        src, dst, count, upscaled, total / 1000.0, time.perf_counter() - start, (height, width)
    )


def frame_key(image: ImageData) -> bytes:
    """A frame's pixels and alpha, hashed: equal keys, equal frames (and so equal outputs)."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(image.pixels.tobytes())
    digest.update(b"" if image.alpha is None else image.alpha.tobytes())
    digest.update(repr(image.pixels.shape).encode())
    return digest.digest()
