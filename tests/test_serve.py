"""esrgan serve over real HTTP on 127.0.0.1: uploads, progress, results, errors, limits, queue, cancel, safety.

The server runs in a thread (uvicorn on a socket we bind to a free port) with tiny RRDBNet models saved by
esrgan.checkpoints.save_model, so jobs take well under a second of CPU.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

from conftest import V1_MEMORY, UvicornThread, needs_memory_cgroups, tiny_rrdb

from esrgan import imageio, serve
from esrgan.checkpoints import save_model
from esrgan.imageio import ImageData, read_image, write_image

MAX_BYTES = 512 * 1024
TOKEN = "t0k3n-of-the-tests-" + uuid.uuid4().hex
MAX_PIXELS = 300_000


# --- a real server in a thread ----------------------------------------------------------------------------------------
class Server(UvicornThread):
    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.app = app
        self.service: serve.JobService = app.state.service

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            res = conn.getresponse()
            return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, **kw)
        return status, json.loads(data)

    def upload(self, name: str, data: bytes, **fields: Any) -> tuple[int, Any]:
        body, ctype = multipart(name, data, {k: str(v) for k, v in fields.items()})
        return self.json("POST", "/api/jobs", body=body, headers={"Content-Type": ctype})

    def wait(self, job_id: str, states: tuple[str, ...] = ("done", "error"), timeout: float = 120) -> dict:
        deadline = time.time() + timeout
        while True:
            status, job = self.json("GET", f"/api/jobs/{job_id}")
            if status == 404 and "gone" in states:
                return {"state": "gone"}
            assert status == 200, job
            if job["state"] in states:
                return job
            assert time.time() < deadline, f"job stuck in {job}"
            time.sleep(0.05)


def multipart(filename: str, data: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body as a browser sends it (the file name is sent verbatim)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for key, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    out.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    out.write(data)
    out.write(f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def encode(image: ImageData, suffix: str, tmp: Path) -> bytes:
    path = tmp / f"{uuid.uuid4().hex}{suffix}"
    write_image(path, image)
    return path.read_bytes()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("models") / "tiny-x4.safetensors", tiny_rrdb(0))


@pytest.fixture(scope="module")
def model_x2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("models") / "tiny-x2.safetensors", tiny_rrdb(1, scale=2))


@pytest.fixture(scope="module")
def server(model_file: Path, model_x2: Path) -> Iterator[Server]:
    app = serve.create_app(
        {"tiny-x4": model_file, "tiny-x2": model_x2},
        limits=serve.Limits(max_upload_bytes=MAX_BYTES, max_pixels=MAX_PIXELS),
    )
    srv = Server(app)
    yield srv
    srv.stop()


# --- upload, progress, result -----------------------------------------------------------------------------------------
def test_upload_progress_and_result(server: Server, photo: np.ndarray, model_file: Path) -> None:
    crop = np.ascontiguousarray(photo[40:104, 160:240])  # 64x80 of the real photo
    status, job = server.upload("astronaut.png", png(crop), model="tiny-x4", tile=32)
    assert status == 201, job
    assert (job["width"], job["height"], job["description"]) == (80, 64, "RGB, 8-bit PNG")

    seen = []
    deadline = time.time() + 120
    while job["state"] != "done":
        assert job["state"] in ("queued", "running"), job
        assert time.time() < deadline
        seen.append((job["tiles_done"], job["tiles_total"]))
        time.sleep(0.01)
        job = server.json("GET", f"/api/jobs/{job['id']}")[1]
    totals = {t for _, t in seen if t}
    assert totals == {job["tiles_total"]} and job["tiles_total"] > 1  # 32-pixel tiles over 64x80: a grid
    assert job["tiles_done"] == job["tiles_total"]

    status, headers, data = server.request("GET", job["result_url"])
    assert status == 200 and headers["content-type"] == "image/png"
    assert 'filename="astronaut_x4.png"' in headers["content-disposition"]
    result = np.asarray(Image.open(io.BytesIO(data)))
    assert result.shape == (256, 320, 3)

    # the same bytes the library produces for this input
    from esrgan.upscale import Upscaler

    direct = Upscaler.from_file(model_file, device="cpu", tile=32).upscale(crop)
    np.testing.assert_array_equal(result, direct)

    for url in (job["before_url"], job["after_url"]):
        status, headers, data = server.request("GET", url)
        assert status == 200 and headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(data)).size == (320, 256)


def animation(photo: np.ndarray, fmt: str, size: int = 64) -> bytes:
    """Three frames of the real photo, a pan and a pause (the third repeats the first), 100 / 200 / 100 ms, looping:
    a GIF, an APNG or an animated WebP (lossless) as a browser would get it."""
    crops = [photo[40 + 8 * k : 40 + 8 * k + size, 160 : 160 + size] for k in (0, 1, 0)]
    frames = [Image.fromarray(np.ascontiguousarray(c)) for c in crops]
    buf = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=[100, 200, 100], loop=0,
                   **extra)  # fmt: skip
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "ext", "media"), [("GIF", "gif", "image/gif"), ("PNG", "png", "image/png"),
                                                    ("WEBP", "webp", "image/webp")])  # fmt: skip
def test_an_animation_is_upscaled_frame_by_frame(
    server: Server, photo: np.ndarray, model_file: Path, tmp_path: Path, fmt: str, ext: str, media: str
) -> None:
    """An animated GIF, APNG or WebP uploaded to the page comes back as an animation of its format with every
    frame upscaled, its display times and plays, as `esrgan upscale` makes it (the same bytes' frames); progress
    counts frames; the "before" is the upload itself (the page shows it at the result's size). Until session 32
    the page upscaled the first frame only, into a still PNG."""
    from esrgan.animation import upscale_animation
    from esrgan.imageio import read_frames
    from esrgan.upscale import Upscaler

    data = animation(photo, fmt)
    status, job = server.upload(f"wave.{ext}", data, model="tiny-x4", tile=32)
    assert status == 201, job
    alpha = (
        " + alpha" if fmt == "WEBP" else ""
    )  # Pillow writes an animated WebP's frames with alpha (all opaque)
    assert job["description"] == f"RGB{alpha}, 8-bit {fmt}, animated: 3 frames" and job["frames"] == 3
    job = server.wait(job["id"])
    assert job["state"] == "done", job
    assert (job["tiles_done"], job["tiles_total"]) == (3, 3)
    assert (job["out_width"], job["out_height"]) == (256, 256) and job["download_name"] == f"wave_x4.{ext}"
    status, headers, result = server.request("GET", job["result_url"])
    assert status == 200 and headers["content-type"] == media
    status, headers, before = server.request("GET", job["before_url"])
    assert status == 200 and headers["content-type"] == media and before == data
    assert server.request("GET", job["after_url"])[2] == result

    # the CLI's way, on the same file with the same model and options
    (tmp_path / f"in.{ext}").write_bytes(data)
    (tmp_path / f"served.{ext}").write_bytes(result)
    up = Upscaler.from_file(model_file, device="auto", tile=32)
    upscale_animation(up, tmp_path / f"in.{ext}", tmp_path / f"cli.{ext}")
    with read_frames(tmp_path / f"served.{ext}") as served, read_frames(tmp_path / f"cli.{ext}") as cli:
        assert served.count == cli.count == 3 and served.plays == cli.plays == 0
        for (a, ms_a), (b, ms_b) in zip(served, cli, strict=True):
            assert a.pixels.shape == (256, 256, 3) and ms_a == ms_b
            np.testing.assert_array_equal(a.pixels, b.pixels)
    with read_frames(tmp_path / f"served.{ext}") as served:
        shown = [(image.pixels, ms) for image, ms in served]
    assert [ms for _, ms in shown] == [100, 200, 100]
    np.testing.assert_array_equal(shown[0][0], shown[2][0])  # the pause: the same frame again
    assert not np.array_equal(shown[0][0], shown[1][0])


def test_a_running_animation_is_cancelled_between_tiles_and_leaves_nothing(
    server: Server, photo: np.ndarray
) -> None:
    """Cancelling an animation's job while its first frame is computed stops it at the next tile: the job goes,
    with its folder (no half-written animation), and the queue goes on."""
    status, job = server.upload("long.gif", animation(photo, "GIF", size=256), model="tiny-x4", tile=32)
    assert status == 201, job
    job = server.wait(job["id"], ("running",))
    while server.json("GET", f"/api/jobs/{job['id']}")[1]["phase"] != "computing":
        time.sleep(0.01)
    status, body = server.json("DELETE", f"/api/jobs/{job['id']}")
    assert status == 202 and body["state"] == "cancelling" and body["tiles_done"] == 0
    assert server.wait(job["id"], ("gone",))["state"] == "gone"
    assert not (server.service.root / job["id"]).exists()
    status, still = server.upload(
        "still.png", png(np.ascontiguousarray(photo[40:104, 160:240])), model="tiny-x4"
    )
    assert status == 201 and still["description"] == "RGB, 8-bit PNG" and still["frames"] == 1
    assert server.wait(still["id"])["state"] == "done"


def test_default_tile_is_automatic_and_tiles_a_big_image(
    server: Server, photo: np.ndarray, model_x2: Path
) -> None:
    """The page's default tile (0, "auto") must tile as the CLI does, not run the image whole: 480x480 is above
    the CPU's largest automatic tile (352), so the automatic size splits it, whatever memory the machine has."""
    from esrgan.upscale import CPU_MAX_TILE, Upscaler

    crop = np.ascontiguousarray(photo[16:496, 16:496])
    assert max(crop.shape[:2]) > CPU_MAX_TILE and crop.shape[0] * crop.shape[1] <= MAX_PIXELS
    status, job = server.upload("big.png", png(crop), model="tiny-x2")  # no tile field: the page's default
    assert status == 201, job
    assert job["options"]["tile"] == 0  # the page's name for automatic
    job = server.wait(job["id"])
    assert job["state"] == "done", job
    assert job["tiles_total"] >= 4 and job["tiles_done"] == job["tiles_total"]  # a 2x2 grid at least

    # the same pixels as the CLI's automatic tiling
    up = Upscaler.from_file(model_x2, device="cpu")
    assert up.tile_size(*crop.shape[:2]) > 0
    status, _, data = server.request("GET", job["result_url"])
    assert status == 200
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), up.upscale(crop))


