"""Short test clips made with PyAV: a moving colour pattern, a sine-wave audio track, optional subtitles and tags.

Used by tests/test_video.py, bench/video.py and tools/kill_video.py; as a script:

    python tools/make_clip.py clip.mp4 [--size 96x64] [--fps 25] [--seconds 2] [--vfr] [--no-audio]
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np


def pattern(index: int, width: int, height: int) -> np.ndarray:
    """Frame `index` of the moving pattern: diagonal colour ramps, a moving square (sharp edges), a sinusoid."""
    yy, xx = np.mgrid[:height, :width]
    r = (xx * 255 // max(width - 1, 1) + index * 5) % 256
    g = (yy * 255 // max(height - 1, 1) + index * 3) % 256
    b = 128 + 100 * np.sin((xx + yy + index * 2) / 5.0)
    img = np.stack([r, g, b], -1).astype(np.uint8)
    side = max(4, height // 4)
    x0, y0 = (index * 2) % max(width - side, 1), (index * 1) % max(height - side, 1)
    img[y0 : y0 + side, x0 : x0 + side] = (255, 255, 255)
    return img


def make_clip(
    path: str | Path,
    *,
    size: tuple[int, int] = (96, 64),
    fps: Fraction | int = 25,
    seconds: float = 2.0,
    vfr: bool = False,
    audio: bool = True,
    audio_codec: str | None = None,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    colour: dict[str, int] | None = None,
    subtitles: list[tuple[float, float, str]] | None = None,
    metadata: dict[str, str] | None = None,
    chapters: list[tuple[float, float, str]] | None = None,
    video: bool = True,
) -> Path:
    """Write a clip; returns its path. vfr: frame durations alternate 1, 1, 2 frame periods (time base 1/1000).

    colour: codec context colour tags (color_range, color_primaries, color_trc, colorspace as FFmpeg's numbers).
    subtitles: (start s, end s, text) cues, as mov_text in mp4/mov and SubRip elsewhere. chapters: (start s, end s,
    title).
    """
    import av

    path = Path(path)
    fps = Fraction(fps)
    width, height = size
    out = av.open(str(path), "w")
    if metadata:
        out.metadata.update(metadata)
    if chapters:
        out.set_chapters([{"id": i + 1, "start": round(a * 1000), "end": round(b * 1000),
                           "time_base": Fraction(1, 1000), "metadata": {"title": title}}
                          for i, (a, b, title) in enumerate(chapters)])  # fmt: skip
    vs: Any = None
    if video:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        tb = Fraction(1, 1000) if vfr else 1 / fps
        vs.codec_context.time_base = tb
        if codec == "libx264":
            vs.codec_context.options = {"crf": "16", "preset": "veryfast"}
        for key, value in (colour or {}).items():
            setattr(vs.codec_context, key, value)
        if rotation is not None:
            vs.set_display_rotation(rotation)
    a: Any = None
    if audio:
        a = out.add_stream(audio_codec or ("libopus" if path.suffix == ".webm" else "aac"), rate=48000)
        a.layout = "stereo"
        a.metadata["language"] = "eng"
    sub: Any = None
    if subtitles:
        sub = out.add_mux_stream("mov_text" if path.suffix in (".mp4", ".mov", ".m4v") else "subrip")
        sub.time_base = Fraction(1, 1000)
    packets: list[Any] = []
    if vs is not None:
        n = round(seconds * fps)
        t, i = 0, 0
        while (t * tb if vfr else i / fps) < seconds and (vfr or i < n):
            frame = av.VideoFrame.from_ndarray(pattern(i, width, height), format="rgb24")
            for key, value in (colour or {}).items():
                setattr(frame, key, value)
            frame.pts, frame.time_base = (t if vfr else i), tb
            if vfr:
                t += round((2 if i % 3 == 2 else 1) / fps / tb)
            packets += vs.encode(frame)
            i += 1
        packets += vs.encode(None)
    if a is not None:
        total, done = round(48000 * seconds), 0
        while done < total:
            k = min(960, total - done)
            x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(done, done + k) / 48000)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.stack([x, x]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = 48000, done, Fraction(1, 48000)
            packets += a.encode(frame)
            done += k
        packets += a.encode(None)
    for start, end, text in subtitles or []:
        body = text.encode()
        data = len(body).to_bytes(2, "big") + body if path.suffix in (".mp4", ".mov", ".m4v") else body
        packet = av.Packet(data)
        packet.pts = packet.dts = round(start * 1000)
        packet.duration = round((end - start) * 1000)
        packet.time_base = Fraction(1, 1000)
        packet.stream = sub
        packets.append(packet)
    packets.sort(key=lambda p: float((p.dts if p.dts is not None else p.pts or 0) * p.time_base))
    for packet in packets:
        out.mux(packet)
    out.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--size", default="96x64")
    parser.add_argument("--fps", default="25")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--vfr", action="store_true")
    parser.add_argument("--no-audio", action="store_true")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    make_clip(args.path, size=(w, h), fps=Fraction(args.fps), seconds=args.seconds, vfr=args.vfr,
              audio=not args.no_audio)  # fmt: skip
    print(args.path)


if __name__ == "__main__":
    main()
