"""Videos: clips made here with PyAV (96x64, about 2 s, a moving pattern, a sine-wave track) through a tiny model.

Checked on the outputs as a player reads them: frame count, size, every frame's timestamp (so fps and variable
frame rate), audio packets copied byte for byte (duration within one frame), frame N = the image upscale of
frame N (exactly with the lossless FFV1, within codec tolerance with H.264), rotation, colour tags, metadata,
subtitles, a --frames range, resuming after an interruption, and bad inputs in a batch. The kill -9 version of the
resume test is tools/kill_video.py (one round here).
"""

from __future__ import annotations

import os
import random
import subprocess
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av")

import kill_video  # noqa: E402  (tools/ is on pytest's pythonpath: see pyproject.toml)
from conftest import bound_upscaler, photo_preserving_rrdb, run_cli, run_cli_in_address_space  # noqa: E402
from make_clip import make_clip, pattern  # noqa: E402

from esrgan.checkpoints import save_model  # noqa: E402
from esrgan.errors import EsrganError  # noqa: E402
from esrgan.upscale import OutOfMemoryWarning, Upscaler  # noqa: E402
from esrgan.video import VideoError, parse_frames, upscale_frames, upscale_video, work_folder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def up() -> Upscaler:
    return Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    tags = {"color_range": 1, "color_primaries": 1, "color_trc": 1, "colorspace": 1}  # BT.709, TV range
    return {
        "25": make_clip(d / "pal.mp4"),
        "ntsc": make_clip(d / "ntsc.mp4", fps=Fraction(30000, 1001)),
        "vfr": make_clip(d / "vfr.mkv", vfr=True),
        "ntsc_mkv": make_clip(d / "ntsc.mkv", fps=Fraction(30000, 1001), seconds=1.0),
        "tagged": make_clip(
            d / "tagged.mp4",
            seconds=1.0,
            rotation=90,
            colour=tags,
            metadata={"title": "a test"},
            subtitles=[(0.2, 0.6, "hello"), (0.7, 0.9, "world")],
            chapters=[(0.0, 0.5, "one"), (0.5, 1.0, "two")],
        ),
        "srt": make_clip(d / "srt.mkv", seconds=1.0, subtitles=[(0.2, 0.6, "hello")]),
    }


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", photo_preserving_rrdb())


