"""The tests' CLI fork server (tests/cli_forkserver.py) runs `esrgan` as a subprocess does: same outputs, same
messages, same exit statuses, relative paths from the given folder, the environment given, timeouts kept."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_forkserver import ForkServer
from conftest import tiny_rrdb
from PIL import Image

from esrgan.checkpoints import save_model

CLI = [sys.executable, "-m", "esrgan.cli"]


@pytest.fixture(scope="module")
def server() -> ForkServer:
    return ForkServer()


def subprocess_run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})  # fmt: skip


def test_the_fork_server_runs_the_cli_as_a_subprocess_does(
    server: ForkServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    skdata = pytest.importorskip("skimage.data")
    save_model(tmp_path / "tiny.safetensors", tiny_rrdb())
    Image.fromarray(skdata.astronaut()[100:164, 200:280]).save(tmp_path / "photo.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    # paths relative to the run's folder; one file of two failing (status 1); a model's description; an argument
    # error (status 2)
    cases = [
        ["upscale", "photo.png", "-o", "{out}", "--model", "tiny.safetensors", "--quiet"],
        ["upscale", "photo.png", "broken.png", "-o", "{out}", "--model", "tiny.safetensors"],
        ["info", "tiny.safetensors"],
        ["upscale", "photo.png", "--tile", "-3"],
    ]
    for case, status in zip(cases, (0, 1, 0, 2), strict=True):
        args, out = [a.format(out=tmp_path / "out") for a in case], tmp_path / "out"
        runs, files = [], []
        for fork in (True, False):
            if fork:
                done = server.run([*CLI, *args], cwd=tmp_path, env=None, timeout=300)
                assert done is not None  # forked, not handed back
            else:
                done = subprocess_run(args, tmp_path)
            # the seconds a file or the batch took vary from run to run
            runs.append(
                (done.returncode, *(re.sub(r"\d+\.\d+ s\b", "T s", t) for t in (done.stdout, done.stderr)))
            )
            files.append({p.name: p.read_bytes() for p in out.iterdir()} if out.is_dir() else None)
            shutil.rmtree(out, ignore_errors=True)
        assert runs[0] == runs[1] and runs[0][0] == status, case
        assert files[0] == files[1], case

    # the environment given reaches the child: ESRGAN_HOME is where `esrgan models` looks for downloads
    home = tmp_path / "home"
    listing = server.run([*CLI, "models"], cwd=tmp_path, env={"ESRGAN_HOME": str(home)}, timeout=300)
    assert listing is not None and listing.returncode == 0 and str(home) in listing.stdout + listing.stderr
    # a value the interpreter or torch reads at start is not forked: the caller runs a subprocess
    assert server.run([*CLI, "models"], cwd=tmp_path, env={"OMP_NUM_THREADS": "7"}, timeout=300) is None
    monkeypatch.setenv("ESRGAN_TEST_FORK", "0")
    assert server.run([*CLI, "models"], cwd=tmp_path, env=None, timeout=300) is None


def test_a_run_past_its_timeout_is_killed_and_the_server_goes_on(server: ForkServer, tmp_path: Path) -> None:
    with socket.socket() as s:  # a free port for a web server that would run until stopped
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(subprocess.TimeoutExpired):
        server.run(
            [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path, env=None, timeout=5
        )
    done = server.run([*CLI, "--version"], cwd=tmp_path, env=None, timeout=60)
    assert done is not None and done.returncode == 0 and done.stdout.startswith("esrgan")


def test_the_outputs_are_what_the_model_computes(server: ForkServer, tmp_path: Path) -> None:
    """Not only the same as a subprocess's: the right pixels (the tiny model run here, in this process)."""
    from esrgan.upscale import Upscaler

    pixels = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    save_model(tmp_path / "tiny.safetensors", tiny_rrdb())
    done = server.run([*CLI, "upscale", "in.png", "-o", "out.png", "--model", "tiny.safetensors", "--precision", "fp32",
                       "--device", "cpu"], cwd=tmp_path, env=None, timeout=300)  # fmt: skip
    assert done is not None and done.returncode == 0, done.stderr if done else None
    want = Upscaler(tiny_rrdb(), device="cpu", precision="fp32").upscale(pixels)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), want)


