"""esrgan serve used the way a person uses it: headless Debian Chromium driven by Playwright.

Opens the page, picks a real photo (and a broken file), starts, waits for the result, downloads it and checks its
size, moves the comparison slider and the divider, zooms, and saves a screenshot to test-artifacts/serve.png.
Uses the system Chromium (Debian packages chromium + chromium-driver, installed by scripts/install_browser.sh);
no browser is ever downloaded. Skips, saying why, only when Chromium cannot be found or installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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

from conftest import UvicornThread, tiny_rrdb  # noqa: E402

from esrgan import serve  # noqa: E402
from esrgan.checkpoints import save_model  # noqa: E402

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
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("models") / "tiny-x4.safetensors", tiny_rrdb())


TOKEN = "browser-test-token-0123456789"


@pytest.fixture(scope="module")
def base_url(model_path: Path) -> Iterator[str]:
    running = UvicornThread(serve.create_app({"tiny-x4": model_path}, token=TOKEN))
    yield f"http://127.0.0.1:{running.port}"
    running.stop()


def used_precision() -> str:
    """What `auto` computes 8-bit images in on this machine (fp32 here, bf16 on CPUs with native bf16)."""
    from esrgan.device import precision_name, resolve_precision

    return precision_name(resolve_precision("auto", torch.device("cpu")))


@pytest.mark.slow
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
            # the address `esrgan serve` prints: the token becomes a cookie the page's scripts cannot read, and
            # leaves the address bar; everything below (uploads, events, images, the download) runs on the cookie
            page.goto(f"{base_url}/?token={TOKEN}")
            assert page.url == f"{base_url}/"
            (cookie,) = page.context.cookies()
            assert cookie["value"] == TOKEN and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
            assert page.evaluate("document.cookie") == ""
            sync_api.expect(page.locator("#connection")).to_have_text("live")
            sync_api.expect(page.locator("#model")).to_have_value("tiny-x4")

            page.set_input_files("#files", [str(broken), str(crop)])
            sync_api.expect(page.locator("#start")).to_have_text("Upscale 2 images")
            # small files get sizes that mean something (they were "0.0 MB")
            kb = crop.stat().st_size / 1024
            sync_api.expect(page.locator("#pending li > span")).to_have_text(
                [
                    "broken.png · 48 bytes",
                    f"astronaut.png · {kb:.1f} kB" if kb < 10 else f"astronaut.png · {kb:.0f} kB",
                ]
            )
            page.click("#start")

            # the broken file shows a clear message; the photo goes on
            failed = page.locator(".job", has_text="broken.png")
            sync_api.expect(failed.locator(".badge")).to_have_text("error")
            sync_api.expect(failed.locator(".message")).to_contain_text("broken.png: ")
            done = page.locator('.job[data-state="done"]', has_text="astronaut.png")
            sync_api.expect(done).to_be_visible(timeout=120_000)
            sync_api.expect(done.locator(".meta")).to_contain_text("120×96 RGB, 8-bit PNG → 480×384")
            # the precision really used, and how long the model took to load (the first job loads it)
            sync_api.expect(done.locator(".meta")).to_contain_text(f"· tiny-x4 · {used_precision()}")
            sync_api.expect(done.locator(".status")).to_contain_text("(model loading ")
            # what a running job says: the phase, tiles where there are several, the elapsed time always
            # (receivedAt = now: the snapshot just arrived, so the elapsed time shown is the server's)
            says = (
                "(j) => { receivedAt = performance.now(); "
                "return statusText(Object.assign({state: 'running', tiles_done: 0, precision: 'fp32'}, j)); }"
            )
            running = {
                "loading the model… · 3.0 s": {"phase": "loading", "tiles_total": 0, "elapsed": 3.0},
                "computing in fp32 (one tile, no finer progress)… · 7.0 s": {
                    "phase": "computing",
                    "tiles_total": 1,
                    "elapsed": 7.0,
                },
                "computing in fp32: tile 5 / 12 · 12 s": {
                    "phase": "computing",
                    "tiles_total": 12,
                    "tiles_done": 5,
                    "elapsed": 12.0,
                },
                "writing the result… · 1.3 min": {"phase": "writing", "tiles_total": 1, "elapsed": 75.0},
            }
            assert {page.evaluate(says, job): text for text, job in running.items()} == {
                t: t for t in running
            }

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

            # a phone (390 px wide): one column, controls above a viewer as wide as the screen, no sideways scroll
            # (side by side, the viewer was 18-48 pixels wide and the page scrolled sideways)
            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            panel, stage = page.locator(".panel").bounding_box(), page.locator("#stage").bounding_box()
            assert panel is not None and stage is not None
            assert panel["y"] + panel["height"] <= stage["y"]  # the controls come first
            assert stage["width"] >= 340 and stage["height"] >= 300
            for button in ("#zoom-fit", "#download", "#start"):
                box = page.locator(button).bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, button
            page.click("#zoom-fit")
            assert (
                page.eval_on_selector("#after", "e => e.getBoundingClientRect().width") >= 300
            )  # fitted, not 18px
            page.screenshot(path=str(ARTIFACTS / "serve-phone.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()


@pytest.mark.slow
def test_an_animation_plays_at_the_results_size_beside_its_upload(
    base_url: str, photo: np.ndarray, tmp_path: Path
) -> None:
    """An animated GIF dropped on the page: the job says it is animated and counts frames, and the viewer plays the
    upload itself as the "before" at the result's size (its own is 4x smaller), beside the upscaled animation."""
    chromium = find_chromium()
    gif = tmp_path / "wave.gif"
    frames = [
        Image.fromarray(np.ascontiguousarray(photo[40 + 8 * k : 88 + 8 * k, 160:224])) for k in range(3)
    ]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=120, loop=0)  # 64x48, 3 frames

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base_url}/?token={TOKEN}")
            sync_api.expect(page.locator("#connection")).to_have_text("live")
            page.set_input_files("#files", [str(gif)])
            page.click("#start")
            done = page.locator('.job[data-state="done"]', has_text="wave.gif")
            sync_api.expect(done).to_be_visible(timeout=120_000)
            sync_api.expect(done.locator(".meta")).to_contain_text(
                "64×48 RGB, 8-bit GIF, animated: 3 frames → 256×192"
            )
            says = "(j) => statusText(Object.assign({state: 'running', precision: 'fp32', elapsed: 2.0}, j))"
            running = {"phase": "computing", "frames": 3, "tiles_done": 1, "tiles_total": 3}
            assert page.evaluate(says, running).startswith("computing in fp32: frame 2 / 3 · ")  # 1 done

            done.click()  # the viewer shows it (the first finished job of the server, another test's, else)
            sync_api.expect(page.locator("#viewer-title")).to_contain_text("wave.gif")
            sync_api.expect(page.locator("#before-tag")).to_have_text("Original (browser-scaled)")
            loaded = "e => e.complete && [e.naturalWidth, e.naturalHeight]"
            assert page.eval_on_selector("#before", loaded) == [64, 48]  # the upload, as it is
            assert page.eval_on_selector("#after", loaded) == [256, 192]
            box = "e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; }"
            assert page.eval_on_selector("#before", box) == page.eval_on_selector("#after", box)
            assert errors == []
        finally:
            browser.close()


