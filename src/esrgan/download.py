"""Hash-verified, atomic HTTP downloads (model weights, VGG19 for the perceptual loss, ...).

A file only appears under its final name once every byte has arrived and its SHA-256 matches the published digest:
the body streams into a temporary file beside the destination (esrgan.atomic), which is removed on any failure.
Model files are pickles or large binaries, so an unverified download is refused unless the caller opts in.

urllib rather than requests: one GET with redirects, a timeout and a streamed body needs no extra dependency.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import os
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

from . import __version__
from .atomic import atomic_path, remove_leftovers
from .errors import DownloadError, one_line, shown

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
    by_hand: str | None = None,
) -> Path:
    """Download `url` to `dest` (replacing it) only if the body is complete and matches `sha256`.

    `sha256` is a full digest or a published prefix of >= 8 hex characters. None is refused unless
    `allow_unverified` is set, and then `expected_size` (if given) is the only check. Bodies larger than
    `max_bytes` are refused, and so is a download whose average rate falls under `min_rate` bytes/s once `timeout`
    seconds have passed (an overall deadline; `timeout` alone bounds each read). Only http and https redirects are
    followed. Temporary files that an interrupted download of `dest` left (kill -9) are removed first, saying so on
    stderr. Every failure raises DownloadError (one line: what happened, what to do) and leaves
    neither `dest` (if it did not exist) nor a temporary file behind. by_hand: what the errors advise instead
    (default: "download it by hand from URL and put it at DEST"); a caller that says more itself names the URL once.
    """
    dest = Path(dest)
    if by_hand is None:
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
    too_slow = (
        f"download of {url} is too slow: under {_rate(min_rate)} on average after {timeout:g} s; "
        f"retry later, or {by_hand}"
    )
    with _Deadline(timeout, min_rate) as deadline, _sigterm_unwinds():
        try:
            return _fetch(
                url,
                dest,
                expected,
                by_hand,
                deadline,
                progress=progress,
                timeout=timeout,
                max_bytes=max_bytes,
                expected_size=expected_size,
                min_rate=min_rate,
            )
        except DownloadError:
            if deadline.fired:  # whatever the cut connection looked like (reset, short read, no status line)
                raise DownloadError(too_slow) from None
            raise


def _fetch(
    url: str,
    dest: Path,
    expected: str | None,
    by_hand: str,
    deadline: _Deadline,
    *,
    progress: bool,
    timeout: float,
    max_bytes: int,
    expected_size: int | None,
    min_rate: float,
) -> Path:
    request = urllib.request.Request(url, headers={"User-Agent": f"esrgan/{__version__}"})
    opener = urllib.request.build_opener(
        _HTTPOnlyRedirects, _WatchedHTTPHandler(deadline), _WatchedHTTPSHandler(deadline)
    )
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
                deadline=deadline,
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
        where = "" if exc.url in (None, url) else f" at {shown(exc.url)} (redirected)"
        later = ""
        if exc.code == 429 or exc.code >= 500:  # busy or broken for now: another try may work
            wait = str(exc.headers.get("Retry-After", "")) if exc.headers is not None else ""
            later = (
                "retry later"
                + (f" (the server asks for {int(wait)} s)" if wait.strip().isdigit() else "")
                + ", or "
            )
        raise DownloadError(
            f"download of {url} failed: HTTP {exc.code} {one_line(exc.reason)}{where}; {later}{by_hand}"
        ) from None
    except urllib.error.URLError as exc:
        raise DownloadError(
            f"download of {url} failed: {_describe(exc.reason)}; retry, or {by_hand}"
        ) from None
    except http.client.IncompleteRead as exc:
        raise DownloadError(
            f"download of {url} was cut short after {len(exc.partial)} more bytes; retry, or {by_hand}"
        ) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException, ssl.SSLError, _ReadError) as exc:
        reason = exc.__cause__ if isinstance(exc, _ReadError) else exc
        raise DownloadError(f"download of {url} failed: {_describe(reason)}; retry, or {by_hand}") from None
    except OSError as exc:  # writing: full disk, read-only folder (network errors are caught above)
        raise DownloadError(
            f"{dest}: cannot save the download of {url} ({one_line(exc.strerror or exc)}); free space or choose a writable "
            "folder (ESRGAN_HOME for the model cache)"
        ) from None
    return dest


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (timeout(1), systemd, docker stop) ends the process as usual (status 143), but by unwinding, so the
    temporary file (up to the whole download) is removed at once, as Ctrl-C does, not left for a later download of
    the same file to find. Only the main thread can set a handler; elsewhere, and where a handler is set, nothing
    changes."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    ):
        yield
        return

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _ReadError(Exception):
    """An OSError from the connection while reading the body (TLS record errors, EHOSTUNREACH...): not a disk error."""


class _Deadline:
    """The overall deadline (`grace` seconds, then an average of `min_rate` bytes/s), enforced while urllib is inside
    a read: a server that trickles its status line, its headers or a chunk-size line one byte per `timeout` keeps each
    read short and the whole going for days. Every socket this download opens is registered; once the deadline has
    passed, a watchdog thread shuts them down, which ends whatever read is blocked at once."""

    def __init__(self, grace: float, min_rate: float) -> None:
        self.grace, self.min_rate = grace, min_rate
        self.received = 0
        self.fired = False
        self._start = time.monotonic()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="esrgan-download-deadline", daemon=True)

    def expired(self) -> bool:
        return time.monotonic() - self._start > self.grace + self.received / self.min_rate

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.fired:
                self._shutdown(sock)

    def __enter__(self) -> _Deadline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            if self.expired():
                with self._lock:
                    self.fired = True
                    for sock in self._socks:
                        self._shutdown(sock)
                return

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        # closed, or detached by the TLS wrapper (its TLS socket is watched too)
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the TCP shutdown, also under an SSLSocket


class _Watched:
    """An http.client connection whose sockets (TCP, then TLS) are registered with a _Deadline."""

    sock: socket.socket
    _create_connection: Callable[..., socket.socket]

    def __init__(self, *args: object, deadline: _Deadline, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        create = self._create_connection

        def create_watched(*a: object, **k: object) -> socket.socket:
            sock = create(*a, **k)
            deadline.watch(sock)
            return sock

        self._create_connection = create_watched

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._deadline.watch(self.sock)


class _WatchedHTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTPConnection, deadline=self._deadline), req)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            functools.partial(_WatchedHTTPSConnection, deadline=self._deadline),
            req,
            context=getattr(self, "_context", None),
        )


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
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return (
        length if length is not None and length >= 0 else None
    )  # "-1": no length given (the cap still holds)


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
    deadline: _Deadline,
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
        while True:
            try:
                chunk = response.read1(_CHUNK)
            except (TimeoutError, ConnectionError, http.client.HTTPException):
                raise
            except OSError as exc:  # the connection's, not the disk's (ssl.SSLError, EHOSTUNREACH...)
                raise _ReadError() from exc
            if not chunk:
                break
            received += len(chunk)
            deadline.received = received
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
