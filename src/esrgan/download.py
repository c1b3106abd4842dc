"""Hash-verified, atomic HTTP downloads (model weights, VGG19 for the perceptual loss, ...).

A file only appears under its final name once every byte has arrived and its SHA-256 matches the published digest:
the body streams into a temporary file beside the destination (esrgan.atomic), which is removed on any failure.
Model files are pickles or large binaries, so an unverified download is refused unless the caller opts in.

urllib rather than requests: one GET with redirects, a timeout and a streamed body needs no extra dependency.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from . import __version__
from .atomic import atomic_path, remove_leftovers
from .errors import DownloadError, one_line

DEFAULT_MAX_BYTES = 2 * 1024**3
# Overall deadline: after a grace period of `timeout` seconds, the average rate must stay above this (a server that
# trickles a byte now and then would otherwise keep a download going forever: `timeout` only bounds each read).
DEFAULT_MIN_RATE = 8 * 1024  # bytes per second: a 67 MB model may take over two hours
MIN_PREFIX_HEX = 8  # BasicSR names its release files NAME-<first 8 hex of the SHA-256>.pth
_CHUNK = 1 << 20
_HEX = frozenset("0123456789abcdef")


def normalize_digest(digest: str) -> str:
    """Lower-case a full SHA-256 (64 hex) or a published prefix of one (>= 8 hex); reject anything else."""
    d = digest.strip().lower()
    if not (MIN_PREFIX_HEX <= len(d) <= 64) or not set(d) <= _HEX:
        raise ValueError(
            f"not a SHA-256 digest or a prefix of >= {MIN_PREFIX_HEX} hex characters: {digest!r}"
        )
    return d


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_matches(actual: str, expected: str) -> bool:
    """True when the full hex digest `actual` equals `expected` or starts with it (a published prefix)."""
    return actual.lower().startswith(normalize_digest(expected))


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None,
    progress: bool = True,
    timeout: float = 60,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allow_unverified: bool = False,
    expected_size: int | None = None,
    min_rate: float = DEFAULT_MIN_RATE,
) -> Path:
    """Download `url` to `dest` (replacing it) only if the body is complete and matches `sha256`.

    `sha256` is a full digest or a published prefix of >= 8 hex characters. None is refused unless
    `allow_unverified` is set, and then `expected_size` (if given) is the only check. Bodies larger than
    `max_bytes` are refused, and so is a download whose average rate falls under `min_rate` bytes/s once `timeout`
    seconds have passed (an overall deadline; `timeout` alone bounds each read). Only http and https redirects are
    followed. Temporary files that an interrupted download of `dest` left (kill -9) are removed first, saying so on
    stderr. Every failure raises DownloadError (one line: what happened, what to do) and leaves
    neither `dest` (if it did not exist) nor a temporary file behind.
    """
    dest = Path(dest)
    by_hand = f"download it by hand from {url} and put it at {dest}"
    expected = normalize_digest(sha256) if sha256 is not None else None
    if expected is None and not allow_unverified:
        raise DownloadError(
            f"refusing to download {url}: no published SHA-256 to verify it against; {by_hand}"
        )
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"refusing to download {url}: only http and https URLs are supported; {by_hand}")

    _remove_leftovers(dest)
    request = urllib.request.Request(url, headers={"User-Agent": f"esrgan/{__version__}"})
    opener = urllib.request.build_opener(_HTTPOnlyRedirects)
    try:
        with (
            opener.open(request, timeout=timeout) as response,
            atomic_path(dest, overwrite=True) as tmp,
        ):
            length = _content_length(response)
            if length is not None and length > max_bytes:
                raise DownloadError(
                    f"refusing to download {url}: it is {length} bytes, over the {max_bytes}-byte limit; {by_hand}"
                )
            actual, received = _stream(
                response,
                tmp,
                desc=dest.name,
                total=length,
                progress=progress,
                cap=max_bytes,
                grace=timeout,
                min_rate=min_rate,
            )
            if received < 0:
                raise DownloadError(
                    f"download of {url} is too slow: under {_rate(min_rate)} on average after {timeout:g} s; "
                    f"retry later, or {by_hand}"
                )
            if received > max_bytes:
                raise DownloadError(
                    f"refusing to download {url}: the body exceeds the {max_bytes}-byte limit; {by_hand}"
                )
            if length is not None and received != length:
                raise DownloadError(
                    f"download of {url} was cut short: got {received} of {length} bytes; retry, or {by_hand}"
                )
            if expected is not None and not actual.startswith(expected):
                raise DownloadError(
                    f"download of {url} has SHA-256 {actual}, not the published {expected}; nothing was saved. "
                    f"Retry, or {by_hand}"
                )
            if expected_size is not None and received != expected_size:
                raise DownloadError(
                    f"download of {url} is {received} bytes, not the expected {expected_size}; nothing was saved. "
                    f"Retry, or {by_hand}"
                )
    except _RedirectRefused as exc:
        raise DownloadError(
            f"refusing to download {url}: it redirects to {exc.target}, and only http and https redirects are "
            f"followed; {by_hand}"
        ) from None
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"download of {url} failed: HTTP {exc.code} {one_line(exc.reason)}; {by_hand}"
        ) from None
    except urllib.error.URLError as exc:
        raise DownloadError(
            f"download of {url} failed: {_describe(exc.reason)}; retry, or {by_hand}"
        ) from None
    except http.client.IncompleteRead as exc:
        raise DownloadError(
            f"download of {url} was cut short after {len(exc.partial)} more bytes; retry, or {by_hand}"
        ) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise DownloadError(f"download of {url} failed: {_describe(exc)}; retry, or {by_hand}") from None
    except OSError as exc:  # writing: full disk, read-only folder (network errors are caught above)
        raise DownloadError(
            f"{dest}: cannot save the download of {url} ({one_line(exc.strerror or exc)}); free space or choose a writable "
            "folder (ESRGAN_HOME for the model cache)"
        ) from None
    return dest


class _RedirectRefused(urllib.error.URLError):
    def __init__(self, target: str) -> None:
        super().__init__(f"redirect to {target} refused")
        self.target = target


class _HTTPOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects to ftp:// too; a download may only be redirected to http or https."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: object,
        code: int,
        msg: str,
        headers: object,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise _RedirectRefused(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)  # type: ignore[arg-type]


def _remove_leftovers(dest: Path) -> None:
    """Remove what interrupted downloads of dest left (esrgan.atomic.remove_leftovers: only files no writer holds)."""
    removed = remove_leftovers([dest])
    if removed:
        n, size = len(removed), sum(b for _, b in removed)
        names = ", ".join(str(p) for p, _ in removed[:3]) + (" ..." if n > 3 else "")
        print(
            f"esrgan: removed {n} leftover temporary file{'s' if n > 1 else ''} of an interrupted download "
            f"({size} bytes): {names}",
            file=sys.stderr,
            flush=True,
        )


def _rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1024:g} KiB/s"


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _stream(
    response: http.client.HTTPResponse,
    tmp: Path,
    *,
    desc: str,
    total: int | None,
    progress: bool,
    cap: int,
    grace: float,
    min_rate: float,
) -> tuple[str, int]:
    """Copy the body into tmp, hashing as it goes; stops once past `cap` bytes. Returns (hex digest, bytes read);
    bytes read is -1 when the average rate fell under `min_rate` after `grace` seconds (the overall deadline)."""
    h = hashlib.sha256()
    received = 0
    start = time.monotonic()
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not progress or not sys.stderr.isatty(),
        leave=False,
    )
    with bar, open(tmp, "wb") as out:
        # read1: whatever has arrived (up to a chunk), so the deadline is checked while a server trickles
        while chunk := response.read1(_CHUNK):
            received += len(chunk)
            if time.monotonic() - start > grace + received / min_rate:
                return "", -1
            if received > cap:
                break
            h.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
    return h.hexdigest(), received


def _describe(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    return one_line(reason) or type(reason).__name__