@pytest.mark.slow
def test_the_page_takes_a_restarted_servers_settings(model_path: Path) -> None:
    """After a server restart the open page reconnects by itself; it must then show the new server's settings (it
    kept saying results are kept for 1 h when the new server kept them 6 s). A server started with another token
    (a new start without ESRGAN_SERVE_TOKEN) refuses the page's cookie: the page says what to do instead of
    "reconnecting…"."""
    chromium = find_chromium()
    first = UvicornThread(serve.create_app({"tiny-x4": model_path}, keep_seconds=3600, token=TOKEN))
    port = first.port
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
            sync_api.expect(page.locator("#connection")).to_have_text("live")
            sync_api.expect(page.locator("#keep")).to_have_text("1 h")
            sync_api.expect(page.locator("#model option")).to_have_text(["tiny-x4 (x4)"])
            first.stop()
            sync_api.expect(page.locator("#connection")).to_have_text("reconnecting…")
            second = UvicornThread(
                serve.create_app({"other-x4": model_path}, keep_seconds=6, token=TOKEN), port
            )
            try:
                sync_api.expect(page.locator("#connection")).to_have_text("live", timeout=30_000)
                sync_api.expect(page.locator("#keep")).to_have_text("6.0 s")
                sync_api.expect(page.locator("#model option")).to_have_text(["other-x4 (x4)"])
                sync_api.expect(page.locator("#model")).to_have_value("other-x4")
            finally:
                second.stop()
            third = UvicornThread(serve.create_app({"other-x4": model_path}, token=TOKEN[::-1]), port)
            try:
                sync_api.expect(page.locator("#connection")).to_have_text(
                    "token needed: open the address esrgan serve printed", timeout=30_000
                )
                page.goto(f"http://127.0.0.1:{port}/?token={TOKEN[::-1]}")  # what the message says to do
                sync_api.expect(page.locator("#connection")).to_have_text("live")
            finally:
                third.stop()
        finally:
            browser.close()


@pytest.mark.slow
def test_the_printed_address_works_when_clicked_on_another_sites_page(base_url: str, tmp_path: Path) -> None:
    """A review: the printed address clicked on a page of another site (a browser-based terminal or notebook on
    localhost:8888; localhost and 127.0.0.1 are different sites) was a 401, reloads too: a SameSite=Strict cookie
    is not sent on a navigation another site started. The cookie is SameSite=Lax: the page opens; other sites'
    /api/ requests are still refused (Sec-Fetch-Site)."""
    import http.server
    import threading

    chromium = find_chromium()
    link = f'<a id="go" href="{base_url}/?token={TOKEN}">open</a>'.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(link)

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"http://localhost:{other.server_address[1]}/")
                page.click("#go")
                sync_api.expect(page.locator("#connection")).to_have_text("live")
                assert page.url == f"{base_url}/"
            finally:
                browser.close()
    finally:
        other.shutdown()
        other.server_close()
