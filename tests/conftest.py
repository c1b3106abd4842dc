"""Shared fixtures and helpers: real photographs, the shared benchmark data (tests skip cleanly when it is absent),
tiny models, PSNR of raw outputs, the CLI in a subprocess and a local HTTP server.

Test modules import the helpers with `from conftest import ...` (pytest puts tests/ on the import path).
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_forkserver import ForkServer
from PIL import Image

from esrgan.device import ModelRunner
from esrgan.generator import RRDBNet
from esrgan.upscale import Upscaler

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C is part of what the tests check (in this process and in CLI children). A suite started in the
    background by a shell (`nohup pytest &`, `(setsid ... &)`) inherits SIGINT ignored, which Python then leaves
    ignored and every child inherits: those tests failed ("DID NOT RAISE KeyboardInterrupt", exit 0 not 130).
    A handler, unlike an ignore, is reset to the default in children at exec."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _sigint_state() -> tuple[object, bool, bool | None]:
    """SIGINT as this process holds it: the Python handler, blocked in this thread, ignored as the kernel sees it
    (a library may set SIG_IGN below Python; None where /proc is absent)."""
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        mask = next(int(x.split()[1], 16) for x in status if x.startswith("SigIgn:"))
        ignored: bool | None = bool(mask >> (signal.SIGINT - 1) & 1)
    except (OSError, StopIteration):
        ignored = None
    return signal.getsignal(signal.SIGINT), blocked, ignored


@pytest.fixture(autouse=True)
def _sigint_left_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test leaves SIGINT as it found it. Children inherit an ignored or blocked SIGINT: the full suite once
    saw a CLI child ignore Ctrl-C after some earlier test had changed it (which one is what this reports)."""
    before = _sigint_state()
    yield
    after = _sigint_state()
    if after != before:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        pytest.fail(f"{request.node.nodeid} changed SIGINT (handler, blocked, ignored): {before} -> {after}")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data" / "benchmarks").is_dir():
        pytest.skip(f"{SHARED} not present (it sits beside the repository in CI)")
    return SHARED


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real RGB photograph (scikit-image's astronaut, 512x512, uint8 HxWx3)."""
    data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def photo_small(photo: np.ndarray) -> np.ndarray:
    """A 48x40 crop of the real photograph (face and background), for quick model runs."""
    return np.ascontiguousarray(photo[60:108, 180:220])


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One torch thread for the test (training-type tests): the CI machine has 2 cores, and oversubscribed OpenMP
    threads crawl. Use as pytestmark = pytest.mark.usefixtures("one_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_photos(root: Path) -> tuple[Path, Path]:
    """Training folder: 128x128 crops of four of scikit-image's photographs; validation: two 48x48 crops."""
    skdata = pytest.importorskip("skimage.data")
    (root / "train").mkdir()
    (root / "val").mkdir()
    images = {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "chelsea": skdata.chelsea(),
              "rocket": skdata.rocket()}  # fmt: skip
    for name, img in images.items():
        h, w = img.shape[:2]
        Image.fromarray(img[h // 2 - 64 : h // 2 + 64, w // 2 - 64 : w // 2 + 64]).save(
            root / "train" / f"{name}.png"
        )
    Image.fromarray(images["astronaut"][40:88, 180:228]).save(root / "val" / "face.png")
    Image.fromarray(images["coffee"][100:148, 300:348]).save(root / "val" / "cup.png")
    return root / "train", root / "val"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """make_photos in a temporary folder: (training folder, validation folder)."""
    return make_photos(tmp_path_factory.mktemp("photos"))


# --- tiny models --------------------------------------------------------------------------------------------------
def tiny_rrdb(
    seed: int = 0, *, scale: int = 4, num_feat: int = 8, num_block: int = 1, num_grow: int = 4, **kw: Any
) -> RRDBNet:
    """A tiny RRDBNet with torch's default random init after torch.manual_seed(seed), in eval mode: a model file
    for the CLI, serve and loading tests that costs milliseconds per image."""
    torch.manual_seed(seed)
    model = RRDBNet(num_feat=num_feat, num_block=num_block, num_grow=num_grow, scale=scale, **kw)
    return model.eval()


def photo_preserving_rrdb(seed: int = 0, *, spread: float = 0.05, channels: int = 3) -> RRDBNet:
    """A tiny x4 RRDBNet that is nearest-neighbour upscaling plus a wide-field perturbation of size `spread`.

    An untrained model outputs ~0 everywhere, which would make the alpha, grey and bit-depth checks vacuous; this
    one reproduces the picture (identity kernels on the trunk) while its random body mixes in far-away pixels, as
    a real model's receptive field does. channels=1: a grey model (1 channel in and out).
    """
    gen = torch.Generator().manual_seed(seed)
    model = RRDBNet(num_in_ch=channels, num_out_ch=channels, num_feat=8, num_block=1, num_grow=4, scale=4)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for conv in (model.conv_first, model.conv_up1, model.conv_up2, model.conv_hr, model.conv_last):
            for c in range(channels):
                conv.weight[c, c, 1, 1] = 1.0
        for p in model.body.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        model.conv_body.weight.copy_(torch.randn(model.conv_body.weight.shape, generator=gen) * spread)
    return model.eval()


class MemoryBound(RRDBNet):
    """photo_preserving_rrdb's network on a device with room for passes of at most `pixels` input pixels: a larger
    pass asks torch's allocator for 2**62 bytes, and gets the error a full device gives (RuntimeError "can't
    allocate memory" here, torch.OutOfMemoryError on CUDA). `passes`: the (N, H, W) of every pass asked for."""

    def __init__(self, pixels: int) -> None:
        super().__init__(num_feat=8, num_block=1, num_grow=4, scale=4)
        self.load_state_dict(photo_preserving_rrdb().state_dict())
        self.pixels = pixels
        self.passes: list[tuple[int, int, int]] = []
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes.append((x.shape[0], x.shape[2], x.shape[3]))
        if x.shape[0] * x.shape[2] * x.shape[3] > self.pixels:
            torch.empty(1 << 62, dtype=torch.uint8)
        return super().forward(x)


def bound_upscaler(pixels: int, tile: int | None) -> tuple[Upscaler, MemoryBound]:
    """An Upscaler (CPU, fp32, the module engine: its forward runs) of a MemoryBound network."""
    model = MemoryBound(pixels)
    up = Upscaler(model, device="cpu", precision="fp32", tile=tile, copy_model=False)  # it counts its passes
    up.runner = ModelRunner(
        up.model, up.device, torch.float32, engine="module"
    )  # the module: its forward runs
    return up, model


# --- measuring ----------------------------------------------------------------------------------------------------
def psnr(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, *, peak: float = 1.0, clip: bool = False
) -> float:
    """PSNR in dB of raw arrays or tensors over all values (inf when equal). Not the evaluation protocol (that is
    esrgan.metrics.psnr, on Y with a border cut): this compares two computations of the same output.
    clip: clamp both to [0, peak] first (random tiny models put most raw values outside [0, 1])."""

    def values(x: np.ndarray | torch.Tensor) -> np.ndarray:
        return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)

    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and _both_8_bit(a, b) and not clip:
        mse = _mse_8_bit(a, b)
    else:
        x, y = values(a), values(b)
        if clip:
            x, y = np.clip(x, 0, peak), np.clip(y, 0, peak)
        mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def _both_8_bit(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and all(v.dtype in (np.uint8, np.int8) for v in (a, b))


def _mse_8_bit(a: np.ndarray, b: np.ndarray) -> float:
    """psnr's mean squared difference of two 8-bit arrays of one shape, bit for bit the float64 np.mean's: every
    square and every partial sum is an integer below 2**53, so that mean is the exact sum over the count, as here,
    where the sum is taken in int64 a few million values at a time. ~40x faster on a 4096x4096 RGB output (2.7 s
    there, with four float64 copies of 400 MB)."""
    x, y = a.reshape(-1), b.reshape(-1)
    total, step = 0, 1 << 22
    for i in range(0, x.size, step):
        d = np.subtract(x[i : i + step], y[i : i + step], dtype=np.int32)
        total += int(np.square(d, out=d).sum(dtype=np.int64))
    return total / x.size if x.size else math.nan


# --- the CLI as a user runs it ---------------------------------------------------------------------------------------
_FORK_SERVER = ForkServer()


def run_cli(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`esrgan ARGS...` in a process of its own (this interpreter, env added to ours), output captured as text:
    forked from a server that has imported torch where the environment allows (tests/cli_forkserver.py), else a
    subprocess."""
    command = [sys.executable, "-m", "esrgan.cli", *map(str, args)]
    done = _FORK_SERVER.run(command, cwd=cwd, env=env, timeout=timeout)
    if done is not None:
        return done
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def run_cli_in_address_space(
    extra: int,
    *args: str | Path,
    preload: str = "torch, esrgan.upscale",
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """run_cli with a real address-space limit (RLIMIT_AS) of `extra` bytes beyond what the process has mapped once
    `preload` is imported (what esrgan.device.host_memory_available then sees as free): relative, because a CUDA
    build of torch maps ~3.1 GB at import and the CPU build ~0.65 GB."""
    code = (
        f"import resource, sys, {preload}\n"
        "vm = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:'))\n"
        f"resource.setrlimit(resource.RLIMIT_AS, (vm + {extra},) * 2)\n"
        "from esrgan.cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# --- a real memory limit (a cgroup v1 memory group) ---------------------------------------------------------------------
V1_MEMORY = Path("/sys/fs/cgroup/memory")


def can_make_v1_memory_cgroups() -> bool:
    return (
        sys.platform == "linux"
        and os.geteuid() == 0
        and os.access(V1_MEMORY, os.W_OK)
        and (V1_MEMORY / "memory.limit_in_bytes").is_file()
    )


needs_memory_cgroups = pytest.mark.skipif(
    not can_make_v1_memory_cgroups(), reason="needs root and a writable cgroup v1 memory hierarchy"
)


def in_a_memory_cgroup(limit: int | None, *argv: str | Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run argv in a new v1 memory cgroup of `limit` bytes (None: no limit), joined before the program starts (so
    all of its memory is charged there); the group is removed afterwards. Returns the run and the most it used."""
    group = V1_MEMORY / f"esrgan-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        if limit is not None:
            (group / "memory.limit_in_bytes").write_text(str(limit))
        command = " ".join(shlex.quote(str(a)) for a in argv)
        script = f"echo $$ > {group / 'cgroup.procs'} && exec {command}"
        r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=300)
        return r, int((group / "memory.max_usage_in_bytes").read_text())
    finally:
        group.rmdir()


# --- a real HTTP server ------------------------------------------------------------------------------------------------
class LocalHTTPServer(ThreadingHTTPServer):
    """A download site on 127.0.0.1 (a free port) for download tests: counts GET requests its handler reports."""

    daemon_threads = True
    requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that time out or give up on purpose break the pipe: expected here, not worth a traceback


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and has a helper to answer with a body."""

    server: LocalHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_body(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def http_server(handler: Any) -> Iterator[LocalHTTPServer]:
    """Serve with `handler` (a BaseHTTPRequestHandler class or factory) in a thread until the block ends."""
    httpd = LocalHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


class UvicornThread:
    """A real ASGI server (uvicorn in a thread) on 127.0.0.1:port (0: a free port); the web page's tests use it."""

    def __init__(self, app: Any, port: int = 0) -> None:
        import socket
        import time

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the same port again after a stop
        self.sock.bind(("127.0.0.1", port))
        self.port: int = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()
