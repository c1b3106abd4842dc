"""Atomic file writes: write to a temporary file beside the target, fsync, then rename over it.

A crash, a kill -9, a full disk or an exception never leaves a half-written file under the final name, and an
existing file is only replaced when the caller says so.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


class OutputExistsError(FileExistsError):
    """The destination exists and overwriting was not asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path}: already exists (use --overwrite to replace it)")
        self.path = path


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in dest's folder; on success it is fsynced and renamed to dest.

    On any exception the temporary file is removed and dest is untouched. With overwrite=False an existing dest
    raises OutputExistsError before anything is written, and the final rename refuses to replace a file that
    appeared meanwhile (link + unlink instead of rename).
    """
    dest = Path(dest)
    if not overwrite and dest.exists():
        raise OutputExistsError(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the permissions any new file would
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, dest)
        else:
            try:
                os.link(tmp, dest)  # fails if dest appeared since the check: never clobber
            except FileExistsError:
                raise OutputExistsError(dest) from None
            except OSError:
                # file systems without hard links: best effort
                if dest.exists():
                    raise OutputExistsError(dest) from None
                os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> Path:
    with atomic_path(dest, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def _read_umask() -> int:
    # os.umask can only be read by setting it: do it once at import, not while other threads create files
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
