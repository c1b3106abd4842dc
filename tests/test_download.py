"""esrgan.download against a real HTTP server on 127.0.0.1: verified files land, every failure leaves nothing."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import QuietHandler, http_server

from esrgan.download import download_file, normalize_digest, sha256_file
from esrgan.errors import DownloadError

PAYLOAD = os.urandom(2_500_000)  # spans several 1 MiB read chunks
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(QuietHandler):
    def do_GET(self) -> None:
        if self.path == "/file.bin":
            self.send_body(200, PAYLOAD)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/file.bin")
            self.send_header("Content-Length", "0")
            self.end_headers()
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
