"""esrgan.download against a real HTTP server on 127.0.0.1: verified files land, every failure leaves nothing."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import QuietHandler, http_server

from esrgan.download import download_file, normalize_digest, sha256_file
from esrgan.errors import DownloadError

PAYLOAD = os.urandom(2_500_000)  # spans several 1 MiB read chunks
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
RELEASE_STALLED = threading.Event()  # /stall holds its connection open until this is set


class _Handler(QuietHandler):
    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path == "/file.bin":
            self.send_body(200, PAYLOAD)
        elif self.path == "/redirect":
            self.redirect("/file.bin")
        elif self.path == "/truncated":
            # promise more than is sent, then close: what a dropped connection looks like
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) + 1000))
            self.end_headers()
            self.wfile.write(PAYLOAD)
            self.close_connection = True
        elif self.path == "/no-length":
            # HTTP/1.0 style body delimited by closing the connection: the size cap must act while streaming
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PAYLOAD)
            self.close_connection = True
        elif self.path == "/slow":
            time.sleep(2)
            self.send_body(200, PAYLOAD)
        elif self.path == "/loop":
            self.redirect("/loop")
        elif self.path == "/to-ftp":
            self.redirect(f"ftp://127.0.0.1:{self.server.server_address[1]}/file.bin")
        elif self.path == "/trickle":
            # one byte every 0.3 s: each read is well within the timeout, the whole never ends in practice
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                pass
        elif self.path == "/stall":
            # part of the body, then nothing until the test is done: a download to kill mid-body
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: 3 * len(PAYLOAD) // 5])
            self.wfile.flush()
            RELEASE_STALLED.wait(60)
            self.close_connection = True
        elif self.path == "/busy":
            self.send_response(429)
            self.send_header("Retry-After", "30")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/negative-length":  # "-1": no length given, the body delimited by closing
            self.send_response(200)
            self.send_header("Content-Length", "-1")
            self.end_headers()
            self.wfile.write(PAYLOAD)
            self.close_connection = True
        elif self.path == "/to-missing":
            self.redirect("/missing")
        elif self.path == "/500":
            self.send_error(500, "Internal Server Error")
        else:
            self.send_error(404, "Not Found")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with http_server(_Handler) as httpd:
        yield httpd.url


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_good_download_is_verified_and_in_place(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "model.pth"
    out = download_file(f"{server}/file.bin", dest, sha256=DIGEST.upper(), progress=False)
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["model.pth"]  # no temporary file left beside it


def test_redirect_is_followed(server: str, tmp_path: Path) -> None:
    dest = download_file(f"{server}/redirect", tmp_path / "m.pth", sha256=DIGEST, progress=False)
    assert sha256_file(dest) == DIGEST


def test_published_prefix_is_accepted(server: str, tmp_path: Path) -> None:
    dest = download_file(f"{server}/file.bin", tmp_path / "m-x.pth", sha256=DIGEST[:8], progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_wrong_prefix_is_rejected(server: str, tmp_path: Path) -> None:
    wrong = format(int(DIGEST[:8], 16) ^ 1, "08x")
    with pytest.raises(DownloadError, match="not the published"):
        download_file(f"{server}/file.bin", tmp_path / "m.pth", sha256=wrong, progress=False)
    assert _leftovers(tmp_path) == []


def test_digest_must_be_hex_and_long_enough() -> None:
    assert normalize_digest(DIGEST[:8].upper()) == DIGEST[:8]
    for bad in (DIGEST[:7], DIGEST + "0", "z" * 64, ""):
        with pytest.raises(ValueError):
            normalize_digest(bad)


def test_hash_mismatch_leaves_no_file(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "model.pth"
    with pytest.raises(DownloadError, match=r"SHA-256 .* not the published .*by hand from"):
        download_file(f"{server}/file.bin", dest, sha256="0" * 64, progress=False)
    assert _leftovers(tmp_path) == []


def test_failed_download_keeps_existing_file(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "model.pth"
    dest.write_bytes(b"previous good file")
    with pytest.raises(DownloadError):
        download_file(f"{server}/file.bin", dest, sha256="0" * 64, progress=False)
    assert dest.read_bytes() == b"previous good file"
    assert _leftovers(tmp_path) == ["model.pth"]


def test_truncated_body_is_an_error(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="cut short"):
        download_file(f"{server}/truncated", tmp_path / "m.pth", sha256=DIGEST, progress=False)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(("path", "code"), [("/500", 500), ("/missing", 404)])
def test_http_errors(server: str, tmp_path: Path, path: str, code: int) -> None:
    dest = tmp_path / "m.pth"
    with pytest.raises(DownloadError) as info:
        download_file(f"{server}{path}", dest, sha256=DIGEST, progress=False)
    message = str(info.value)
    assert f"HTTP {code}" in message
    assert f"download it by hand from {server}{path} and put it at {dest}" in message
    assert "\n" not in message
    assert _leftovers(tmp_path) == []


def test_http_errors_say_when_to_retry_and_where_a_redirect_led(server: str, tmp_path: Path) -> None:
    """An audit's nits: a 429 or 5xx says "retry later" (with the Retry-After the server sent), an error after a
    redirect names the URL that failed, and a Content-Length of -1 is no length (the download verifies) where it
    was "cut short: got N of -1 bytes"."""
    dest = tmp_path / "m.pth"
    with pytest.raises(
        DownloadError, match=r"HTTP 429 .*; retry later \(the server asks for 30 s\), or download"
    ):
        download_file(f"{server}/busy", dest, sha256=DIGEST, progress=False)
    with pytest.raises(DownloadError, match=r"HTTP 500 .*; retry later, or download"):
        download_file(f"{server}/500", dest, sha256=DIGEST, progress=False)
    with pytest.raises(DownloadError) as info:
        download_file(f"{server}/to-missing", dest, sha256=DIGEST, progress=False)
    assert f"HTTP 404 Not Found at {server}/missing (redirected); download it by hand" in str(info.value)
    assert (
        download_file(f"{server}/negative-length", dest, sha256=DIGEST, progress=False).read_bytes()
        == PAYLOAD
    )


def test_size_cap_from_content_length(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="over the 1000000-byte limit"):
        download_file(
            f"{server}/file.bin", tmp_path / "m.pth", sha256=DIGEST, progress=False, max_bytes=1_000_000
        )
    assert _leftovers(tmp_path) == []


def test_size_cap_while_streaming(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="exceeds the 1000000-byte limit"):
        download_file(
            f"{server}/no-length", tmp_path / "m.pth", sha256=DIGEST, progress=False, max_bytes=1_000_000
        )
    assert _leftovers(tmp_path) == []
    # the same body under the cap downloads fine without a Content-Length
    dest = download_file(f"{server}/no-length", tmp_path / "m.pth", sha256=DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_unverified_download_needs_explicit_permission(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="no published SHA-256"):
        download_file(f"{server}/file.bin", tmp_path / "m.pth", sha256=None, progress=False)
    assert _leftovers(tmp_path) == []
    with pytest.raises(DownloadError, match="not the expected 5"):
        download_file(
            f"{server}/file.bin",
            tmp_path / "m.pth",
            sha256=None,
            allow_unverified=True,
            expected_size=5,
            progress=False,
        )
    assert _leftovers(tmp_path) == []
    dest = download_file(
        f"{server}/file.bin",
        tmp_path / "m.pth",
        sha256=None,
        allow_unverified=True,
        expected_size=len(PAYLOAD),
        progress=False,
    )
    assert dest.read_bytes() == PAYLOAD


def test_timeout(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="timed out"):
        download_file(f"{server}/slow", tmp_path / "m.pth", sha256=DIGEST, progress=False, timeout=0.3)
    assert _leftovers(tmp_path) == []


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was just free: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="failed"):
        download_file(f"http://127.0.0.1:{port}/m.pth", tmp_path / "m.pth", sha256=DIGEST, progress=False)
    assert _leftovers(tmp_path) == []


def test_only_http_urls(tmp_path: Path) -> None:
    secret = tmp_path / "local.bin"
    secret.write_bytes(PAYLOAD)
    with pytest.raises(DownloadError, match="only http and https"):
        download_file(secret.as_uri(), tmp_path / "copy.bin", sha256=DIGEST, progress=False)
    assert not (tmp_path / "copy.bin").exists()


def test_redirect_loop_is_one_line(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        download_file(f"{server}/loop", tmp_path / "m.pth", sha256=DIGEST, progress=False)
    message = str(info.value)
    assert "infinite loop" in message and f"{server}/loop" in message
    assert "\n" not in message
    assert _leftovers(tmp_path) == []


def test_redirect_to_ftp_is_refused(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        download_file(f"{server}/to-ftp", tmp_path / "m.pth", sha256=DIGEST, progress=False)
    message = str(info.value)
    assert "only http and https redirects" in message and "ftp://127.0.0.1" in message
    assert "\n" not in message
    assert _leftovers(tmp_path) == []


def test_trickling_server_hits_the_overall_deadline(server: str, tmp_path: Path) -> None:
    # every read arrives well within timeout=1; only an overall deadline ends this download
    with pytest.raises(DownloadError, match=r"too slow: under .* KiB/s on average") as info:
        download_file(f"{server}/trickle", tmp_path / "m.pth", sha256=DIGEST, progress=False, timeout=1)
    assert "\n" not in str(info.value)
    assert _leftovers(tmp_path) == []


def test_killed_download_leftover_is_removed_by_the_next(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "model.pth"
    other = tmp_path / ".other.pth.abcdefgh.part"  # a leftover of another destination: not ours to remove
    other.write_bytes(b"x")
    code = (
        "import sys; from esrgan.download import download_file; "
        "download_file(sys.argv[1], sys.argv[2], sha256=sys.argv[3], progress=False, timeout=60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code, f"{server}/stall", str(dest), DIGEST])
    try:
        parts: list[Path] = []
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 0 for p in parts):  # wait until the body is streaming into the file
            assert child.poll() is None, "the download ended before it could be killed"
            assert time.monotonic() < deadline, "the download never started writing"
            time.sleep(0.05)
            parts = [p for p in tmp_path.glob(".model.pth.*.part") if p.exists()]
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        RELEASE_STALLED.set()
    assert child.returncode == -signal.SIGKILL
    assert len(parts) == 1 and parts[0].exists()  # kill -9 leaves the temporary file
    capsys.readouterr()

    out = download_file(f"{server}/file.bin", dest, sha256=DIGEST, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert _leftovers(tmp_path) == [other.name, "model.pth"]
    err = capsys.readouterr().err
    assert "removed 1 leftover temporary file of an interrupted download" in err and str(parts[0]) in err
    assert len(err.strip().splitlines()) == 1


def test_sigterm_during_a_download_leaves_no_temporary_file(server: str, tmp_path: Path) -> None:
    """`timeout`, systemd and `docker stop` send SIGTERM: the download unwinds as Ctrl-C does (its temporary file
    removed, exit 143), where it used to leave the partial file (an audit's finding)."""
    code = (
        "import sys; from esrgan.download import download_file; "
        "download_file(sys.argv[1], sys.argv[2], sha256=sys.argv[3], progress=False, timeout=60)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, f"{server}/trickle", str(tmp_path / "m.pth"), DIGEST]
    )
    try:
        deadline = time.monotonic() + 20
        while not list(tmp_path.glob(".m.pth.*.part")):  # the body (100 bytes over 30 s) is arriving
            assert child.poll() is None and time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        time.sleep(0.5)
        child.send_signal(signal.SIGTERM)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    assert child.returncode == 128 + signal.SIGTERM
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "start",
    [
        b"HTTP/1.1 200 OK\r\nX-Slow: ",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;",
    ],
)
def test_a_trickled_header_or_chunk_size_line_meets_the_deadline(tmp_path: Path, start: bytes) -> None:
    """The overall deadline also holds while a server trickles its headers or a chunk-size line (each read returns
    at once, so the per-read timeout never fired: a download could wait for days; an audit's finding)."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(start)
            while not done.is_set():  # one byte every 0.2 s: each read is quick, the line never ends
                try:
                    conn.sendall(b"a")
                except OSError:
                    return
                time.sleep(0.2)

    threading.Thread(target=serve, daemon=True).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(DownloadError, match="too slow"):
            download_file(
                f"http://127.0.0.1:{listener.getsockname()[1]}/x", tmp_path / "f", sha256="0" * 64, timeout=1
            )
    finally:
        done.set()
        listener.close()
    assert time.monotonic() - t0 < 10
    assert list(tmp_path.iterdir()) == []