PROBE = """
import atexit, os, sys, threading, time
what = sys.argv[1]
if what == "start":
    print(sys.path[0], sys.argv[0].endswith("cli.py"), __name__, __spec__.name, sorted(globals()))
    print(sorted(int(fd) for fd in os.listdir("/proc/self/fd"))[:4])  # 0, 1, 2 and listdir's own
elif what == "raise":
    raise ValueError("boom")
elif what == "interrupt":
    raise KeyboardInterrupt
elif what == "hook":
    sys.excepthook = lambda kind, value, tb: print("HOOK", value, file=sys.stderr)
    raise ValueError("hooked")
elif what == "exit":
    atexit.register(print, "at exit")
    class Late:
        def __del__(self):
            print("finalized")
    late = Late()
    kept = open("unflushed.txt", "w")
    kept.write("data")
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
    sys.exit("bye")
elif what == "bytes":
    sys.stdout.flush()
    sys.stdout.buffer.write(bytes([255]))
"""


@pytest.mark.parametrize("what", ["start", "raise", "interrupt", "hook", "exit", "bytes"])
def test_the_interpreter_starts_and_ends_a_forked_run_as_a_fresh_one(
    server: ForkServer, tmp_path: Path, what: str
) -> None:
    """A stand-in esrgan/cli.py in the run's folder (found first: `python -m` puts the folder first on sys.path)
    shows what a program sees and leaves: the module search path, argv, a fresh __main__, no descriptors of the
    server's; an uncaught exception's status and message, KeyboardInterrupt's SIGINT, sys.excepthook, atexit
    hooks, non-daemon threads, finalizers and unclosed files at exit, and undecodable output refused alike."""
    (tmp_path / "esrgan").mkdir()
    (tmp_path / "esrgan" / "__init__.py").write_text("")
    (tmp_path / "esrgan" / "cli.py").write_text(PROBE)
    runs, kept = [], []
    for fork in (True, False):
        try:
            done = (
                server.run([*CLI, what], cwd=tmp_path, env=None, timeout=60)
                if fork
                else subprocess_run([what], tmp_path)
            )
            assert done is not None
            last = done.stderr.strip().splitlines()[-1:] if done.stderr else []
            runs.append((done.returncode, done.stdout, last))
        except UnicodeDecodeError as exc:
            runs.append((type(exc).__name__,))
        kept.append(
            (tmp_path / "unflushed.txt").read_text() if (tmp_path / "unflushed.txt").exists() else None
        )
        (tmp_path / "unflushed.txt").unlink(missing_ok=True)
    assert runs[0] == runs[1] and kept[0] == kept[1]
    expected = {"start": 0, "raise": 1, "interrupt": -2, "hook": 1, "exit": 1, "bytes": "UnicodeDecodeError"}
    assert runs[0][0] == expected[what]
    if what == "exit":
        assert runs[0][1:] == ("thread done\nat exit\nfinalized\n", ["bye"]) and kept[0] == "data"
    if what == "start":
        assert runs[0][1].splitlines()[1] == "[0, 1, 2, 3]"


def test_an_interrupted_run_kills_its_child_and_the_next_run_is_its_own(
    server: ForkServer, tmp_path: Path
) -> None:
    """Ctrl-C (or a test's own timeout) while a run waits: the child is killed, as subprocess.run kills its own,
    and the next run gets its own answer, not the interrupted one's."""
    import signal
    import threading

    def interrupt() -> None:
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(3.0, interrupt)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        server.run(
            [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path, env=None, timeout=60
        )
    done = server.run([*CLI, "--version"], cwd=tmp_path, env=None, timeout=60)
    assert done is not None and done.returncode == 0 and done.stdout.startswith("esrgan")
    with socket.socket() as s:  # the web server the interrupted run started is gone: its port is free again
        s.bind(("127.0.0.1", port))
