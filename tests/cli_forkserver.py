"""`esrgan` CLI runs for the tests without paying the torch import each time: a fork server.

Run as a script, this is the server: it imports torch (about 1.6 of the ~2.1 s a CLI test's subprocess took on a
2-core Zen 4, ~190 of them in the suite), then for each request read from stdin forks a child that becomes
`python -m esrgan.cli ARGS` as a fresh interpreter runs it: its own working folder first on sys.path, its
environment, a fresh __main__, stdin from /dev/null and stdout/stderr into files, no other descriptor of the
server's, `esrgan` imported anew (nothing of the package is loaded in the server), and the interpreter's own end:
exit status, sys.excepthook, atexit hooks, non-daemon threads, finalizers, flushed files, SIGINT for an uncaught
KeyboardInterrupt (tests/test_cli_forkserver.py compares each with a subprocess). The child is a real process
running the real CLI; only the interpreter's start and torch's import are shared.

What differs, and is not for these tests: every child has the server's string-hash seed (a fresh interpreter draws
its own: a test that needs two runs to differ in set order runs subprocesses, ESRGAN_TEST_FORK=0), and an uncaught
exception's traceback starts with the server's frames where `python -m` shows runpy's. An environment that gives
another value than the server's to anything but ESRGAN_* and PYTEST_* keys, HOME and XDG_* folders
(OMP_NUM_THREADS=2, PYTHON*, TORCH_*...: read at the interpreter's start or torch's import) goes to a plain
subprocess (`ForkServer.run` returns None), as does every run with ESRGAN_TEST_FORK=0 in the tests' environment (to
rule the server out when a test misbehaves). A run interrupted while it waits (Ctrl-C, a test's timeout) kills its
child and the server, which the next run starts anew.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

SAFE_KEYS = ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME")
"""Environment keys a forked child may take other values of: read when used, not at the interpreter's start or
torch's import (ESRGAN_* too: the package is imported by each child; PYTEST_*: pytest's own, PYTEST_CURRENT_TEST
changing at every test)."""


def _safe(key: str) -> bool:
    return key.startswith(("ESRGAN_", "PYTEST_")) or key in SAFE_KEYS


class ForkServer:
    """One server per test process, started at the first run, stopped with the process (its stdin closes)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._base: dict[str, str] = {}  # the environment the server started with
        self._buffer = b""

    @staticmethod
    def wanted() -> bool:
        return os.environ.get("ESRGAN_TEST_FORK", "1") != "0"

    def _server(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._base = dict(os.environ)
            self._buffer = b""
            self._proc = subprocess.Popen(
                [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self._base
            )
            ready = self._reply(self._proc, 120)
            assert ready.get("ready"), ready
        return self._proc

    def _reply(self, proc: subprocess.Popen[bytes], timeout: float | None) -> dict[str, Any]:
        """The server's next reply line (read from the descriptor itself: a buffered reader could hold the next
        line while select waits on the descriptor)."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while b"\n" not in self._buffer:
            if timeout is not None and not select.select([fd], [], [], timeout)[0]:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the CLI fork server ended (status {proc.wait()})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def run(
        self, command: Sequence[str], *, cwd: Path | None, env: Mapping[str, str] | None, timeout: float
    ) -> subprocess.CompletedProcess[str] | None:
        """`command` ([python, "-m", "esrgan.cli", ARGS...]) as subprocess.run(command, cwd=cwd, env=os.environ +
        env, capture_output=True, text=True, timeout=timeout) would run it; None where the environment differs
        from the server's where it matters or another thread holds the server (the caller runs a subprocess)."""
        if not self.wanted() or not self._lock.acquire(blocking=False):
            return None
        pid, pending = None, False  # pending: a request whose replies have not all been read
        try:
            proc = self._server()
            full = {**os.environ, **(env or {})}
            if any(full.get(k) != self._base.get(k) for k in set(full) | set(self._base) if not _safe(k)):
                return None  # a value the interpreter or torch reads at start differs from the server's
            with tempfile.TemporaryDirectory(prefix="esrgan-cli-") as folder:
                out, err = Path(folder) / "out", Path(folder) / "err"
                request = {"argv": list(command[3:]), "cwd": os.path.abspath(cwd or os.getcwd()), "env": full,
                           "out": str(out), "err": str(err)}  # fmt: skip
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
                pending = True
                pid = self._reply(proc, 60)["pid"]
                try:
                    status = self._reply(proc, timeout)["status"]
                except TimeoutError:
                    os.kill(pid, 9)
                    self._reply(proc, 60)
                    pending = False
                    raise subprocess.TimeoutExpired(
                        list(command), timeout, out.read_bytes(), err.read_bytes()
                    ) from None
                pending = False
                # decoded as subprocess.run(text=True) decodes: the locale's encoding, strictly
                return subprocess.CompletedProcess(list(command), status, out.read_text(), err.read_text())
        except BaseException:
            # interrupted while a child ran (Ctrl-C, a test's own timeout): the child killed as subprocess.run
            # kills its own, and the server too, whose replies would otherwise answer the next run
            if pending and pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
            if pending and self._proc is not None:
                self._proc.kill()
                self._proc.wait()
                self._proc = None
            raise
        finally:
            self._lock.release()


def _child(request: dict[str, Any], replies: IO[str]) -> None:
    """In the forked child: become `python -m esrgan.cli ARGV`. Whatever ends the module (a return, SystemExit,
    an uncaught exception, KeyboardInterrupt) leaves this function and the server's loop: the interpreter ends the
    process as it ends `python -m` (its exit status, sys.excepthook, atexit hooks, non-daemon threads, objects'
    finalizers, flushed files; a KeyboardInterrupt by SIGINT)."""
    import runpy
    import signal
    import types

    replies.close()  # the server's reply pipe: not the child's (nor its DataLoader workers')
    os.chdir(request["cwd"])
    sys.path[0] = os.getcwd()  # as `python -m` puts it first (the server's is this script's folder)
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):  # fmt: skip
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
    sys.argv = ["esrgan", *request["argv"]]
    # a fresh __main__, as the interpreter makes for `python -m` (not the server's)
    main = types.ModuleType("__main__")
    main.__annotations__ = {}
    sys.modules["__main__"] = main
    runpy._run_module_as_main("esrgan.cli")  # type: ignore[attr-defined]  # what `python -m` calls
    raise SystemExit(0)  # the module returned: the end of the program, not back into the server's loop


def _serve(requests: IO[str], replies: IO[str]) -> None:
    import torch  # noqa: F401  (what every child shares)

    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, replies)  # never returns: its end propagates out of this loop and the script
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


if __name__ == "__main__":
    # the replies go through a duplicate of stdout: the children's fd 1 is theirs
    _serve(sys.stdin, os.fdopen(os.dup(1), "w"))
