"""esrgan serve used the way a person uses it: headless Debian Chromium driven by Playwright.

Opens the page, picks a real photo (and a broken file), starts, waits for the result, downloads it and checks its
size, moves the comparison slider and the divider, zooms, and saves a screenshot to test-artifacts/serve.png.
Uses the system Chromium (Debian packages chromium + chromium-driver, installed by scripts/install_browser.sh);
no browser is ever downloaded. Skips, saying why, only when Chromium cannot be found or installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="pip install playwright (the Python package only)"
)

from esrgan import serve  # noqa: E402
from esrgan.checkpoints import save_model  # noqa: E402
from esrgan.generator import RRDBNet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str:
    """The system Chromium; runs scripts/install_browser.sh once if it is missing, skips if that fails."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    script = REPO / "scripts" / "install_browser.sh"
    try:
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"chromium not found and {script.name} could not run: {exc}")
    if done.returncode != 0 or not os.access("/usr/bin/chromium", os.X_OK):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"chromium not found and could not be installed ({script.name}: {tail[0]})")
    return "/usr/bin/chromium"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    torch.manual_seed(0)
    model = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, num_grow=4, scale=4)
    path = save_model(tmp_path_factory.mktemp("models") / "tiny-x4.safetensors", model)
    app = serve.create_app({"tiny-x4": path})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=20)
    sock.close()


def test_upscale_in_the_browser(base_url: str, photo: np.ndarray, tmp_path: Path) -> None:
    chromium = find_chromium()
    crop = tmp_path / "astronaut.png"
    Image.fromarray(np.ascontiguousarray(photo[30:126, 150:270])).save(crop)  # 120x96: the face
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760}, accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base_url)
            sync_api.expect(page.locator("#connection")).to_have_text("live")
            sync_api.expect(page.locator("#model")).to_have_value("tiny-x4")

            page.set_input_files("#files", [str(broken), str(crop)])
            sync_api.expect(page.locator("#start")).to_have_text("Upscale 2 images")
            page.click("#start")

            # the broken file shows a clear message; the photo goes on
            failed = page.locator(".job", has_text="broken.png")
            sync_api.expect(failed.locator(".badge")).to_have_text("error")
            sync_api.expect(failed.locator(".message")).to_contain_text("broken.png: ")
            done = page.locator('.job[data-state="done"]', has_text="astronaut.png")
            sync_api.expect(done).to_be_visible(timeout=120_000)
            sync_api.expect(done.locator(".meta")).to_contain_text("120×96 RGB, 8-bit PNG → 480×384")

            # the viewer opens on the finished job; download its result
            sync_api.expect(page.locator("#compare")).to_be_visible()
            with page.expect_download() as info:
                page.click("#download")
            download = info.value
            assert download.suggested_filename == "astronaut_x4.png"
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)
            assert Image.open(saved).size == (480, 384)

            # the slider moves the divider and the clipped bicubic layer
            page.fill("#slider", "20")
            assert page.eval_on_selector("#before-layer", "e => e.style.clipPath") == "inset(0px 80% 0px 0px)"
            box = page.locator("#stage").bounding_box()
            handle = page.locator("#divider span").bounding_box()
            assert box is not None and handle is not None
            page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.6, handle["y"], steps=5)
            page.mouse.up()
            assert abs(float(page.input_value("#slider")) - 60) < 1

            page.click("#zoom-2")
            sync_api.expect(page.locator("#zoom-level")).to_have_text("200%")
            page.click("#zoom-fit")

            # both images really loaded (not broken image icons)
            for sel in ("#before", "#after"):
                assert page.eval_on_selector(sel, "e => e.complete && e.naturalWidth") == 480
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve.png"))
            assert errors == []
        finally:
            browser.close()