def test_events_stream_sends_job_snapshots(server: Server, photo_small: np.ndarray) -> None:
    status, job = server.upload("small.png", png(photo_small), model="tiny-x2")
    assert status == 201
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/api/events")
    res = conn.getresponse()
    assert res.status == 200 and res.getheader("content-type").startswith("text/event-stream")
    states = []
    while "done" not in states:
        line = res.readline().decode()
        if line.startswith("data: "):
            snap = {j["id"]: j for j in json.loads(line[6:])["jobs"]}
            states.append(snap[job["id"]]["state"])
    conn.close()
    assert states[-1] == "done"


def test_outscale_and_model_choice(server: Server, photo_small: np.ndarray) -> None:
    status, job = server.upload("small.png", png(photo_small), model="tiny-x2", outscale=3)
    assert status == 201, job
    job = server.wait(job["id"])
    assert job["state"] == "done", job
    assert (job["out_width"], job["out_height"]) == (120, 144)
    assert job["download_name"] == "small_x3.png"


def test_an_output_width_instead_of_a_scale(server: Server, photo_small: np.ndarray) -> None:
    """The page's "or width": the result that wide, the height by the aspect ratio, named as the CLI names it;
    with a scale too, or needing more than x16, a 400 at upload."""
    status, job = server.upload("small.png", png(photo_small), model="tiny-x2", width="100")
    assert status == 201, job
    job = server.wait(job["id"])
    assert job["state"] == "done", job
    assert (job["out_width"], job["out_height"]) == (100, 120) and job["download_name"] == "small_100w.png"
    assert job["options"]["width"] == 100
    status, body = server.upload("small.png", png(photo_small), model="tiny-x2", width="100", outscale=2)
    assert status == 400 and body["error"] == "give an output scale or an output width, not both"
    status, body = server.upload("small.png", png(photo_small), model="tiny-x2", width="1000")
    assert status == 400 and body["error"] == (
        "small.png: a 40x48 image within 1000xany would be scaled by 25: outside 0.25-16 (the range --outscale "
        "allows)"
    )


# --- formats as the CLI keeps them --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "suffix"),
    [("rgba8", ".png"), ("grey16", ".png"), ("rgb16", ".png"), ("grey8", ".png"), ("rgb8", ".jpg")],
)
def test_result_keeps_format(
    server: Server, photo_small: np.ndarray, tmp_path: Path, kind: str, suffix: str
) -> None:
    rgb = photo_small
    grey = rgb.mean(axis=2).astype(np.uint8)
    alpha = np.linspace(0, 255, rgb.shape[1], dtype=np.uint8)[None, :].repeat(rgb.shape[0], 0)
    image = {
        "rgba8": ImageData(pixels=rgb, alpha=alpha),
        "grey16": ImageData(pixels=grey[:, :, None].astype(np.uint16) * 257, bit_depth=16),
        "rgb16": ImageData(pixels=rgb.astype(np.uint16) * 257, bit_depth=16),
        "grey8": ImageData(pixels=grey[:, :, None]),
        "rgb8": ImageData(pixels=rgb, format="JPEG"),
    }[kind]
    status, job = server.upload(f"in{suffix}", encode(image, suffix, tmp_path), model="tiny-x2")
    assert status == 201, job
    job = server.wait(job["id"])
    assert job["state"] == "done", job
    status, headers, data = server.request("GET", job["result_url"])
    assert status == 200 and headers["content-type"] == ("image/jpeg" if suffix == ".jpg" else "image/png")
    out_path = tmp_path / job["download_name"]
    out_path.write_bytes(data)
    out = read_image(out_path)
    assert out.format == ("JPEG" if suffix == ".jpg" else "PNG")
    assert (out.height, out.width) == (image.height * 2, image.width * 2)
    assert out.channels == image.channels
    assert out.bit_depth == image.bit_depth
    assert (out.alpha is None) == (image.alpha is None)


@pytest.mark.parametrize("kind", ["rgb8", "grey8", "rgb16-tif", "rgba8"])
def test_previews_are_the_bicubic_input_and_the_result_in_8_bits(
    server: Server, photo: np.ndarray, tmp_path: Path, kind: str
) -> None:
    """The page's previews, made in bands of rows since session 27 (made whole, in float32, they took ~20 bytes a
    sample: a 12 MP photo at x4 needed ~12 GB and was refused where the CLI needs 1-2): "before" is MATLAB's bicubic
    of the input at the result's size, "after" the result itself or, for a TIFF, its 8-bit copy. 150 rows at x2:
    several bands of 64 rows and a short last one."""
    from esrgan.imageio import from_float, to_float
    from esrgan.resize import imresize_np

    rgb = np.ascontiguousarray(photo[100:250, 200:270])
    grey = np.ascontiguousarray(rgb.mean(axis=2).astype(np.uint8)[:, :, None])
    alpha = np.linspace(0, 255, rgb.shape[1], dtype=np.uint8)[None, :].repeat(rgb.shape[0], 0)
    image, suffix = {
        "rgb8": (ImageData(pixels=rgb), ".png"),
        "grey8": (ImageData(pixels=grey), ".png"),
        "rgb16-tif": (
            ImageData(pixels=rgb.astype(np.uint16) * 257 + 100, bit_depth=16, format="TIFF"),
            ".tif",
        ),
        "rgba8": (ImageData(pixels=rgb, alpha=alpha), ".png"),
    }[kind]
    status, job = server.upload(f"in{suffix}", encode(image, suffix, tmp_path), model="tiny-x2")
    assert status == 201, job
    job = server.wait(job["id"])
    assert job["state"] == "done", job

    def fetch(url: str) -> np.ndarray:
        status, headers, data = server.request("GET", url)
        assert status == 200 and headers["content-type"] == "image/png", url
        return np.asarray(Image.open(io.BytesIO(data)))

    size = (300, 140)
    planes = image.pixels if image.alpha is None else np.dstack([image.pixels, image.alpha])
    expected = from_float(np.clip(imresize_np(to_float(planes), size=size), 0.0, 1.0), 8)
    before = fetch(job["before_url"]).reshape(expected.shape)
    apart = np.abs(before.astype(int) - expected)
    assert apart.max() <= 1 and (apart > 0).mean() < 1e-3, (apart.max(), (apart > 0).mean())

    status, _, data = server.request("GET", job["result_url"])
    result_path = tmp_path / job["download_name"]
    result_path.write_bytes(data)
    result = read_image(result_path)
    assert (result.height, result.width) == size and result.format == (
        "TIFF" if kind == "rgb16-tif" else "PNG"
    )
    after = fetch(job["after_url"])
    if kind == "rgb16-tif":  # the browser's copy of a 16-bit TIFF: the same pixels in 8 bits
        np.testing.assert_array_equal(after, from_float(to_float(result.pixels), 8))
    else:  # a PNG: the result itself
        np.testing.assert_array_equal(after, np.asarray(Image.open(result_path)))


def test_a_result_too_wide_for_its_format_comes_back_as_png(
    server: Server, photo: np.ndarray, tmp_path: Path
) -> None:
    """A 4200-pixel-wide WebP at x4 would be 16800 wide, past WebP's 16383: the page chooses no format, so the
    result is a PNG (named so) instead of an encoder error at the end of the work; one that fits stays WebP."""
    strip = np.ascontiguousarray(np.tile(photo[200:203], (1, 9, 1))[:, :4200])
    for width, ext in [(4200, "png"), (4000, "webp")]:
        data = encode(ImageData(pixels=np.ascontiguousarray(strip[:, :width])), ".webp", tmp_path)
        status, job = server.upload("strip.webp", data, model="tiny-x2", outscale=4)
        assert status == 201, job
        job = server.wait(job["id"])
        assert job["state"] == "done", job
        assert job["download_name"] == f"strip_x4.{ext}" and job["out_width"] == width * 4
        status, headers, body = server.request("GET", job["result_url"])
        assert status == 200 and headers["content-type"] == f"image/{ext}"
        with Image.open(io.BytesIO(body)) as im:
            assert im.format == ext.upper() and im.size == (width * 4, 12)


# --- errors and limits --------------------------------------------------------------------------------------------------
def test_bad_files_get_a_clear_message_and_others_go_on(server: Server, photo_small: np.ndarray) -> None:
    status, body = server.upload("holiday.png", b"this is not an image\n" * 10, model="tiny-x2")
    assert status == 400
    assert body["error"] == "holiday.png: not an image (or a format Pillow cannot read)"
    truncated = png(photo_small)[:300]
    status, body = server.upload("cut.png", truncated, model="tiny-x2")
    assert status == 400 and body["error"].startswith("cut.png: ") and "truncated" in body["error"]
    assert str(server.service.root) not in body["error"]  # no server paths in messages

    status, job = server.upload("fine.png", png(photo_small), model="tiny-x2")
    assert status == 201
    assert server.wait(job["id"])["state"] == "done"


def test_bad_options_are_refused(server: Server, photo_small: np.ndarray) -> None:
    data = png(photo_small)
    for fields, words in [
        ({"model": "nope"}, "unknown model"),
        ({"model": "tiny-x2", "precision": "fp64"}, "unknown precision"),
        ({"model": "tiny-x2", "outscale": "-1"}, "outscale"),
        ({"model": "tiny-x2", "tile": "99999"}, "tile"),
        ({"model": "tiny-x2", "tile": "abc"}, "integer"),
    ]:
        status, body = server.upload("a.png", data, **fields)
        assert status == 400 and words in body["error"], (fields, body)
    status, body = server.json("POST", "/api/jobs", body=b"", headers={"Content-Type": "multipart/form-data"})
    assert status == 400