def frames_of(path: Path) -> tuple[list[Fraction], list[np.ndarray]]:
    """Every frame's presentation time and RGB pixels, as a player decodes them."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        times, images = [], []
        for f in c.decode(v):
            times.append(f.pts * v.time_base)
            images.append(f.to_ndarray(format="rgb24"))
    return times, images


def packets_of(path: Path, kind: str) -> list[tuple[Fraction, bytes]]:
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type == kind]
        return [(p.pts * p.time_base, bytes(p)) for p in c.demux(streams) if p.size]


def audio_seconds(path: Path) -> float:
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        return sum(f.samples for f in c.decode(a)) / a.codec_context.sample_rate


def _mux_copies(av: Any, out: Any, packet: Any, streams: list[Any]) -> None:
    """Mux a copy of a demuxed packet into each of `streams` (a test clip with a track written twice)."""
    copies = []  # made before muxing: the muxer takes the packet's data
    for stream in streams:
        copy = av.Packet(bytes(packet))
        copy.pts, copy.dts, copy.duration = packet.pts, packet.dts, packet.duration
        copy.time_base, copy.is_keyframe, copy.stream = packet.time_base, packet.is_keyframe, stream
        copies.append(copy)
    for copy in copies:
        out.mux(copy)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-12))


@pytest.mark.parametrize(
    ("clip", "suffix"), [("25", ".mp4"), ("ntsc", ".mp4"), ("vfr", ".mp4"), ("ntsc_mkv", ".mkv")]
)
def test_timing_frame_count_and_audio_kept(
    up: Upscaler, clips: dict[str, Path], tmp_path: Path, clip: str, suffix: str
) -> None:
    src = clips[clip]
    dst = tmp_path / f"out{suffix}"
    result = upscale_video(up, src, dst, segment_frames=16)
    t_in, f_in = frames_of(src)
    t_out, f_out = frames_of(dst)
    assert result.frames == len(f_in) == len(f_out) and result.notes == []
    assert f_out[0].shape == (256, 384, 3)
    if suffix == ".mp4":  # the source's time base is kept: every timestamp exactly
        assert t_out == t_in
    else:  # Matroska stores milliseconds
        assert max(abs(a - b) for a, b in zip(t_in, t_out, strict=True)) <= Fraction(1, 1000)
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        if clip != "vfr":  # (a VFR Matroska declares its nominal rate, an MP4 the true average)
            assert b.streams.video[0].average_rate == a.streams.video[0].average_rate
        assert b.streams.audio[0].codec_context.name == "aac"
    if clip == "vfr":
        steps = {t_in[i + 1] - t_in[i] for i in range(len(t_in) - 1)}
        assert steps == {Fraction(40, 1000), Fraction(80, 1000)}  # really variable, and kept above
    # audio copied, not re-encoded: the same packets, and the same length to within one frame
    assert [d for _, d in packets_of(dst, "audio")] == [d for _, d in packets_of(src, "audio")]
    assert abs(audio_seconds(dst) - audio_seconds(src)) < 1 / 25
    assert not work_folder(dst).exists()


def test_every_frame_is_the_image_upscale(up: Upscaler, clips: dict[str, Path], tmp_path: Path) -> None:
    """FFV1 (lossless, RGB): frame N of the output equals Upscaler.upscale of frame N of the input, exactly."""
    dst = tmp_path / "lossless.mkv"
    upscale_video(up, clips["25"], dst, codec="ffv1", segment_frames=20)
    _, f_in = frames_of(clips["25"])
    _, f_out = frames_of(dst)
    assert len(f_out) == 50
    for n in range(50):
        np.testing.assert_array_equal(f_out[n], up.upscale(f_in[n]), err_msg=f"frame {n}")
    assert len({f.tobytes() for f in f_out}) == 50  # a moving pattern: so frame N is N, not a neighbour


def test_h264_frames_match_within_codec_tolerance(
    up: Upscaler, clips: dict[str, Path], tmp_path: Path
) -> None:
    dst = tmp_path / "out.mp4"
    upscale_video(up, clips["ntsc"], dst, crf=12)
    _, f_in = frames_of(clips["ntsc"])
    _, f_out = frames_of(dst)
    assert min(psnr(f_out[n], up.upscale(f_in[n])) for n in (0, 17, 59)) > 38


def test_outscale_and_interpolation(clips: dict[str, Path], tmp_path: Path) -> None:
    mixed = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, outscale=1.5,
                     interpolate=photo_preserving_rrdb(3), interpolate_alpha=0.5)  # fmt: skip
    dst = tmp_path / "out.mkv"
    mixed.upscale_video(clips["25"], dst, codec="ffv1", frames=(5, 8))  # the Upscaler method, same thing
    _, f_in = frames_of(clips["25"])
    _, f_out = frames_of(dst)
    assert [f.shape for f in f_out] == [(96, 144, 3)] * 3
    np.testing.assert_array_equal(f_out[0], mixed.upscale(f_in[5]))


def test_a_grey_models_frames_keep_their_colour(clips: dict[str, Path], tmp_path: Path) -> None:
    """A grey model (1 channel in and out) on a colour video: the frames' batched pass (3 channels) does not fit it,
    so each frame goes through the image path, its channels one at a time: frame N is Upscaler.upscale of frame N."""
    grey = Upscaler(photo_preserving_rrdb(channels=1), device="cpu", precision="fp32", tile=0)
    dst = tmp_path / "grey.mkv"
    grey.upscale_video(clips["25"], dst, codec="ffv1", frames=(5, 9), frame_batch=4)
    _, f_in = frames_of(clips["25"])
    _, f_out = frames_of(dst)
    assert len(f_out) == 4
    for n in range(4):
        np.testing.assert_array_equal(f_out[n], grey.upscale(f_in[5 + n]), err_msg=f"frame {n}")
    assert not np.array_equal(f_out[0][..., 0], f_out[0][..., 2])  # colour, not grey


def test_frames_range_is_a_preview(up: Upscaler, clips: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "preview.mkv"
    result = upscale_video(up, clips["25"], dst, codec="ffv1", frames=parse_frames("10:30"))
    t_in, f_in = frames_of(clips["25"])
    t_out, f_out = frames_of(dst)
    assert result.frames == len(f_out) == 20
    assert t_out[0] == 0 and t_out == [t - t_in[10] for t in t_in[10:30]]
    np.testing.assert_array_equal(f_out[0], up.upscale(f_in[10]))
    np.testing.assert_array_equal(f_out[-1], up.upscale(f_in[29]))
    assert abs(audio_seconds(dst) - 20 / 25) < 1 / 25
    with pytest.raises(Exception, match="A:B"):
        parse_frames("30:10")


def test_rotation_colour_metadata_and_subtitles_kept(
    up: Upscaler, clips: dict[str, Path], tmp_path: Path
) -> None:
    dst = tmp_path / "tagged.mp4"
    upscale_video(up, clips["tagged"], dst)
    with av.open(str(dst)) as c:
        assert c.metadata.get("title") == "a test"
        assert [(ch["start"] * ch["time_base"], ch["metadata"]["title"]) for ch in c.chapters()] == [
            (0, "one"),
            (Fraction(1, 2), "two"),
        ]
        v = c.streams.video[0]
        first = next(c.decode(v))
        assert first.rotation == 90
        assert (first.color_range, first.color_primaries, first.color_trc, first.colorspace) == (1, 1, 1, 1)
        assert c.streams.audio[0].metadata.get("language") == "eng"
        assert [s.codec_context.name for s in c.streams.subtitles] == ["mov_text"]

    def cues(path: Path) -> list[tuple[Fraction, bytes]]:  # (the muxer adds empty samples between cues)
        return [(t, data) for t, data in packets_of(path, "subtitle") if len(data) > 2]

    assert cues(dst) == cues(clips["tagged"]) and len(cues(dst)) == 2
    # the colours survive the trip: BT.709 in, BT.709 out (a BT.601 round trip would shift them visibly)
    _, f_in = frames_of(clips["tagged"])
    _, f_out = frames_of(dst)
    assert psnr(f_out[3], up.upscale(f_in[3])) > 35


def test_a_title_that_is_not_utf8_neither_stops_the_video_nor_is_lost(up: Upscaler, tmp_path: Path) -> None:
    """A container title written in Latin-1 (bytes that are not UTF-8): PyAV before 19 failed to open such a file
    unless told to replace them, and PyAV 19 refuses that argument (every video failed on Python 3.13, where pip
    gets 19). The video is upscaled; its title comes back as the same bytes (19) or with U+FFFD in their place."""
    clip = make_clip(tmp_path / "latin.mkv", seconds=0.2, audio=False, metadata={"title": "caf\u00e9 XXXX"})
    data = clip.read_bytes()
    assert data.count("caf\u00e9 XXXX".encode()) == 1
    clip.write_bytes(
        data.replace("caf\u00e9 XXXX".encode(), b"caf\xe9\xe9 XXXX")
    )  # Latin-1 bytes, same length
    dst = tmp_path / "latin_x4.mkv"
    upscale_video(up, clip, dst)
    with av.open(str(dst)) as c:
        assert len(list(c.decode(video=0))) == 5
    out = dst.read_bytes()
    assert b"caf\xe9\xe9 XXXX" in out or "caf\ufffd\ufffd XXXX".encode() in out


def test_streams_the_container_cannot_hold(up: Upscaler, clips: dict[str, Path], tmp_path: Path) -> None:
    """AAC into WebM is re-encoded (Opus), SubRip into MP4 is dropped: each with a note saying so."""
    webm = upscale_video(up, clips["25"], tmp_path / "out.webm", frames=(0, 25))
    assert webm.notes == ["audio stream #1 (aac) re-encoded to libopus: a webm file cannot hold aac"]
    with av.open(str(tmp_path / "out.webm")) as c:
        assert [s.codec_context.name for s in c.streams] == ["vp9", "opus"]
    assert abs(audio_seconds(tmp_path / "out.webm") - 1.0) < 2 / 25
    mp4 = upscale_video(up, clips["srt"], tmp_path / "out.mp4")
    assert len(mp4.notes) == 1 and "subtitle stream #2" in mp4.notes[0] and "dropped" in mp4.notes[0]


def test_interrupted_run_resumes_from_its_segments(
    up: Upscaler, clips: dict[str, Path], tmp_path: Path
) -> None:
    """Stopped at frame 27 (Ctrl-C): segments 0-9 and 10-19 are kept, nothing is under the output's name; the
    rerun upscales only frames 20-49 and the result is the same file content as an uninterrupted run."""
    dst = tmp_path / "out.mkv"
    options: dict[str, Any] = {"codec": "ffv1", "segment_frames": 10}

    def interrupt(done: int, total: int | None) -> None:
        if done == 27:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upscale_video(up, clips["25"], dst, on_frame=interrupt, **options)
    assert not dst.exists() and not list(tmp_path.glob(".*.part"))
    segments = sorted(p.name for p in work_folder(dst).glob("seg*.pkt"))
    assert segments == ["seg000000.pkt", "seg000001.pkt"]
    # another model or other settings: the segments are not reused
    other = upscale_video(up, clips["25"], tmp_path / "other.mkv", frames=(0, 5), **options)
    assert other.resumed == 0
    with pytest.raises(KeyboardInterrupt):
        upscale_video(up, clips["25"], dst, on_frame=interrupt, **{**options, "pix_fmt": "bgra"})
    with pytest.raises(KeyboardInterrupt):
        upscale_video(up, clips["25"], dst, on_frame=interrupt, **options)
    result = upscale_video(up, clips["25"], dst, **options)
    assert (result.resumed, result.upscaled, result.frames) == (20, 30, 50)
    assert "resumed: 20 frames kept" in result.summary()
    assert not work_folder(dst).exists()
    straight = tmp_path / "straight.mkv"
    upscale_video(up, clips["25"], straight, **options)
    t1, f1 = frames_of(dst)
    t2, f2 = frames_of(straight)
    assert t1 == t2 and all(np.array_equal(a, b) for a, b in zip(f1, f2, strict=True))


def test_killed_run_resumes(tmp_path: Path) -> None:
    """kill -9 once two segments exist: no output file; the rerun keeps those segments and finishes the clip."""
    result = kill_video.kill_round(tmp_path, random.Random(0), ENV, max_delay=0.0)
    assert result.problems == [] and result.killed
    assert result.segments_before_kill >= 2 and result.resumed_frames >= 2 * kill_video.SEGMENT


def test_cli_folder_of_images_and_videos(clips: dict[str, Path], tiny_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(clips["25"].read_bytes())
    Image.fromarray(pattern(0, 40, 32)).save(folder / "still.png")
    out = tmp_path / "out"
    args = ["upscale", str(folder), "-o", str(out), "--model", str(tiny_file), "--device", "cpu",
            "--precision", "fp32", "--frames", "0:10"]  # fmt: skip
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["clip_x4.mp4", "still_x4.png"]
    assert "10 frames, 0.40 s of video" in r.stdout and "2 upscaled, 0 skipped" in r.stdout
    assert len(frames_of(out / "clip_x4.mp4")[1]) == 10
    again = cli(*args)
    assert again.returncode == 0 and "0 upscaled, 2 skipped" in again.stdout
    single = cli("upscale", str(folder / "clip.mp4"), "-o", str(tmp_path / "one.mkv"), "--model", str(tiny_file),
                 "--frames", "0:3", "--codec", "ffv1")  # fmt: skip
    assert single.returncode == 0, single.stderr
    with av.open(str(tmp_path / "one.mkv")) as c:
        assert c.streams.video[0].codec_context.name == "ffv1" and c.streams.video[0].frames in (0, 3)
    # SVT-AV1 printed ~40 lines of banner and settings to stderr per segment
    av1 = cli("upscale", str(folder / "clip.mp4"), "-o", str(tmp_path / "one_av1.mkv"), "--model", str(tiny_file),
              "--frames", "0:3", "--codec", "av1")  # fmt: skip
    assert av1.returncode == 0 and av1.stderr == "", av1.stderr
    # a legal 250-byte name: its hidden segments folder (`.NAME.segments`) passed 255 bytes ("File name too long")
    long = tmp_path / ("v" * 246 + ".mkv")
    r = cli(
        "upscale", str(folder / "clip.mp4"), "-o", str(long), "--model", str(tiny_file), "--frames", "0:2"
    )
    assert r.returncode == 0 and long.is_file(), r.stderr


def test_a_video_whose_frames_do_not_fit_in_memory_is_refused_before_any_frame(
    tiny_file: Path, tmp_path: Path
) -> None:
    """450 MiB of address space beyond torch's own and a 480x272 clip at x4: 1920x1088 frames, which libx264 and the
    frames in flight need about 550 MB for. One line before any frame (naming what is needed and free, and ffv1,
    which fits), nothing of the video left, and the batch goes on (before: left to the kernel's OOM killer)."""
    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder / "wide.mp4", size=(480, 272), seconds=0.2, audio=False)
    Image.fromarray(pattern(0, 40, 32)).save(folder / "still.png")
    out = tmp_path / "out"
    r = run_cli_in_address_space(
        450 * 2**20, "upscale", folder, "-o", out, "--model", tiny_file, "--device", "cpu", "--precision", "fp32",
        "--quiet", preload="av, torch, esrgan.upscale, esrgan.video", env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"esrgan: error: {folder / 'wide.mp4'}: the 1920x1088 frames need about "
    ), r.stderr
    assert "of memory to encode with h264 (the frames in flight and the encoder's) and " in lines[0]
    assert lines[0].endswith("is free: try a smaller --outscale (or --width / --height), or --codec ffv1 (lossless, "
                             "large files)")  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["still_x4.png"]  # no video, no segments folder


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"OMP_NUM_THREADS": "1"})