def test_too_many_bytes_declared_or_streamed(server: Server) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (450, 450, 3), dtype=np.uint8)
    data = png(noise)  # 600 KB, over the 512 KB limit, with 202,500 pixels (under the pixel limit)
    assert len(data) > MAX_BYTES
    folders = set(server.service.root.iterdir())
    status, body = server.upload("noise.png", data)
    assert status == 413 and body["error"] == "file too large: the limit is 0.5 MB"

    # chunked: no Content-Length to check up front, so the cap must hold while the body streams in
    body_bytes, ctype = multipart("noise.png", data, {})
    chunks = (body_bytes[i : i + 65536] for i in range(0, len(body_bytes), 65536))
    status, _, raw = server.request("POST", "/api/jobs", body=chunks, headers={"Content-Type": ctype})
    assert status == 413 and b"file too large" in raw
    assert set(server.service.root.iterdir()) == folders  # nothing kept


def test_too_many_pixels_refused_from_the_header(server: Server) -> None:
    flat = np.full((600, 600), 128, dtype=np.uint8)  # 360,000 pixels in a 1 KB file
    data = png(flat)
    assert len(data) < 5000
    status, body = server.upload("flat.png", data)
    assert status == 413
    assert body["error"].startswith("flat.png: 600x600 = 360000 pixels exceeds the limit of 300000")


# --- queue and cancel ---------------------------------------------------------------------------------------------------
def test_queue_order_and_cancel(server: Server, photo: np.ndarray, photo_small: np.ndarray) -> None:
    big = png(np.ascontiguousarray(photo[:256, :256]))  # 32-pixel tiles with overlap: hundreds of tiles
    status, a = server.upload("a.png", big, model="tiny-x4", tile=32)
    assert status == 201
    _, b = server.upload("b.png", png(photo_small), model="tiny-x2")
    _, c = server.upload("c.png", png(photo_small), model="tiny-x2")
    a = server.wait(a["id"], ("running",))
    assert a["position"] is None
    assert server.json("GET", f"/api/jobs/{b['id']}")[1]["position"] == 1
    assert server.json("GET", f"/api/jobs/{c['id']}")[1]["position"] == 2

    # cancel a queued job: gone at once, the others keep their order
    status, body = server.json("DELETE", f"/api/jobs/{c['id']}")
    assert status == 202 and body["state"] == "removed"
    assert server.json("GET", f"/api/jobs/{c['id']}")[0] == 404
    assert server.json("GET", f"/api/jobs/{b['id']}")[1]["position"] == 1

    # cancel the running job once it has done a tile: it stops at a tile boundary and disappears
    while (a := server.json("GET", f"/api/jobs/{a['id']}")[1])["tiles_done"] < 1:
        time.sleep(0.01)
    status, body = server.json("DELETE", f"/api/jobs/{a['id']}")
    assert status == 202 and body["state"] == "cancelling"
    assert body["tiles_done"] < body["tiles_total"]
    assert server.wait(a["id"], ("gone",))["state"] == "gone"
    assert server.request("GET", f"/api/jobs/{a['id']}/result")[0] == 404
    assert not (server.service.root / a["id"]).exists()

    # the queue goes on
    assert server.wait(b["id"])["state"] == "done"
    assert server.json("DELETE", f"/api/jobs/{c['id']}")[0] == 404


def test_finished_job_removed_with_its_files(server: Server, photo_small: np.ndarray) -> None:
    _, job = server.upload("x.png", png(photo_small), model="tiny-x2")
    job = server.wait(job["id"])
    folder = server.service.root / job["id"]
    assert (folder / "result.png").is_file()
    assert server.json("DELETE", f"/api/jobs/{job['id']}")[0] == 202
    assert not folder.exists()
    assert server.request("GET", job["result_url"])[0] == 404


def test_zip_of_all_results(server: Server, photo_small: np.ndarray) -> None:
    for job in server.json("GET", "/api/jobs")[1]["jobs"]:
        server.json("DELETE", f"/api/jobs/{job['id']}")
    assert server.request("GET", "/api/results.zip")[0] == 404
    ids = [server.upload("same.png", png(photo_small), model="tiny-x2")[1]["id"] for _ in range(2)]
    for jid in ids:
        assert server.wait(jid)["state"] == "done"
    status, headers, data = server.request("GET", "/api/results.zip")
    assert status == 200 and headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["same_x2 (2).png", "same_x2.png"]
        assert Image.open(zf.open("same_x2.png")).size == (80, 96)


# --- safety -------------------------------------------------------------------------------------------------------------
def test_traversal_in_file_names_never_reaches_the_disk(server: Server, photo_small: np.ndarray) -> None:
    outside = server.service.root.parent  # where "../x" from the result folder would land
    targets = ["etc", "windows", "x.png", "passwd", "win.ini", "..\\..\\windows\\win.ini"]
    before = {t: (outside / t).exists() for t in targets}
    for name in ["../../etc/passwd", "..\\..\\windows\\win.ini", "/etc/passwd", "a/../../../x.png"]:
        status, job = server.upload(name, png(photo_small), model="tiny-x2")
        assert status == 201, job
        assert "/" not in job["name"] and "\\" not in job["name"] and not job["name"].startswith(".")
        job = server.wait(job["id"])
        assert job["state"] == "done"
        _, headers, _ = server.request("GET", job["result_url"])
        assert "/" not in headers["content-disposition"].split("filename=")[1]
    assert {t: (outside / t).exists() for t in targets} == before  # nothing written beside the result folder
    for path in server.service.root.rglob("*"):
        assert path.resolve().is_relative_to(server.service.root)
        assert (
            path.name in ("input", "result.png", "before.png")
            or path.is_dir()
            or path == server.service.root / ".lock"
        )


@pytest.mark.parametrize(
    "path",
    [
        "/api/jobs/../../../../etc/passwd",
        "/api/jobs/..%2F..%2F..%2Fetc%2Fpasswd/result",
        "/api/jobs/%2e%2e/result",
        "/api/jobs/..%5C..%5Cetc%5Cpasswd/result",
        "/static/../serve.py",
        "/static/..%2Fserve.py",
        "/static/%2e%2e%2fserve.py",
        "/static/index.html/../../serve.py",
        "/api/jobs/input/result",
    ],
)
def test_traversal_in_urls_is_404(server: Server, path: str) -> None:
    status, _, data = server.request("GET", path)
    assert status == 404
    assert b"root:" not in data and b"def create_app" not in data


def test_cross_origin_writes_and_foreign_hosts_are_refused(server: Server, photo_small: np.ndarray) -> None:
    body, ctype = multipart("a.png", png(photo_small), {"model": "tiny-x2"})
    status, _, raw = server.request(
        "POST", "/api/jobs", body=body, headers={"Content-Type": ctype, "Origin": "http://evil.example"}
    )
    assert status == 403 and b"cross-origin" in raw
    status, _, _ = server.request("GET", "/api/config", headers={"Host": "evil.example"})
    assert status == 400  # DNS rebinding: only loopback names are served
    origin = f"http://127.0.0.1:{server.port}"
    status, _, _ = server.request(
        "POST", "/api/jobs", body=body, headers={"Content-Type": ctype, "Origin": origin}
    )
    assert status == 201


def test_page_and_config(server: Server) -> None:
    status, headers, data = server.request("GET", "/")
    assert status == 200 and b'<script src="/static/app.js"' in data
    assert "default-src 'self'" in headers["content-security-policy"]
    for name, mime in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        status, headers, _ = server.request("GET", f"/static/{name}")
        assert status == 200 and headers["content-type"].startswith(mime)
    status, config = server.json("GET", "/api/config")
    assert [m["name"] for m in config["models"]] == ["tiny-x4", "tiny-x2"]
    assert config["max_upload_bytes"] == MAX_BYTES and config["max_pixels"] == MAX_PIXELS


# --- the service without HTTP: expiry and shutdown ---------------------------------------------------------------------
def test_results_expire_and_shutdown_deletes_everything(model_x2: Path, photo_small: np.ndarray) -> None:
    service = serve.JobService(serve.file_models({"m": model_x2}), keep_seconds=0.5)
    try:
        job_id, folder = service.new_folder()
        (folder / "input").write_bytes(png(photo_small))
        service.submit(job_id, folder, "p.png", service.parse_options({}))
        deadline = time.time() + 60
        while (job := service.get(job_id)) is not None and job["state"] != "done":
            assert time.time() < deadline
            time.sleep(0.05)
        while service.get(job_id) is not None:  # expired after keep_seconds, folder removed
            assert time.time() < deadline
            time.sleep(0.05)
        assert not folder.exists()
    finally:
        service.close()
    assert not service.root.exists()


def test_shutdown_waits_for_the_running_tile_and_leaves_nothing(
    tmp_path: Path, photo: np.ndarray, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while a job computes: close() returns only once the worker has stopped (at the end of its tile), then
    deletes the job folders; it used to give up after 30 s and delete the folder under a running job."""
    wide = save_model(tmp_path / "wide.safetensors", tiny_rrdb(2, num_feat=64, num_block=4, num_grow=32))
    service = serve.JobService(serve.file_models({"m": wide}))
    job_id, folder = service.new_folder()
    (folder / "input").write_bytes(png(photo))  # 512x512 -> 2048x2048 in one tile: seconds on 2 cores
    service.submit(job_id, folder, "p.png", service.parse_options({"tile": "512", "precision": "fp32"}))
    deadline = time.time() + 60
    while (job := service.get(job_id)) is not None and job["state"] != "running":
        assert time.time() < deadline
        time.sleep(0.01)
    monkeypatch.setattr(serve, "QUIET_STOP_S", 0.0)  # say it at once: the tile is still being computed
    with caplog.at_level(logging.WARNING):
        service.close()
    assert "stopping once the tile being computed is done" in caplog.text
    assert not service._worker.is_alive()
    assert not service.root.exists()
    assert service.get(job_id) is None  # cancelled, not reported as failed


def test_is_loopback() -> None:
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("192.168.1.5")


def test_safe_name() -> None:
    assert serve.safe_name("../../etc/passwd") == "passwd"
    assert serve.safe_name("C:\\Users\\me\\photo 1.JPG") == "photo 1.JPG"
    assert serve.safe_name("..") == "image"
    assert serve.safe_name("") == "image"
    assert serve.safe_name("é<script>.png") == "é_script_.png"  # letters of any script are kept (issue 19)


# --- issue 19: options checked at upload, progress phases, precision used, messages, names ---------------------------
def test_out_of_range_options_are_refused_at_upload_with_the_clis_limits(
    server: Server, photo_small: np.ndarray
) -> None:
    """tile 1-16 used to be queued and fail at run time, tile 17 made 2,304 tiles of a 64x64 image, outscale 0.001
    gave a 1x1 "done" result: all are refused at upload, naming the range, which is the CLI's."""
    from esrgan import upscale

    limits = (serve.MIN_TILE, serve.MAX_TILE, serve.MIN_OUTSCALE, serve.MAX_OUTSCALE)
    assert limits == (upscale.MIN_TILE, upscale.MAX_TILE, upscale.MIN_OUTSCALE, upscale.MAX_OUTSCALE)
    data = png(photo_small)
    before = len(server.json("GET", "/api/jobs")[1]["jobs"])
    for fields, message in [
        ({"tile": "8"}, "tile must be 0 (automatic) or 32-4096, not 8"),
        ({"tile": "16"}, "tile must be 0 (automatic) or 32-4096, not 16"),
        ({"tile": "17"}, "tile must be 0 (automatic) or 32-4096, not 17"),
        ({"tile": "5000"}, "tile must be 0 (automatic) or 32-4096, not 5000"),
        ({"outscale": "0.001"}, "outscale must be 0.25-16, not 0.001"),
        ({"outscale": "17"}, "outscale must be 0.25-16, not 17"),
        ({"outscale": "nan"}, "outscale must be 0.25-16, not nan"),
    ]:
        status, body = server.upload("a.png", data, model="tiny-x2", **fields)
        assert (status, body) == (400, {"error": message}), fields
    assert len(server.json("GET", "/api/jobs")[1]["jobs"]) == before  # nothing queued
    config = server.json("GET", "/api/config")[1]
    assert (config["min_tile"], config["max_tile"], config["min_outscale"], config["max_outscale"]) == limits


def test_a_job_says_what_it_is_doing_and_in_which_precision(server: Server, photo_small: np.ndarray) -> None:
    """The phases (model loading, computing, writing) with their times, the tiles known from the start, and the
    precision really used: fp16 asked on a CPU is reported as what it became (bf16 or fp32), not as fp16."""
    import warnings

    from esrgan.device import precision_name, resolve_precision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = precision_name(resolve_precision("fp16", torch.device("cpu")))
    assert expected != "fp16"
    data = png(photo_small)
    _, first = server.upload("one.png", data, model="tiny-x2", precision="fp16", outscale=1.5)
    first = server.wait(first["id"])
    assert first["state"] == "done", first
    assert [p["phase"] for p in first["phases"]] == ["loading", "computing", "writing"]
    times = [p["at"] for p in first["phases"]]
    assert times == sorted(times) and times[-1] <= first["seconds"]
    assert first["precision"] == expected and first["options"]["precision"] == "fp16"
    assert (first["tiles_done"], first["tiles_total"]) == (1, 1)  # 48x40: one tile
    assert first["phase"] == "" and first["elapsed"] is None
    # the same options again: the loaded model is reused, so no loading phase
    _, second = server.upload("two.png", data, model="tiny-x2", precision="fp16", outscale=1.5)
    second = server.wait(second["id"])
    assert [p["phase"] for p in second["phases"]] == ["computing", "writing"]
    assert second["precision"] == expected


def test_a_header_over_pillows_own_limit_is_a_413_with_our_message(server: Server) -> None:
    """A header claiming 200 megapixels (over Pillow's hard limit of ~179) got Pillow's "could be decompression
    bomb DOS attack" text and a 400; it is our limit message, naming the flag, and a 413."""
    status, body = server.upload("huge.ppm", b"P6\n20000 10000\n255\n" + bytes(64))
    assert status == 413
    assert body["error"] == (
        "huge.ppm: 200000000 pixels exceeds the limit of 300000 (0.286 megapixels, a decompression-bomb guard; "
        "--max-megapixels raises it)"
    )


def test_unicode_names_are_kept_and_only_unsafe_characters_replaced(
    server: Server, photo_small: np.ndarray
) -> None:
    from urllib.parse import quote

    assert serve.safe_name("Größe 東京.png") == "Größe 東京.png"
    assert serve.safe_name("Gro\u0308sse.png") == "Grösse.png"  # decomposed umlaut: NFC-normalised, kept
    assert serve.safe_name("C:\\Users\\me\\photo<1>.png") == "photo_1_.png"
    assert serve.safe_name("../../etc/passwd") == "passwd"
    assert serve.safe_name("holiday\u202egnp.exe") == "holiday_gnp.exe"  # the right-to-left override
    assert serve.safe_name('a"b\x00c\nd.png') == "a_b_c_d.png"
    status, job = server.upload("Größe 東京.png", png(photo_small), model="tiny-x2")
    assert status == 201 and job["name"] == "Größe 東京.png", job
    job = server.wait(job["id"])
    assert job["download_name"] == "Größe 東京_x2.png"
    status, headers, _ = server.request("GET", job["result_url"])
    assert (
        status == 200 and f"filename*=utf-8''{quote('Größe 東京_x2.png')}" in headers["content-disposition"]
    )


# --- uploads at the job cap, decodes one at a time (session-18 audit) ------------------------------------------------
class DecodeSpy:
    """esrgan.imageio.read_image as uploads call it (the worker's decodes of queued jobs pass through uncounted):
    counts the calls and the most running at once. The first call waits until `hold()` is false (a minute at most),
    so that the test can see what other uploads do meanwhile."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold: Callable[[], bool] = lambda: False) -> None:
        self.real = imageio.read_image
        self.hold = hold
        self.calls = self.running = self.peak = 0
        self.entered = threading.Event()
        self.lock = threading.Lock()
        monkeypatch.setattr(imageio, "read_image", self)

    def __call__(self, path: Path, **kw: Any) -> ImageData:
        if threading.current_thread().name == "esrgan-serve-worker":
            return self.real(path, **kw)
        with self.lock:
            self.calls += 1
            self.running += 1
            self.peak = max(self.peak, self.running)
            first = self.calls == 1
        try:
            if first:
                self.entered.set()
                deadline = time.time() + 60
                while self.hold() and time.time() < deadline:
                    time.sleep(0.01)
            return self.real(path, **kw)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture()
def make_server(model_x2: Path) -> Iterator[Callable[..., Server]]:
    """Servers of the tiny x2 model with the test limits and the Limits fields given; stopped after the test."""
    made: list[Server] = []

    def make(*, host: str | None = None, **limits: float) -> Server:
        limits = {"max_upload_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS, **limits}
        more = {} if host is None else {"host": host}  # the address `esrgan serve --host` was given
        app = serve.create_app({"tiny-x2": model_x2}, limits=serve.Limits(**limits), **more)
        made.append(Server(app))
        return made[-1]

    yield make
    for srv in made:
        srv.stop()


def upload_in_thread(srv: Server, name: str, data: bytes) -> tuple[threading.Thread, list[tuple[int, Any]]]:
    answers: list[tuple[int, Any]] = []
    thread = threading.Thread(target=lambda: answers.append(srv.upload(name, data)), daemon=True)
    thread.start()
    return thread, answers


def test_uploads_at_the_job_cap_are_refused_before_decoding(
    make_server: Callable[..., Server], photo_small: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the cap, uploads were fully decoded (~450 MB and seconds each for a 4096x4096 16-bit PNG) before the
    503: a file that is no image, or one over the pixel limit, gets the cap's 503, not the decoder's 400 or 413."""
    srv = make_server(max_jobs=2)
    for _ in range(2):
        status, job = srv.upload("ok.png", png(photo_small))
        assert status == 201, job
        assert srv.wait(job["id"])["state"] == "done"
    spy = DecodeSpy(monkeypatch)
    folders = set(srv.service.root.iterdir())
    flat = png(np.full((600, 600), 128, dtype=np.uint8))  # over MAX_PIXELS: a 413 if its header were read
    for name, data in [
        ("junk.png", b"not an image\n" * 100),
        ("flat.png", flat),
        ("ok.png", png(photo_small)),
    ]:
        status, body = srv.upload(name, data)
        assert (status, body) == (503, {"error": "too many jobs (2): remove finished ones first"}), name
    assert spy.calls == 0  # nothing decoded
    assert set(srv.service.root.iterdir()) == folders  # nothing stored

    # a place again: the same file is decoded now, and refused for what it is
    job_id = srv.json("GET", "/api/jobs")[1]["jobs"][0]["id"]
    assert srv.json("DELETE", f"/api/jobs/{job_id}")[0] == 202
    status, body = srv.upload("junk.png", b"not an image\n" * 100)
    assert (status, body["error"]) == (400, "junk.png: not an image (or a format Pillow cannot read)")
    assert spy.calls == 1


def test_an_upload_in_flight_holds_its_place_under_the_cap(
    make_server: Callable[..., Server], photo_small: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uploads arriving together each passed the cap's check and were all decoded; the one free place now goes to
    the first upload while it decodes, and the next is refused unread."""
    srv = make_server(max_jobs=1)
    release = threading.Event()
    spy = DecodeSpy(monkeypatch, hold=lambda: not release.is_set())
    thread, answers = upload_in_thread(srv, "first.png", png(photo_small))
    try:
        assert spy.entered.wait(60), "the first upload was never decoded"
        status, body = srv.upload("junk.png", b"not an image\n" * 100)
        assert (status, body) == (503, {"error": "too many jobs (1): remove finished ones first"})
        assert spy.calls == 1
    finally:
        release.set()
        thread.join(60)
    assert answers and answers[0][0] == 201, answers
    assert srv.wait(answers[0][1]["id"])["state"] == "done"


def test_concurrent_uploads_decode_one_at_a_time(
    make_server: Callable[..., Server], photo_small: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing bounded the decodes of concurrent uploads (6 at once held 2.6 GB): they take turns, and the ones
    waiting for a turn are accepted, not refused. The first decode is held until the other two wait for their turn
    (or, as before the fix, decode beside it)."""
    srv = make_server()
    decodes = getattr(srv.app.state, "decodes", None)

    def others_arrived() -> bool:
        waiting = decodes.statistics().tasks_waiting if decodes is not None else 0
        return waiting < 2 and spy.running < 2

    spy = DecodeSpy(monkeypatch, hold=others_arrived)
    uploads = [upload_in_thread(srv, f"{i}.png", png(photo_small)) for i in range(3)]
    for thread, _ in uploads:
        thread.join(120)
    assert [answers[0][0] for _, answers in uploads] == [201, 201, 201]
    assert spy.calls == 3 and spy.peak == 1
    for _, answers in uploads:
        assert srv.wait(answers[0][1]["id"])["state"] == "done"


# --- the server's log and Ctrl-C, as `esrgan serve` runs (session-18 audit) ------------------------------------------
class ServerProcess:
    """`esrgan serve` as a user runs it, in its own process; its stderr (the server's log) goes to a file."""

    def __init__(
        self,
        model: Path,
        tmp: Path,
        cgroup: Path | None = None,
        *,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        token: str | None = TOKEN,
        args: tuple[str, ...] = (),
        hangup: Any = signal.SIG_DFL,
    ) -> None:
        """cgroup: a v1 memory cgroup folder the server joins before Python starts. host: its --host; env: more
        environment (TMPDIR: where it makes its folder). token: given as ESRGAN_SERVE_TOKEN and sent by request()
        (None: neither; the server then keeps its own in ESRGAN_HOME). args: more options. stdout (the address the
        server prints) goes to self.out. hangup: SIGHUP's disposition the server starts with, as a terminal gives it
        (SIG_DFL) whatever this test inherited (under nohup: ignored), or SIG_IGN as nohup gives it."""
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:  # a free port
            probe.bind((host, 0))
            self.port = probe.getsockname()[1]
        self.host = host
        self.token = token
        self.log = tmp / "serve.log"
        self.out = tmp / "serve.out"
        command = [
            sys.executable,
            "-m",
            "esrgan.cli",
            "serve",
            "--host",
            host,
            "--port",
            str(self.port),
            "--model-file",
            f"m={model}",
            *args,
        ]
        # faulthandler: a server that does not stop is sent SIGABRT, and its threads' stacks go to the log (stop())
        environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", **(env or {})}
        environ.pop(serve.TOKEN_ENV, None)
        if token is not None:
            environ[serve.TOKEN_ENV] = token
        if cgroup is not None:
            quoted = " ".join(f"'{a}'" for a in command)
            command = ["sh", "-c", f"echo $$ > {cgroup / 'cgroup.procs'} && exec {quoted}"]
        with open(self.log, "wb") as err, open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=err,
                env=environ,
                preexec_fn=lambda: signal.signal(signal.SIGHUP, hangup),
            )
        deadline = time.time() + 120
        while True:
            assert self.proc.poll() is None, f"esrgan serve exited: {self.log.read_text()}"
            assert time.time() < deadline, "esrgan serve did not start"
            try:
                self.request("GET", "/api/config")  # any answer: it is up (the test checks what it says)
                break
            except OSError:
                time.sleep(0.1)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        ctype: str = "",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        status, _, data = self.exchange(method, path, body, ctype, headers)
        return status, data

    def exchange(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        ctype: str = "",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request (with the token unless `headers` are given): status, headers (lower-case names), body."""
        if headers is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(
                method, path, body=body, headers={**headers, **({"Content-Type": ctype} if ctype else {})}
            )
            res = conn.getresponse()
            return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
        finally:
            conn.close()

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: (exit status, the server's log)."""
        return self.stop(signal.SIGINT)

    def stop(self, signum: int, timeout: float = 60) -> tuple[int, str]:
        """Send `signum` and wait for the server to end: (exit status, its log). One that is still running after
        `timeout` fails the test with every thread's stack (SIGABRT to its faulthandler; once in CI a server sent
        SIGHUP right after an upload did not stop within 60 s, and nothing said where it was)."""
        self.proc.send_signal(signum)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            raise AssertionError(
                f"esrgan serve still ran {timeout:g} s after {signal.Signals(signum).name}; its threads:\n"
                + self.log.read_text()[-12000:]
            ) from None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return rc, self.log.read_text()


@pytest.fixture()
def server_process(model_x2: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(model_x2, tmp_path)
    yield proc
    if proc.proc.poll() is None:
        proc.proc.kill()
        proc.proc.wait()


def test_client_mistakes_leave_no_traceback_in_the_servers_log(
    server_process: ServerProcess, photo_small: np.ndarray
) -> None:
    """A client that disconnected mid-upload logged "Exception in ASGI application" and ~45 lines of traceback
    (ClientDisconnect); a malformed multipart body logged python-multipart's "Expected boundary character"."""
    srv = server_process
    body = b'--B\r\nContent-Disposition: form-data; name="file"; filename="r.bin"\r\n\r\n' + os.urandom(
        100_000
    )
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as sock:
            sock.sendall(
                f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {srv.token}\r\n".encode()
                + b"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 900000\r\n\r\n"
                + body
            )  # 100 KB of the 900 KB announced, then gone
    status, answer = srv.request("POST", "/api/jobs", b"xx" * 100, "multipart/form-data; boundary=B")
    assert status == 400 and b"bad upload" in answer

    # still serving, and the abandoned uploads hold no place and left nothing
    data, ctype = multipart("ok.png", png(photo_small), {})
    status, answer = srv.request("POST", "/api/jobs", data, ctype)
    assert status == 201, answer
    rc, log = srv.interrupt()
    assert rc == 130, log
    for noise in ("Traceback", "Exception in ASGI application", "ClientDisconnect", "Expected boundary"):
        assert noise not in log, log


def test_warnings_in_the_servers_log_are_one_line_each(
    server_process: ServerProcess, photo_small: np.ndarray
) -> None:
    """fp16 asked on a CPU: the log showed Python's raw warning, "/.../upscale.py:184: PrecisionWarning: ..." and
    the source line under it; the CLI's form is one line, "esrgan: warning: ..."."""
    srv = server_process
    data, ctype = multipart("ok.png", png(photo_small), {"precision": "fp16"})
    status, answer = srv.request("POST", "/api/jobs", data, ctype)
    assert status == 201, answer
    job_id = json.loads(answer)["id"]
    deadline = time.time() + 120
    while json.loads(srv.request("GET", f"/api/jobs/{job_id}")[1])["state"] not in ("done", "failed"):
        assert time.time() < deadline, "the job did not finish"
        time.sleep(0.1)
    rc, log = srv.interrupt()
    assert rc == 130, log
    warned = [line for line in log.splitlines() if "fp16" in line]
    assert warned and all(
        line.startswith("esrgan: warning: fp16 is not supported well on this CPU") for line in warned
    )
    assert "PrecisionWarning" not in log and "warnings.warn" not in log, log


def test_ctrl_c_with_the_page_open_stops_at_once_and_cleanly(server_process: ServerProcess) -> None:
    """The page's event stream waited for the service to close, which happens only after uvicorn has waited for
    open responses: Ctrl-C took the graceful timeout, then logged "timeout graceful shutdown exceeded" and a
    CancelledError traceback. The stream now ends when the server starts stopping, and the page sees it end."""
    srv = server_process
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    conn.request("GET", "/api/events", headers={"Authorization": f"Bearer {srv.token}"})
    res = conn.getresponse()
    assert res.status == 200
    assert res.readline().startswith(b"data: ")  # connected: the first snapshot
    rc, log = srv.interrupt()
    try:
        rest = res.read()  # to the stream's end
        ended: str | None = None
    except http.client.IncompleteRead as exc:
        rest, ended = exc.partial, f"cut off: {exc!r}"
    conn.close()
    assert rc == 130, log  # the CLI's status for Ctrl-C
    for noise in ("Traceback", "timeout graceful shutdown exceeded", "CancelledError", "ERROR", "error"):
        assert noise not in log, log  # "esrgan: error: interrupted" until session 27: a stop is not an error
    assert log.strip().splitlines()[-1] == "esrgan serve: stopped; its files are deleted", log
    assert ended is None, ended  # the stream's last chunk was sent: it ended, not was cut
    assert b"Traceback" not in rest


@needs_memory_cgroups
def test_a_job_too_large_for_the_servers_memory_fails_alone(tmp_path: Path, photo: np.ndarray) -> None:
    """`esrgan serve` in a container: a job whose result (held whole, with the page's previews) does not fit in the
    memory free was run until the kernel's OOM killer ended the server, with every job in it. Now that job fails
    before the model runs, in one line naming it and the memory, and the server goes on with the next.
    Session 27: the previews are made in bands of rows, so a 768x768 upload at x4, refused in 520 MiB until then
    (its previews took ~380 MiB in float32), runs in it. Session 28: a result too large to hold whole is written as
    it is computed, as a PNG (a JPEG upload's too, its name says so), as the CLI's batch does; one that cannot be
    (alpha) is still refused."""
    model = save_model(tmp_path / "m.safetensors", tiny_rrdb(0))
    group = V1_MEMORY / f"esrgan-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    proc = None
    try:
        proc = ServerProcess(model, tmp_path, cgroup=group)

        def job(name: str, pixels: np.ndarray) -> dict[str, Any]:
            data = png(pixels)
            if name.endswith(".jpg"):
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
                data = buf.getvalue()
            body, ctype = multipart(name, data, {"model": "m"})
            status, data = proc.request("POST", "/api/jobs", body=body, ctype=ctype)
            assert status == 201, data
            deadline = time.time() + 120
            while True:
                status, data = proc.request("GET", f"/api/jobs/{json.loads(data)['id']}")
                answer = json.loads(data)
                if answer["state"] in ("done", "error"):
                    return dict(answer)
                assert proc.proc.poll() is None and time.time() < deadline, proc.log.read_text()[-2000:]
                time.sleep(0.1)

        small = np.ascontiguousarray(photo[100:164, 200:264])
        assert job("small.png", small)["state"] == "done"
        baseline = int((group / "memory.usage_in_bytes").read_text())
        # 768 x 768 -> 3072 x 3072 (28 MB of result): a first version of the check let it through at + 520 MiB
        # and the server was killed making its previews whole (found by a review); made in bands, they fit
        (group / "memory.limit_in_bytes").write_text(str(baseline + 520 * 2**20))
        tiled = np.tile(photo, (3, 3, 1))
        fits = job("fits.png", np.ascontiguousarray(tiled[:768, :768]))
        assert fits["state"] == "done", fits
        big_in = np.ascontiguousarray(tiled[:1024, :1024])  # 4096 x 4096 (48 MiB of result)
        # whole, with the server's margin (twice the estimate) and the previews, it asks for ~560 MiB; written as
        # computed, ~235 (it was 1536 x 1536 in 700 MiB over the baseline: ~1150 and ~350 against ~500 free, in
        # twice the time). The limit is set from what the server holds after `fits` (200-310 MiB over the baseline
        # in runs here, as much as its heap and the page cache keep), so that ~320 MiB are free whatever it was
        usage = int((group / "memory.usage_in_bytes").read_text())
        (group / "memory.limit_in_bytes").write_text(str(usage + 320 * 2**20))
        for name in (
            "big.png",
            "big.jpg",
        ):  # until session 28 both failed: "the 4096x4096 result needs about"
            big = job(name, big_in)
            assert big["state"] == "done", big["error"]
            status, data = proc.request("GET", big["result_url"])
            assert status == 200 and data[:8] == b"\x89PNG\r\n\x1a\n", (status, data[:40])  # a JPEG's too
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as result:
                    assert result.size == (4096, 4096)
                    result.load()  # decodes whole: the rows were all written
            del data
        alpha = np.dstack(
            [big_in, np.full(big_in.shape[:2], 200, np.uint8)]
        )  # alpha: a second pass, held whole
        refused = job("alpha.png", alpha)
        assert refused["state"] == "error", refused
        assert refused["error"].startswith("alpha.png: the 4096x4096 result needs about ")
        assert "is free on the server" in refused["error"]
        assert job("again.png", small)["state"] == "done"  # the server is alive and works
        # and a small job is not refused for a floor of the estimate (a review: 69 MB asked for a 256x256 result)
        usage = int((group / "memory.usage_in_bytes").read_text())
        (group / "memory.limit_in_bytes").write_text(str(usage + 100 * 2**20))
        assert job("small-again.png", small)["state"] == "done"
        assert "oom_kill 0" in (group / "memory.oom_control").read_text()
    finally:
        if proc is not None:
            proc.interrupt()
        group.rmdir()


# --- session-26 audit: full disks, results.zip, stalled uploads, stopped servers' folders, hosts, options ------------
@pytest.fixture()
def small_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 2 MiB tmpfs as the system's temporary folder for the test: the server's folder is made there, and Starlette
    spools uploads over 1 MiB there (needs root to mount: skipped otherwise). Request it before make_server, so
    that the servers stop before it is unmounted."""
    disk = tmp_path / "tmpfs"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    monkeypatch.setattr(tempfile, "tempdir", str(disk))
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """A file that leaves about `leave` bytes free on disk."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def raw_upload(srv: Server, name: str, data: bytes, **fields: Any) -> tuple[int, bytes]:
    body, ctype = multipart(name, data, {k: str(v) for k, v in fields.items()})
    status, _, raw = srv.request("POST", "/api/jobs", body=body, headers={"Content-Type": ctype})
    return status, raw


def test_a_full_disk_is_a_507_in_one_line_and_leaves_nothing(
    small_tmp: Path, make_server: Callable[..., Server], photo_small: np.ndarray
) -> None:
    """Audit item 1: on a full disk, an upload over 1 MiB (which Starlette spools to the temporary folder while the
    form arrives) was a 500 with a traceback, and GET /api/results.zip a 500 leaving a half-written results-*.zip
    in the server's folder at each try. Now one-line 507s, and the zip is streamed from the results (no copy)."""
    srv = make_server(max_upload_bytes=4 * 2**20)
    assert srv.service.root.parent == small_tmp
    status, job = srv.upload("ok.png", png(photo_small))
    assert status == 201, job
    job = srv.wait(job["id"])
    assert job["state"] == "done", job
    filler = fill(small_tmp, 64 * 1024)
    before = files_under(small_tmp)

    status, raw = raw_upload(srv, "big.png", os.urandom(1_500_000))
    assert status == 507, raw
    assert json.loads(raw) == {"error": "cannot store the upload (No space left on device)"}
    # under 1 MiB: held in memory, then stored in the job's folder
    status, raw = raw_upload(srv, "mid.png", os.urandom(300_000))
    assert (status, json.loads(raw)) == (
        507,
        {"error": "mid.png: cannot store the upload (No space left on device)"},
    )
    for _ in range(2):
        status, headers, data = srv.request("GET", "/api/results.zip")
        assert status == 200 and headers["content-type"] == "application/zip", data[:200]
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            assert zf.namelist() == ["ok_x2.png"] and zf.testzip() is None
            assert zf.read("ok_x2.png") == srv.request("GET", job["result_url"])[2]
    assert files_under(small_tmp) == before  # nothing half-written left, nothing new
    filler.unlink()
    status, job = srv.upload("again.png", png(photo_small))
    assert status == 201 and srv.wait(job["id"])["state"] == "done"  # the server goes on


def test_the_servers_folder_removed_by_a_cleaner_is_made_again(
    make_server: Callable[..., Server], photo_small: np.ndarray
) -> None:
    """Audit item 1: the server's folder removed (a /tmp cleaner): every upload was a 500 (new_folder's mkdir
    outside the OSError handler). A new folder is made at the next upload, and the server goes on."""
    srv = make_server()
    old = srv.service.root
    shutil.rmtree(old)
    status, raw = raw_upload(srv, "ok.png", png(photo_small))
    assert status == 201, raw
    job = srv.wait(json.loads(raw)["id"])
    assert job["state"] == "done", job
    assert srv.service.root != old and srv.service.root.parent == old.parent
    assert (srv.service.root / job["id"] / "result.png").is_file()
    status, _, data = srv.request("GET", "/api/results.zip")
    assert status == 200 and zipfile.ZipFile(io.BytesIO(data)).namelist() == ["ok_x2.png"]


def test_one_zip_at_a_time_and_no_cross_site_reads(
    make_server: Callable[..., Server], photo: np.ndarray, tmp_path: Path
) -> None:
    """Audit item 2: every GET /api/results.zip wrote a copy of all the results to disk, any number at once, and a
    page of another site could start them (<img src=.../api/results.zip>: Origin was checked for writes only).
    Now the zip is streamed from the results, one at a time (503 in one line otherwise), and /api/ requests that a
    browser marks as coming from another site are refused."""
    srv = make_server()
    bmp = encode(ImageData(pixels=np.ascontiguousarray(photo[:160, :160])), ".bmp", tmp_path)
    status, job = srv.upload("photo.bmp", bmp)  # the result is a BMP too: 300 kB, uncompressed
    assert status == 201, job
    job = srv.wait(job["id"])
    assert job["state"] == "done", job
    result = srv.request("GET", job["result_url"])[2]
    assert len(result) > 300_000  # more than the small socket buffers below and uvicorn's 64 KiB hold

    # small buffers both sides (accepted sockets take the listening socket's): a client that does not read keeps
    # its zip in progress
    srv.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    def slow_client() -> http.client.HTTPConnection:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", srv.port))
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.sock = sock
        return conn

    def zip_status() -> tuple[int, bytes]:
        status, _, data = srv.request("GET", "/api/results.zip")
        return status, data

    def released() -> tuple[int, bytes]:  # the first zip's lock is given back just after its last byte
        deadline = time.time() + 10
        while (answer := zip_status())[0] == 503 and time.time() < deadline:
            time.sleep(0.05)
        return answer

    first = slow_client()
    first.request("GET", "/api/results.zip")
    res = first.getresponse()
    assert res.status == 200 and res.getheader("content-type") == "application/zip"
    status, data = zip_status()
    assert status == 503, data[:100]
    assert (status, json.loads(data)) == (
        503,
        {"error": "a zip of the results is being sent already: try again when it is done"},
    )
    with zipfile.ZipFile(io.BytesIO(res.read())) as zf:  # the first one is whole
        assert zf.namelist() == ["photo_x2.bmp"] and zf.read("photo_x2.bmp") == result
    first.close()
    status, data = released()
    assert status == 200 and zipfile.ZipFile(io.BytesIO(data)).read("photo_x2.bmp") == result

    # a client that goes away mid-zip gives its place back too
    gone = slow_client()
    gone.request("GET", "/api/results.zip")
    assert gone.getresponse().status == 200
    gone.close()
    assert released()[0] == 200

    # another site's page: refused for every /api/ read; the same origin, a typed URL and scripts are served
    for site, expected in [("cross-site", 403), ("same-site", 403), ("same-origin", 200), ("none", 200)]:
        for path in ("/api/results.zip", job["result_url"], "/api/jobs"):
            status, _, data = srv.request("GET", path, headers={"Sec-Fetch-Site": site})
            assert status == expected, (site, path, data[:200])
            if expected == 403:
                assert json.loads(data) == {
                    "error": "cross-site request refused: use the page this server serves"
                }
    assert srv.request("GET", "/", headers={"Sec-Fetch-Site": "cross-site"})[0] == 200  # a link to the page


def test_a_zip_reader_that_stops_reading_and_a_head_do_not_hold_the_zip(
    make_server: Callable[..., Server], photo: np.ndarray, tmp_path: Path
) -> None:
    """A review's findings: a client that stopped reading its results.zip (a paused browser download, an idle
    socket) held the one zip for ever, every other "Download all" a 503; a HEAD ran the whole zip in the
    background. Now a reader that takes nothing for the stall limit is dropped, and a HEAD reads no file."""
    srv = make_server(stall_seconds=1)
    bmp = encode(ImageData(pixels=np.ascontiguousarray(photo[:160, :160])), ".bmp", tmp_path)
    status, job = srv.upload("photo.bmp", bmp)
    assert status == 201 and srv.wait(job["id"])["state"] == "done", job
    srv.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    paused = socket.socket()
    paused.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    paused.connect(("127.0.0.1", srv.port))
    paused.sendall(b"GET /api/results.zip HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert paused.recv(200).startswith(b"HTTP/1.1 200")  # then reads nothing more
    try:
        assert srv.request("GET", "/api/results.zip")[0] == 503  # the zip is the paused reader's
        deadline = time.time() + 15
        while (status := srv.request("GET", "/api/results.zip")[0]) == 503 and time.time() < deadline:
            time.sleep(0.2)
        assert status == 200  # dropped after a second of not reading
    finally:
        paused.close()
    for _ in range(3):  # a HEAD answers with the headers and leaves the zip free
        status, headers, body = srv.request("HEAD", "/api/results.zip")
        assert (status, body) == (200, b"") and headers.get("content-type") == "application/zip"
        assert srv.request("GET", "/api/results.zip")[0] == 200


def test_a_stalled_upload_is_dropped_and_gives_its_place_back(
    make_server: Callable[..., Server], photo_small: np.ndarray
) -> None:
    """Audit item 3: an upload that sent its headers and part of its body, then nothing, held its place under the
    job cap for ever: 100 of them and every upload was "503 too many jobs (100)" with no job listed. An upload
    silent for Limits.stall_seconds (60 s; 1 s here) is answered 408 in one line and gives its place back; the
    503 meanwhile says how many places uploads still arriving hold."""
    srv = make_server(max_jobs=2, stall_seconds=1.0)
    body, ctype = multipart("slow.png", png(photo_small), {})
    stalled = []
    for _ in range(2):
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        sock.sendall(
            f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:200]
        )
        stalled.append(sock)
    try:
        deadline = time.time() + 10
        while True:  # until both hold their places: a junk upload is refused for the cap, not for being junk
            status, raw = raw_upload(srv, "junk.png", b"not an image\n" * 10)
            if status == 503:
                break
            assert status == 400 and time.time() < deadline, raw
        assert json.loads(raw) == {
            "error": "too many jobs (2, 2 of them uploads still arriving): remove finished ones first"
        }
        for sock in stalled:
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            head, _, payload = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), answer
            assert json.loads(payload) == {"error": "upload stalled: nothing received for 1 s"}
    finally:
        for sock in stalled:
            sock.close()
    status, job = srv.upload("ok.png", png(photo_small))
    assert status == 201, job
    assert srv.wait(job["id"])["state"] == "done"
    assert [p.name for p in srv.service.root.iterdir() if p.is_dir()] == [job["id"]]  # nothing else kept


def server_folders(parent: Path) -> set[Path]:
    return {p for p in parent.iterdir() if p.name.startswith("esrgan-serve-")}


def test_sighup_stops_the_server_and_deletes_its_folder(
    model_x2: Path, tmp_path: Path, photo_small: np.ndarray
) -> None:
    """Audit item 4: closing the terminal (SIGHUP) ended `esrgan serve` at once, leaving every upload and result in
    its folder for ever. SIGHUP now stops it as SIGTERM does: the folder is deleted, and the process ends by
    SIGHUP. Under nohup (SIGHUP ignored from the start) it goes on, as nohup asks, and SIGTERM stops it. (This test
    failed twice in session 32's clean-clone CI runs, which were started under nohup: its server inherited the
    ignored SIGHUP. Its servers now start with the disposition the test asks for.)"""
    parent = tmp_path / "tmp"
    parent.mkdir()
    for hangup in (signal.SIG_DFL, signal.SIG_IGN):
        proc = ServerProcess(model_x2, tmp_path, env={"TMPDIR": str(parent)}, hangup=hangup)
        try:
            data, ctype = multipart("ok.png", png(photo_small), {})
            status, answer = proc.request("POST", "/api/jobs", data, ctype)
            assert status == 201, answer
            (folder,) = server_folders(parent)
            assert any(folder.rglob("input"))
            if hangup == signal.SIG_IGN:
                proc.proc.send_signal(signal.SIGHUP)
                time.sleep(1.0)
                assert proc.proc.poll() is None and proc.request("GET", "/api/jobs")[0] == 200
                rc, log = proc.stop(signal.SIGTERM)
                assert rc in (0, -signal.SIGTERM), log
            else:
                rc, log = proc.stop(signal.SIGHUP)
                assert rc == -signal.SIGHUP, log
        finally:
            if proc.proc.poll() is None:
                proc.proc.kill()
                proc.proc.wait()
        assert not folder.exists() and server_folders(parent) == set(), log
        assert "Traceback" not in log, log


def test_folders_of_killed_servers_are_removed_at_start_and_live_ones_kept(
    model_x2: Path,
    tmp_path: Path,
    photo_small: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    make_server: Callable[..., Server],
) -> None:
    """Audit item 4: a server killed (SIGKILL, the OOM killer) left its folder for ever. Each server holds an flock
    on its folder; a server starting removes the folders whose lock it can take (their server is gone), never a
    running server's, nor a folder without the marker that says its server locks it (an older server's)."""
    parent = tmp_path / "tmp"
    parent.mkdir()
    monkeypatch.setattr(
        tempfile, "tempdir", str(parent)
    )  # the servers' TMPDIR, in this process and the killed one
    live = make_server()
    status, live_job = live.upload("live.png", png(photo_small))
    assert status == 201, live_job
    live_job = live.wait(live_job["id"])
    assert live_job["state"] == "done", live_job
    older = parent / "esrgan-serve-old12345"  # a folder of a server from before the lock: can't tell, kept
    older.mkdir()
    (older / "input").write_bytes(b"kept")

    killed = ServerProcess(model_x2, tmp_path, env={"TMPDIR": str(parent)})
    try:
        data, ctype = multipart("ok.png", png(photo_small), {})
        assert killed.request("POST", "/api/jobs", data, ctype)[0] == 201
        (dead,) = server_folders(parent) - {live.service.root, older}  # its start kept the live one's
        assert live.service.root.is_dir() and (older / "input").is_file()
    finally:
        killed.proc.kill()
        killed.proc.wait()
    assert any(dead.rglob("input"))  # SIGKILL: nothing cleaned up

    new = make_server()
    assert server_folders(parent) == {live.service.root, new.service.root, older}
    assert new.service.stale == [dead]
    status, _, data = live.request("GET", live_job["result_url"])  # the live server's results are whole
    assert status == 200 and Image.open(io.BytesIO(data)).size == (80, 96)
    status, job = new.upload("new.png", png(photo_small))
    assert status == 201 and new.wait(job["id"])["state"] == "done"


def test_the_loopback_address_the_server_was_started_on_is_a_valid_host(
    model_x2: Path, tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    """Audit item 5: `--host 127.0.0.2` (or ::1 written out) is loopback, so the Host check is on, but only
    127.0.0.1, localhost and [::1] passed it: every request, the page included, was "400 Invalid host header"."""
    proc = ServerProcess(model_x2, tmp_path, host="127.0.0.2")  # a real `esrgan serve --host 127.0.0.2`
    try:
        status, data = proc.request("GET", "/")  # Host: 127.0.0.2:port, as a browser sends it
        assert status == 200 and b"<script" in data, data
        assert proc.request("GET", "/api/config")[0] == 200
    finally:
        proc.interrupt()
    srv = make_server(host="0:0:0:0:0:0:0:1")  # the Host check of `--host 0:0:0:0:0:0:0:1`
    for host, expected in [
        ("[0:0:0:0:0:0:0:1]", 200),  # as typed (curl)
        ("[::1]", 200),  # as a browser writes it
        ("[0000:0000:0000:0000:0000:0000:0000:0001]", 200),
        ("127.0.0.1", 200),
        ("evil.example", 400),
        ("127.0.0.2", 400),
    ]:
        status, _, _ = srv.request("GET", "/api/config", headers={"Host": f"{host}:{srv.port}"})
        assert status == expected, host


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-upload-mb", "nan"], "--max-upload-mb must be a positive number, not 'nan'"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be a positive number, not '0'"),
        (["--max-upload-mb", "-1"], "--max-upload-mb must be a positive number, not '-1'"),
        (["--max-upload-mb", "1e306"], "--max-upload-mb must be at most 1000000000, not '1e306'"),
        (["--max-megapixels", "nan"], "--max-megapixels must be a positive number, not 'nan'"),
        (["--max-megapixels", "inf"], "--max-megapixels must be a positive number, not 'inf'"),
        (["--max-megapixels", "0"], "--max-megapixels must be a positive number, not '0'"),
        (["--port", "99999"], "--port must be 1-65535, not '99999'"),
        (["--port", "-1"], "--port must be 1-65535, not '-1'"),
        (["--port", "0"], "--port must be 1-65535, not '0'"),
        (["--port", "http"], "--port takes a whole number, not 'http'"),
        (["--keep-minutes", "-1"], "--keep-minutes must be a positive number, not '-1'"),
        (["--keep-minutes", "nan"], "--keep-minutes must be a positive number, not 'nan'"),
        (["--keep-minutes", "0"], "--keep-minutes must be a positive number, not '0'"),
    ],
)
def test_bad_serve_options_are_one_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Audit item 6: nan limits and --port 99999 were Python tracebacks, --keep-minutes -1 deleted results at once
    (nan: never), --max-upload-mb 0 refused every upload. Each is argparse's one line and exit 2, before anything
    loads (the model file here does not exist: an option let through would fail on it, with exit 1)."""
    from esrgan import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", *args, "--model-file", f"m={tmp_path / 'missing.safetensors'}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("esrgan serve: error: argument ") and err[-1].endswith(message), err
    assert not any("Traceback" in line for line in err)
    # the range's ends are accepted
    parsed = cli.build_parser().parse_args(
        [
            "serve",
            "--port",
            "65535",
            "--max-upload-mb",
            "0.5",
            "--keep-minutes",
            "0.1",
            "--max-megapixels",
            "1e9",
        ]
    )
    assert (parsed.port, parsed.max_upload_mb, parsed.keep_minutes) == (65535, 0.5, 0.1)


def test_a_job_failing_to_write_names_the_file_not_the_servers_folder(
    small_tmp: Path, make_server: Callable[..., Server], photo: np.ndarray, photo_small: np.ndarray
) -> None:
    """Audit item 7: a job that failed writing its result said "/tmp/.../esrgan-serve-XXX/<job>/result.png: cannot
    write (No space left on device)": the server's temporary path. It names the user's file, and the failed job's
    files are deleted at once (its disk given back)."""
    srv = make_server()
    data = png(np.ascontiguousarray(photo[100:228, 100:228]))  # 128x128 -> a 256x256 result
    fill(small_tmp, len(data) + 12 * 1024)  # room for the upload, not for its result
    status, job = srv.upload("n1.png", data)
    assert status == 201, job
    job = srv.wait(job["id"])
    assert job["state"] == "error", job
    assert job["error"] == "n1.png (result): cannot write (No space left on device)"
    assert not (srv.service.root / job["id"]).exists()
    (small_tmp / "filler").unlink()
    status, job = srv.upload("n2.png", png(photo_small))
    assert status == 201 and srv.wait(job["id"])["state"] == "done"


# --- the token (session 27): every request needs it -----------------------------------------------------------------
def printed_token(proc: ServerProcess, host: str = "127.0.0.1") -> str:
    """The token in the address `esrgan serve` printed on its stdout."""
    line = next(x for x in proc.out.read_text().splitlines() if x.startswith("esrgan serve: open http://"))
    address = line.split()[3]
    assert address.startswith(f"http://{host}:{proc.port}/?token="), line
    return address.split("?token=", 1)[1]


def test_every_request_needs_the_printed_token(
    model_x2: Path, tmp_path: Path, photo_small: np.ndarray
) -> None:
    """A known limit until session 27: a server on 127.0.0.1 let every user of the machine (and every process)
    list, fetch and delete its jobs. Now each request needs the token the printed address carries: the page trades
    it for an HttpOnly, SameSite=Lax cookie (a redirect takes it out of the address), scripts send a Bearer header.
    A new token each start (a review: a browser sends 127.0.0.1's cookies to every port, so a kept token leaked to
    another user's listener for good): a restarted server refuses the old one."""
    proc = ServerProcess(model_x2, tmp_path, token=None)
    try:
        token = printed_token(proc)
        assert len(token) >= 40 and "a new token for this run" in proc.out.read_text()
        data, ctype = multipart("ok.png", png(photo_small), {})
        for method, path, body, kind in [
            ("GET", "/", None, ""),
            ("HEAD", "/", None, ""),
            ("GET", "/static/app.js", None, ""),
            ("GET", "/api/jobs", None, ""),
            ("GET", "/api/events", None, ""),
            ("GET", "/api/results.zip", None, ""),
            ("POST", "/api/jobs", data, ctype),
            ("GET", f"/?token={token[:-1]}", None, ""),  # a wrong token
        ]:
            status, answer = proc.request(method, path, body, kind, headers={})
            assert status == 401 and (method == "HEAD" or b"needs its token" in answer), (
                path,
                status,
                answer,
            )
        status, answer = proc.request("GET", "/api/jobs", headers={})
        assert json.loads(answer)["error"].startswith("this server needs its token: open the address")
        for refused in (
            {"Authorization": f"Bearer {token[::-1]}"},
            {"Cookie": f"esrgan-serve-{proc.port + 1}={token}"},  # another port's server's cookie
        ):
            assert proc.request("GET", "/api/jobs", headers=refused)[0] == 401, refused

        # the printed address: a cookie for the page, and the token out of the address bar
        status, headers, _ = proc.exchange("GET", f"/?token={token}", headers={})
        assert status == 303 and headers["location"] == "/", headers
        cookie = headers["set-cookie"]
        assert cookie.startswith(f"esrgan-serve-{proc.port}={token};"), cookie
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age" not in cookie, cookie
        jar = {"Cookie": cookie.split(";")[0]}
        status, page = proc.request("GET", "/", headers=jar)
        assert status == 200 and b"<script" in page
        # a junk cookie of the same name (another local server can set one for 127.0.0.1, with a longer Path that
        # browsers send first) does not lock the page out
        tossed = {"Cookie": f"esrgan-serve-{proc.port}=junk; {jar['Cookie']}"}
        assert proc.request("GET", "/api/config", headers=tossed)[0] == 200
        status, answer = proc.request("POST", "/api/jobs", data, ctype, headers=jar)  # as the page uploads
        assert status == 201, answer
        job = json.loads(answer)
        deadline = time.time() + 120
        while job["state"] not in ("done", "error"):
            assert time.time() < deadline, job
            time.sleep(0.1)
            job = json.loads(proc.request("GET", f"/api/jobs/{job['id']}", headers=jar)[1])
        assert job["state"] == "done", job
        status, result = proc.request("GET", job["result_url"], headers=jar)
        assert status == 200 and Image.open(io.BytesIO(result)).size == (80, 96)
        # scripts: the header (as the other tests send it), or the query
        assert proc.request("GET", "/api/jobs", headers={"Authorization": f"Bearer {token}"})[0] == 200
        assert proc.request("GET", f"/api/jobs?token={token}", headers={})[0] == 200
    finally:
        rc, log = proc.interrupt()
    assert rc == 130 and "Traceback" not in log, log

    again = ServerProcess(model_x2, tmp_path, token=None)  # started again: a new token, the old one refused
    try:
        assert printed_token(again) != token
        cookie = {"Cookie": f"esrgan-serve-{again.port}={token}"}
        assert again.request("GET", "/api/config", headers=cookie)[0] == 401
    finally:
        rc, log = again.interrupt()
    assert rc == 130, log


def test_the_address_is_printed_once_the_port_is_the_servers(model_x2: Path, tmp_path: Path) -> None:
    """The address (with the token) was printed before uvicorn bound the port: with the port held by another
    process the start failed after it, and a user who clicked it gave that process the token (a review). And
    `--host ::` printed an IPv4 address its IPv6-only socket does not answer; it prints [::1]."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "esrgan.cli",
                "serve",
                "--port",
                str(port),
                "--model-file",
                f"m={model_x2}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if k != serve.TOKEN_ENV},
        )
    assert done.returncode != 0, done
    assert "token=" not in done.stdout + done.stderr, done.stdout
    assert "address already in use" in done.stderr, done.stderr

    proc = ServerProcess(model_x2, tmp_path, host="::", token=None)
    try:
        token = printed_token(proc, host="[::1]")
        conn = http.client.HTTPConnection("::1", proc.port, timeout=30)
        conn.request("GET", "/api/config", headers={"Authorization": f"Bearer {token}"})
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        rc, log = proc.interrupt()
    assert rc == 130, log


def test_the_token_is_new_each_run_or_the_environments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No token kept on disk (where a leak would last): a new one each start, or ESRGAN_SERVE_TOKEN's for scripts,
    which must look like a token (an empty one means none given; a short one is refused in one line)."""
    monkeypatch.delenv(serve.TOKEN_ENV, raising=False)
    first, said = serve.server_token()
    assert len(first) >= 40 and said == "a new token for this run"
    assert serve.server_token()[0] != first
    monkeypatch.setenv(serve.TOKEN_ENV, "")
    assert serve.server_token()[1] == "a new token for this run"
    monkeypatch.setenv(serve.TOKEN_ENV, "given-token-0123456789")
    assert serve.server_token() == ("given-token-0123456789", f"the token is {serve.TOKEN_ENV}'s")
    from esrgan import cli

    for bad in ("short", "with spaces in it!!", "é" * 20):
        monkeypatch.setenv(serve.TOKEN_ENV, bad)
        with pytest.raises(serve.TokenError):
            serve.server_token()
    assert cli.main(["serve", "--model-file", f"m={tmp_path / 'missing.safetensors'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"esrgan: error: {serve.TOKEN_ENV} must be 16 to 256 of"), err


def test_no_token_serves_everyone_and_says_so(model_x2: Path, tmp_path: Path) -> None:
    """`--no-token`: requests without a token are served, and the start-up lines say what that means."""
    proc = ServerProcess(model_x2, tmp_path, token=None, args=("--no-token",))
    try:
        assert proc.request("GET", "/api/config", headers={})[0] == 200
        out = proc.out.read_text()
        assert "WARNING: --no-token: every user of this machine can use this server" in out, out
        assert f"http://127.0.0.1:{proc.port}/  " in out and "token=" not in out, out
    finally:
        rc, log = proc.interrupt()
    assert rc == 130, log


def test_a_grey_model_upscales_a_colour_upload_channel_by_channel_and_a_grey_one_to_grey(
    tmp_path: Path, photo_small: np.ndarray
) -> None:
    """A grey model (one `esrgan train` makes with model.num_in_ch/num_out_ch 1) on the page: the same pixels as
    the library's, colour kept (each channel through the model), grey kept grey."""
    from esrgan.upscale import Upscaler

    grey_model = save_model(
        tmp_path / "grey-x2.safetensors", tiny_rrdb(2, scale=2, num_in_ch=1, num_out_ch=1)
    )
    srv = Server(serve.create_app({"grey-x2": grey_model}, limits=serve.Limits(max_upload_bytes=MAX_BYTES,
                                                                               max_pixels=MAX_PIXELS)))  # fmt: skip
    try:
        up = Upscaler.from_file(grey_model, device="cpu")
        grey = np.ascontiguousarray(np.asarray(Image.fromarray(photo_small).convert("L")))
        for name, pixels, shape in (("colour.png", photo_small, (2 * photo_small.shape[0], 2 * photo_small.shape[1], 3)),
                                    ("grey.png", grey, (2 * grey.shape[0], 2 * grey.shape[1]))):  # fmt: skip
            status, job = srv.upload(name, png(pixels), model="grey-x2")
            assert status == 201, job
            job = srv.wait(job["id"])
            assert job["state"] == "done", job
            result = np.asarray(Image.open(io.BytesIO(srv.request("GET", job["result_url"])[2])))
            assert result.shape == shape
            np.testing.assert_array_equal(result, up.upscale(pixels))
    finally:
        srv.stop()