def test_cli_bad_inputs_one_line_each(clips: dict[str, Path], tiny_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.mp4").write_bytes(clips["25"].read_bytes())
    (folder / "notes.mp4").write_text("not a video at all\n" * 50)
    data = clips["25"].read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: gone
    mkv = clips["vfr"].read_bytes()
    (folder / "cut.mkv").write_bytes(mkv[: len(mkv) // 2])  # readable, but ends at about 1 s of 2
    make_clip(folder / "sound.mp4", video=False)
    out = tmp_path / "out"
    r = cli("upscale", str(folder), "-o", str(out), "--model", str(tiny_file), "--frames", "0:60")
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("esrgan: error:")]
    assert len(errors) == 4 and "Traceback" not in r.stderr, r.stderr
    expect = {"notes.mp4": "not a video", "cut.mp4": "not a video", "cut.mkv": "truncated",
              "sound.mp4": "has no video stream"}  # fmt: skip
    for name, words in expect.items():
        line = next(e for e in errors if name in e)
        assert words in line, line
    # no partial files; no work folders but the truncated clip's, found at its end (its frames upscaled are kept)
    assert sorted(p.name for p in out.iterdir()) == [".cut_x4.mkv.segments", "good_x4.mp4"]
    assert "kept in " in next(e for e in errors if "cut.mkv" in e)
    assert "1 upscaled, 0 skipped (output exists), 4 failed" in r.stdout
    big = cli("upscale", str(folder / "good.mp4"), "-o", str(out / "big.mp4"), "--model", str(tiny_file),
              "--max-megapixels", "0.005")  # fmt: skip
    assert big.returncode == 1 and "96x64 frames are over the limit of 5243 pixels" in big.stderr
    assert not (out / "big.mp4").exists()


def test_errors_name_the_file(up: Upscaler, clips: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="cannot hold h264"):
        upscale_video(up, clips["25"], tmp_path / "x.webm", codec="h264")
    with pytest.raises(VideoError, match="odd-sized"):
        odd = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, outscale=1.01)
        upscale_video(odd, clips["25"], tmp_path / "y.mp4")
    assert not list(tmp_path.iterdir())


def test_av1_quiets_svt_av1_only_while_it_opens_an_encoder(
    up: Upscaler,
    clips: dict[str, Path],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SVT-AV1 reads SVT_LOG when an encoder opens: set to 1 (errors only) around each opening and removed after
    (it was left in os.environ for good, inherited by every child process); a value the caller set is kept."""
    monkeypatch.delenv("SVT_LOG", raising=False)
    done = upscale_video(up, clips["25"], tmp_path / "a.mkv", codec="av1", frames=(0, 3), segment_frames=2)
    assert done.frames == 3 and "SVT_LOG" not in os.environ
    out, err = capfd.readouterr()
    assert "SVT" not in out + err  # still quiet: the banner and settings, ~40 lines per segment
    monkeypatch.setenv("SVT_LOG", "2")
    upscale_video(up, clips["25"], tmp_path / "b.mkv", codec="av1", frames=(0, 1))
    assert os.environ["SVT_LOG"] == "2"


def test_a_frame_size_the_encoder_refuses_is_said_before_any_frame_is_upscaled(tmp_path: Path) -> None:
    """libx264 (and SVT-AV1) stop at 16384 pixels a side: a 1100x16 clip at --outscale 16 (17600x256) was refused
    by FFmpeg as "Generic error in an external library" after the first frame's work. The encoder is now opened
    with the output's settings when the video is planned: one line naming the file, the size and the way out,
    nothing left behind; VP9 takes the size."""
    src = make_clip(tmp_path / "wide.mp4", size=(1100, 16), seconds=0.2, audio=False)
    before = sorted(tmp_path.iterdir())
    wide = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, outscale=16)
    for codec in ("h264", "av1"):
        with pytest.raises(VideoError) as caught:
            upscale_video(wide, src, tmp_path / "out.mkv", codec=codec)
        message = str(caught.value)
        assert message.startswith(f"{src}: {codec} (") and "cannot encode 17600x256 video" in message
        assert message.endswith(
            "--codec vp9 or --codec ffv1 (in .mkv) takes larger frames, or choose a smaller --outscale (or --width / --height)"
        )
        assert "\n" not in message and sorted(tmp_path.iterdir()) == before  # no output, no work folder
    done = upscale_video(wide, src, tmp_path / "out.mkv", codec="vp9", frames=(0, 1))
    assert done.frames == 1
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (17600, 256)


def test_a_target_width_sizes_every_frame(tmp_path: Path) -> None:
    """--width on a video: every frame the image upscale of its frame at that width (FFV1: exact), the height by
    the aspect ratio."""
    src = make_clip(tmp_path / "clip.mp4", seconds=0.2, audio=False)  # 96x64
    fitted = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, fit=(240, None))
    done = upscale_video(fitted, src, tmp_path / "out.mkv", codec="ffv1")
    _, frames = frames_of(tmp_path / "out.mkv")
    _, sources = frames_of(src)
    assert done.frames == len(frames) == len(sources) > 1
    assert frames[0].shape == (160, 240, 3)
    assert np.array_equal(frames[0], fitted.upscale(sources[0]))
    # 128 wide would be 85.3 high: odd, which yuv420p cannot hold; a video's free side is rounded to even (86)
    narrow = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, fit=(128, None))
    upscale_video(narrow, src, tmp_path / "narrow.mp4")
    with av.open(str(tmp_path / "narrow.mp4")) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (128, 86)
    assert narrow.output_size(64, 96) == (85, 128)  # an image keeps the nearest size


def test_a_target_width_is_the_width_shown_and_a_folder_in_the_way_is_an_error(tmp_path: Path) -> None:
    """A phone video turned a quarter (display matrix 90): --width 192 is the width it is shown at (its frames'
    height), not the stored width (a review found 128 shown). A folder with the output's name is one error before
    any frame (it was "skip ... exists", exit 0, or with --overwrite a rename error after every frame)."""
    src = make_clip(
        tmp_path / "turned.mp4", seconds=0.2, audio=False, rotation=90
    )  # 96x64 stored, 64x96 shown
    fitted = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, fit=(192, None))
    upscale_video(fitted, src, tmp_path / "out.mp4")
    with av.open(str(tmp_path / "out.mp4")) as c:
        frame = next(c.decode(video=0))
        assert (frame.width, frame.height, abs(frame.rotation)) == (288, 192, 90)  # shown 192 x 288
    assert fitted.fit == (192, None)  # the caller's upscaler is unchanged
    (tmp_path / "taken.mp4").mkdir()
    for overwrite in (False, True):
        with pytest.raises(VideoError, match=r"cannot write .*taken\.mp4 \(a folder has its name\)$"):
            upscale_video(fitted, src, tmp_path / "taken.mp4", overwrite=overwrite)
    assert (tmp_path / "taken.mp4").is_dir() and not list((tmp_path / "taken.mp4").iterdir())


def test_a_ten_bit_video_says_it_was_computed_in_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16-bit frames are computed in fp32 whatever the upscaler's precision; the video runs on a copy of the
    upscaler, and the batch's summary ("computed on cpu in ...") reads the caller's: it said bf16."""
    monkeypatch.setenv("ESRGAN_CPU_BF16", "1")
    bf16 = Upscaler(photo_preserving_rrdb(), device="cpu", precision="bf16", tile=0)
    bf16.upscale(pattern(0, 40, 32))
    assert bf16.last_precision == "bf16"
    src = make_clip(tmp_path / "ten.mkv", pix_fmt="yuv420p10le", seconds=0.2, audio=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "16-bit and float images are computed in fp32"
        upscale_video(bf16, src, tmp_path / "out.mkv", codec="ffv1")
    assert bf16.last_precision == "fp32"


def test_ten_bit_source_stays_high_bit_depth(up: Upscaler, tmp_path: Path) -> None:
    """A 10-bit clip goes through the model as 16-bit RGB: exact with FFV1 (16-bit planar RGB), and 10-bit H.264 by default."""
    src = make_clip(tmp_path / "ten.mkv", pix_fmt="yuv420p10le", seconds=0.4, audio=False)
    lossless = upscale_video(up, src, tmp_path / "out.mkv", codec="ffv1")
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mkv")) as b:
        frames_in = [f.to_ndarray(format="rgb48le") for f in a.decode(video=0)]
        frames_out = [f for f in b.decode(video=0)]
    assert lossless.frames == len(frames_out) == 10 and frames_out[0].format.name == "gbrp16le"
    for n in (0, 9):
        out = frames_out[n].to_ndarray(format="rgb48le")
        assert out.dtype == np.uint16 and len(np.unique(out)) > 1024  # more levels than 8 bits have
        np.testing.assert_array_equal(out, up.upscale(frames_in[n]))
    upscale_video(up, src, tmp_path / "out.mp4")
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p10le"


def test_frames_batched_per_forward_pass(up: Upscaler, clips: dict[str, Path], tmp_path: Path) -> None:
    """--frame-batch 4: the same frames as one at a time, to within float rounding (1 level), the same timing."""
    one, four = tmp_path / "one.mkv", tmp_path / "four.mkv"
    upscale_video(up, clips["25"], one, codec="ffv1", frames=(0, 10))
    result = upscale_video(up, clips["25"], four, codec="ffv1", frames=(0, 10), frame_batch=4)  # 4 + 4 + 2
    assert result.upscaled == 10
    t1, f1 = frames_of(one)
    t4, f4 = frames_of(four)
    assert t1 == t4 and len(f4) == 10
    for a, b in zip(f1, f4, strict=True):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01


def test_a_black_and_white_films_frames_stay_grey_in_a_batch(up: Upscaler, photo: np.ndarray) -> None:
    """A grey frame (R == G == B, as a black-and-white film decodes) takes upscale_image's grey path one at a time;
    batched with others (--frame-batch) it went through the colour model as colour and came back tinted. Now its
    output channels are equal, as one at a time, and a colour frame beside it stays colour."""
    grey = np.repeat(photo[:48, 100:164].mean(axis=2, keepdims=True).round().astype(np.uint8), 3, axis=2)
    colour = np.ascontiguousarray(photo[48:96, 100:164])
    outs = upscale_frames(up, [grey, colour, grey])
    alone = up.upscale(grey)
    assert np.array_equal(alone[:, :, 0], alone[:, :, 1]) and np.array_equal(alone[:, :, 1], alone[:, :, 2])
    for out in (outs[0], outs[2]):
        assert np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 1], out[:, :, 2])
        assert np.abs(out.astype(int) - alone.astype(int)).max() <= 1  # the batched convolutions' rounding
    assert not np.array_equal(outs[1][:, :, 0], outs[1][:, :, 1])
    assert np.abs(outs[1].astype(int) - up.upscale(colour).astype(int)).max() <= 1


def test_frames_batched_out_of_memory_go_one_by_one(photo: np.ndarray) -> None:
    """Forward passes of 4 frames and room for one frame a pass: half as many frames a pass until one fits, each
    frame whole, the same output as one by one (before: the video failed); the next batch starts at one frame."""
    frames = [np.ascontiguousarray(photo[k * 40 : k * 40 + 48, 100:164]) for k in range(4)]
    bounded, model = bound_upscaler(48 * 64, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = upscale_frames(bounded, frames)
    notes = [str(w.message) for w in caught if issubclass(w.category, OutOfMemoryWarning)]
    assert notes == [
        "out of memory with 4 frames a pass on cpu; trying 2 a pass (also for the frames after them)",
        "out of memory with 2 frames a pass on cpu; trying 1 a pass (also for the frames after them)",
    ]
    assert model.passes == [(4, 48, 64), (2, 48, 64)] + [(1, 48, 64)] * 4
    model.passes.clear()
    upscale_frames(bounded, frames[:2])
    assert model.passes == [(1, 48, 64)] * 2
    free, _ = bound_upscaler(1 << 30, 0)
    for frame, out in zip(frames, outs, strict=True):
        np.testing.assert_array_equal(out, free.upscale(frame))


def test_mpeg_ts_source_that_starts_late(up: Upscaler, tmp_path: Path) -> None:
    """MPEG-TS: timestamps from 0.08 s in a 90 kHz time base, ADTS audio; kept in MP4 (and the name in a folder)."""
    src = make_clip(tmp_path / "broadcast.ts", seconds=1.0)
    result = upscale_video(up, src, tmp_path / "out.mp4")
    t_in, _ = frames_of(src)
    t_out, f_out = frames_of(tmp_path / "out.mp4")
    assert t_in[0] > 0 and t_out == t_in and len(f_out) == 25
    assert result.duration == pytest.approx(1.0) and "25 frames, 1.00 s of video" in result.summary()
    assert abs(audio_seconds(tmp_path / "out.mp4") - audio_seconds(src)) < 1 / 25
    from esrgan.pipeline import plan_jobs

    (job,) = plan_jobs([(src, None)], tmp_path / "folder", scale=4)
    assert job.dst.name == "broadcast_x4.mkv"  # no MPEG-TS muxing here: Matroska holds anything


def test_a_second_run_on_the_same_output_is_refused(
    up: Upscaler, clips: dict[str, Path], tmp_path: Path
) -> None:
    """Two esrgan writing one output would mix their segments: the second stops at once, the first is untouched."""
    fcntl = pytest.importorskip("fcntl")
    dst = tmp_path / "out.mp4"
    work = work_folder(dst)
    work.mkdir()
    (work / "seg000000.pkt").write_bytes(b"the running one's")
    with open(work / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a live run holds it
        with pytest.raises(VideoError, match="another esrgan is writing this output"):
            upscale_video(up, clips["25"], dst, frames=(0, 2))
        assert (work / "seg000000.pkt").read_bytes() == b"the running one's" and not dst.exists()
    upscale_video(up, clips["25"], dst, frames=(0, 2))  # that run is gone (a killed one's lock goes with it)
    assert dst.exists() and not work.exists()


def png_video(path: Path, sizes: list[int], header: int = 16) -> Path:
    """A .mov of PNG frames of the given (square) sizes under a stream header that says header x header: what a
    crafted file can do (FFmpeg's PNG decoder takes each frame's size from the frame)."""
    import io

    out = av.open(str(path), "w", format="mov")
    stream = out.add_stream("png", rate=24)
    stream.width, stream.height, stream.pix_fmt = header, header, "rgb24"
    out.start_encoding()
    for k, side in enumerate(sizes):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(buf, "PNG")
        packet = av.Packet(buf.getvalue())
        packet.stream, packet.pts, packet.dts, packet.duration = stream, k * 512, k * 512, 512
        packet.is_keyframe = True
        out.mux(packet)
    out.close()
    return path


@pytest.mark.parametrize(
    ("sizes", "limit", "expected"),
    [
        # a stream that changes resolution was squeezed into the first frame's size without a word
        ([16, 16, 24, 24], None, r"frame 3 is 24x24, not 16x16 as the video began"),
        # a later frame far over the limit: refused by the decoder before it is allocated (FFmpeg reads the
        # header's size from the first frame, so the first cannot lie)
        ([16, 16, 1200], 300, r"corrupt video or a frame far over the pixel limit after frame"),
    ],
)
def test_frames_that_differ_from_the_header_are_refused(
    up: Upscaler, tmp_path: Path, sizes: list[int], limit: int | None, expected: str
) -> None:
    """The pixel limit was checked against the stream's header only: a crafted file (a 16x16 header, a 1200x1200
    third frame) was decoded, upscaled to 4800x4800 and squeezed into the output. Every frame is checked now."""
    src = png_video(tmp_path / "crafted.mov", sizes)
    dst = tmp_path / "out.mkv"
    with pytest.raises(VideoError, match=expected) as info:
        upscale_video(up, src, dst, codec="ffv1", max_pixels=limit)
    assert str(src) in str(info.value) and "\n" not in str(info.value)
    assert not dst.exists() and not work_folder(dst).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.mov"]  # nothing left behind


def cut_without_reencoding(src: Path, dst: Path, at: Fraction) -> Path:
    """An MP4 cut at `at` seconds as `ffmpeg -ss AT -c copy` or LosslessCut write it: every packet kept, moved back
    by `at`, so those before the cut (from the key frame before it) have negative timestamps, and the muxer writes
    an edit list hiding them. The header's frame count (nb_frames) still counts them."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        streams = {
            s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")
        }
        for packet in inp.demux(*[s for s in inp.streams if s.index in streams]):
            if packet.dts is None:
                continue
            shift = round(at / packet.time_base)
            if packet.stream.type == "audio" and packet.pts + packet.duration <= shift:
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dst


def test_an_mp4_cut_without_reencoding_is_what_plays(
    up: Upscaler, clips: dict[str, Path], tmp_path: Path
) -> None:
    """An MP4 cut at 0.2 s without re-encoding: 50 samples, 45 shown (an edit list hides the 5 before the cut). It
    was refused as "truncated or corrupt: 45 of 50 frames decode" after all 45 were upscaled, and the work deleted;
    now the 45 frames that play are the output, and the progress counts 45."""
    src = cut_without_reencoding(clips["25"], tmp_path / "cut.mp4", Fraction(1, 5))
    with av.open(str(src)) as c:
        assert c.streams.video[0].frames == 50  # the header's count: the hidden samples too
    t_in, f_in = frames_of(src)
    assert len(f_in) == 45 and t_in[0] == 0
    totals: set[int | None] = set()
    dst = tmp_path / "out.mkv"
    result = upscale_video(up, src, dst, codec="ffv1", on_frame=lambda done, total: totals.add(total))
    t_out, f_out = frames_of(dst)
    assert result.frames == len(f_out) == 45 and totals == {45}
    assert max(abs(a - b) for a, b in zip(t_in, t_out, strict=True)) <= Fraction(1, 1000)
    np.testing.assert_array_equal(f_out[0], up.upscale(f_in[0]))
    np.testing.assert_array_equal(f_out[-1], up.upscale(f_in[-1]))
    _, f_whole = frames_of(clips["25"])
    np.testing.assert_array_equal(f_in[0], f_whole[5])  # what plays first is the source's frame 5


def test_a_clip_found_truncated_at_its_end_keeps_the_frames_upscaled(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    """Where a stream ends is known only once it is decoded, so a truncated clip is refused after its frames were
    upscaled: that work is kept in the work folder (it was deleted, so a check wrong about an unusual file cost the
    whole run each time), the error says where, and a rerun reuses it (no frame through the model again)."""
    data = clips["vfr"].read_bytes()
    src = tmp_path / "cut.mkv"
    src.write_bytes(data[: len(data) // 2])  # readable, but ends at about 1 s of 2
    counting, model = bound_upscaler(1 << 30, 0)
    dst = tmp_path / "out.mkv"
    for run in range(2):
        with pytest.raises(VideoError, match=r"truncated or corrupt: video ends at") as caught:
            upscale_video(counting, src, dst, codec="ffv1", segment_frames=10)
        message = str(caught.value)
        assert message.startswith(f"{src}: ") and "\n" not in message
        assert message.endswith(
            f"; the 20 frames upscaled are kept in {work_folder(dst)} (a rerun reuses them; remove the folder if "
            "the source is bad)"
        )
        assert not dst.exists() and len(list(work_folder(dst).glob("seg*.pkt"))) == 2
        if run == 0:
            assert len(model.passes) == 20
            model.passes.clear()
    assert model.passes == []  # the rerun decoded past the kept segments without the model


def anamorphic_clip(path: Path, sar: Fraction, *, rotation: int | None = None, frames: int = 5) -> Path:
    """A 96x64 H.264 clip of the moving pattern whose pixels are not square (sample aspect ratio `sar`, in the
    bitstream and the container), as DVD, PAL and HDV video are: 96x64 at 4:3 is shown 128x64."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 96, 64, "yuv420p"
        vs.codec_context.sample_aspect_ratio = sar
        if rotation is not None:
            vs.set_display_rotation(rotation)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern(i, 96, 64), format="rgb24")
            frame.pts = i
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
    return path


def shown(path: Path) -> tuple[int, int, Fraction | None]:
    """(stored width, height, sample aspect ratio) of a file's video as a player reads it."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return v.codec_context.width, v.codec_context.height, v.sample_aspect_ratio


def test_non_square_pixels_are_kept_and_a_target_width_is_the_width_shown(
    up: Upscaler, tmp_path: Path
) -> None:
    """An anamorphic source (a Matroska at 16:15 as PAL, an MP4 at 4:3 as HDV) came out with square pixels, shown
    distorted, and --width sized the stored width. The sample aspect ratio is carried to the output (H.264's VUI,
    MP4's pasp), --width / --height size the video as shown (rotation included), and a container that cannot carry
    it for the codec (VP9 in Matroska) says so in a note."""
    pal = anamorphic_clip(tmp_path / "pal.mkv", Fraction(16, 15))
    for suffix in (".mkv", ".mp4"):
        result = upscale_video(up, pal, tmp_path / f"out{suffix}")
        assert shown(tmp_path / f"out{suffix}") == (384, 256, Fraction(16, 15)) and result.notes == []
    hdv = anamorphic_clip(tmp_path / "hdv.mp4", Fraction(4, 3))  # shown 128x64
    wide = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, fit=(256, None))
    upscale_video(wide, hdv, tmp_path / "w256.mp4")
    assert shown(tmp_path / "w256.mp4") == (192, 128, Fraction(4, 3))  # shown 256x128
    assert wide.fit == (256, None)  # the caller's upscaler is unchanged
    turned = anamorphic_clip(tmp_path / "turned.mp4", Fraction(4, 3), rotation=90)  # shown 64x128
    tall = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, fit=(None, 256))
    upscale_video(tall, turned, tmp_path / "h256.mp4")
    assert shown(tmp_path / "h256.mp4") == (192, 128, Fraction(4, 3))  # shown 128x256
    lost = upscale_video(up, hdv, tmp_path / "vp9.mkv", codec="vp9")
    assert lost.notes == [
        "the sample aspect ratio 4:3 is lost (vp9 video in .mkv cannot carry it here): the video is shown 384x256, "
        "not 512x256; .mp4, or --codec h264 or h265, keeps it"
    ]


def test_an_open_ended_range_of_a_variable_frame_rate_clip(
    up: Upscaler, clips: dict[str, Path], tmp_path: Path
) -> None:
    """--frames 20: (and 20:1000, past the end) of a VFR clip (frame steps of 40, 40, 80 ms; its Matroska header
    says 25 fps): the truncation check put frame 20 at 20 / 25 = 0.8 s instead of its real 1.04 s, and refused the
    clip as "truncated or corrupt: video ends at ..." after every frame was upscaled. It takes frame 20's time."""
    t_in, f_in = frames_of(clips["vfr"])
    for stop in (None, 1000):
        dst = tmp_path / f"tail_{stop}.mkv"
        result = upscale_video(up, clips["vfr"], dst, codec="ffv1", frames=(20, stop))
        t_out, f_out = frames_of(dst)
        assert result.frames == len(f_out) == len(f_in) - 20
        assert max(abs(a - (b - t_in[20])) for a, b in zip(t_out, t_in[20:], strict=True)) <= Fraction(
            1, 1000
        )
        np.testing.assert_array_equal(f_out[0], up.upscale(f_in[20]))
        np.testing.assert_array_equal(f_out[-1], up.upscale(f_in[-1]))


def shown_cues(path: Path) -> list[tuple[Fraction, Fraction, str]]:
    """(start, end, text) of every subtitle cue a player shows (decoded; the empty samples MP4 puts between cues
    and packets before 0 are not shown)."""
    cues = []
    with av.open(str(path)) as c:
        for packet in c.demux(c.streams.subtitles[0]):
            if packet.size == 0 or packet.pts is None:
                continue
            for sub in packet.decode():
                text = bytes(getattr(sub, "ass", b"") or getattr(sub, "text", b"")).decode()
                if text and packet.pts >= 0:
                    start = packet.pts * packet.time_base
                    cues.append((start, start + packet.duration * packet.time_base, text.split(",")[-1]))
    return cues


def test_a_frames_range_keeps_the_subtitle_on_screen_at_its_start(
    up: Upscaler, clips: dict[str, Path], tmp_path: Path
) -> None:
    """--frames 10:20 (0.4-0.8 s) with a cue from 0.2 to 0.6 s, on screen at the range's start: it was dropped from
    Matroska, and written at -0.2 s in MP4 (never shown), which also moved the MP4's next cue ~0.1 s early. Now it
    starts at 0 and ends where it did (0.2 s in); the next cue keeps its time, moved by the range's start."""
    for name, suffix, expected in (
        ("srt", ".mkv", [(Fraction(0), Fraction(1, 5), "hello")]),
        (
            "tagged",
            ".mp4",
            [(Fraction(0), Fraction(1, 5), "hello"), (Fraction(3, 10), Fraction(1, 2), "world")],
        ),
    ):
        dst = tmp_path / f"range{suffix}"
        upscale_video(up, clips[name], dst, frames=(10, 20))
        assert shown_cues(dst) == expected, name
        with av.open(str(dst)) as c:
            assert all(p.pts >= 0 for p in c.demux(c.streams.subtitles[0]) if p.pts is not None)


def with_dispositions(src: Path, dst: Path) -> Path:
    """src (video, audio, subtitles) remuxed with its audio twice, and each track flagged as a player's menu shows
    them: the video and the first audio default, the second audio a commentary, the subtitles forced."""
    flags = av.stream.Disposition
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        v, a, s = inp.streams.video[0], inp.streams.audio[0], inp.streams.subtitles[0]
        made = [out.add_stream_from_template(t) for t in (v, a, a, s)]  # in this order: #0 to #3
        for stream, flag in zip(
            made, (flags.default, flags.default, flags.comment, flags.forced), strict=True
        ):
            stream.disposition = flag
        streams = {v.index: made[:1], a.index: made[1:3], s.index: made[3:]}
        for packet in inp.demux(v, a, s):
            if packet.size == 0:  # the demuxer's end-of-stream packets
                continue
            _mux_copies(av, out, packet, streams[packet.stream.index])
    return dst


def test_track_dispositions_are_kept(up: Upscaler, clips: dict[str, Path], tmp_path: Path) -> None:
    """Which track is the default, the commentary, the forced subtitles: all were lost (a Matroska output had no
    default track at all). Kept on every stream, copied or re-encoded (AAC into WebM becomes Opus)."""
    flags = av.stream.Disposition
    src = with_dispositions(clips["srt"], tmp_path / "flagged.mkv")
    with av.open(str(src)) as c:
        assert [s.disposition for s in c.streams] == [
            flags.default,
            flags.default,
            flags.comment,
            flags.forced,
        ]
    for suffix, expected in (
        (".mkv", [flags.default, flags.default, flags.comment, flags.forced]),
        (".webm", [flags.default, flags.default, flags(0)]),  # (WebM holds no SubRip and no commentary flag)
    ):
        dst = tmp_path / f"out{suffix}"
        upscale_video(up, src, dst, frames=(0, 5))
        with av.open(str(dst)) as c:
            assert [s.disposition for s in c.streams] == expected, suffix


@pytest.mark.parametrize(
    ("codec", "suffix", "crf", "allowed"),
    [
        ("h264", ".mp4", -1, "0 to 51"),  # was libx264's default, 23, without a word
        ("h264", ".mp4", 52, "0 to 51"),  # was 51, without a word
        ("h265", ".mkv", 100, "0 to 51"),  # these three were refused as a frame size the encoder cannot take
        (None, ".webm", 64, "0 to 63"),  # (vp9: .webm's default)
        ("av1", ".mkv", 70, "1 to 63"),
        ("av1", ".mkv", 0, "1 to 63"),  # was SVT-AV1's default, 35
    ],
)
def test_a_crf_outside_the_codecs_range_is_refused_before_any_work(
    up: Upscaler,
    clips: dict[str, Path],
    tmp_path: Path,
    codec: str | None,
    suffix: str,
    crf: int,
    allowed: str,
) -> None:
    """One line before any work, naming the codec's range; the end of the range nearest is taken."""
    name = codec or "vp9"
    with pytest.raises(EsrganError) as caught:
        upscale_video(up, clips["25"], tmp_path / f"out{suffix}", codec=codec, crf=crf)
    assert (
        str(caught.value) == f"--crf {crf} is outside {name}'s range, {allowed} (lower is better and bigger)"
    )
    assert not list(tmp_path.iterdir())  # no output, no work folder
    low, high = (int(v) for v in allowed.split(" to "))
    nearest = min(max(crf, low), high)  # the end of the range: taken
    done = upscale_video(up, clips["25"], tmp_path / f"out{suffix}", codec=codec, crf=nearest, frames=(0, 1))
    assert done.frames == 1


def test_an_encoder_refusal_blames_the_frame_size_only_where_it_is_the_reason(
    up: Upscaler, tmp_path: Path
) -> None:
    """x265 lists yuva420p and refuses it at any size, and refuses frames under 16x16: both were said as "cannot
    encode WxH video ... takes larger frames, or choose a smaller --outscale". The encoder is tried at 256x256 too
    (which every encoder here opens) to tell them apart."""
    src = make_clip(tmp_path / "clip.mp4", size=(32, 24), seconds=0.2, audio=False)
    with pytest.raises(VideoError) as caught:
        upscale_video(up, src, tmp_path / "alpha.mkv", codec="h265", pix_fmt="yuva420p")
    message = str(caught.value)
    assert message.startswith(
        f"{src}: h265 (libx265) cannot encode video with pixel format yuva420p, crf 20, at any size ("
    )
    assert message.endswith("); choose another --pix-fmt or --codec") and "128x96" not in message
    small = Upscaler(photo_preserving_rrdb(), device="cpu", precision="fp32", tile=0, outscale=0.25)
    with pytest.raises(VideoError) as caught:
        upscale_video(small, src, tmp_path / "small.mkv", codec="h265")
    message = str(caught.value)
    assert message.startswith(f"{src}: h265 (libx265) cannot encode 8x6 video (")
    assert message.endswith(
        "): too small for it; choose a larger --outscale (or --width / --height) or another --codec"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


@pytest.mark.parametrize(
    "frames", [(-5, 10), (-3, None), (5, 3), (0, 0), (3.5, 8), (2, 7.0), (True, 4), (0, 5, 9), "0:10"]
)
def test_a_frame_range_the_cli_would_refuse_is_refused_by_the_api(
    up: Upscaler, clips: dict[str, Path], tmp_path: Path, frames: Any
) -> None:
    """upscale_video's `frames` was not checked as --frames is: (-5, 10) wrote frames 0-9 and its summary said 15
    frames; (3.5, 8) was "ValueError: Unknown format code 'd'" and left its work folder. One line before anything."""
    with pytest.raises(EsrganError) as caught:
        upscale_video(up, clips["25"], tmp_path / "out.mkv", frames=frames)
    assert (
        str(caught.value)
        == f"frames wants (A, B) with whole numbers 0 <= A < B (B None: to the end), not {frames!r}"
    )
    assert not list(tmp_path.iterdir())  # no output, no work folder


def with_extras(src: Path, dst: Path, font: bytes) -> Path:
    """src's video twice (a second angle) and its audio, remuxed into Matroska with a font attached, as a
    Matroska with styled subtitles carries the fonts they need."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        v, a = inp.streams.video[0], inp.streams.audio[0]
        made = [out.add_stream_from_template(t) for t in (v, v, a)]
        out.add_attachment("Font.ttf", "application/x-truetype-font", font)
        streams = {v.index: made[:2], a.index: made[2:]}
        for packet in inp.demux(v, a):
            if packet.size == 0:
                continue
            _mux_copies(av, out, packet, streams[packet.stream.index])
    return dst


def test_attachments_and_other_video_streams_are_copied_or_said(
    up: Upscaler, clips: dict[str, Path], tmp_path: Path
) -> None:
    """A Matroska's font attachment and a second video stream were dropped without a word (subtitles the container
    cannot hold get a note). The font is copied into Matroska; what is dropped gets a note."""
    font = bytes(range(256)) * 4
    src = with_extras(clips["25"], tmp_path / "extras.mkv", font)
    mkv = upscale_video(up, src, tmp_path / "out.mkv", frames=(0, 5))
    assert mkv.notes == ["video stream #1 (h264) dropped: only one video stream is upscaled (#0)"]
    with av.open(str(tmp_path / "out.mkv")) as c:
        (attached,) = [s for s in c.streams if s.type == "attachment"]
        assert (attached.name, attached.mimetype, bytes(attached.data)) == (
            "Font.ttf",
            "application/x-truetype-font",
            font,
        )
    mp4 = upscale_video(up, src, tmp_path / "out.mp4", frames=(0, 5))
    assert mp4.notes == [
        "video stream #1 (h264) dropped: only one video stream is upscaled (#0)",
        "attachment #3 (Font.ttf) dropped: a mp4 file cannot hold attachments",
    ]


def test_an_error_names_the_source_once(clips: dict[str, Path], tiny_file: Path, tmp_path: Path) -> None:
    """The CLI puts the source before a message that does not name it: one naming only the output read
    "esrgan: error: clip.mp4: out/x.webm: a .webm file cannot hold h264 video; use .mkv"."""
    dst = tmp_path / "x.webm"
    r = cli("upscale", str(clips["25"]), "-o", str(dst), "--model", str(tiny_file), "--codec", "h264")
    assert r.returncode == 1
    assert (
        f"esrgan: error: {clips['25']}: cannot write {dst}: a .webm file cannot hold h264 video; use .mkv\n"
        in r.stderr
    )


@pytest.mark.parametrize("codec", ["vp9", "av1"])
def test_a_container_that_refuses_the_codec_only_at_its_header_is_said_before_any_work(
    up: Upscaler, clips: dict[str, Path], tmp_path: Path, codec: str
) -> None:
    """FFmpeg's .mov muxer takes a VP9 or AV1 stream and refuses it when it writes its header, at the final mux:
    every frame was upscaled first, then a bare "Invalid argument". Now one line before any work, as for the
    pairs add_stream refuses."""
    dst = tmp_path / "out.mov"
    with pytest.raises(
        VideoError, match=rf"cannot write {dst}: a \.mov file cannot hold {codec} video; use \.mkv"
    ):
        upscale_video(up, clips["25"], dst, codec=codec)
    assert not list(tmp_path.iterdir())


def test_a_crf_for_the_lossless_codec_is_refused(
    up: Upscaler, clips: dict[str, Path], tmp_path: Path
) -> None:
    """--crf with --codec ffv1 (lossless) was ignored without a word."""
    with pytest.raises(EsrganError, match="--crf does not apply to ffv1, which is lossless"):
        upscale_video(up, clips["25"], tmp_path / "out.mkv", codec="ffv1", crf=10)
    assert not list(tmp_path.iterdir())
