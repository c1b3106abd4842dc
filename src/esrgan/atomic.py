"""Atomic file writes: write to a temporary file beside the target, fsync, then rename over it.

A crash, a kill -9, a full disk or an exception never leaves a half-written file under the final name, and an
existing file is only replaced when the caller says so.

A kill -9 or a power cut does leave the temporary file (`.NAME.XXXXXXXX.part`, up to a whole output in size; for a
name too long to take 15 more bytes, NAME is its first bytes, "~" and 8 hex digits of the whole name's SHA-256).
remove_leftovers(dests) removes those of the given destinations: only names of exactly that pattern, and only files
no live writer holds (each writer holds an exclusive flock on its temporary file while it exists; the kernel
releases it when the process dies, however it dies).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

try:
    import fcntl
except (
    ImportError
):  # Windows: no flock, so leftovers are never removed (a live writer's file cannot be told apart)
    fcntl = None  # type: ignore[assignment]

_TEMP_SUFFIX = ".part"
_RANDOM = r"[a-z0-9_]{8}"  # tempfile.mkstemp's random part
_NAME_MAX = (
    255  # bytes in one file name: ext4, XFS, btrfs, APFS, NTFS (in UTF-16 units); pathconf says where it can
)


def _name_max(folder: Path) -> int:
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no such folder yet, or no pathconf (Windows)
        return _NAME_MAX
    return limit if 32 <= limit < _NAME_MAX else _NAME_MAX  # eCryptfs: 143; -1: no limit said


def temp_stem(folder: Path, name: str) -> str:
    """NAME in the temporary file `.NAME.XXXXXXXX.part` of a write to folder/name: the name itself, or where that
    would make the temporary name longer than a file name may be (a legal name of 241+ bytes), the name's first
    bytes (whole characters), "~" and 8 hex digits of the whole name's SHA-256, so that it stays one name's own."""
    encoded = os.fsencode(name)
    room = _name_max(folder) - len(".." + "x" * 8 + _TEMP_SUFFIX)
    if len(encoded) <= room:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:8]
    cut = room - 9
    while cut > 0 and encoded[cut] & 0xC0 == 0x80:  # never cut a UTF-8 character in two
        cut -= 1
    return os.fsdecode(encoded[:cut]) + "~" + digest


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
    fd, tmp = _locked_temp(dest)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _publish(tmp, dest, overwrite)
        _fsync_dir(dest.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if fd >= 0:
            os.close(fd)  # releases the lock, after the file is gone or renamed


@contextlib.contextmanager
def atomic_paths(dests: Sequence[str | os.PathLike[str]], *, overwrite: bool = False) -> Iterator[list[Path]]:
    """atomic_path for files that only make sense together (ncnn's .param and .bin): one temporary path per dest.

    Every dest is checked before anything is written, all are written and fsynced as temporary files, and only then
    renamed, one after the other in the order given: put last the file whose presence says the set is complete.
    On any exception the temporary files are removed and the destinations are as they were: when a rename fails
    after earlier ones succeeded, those are undone (the files they replaced come back from hard links taken just
    before; on a file system without hard links a replaced file cannot come back, the new one stays).
    """
    paths = [Path(d) for d in dests]
    if not overwrite:
        for dest in paths:
            if dest.exists():
                raise OutputExistsError(dest)
    for dest in paths:
        dest.parent.mkdir(parents=True, exist_ok=True)
    held: list[tuple[int, Path]] = []
    try:
        for dest in paths:
            held.append(_locked_temp(dest))
        yield [tmp for _, tmp in held]
        for _, tmp in held:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        _publish_all([(tmp, dest) for (_, tmp), dest in zip(held, paths, strict=True)], overwrite)
        for folder in dict.fromkeys(dest.parent for dest in paths):
            _fsync_dir(folder)
    finally:
        for fd, tmp in held:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if fd >= 0:
                os.close(fd)


def _publish(tmp: Path, dest: Path, overwrite: bool) -> None:
    """Rename tmp to dest; without overwrite, never over a file that appeared since the check."""
    if overwrite:
        os.replace(tmp, dest)
        return
    try:
        os.link(tmp, dest)  # fails if dest appeared since the check: never clobber
    except FileExistsError:
        raise OutputExistsError(dest) from None
    except OSError:
        # file systems without hard links: best effort
        if dest.exists():
            raise OutputExistsError(dest) from None
        os.replace(tmp, dest)


def _publish_all(moves: list[tuple[Path, Path]], overwrite: bool) -> None:
    """_publish each (tmp, dest) in order; if one fails, put back the destinations already published, then raise."""
    done: list[tuple[Path, Path | None, bool]] = []  # (dest, a link to the file it replaced, was there one)
    kept: list[Path] = []
    try:
        for tmp, dest in moves:
            existed = os.path.lexists(dest)
            old = _keep(dest) if existed else None
            if old is not None:
                kept.append(old)
            _publish(tmp, dest, overwrite)
            done.append((dest, old, existed))
    except BaseException:
        for dest, old, existed in reversed(done):
            with contextlib.suppress(OSError):
                if old is not None:
                    os.replace(old, dest)
                elif not existed:  # ours alone; a replaced file that could not be kept is not made worse
                    dest.unlink()
        raise
    finally:
        for old in kept:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


def _keep(dest: Path) -> Path | None:
    """A hard link to dest's current file under a leftover name (`.NAME.XXXXXXXX.part`: remove_leftovers removes it
    after a kill -9), so it can be put back; None when it cannot be linked (no hard links there, a folder)."""
    while True:
        old = dest.parent / f".{temp_stem(dest.parent, dest.name)}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
        try:
            os.link(dest, old, follow_symlinks=False)  # a symbolic link comes back as itself
        except FileExistsError:
            continue
        except (OSError, NotImplementedError):  # NotImplementedError: platforms without linkat (Windows)
            return None
        return old


def cannot_write_reason(dest: Path, exc: OSError) -> str:
    """Why writing dest failed, in a few words for a one-line error: a file where one of its folders should be, else
    the system's reason ("Permission denied", "No space left on device")."""
    blocker = next((p for p in dest.parents if os.path.lexists(p) and not p.is_dir()), None)
    if blocker is not None:
        return f"{blocker} is a file, not a folder"
    return exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]


def _longest_name(folder: Path) -> int | None:
    """The bytes a file name may have in folder (its file system's NAME_MAX), or None where none is said."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows)
        return None
    return limit if limit > 0 else None


def writable_reason(dest: str | os.PathLike[str]) -> str | None:
    """Why dest could not be written atomically, or None. A temporary file of the write's own name pattern is
    created and removed in the nearest folder of dest that exists (no folder is made: an input that fails later
    leaves nothing behind). A batch asks this before the model runs, so a read-only folder, a file where a folder
    should be, a folder where the output should be or a name too long is said before the work, not after it."""
    dest = Path(dest)
    with contextlib.suppress(OSError):  # a name too long to look up, a folder not to be searched: said below
        if dest.is_dir():
            return "a folder has its name"
    folder = next((p for p in dest.parents if os.path.lexists(p)), Path("."))
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    # the names still to be made, checked against the folder's limit: the probe's temporary name is shortened to
    # fit (temp_stem), so a name too long to be the output's passed it, and failed after the model had run
    limit = _longest_name(folder)
    missing = dest.parts[len(folder.parts) :] if folder in dest.parents else (dest.name,)
    for k, name in enumerate(missing):
        size = len(os.fsencode(name))
        if limit is not None and size > limit:
            which = "" if k == len(missing) - 1 else f"folder {name} is "
            return f"name too long: {which}{size} bytes, at most {limit}"
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{temp_stem(folder, dest.name)}.", suffix=_TEMP_SUFFIX, dir=folder
        )
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):  # another run's remove_leftovers may have taken it
            os.unlink(name)
    except OSError as exc:
        return cannot_write_reason(dest, exc)
    return None


def _locked_temp(dest: Path) -> tuple[int, Path]:
    """mkstemp beside dest, flock'ed (held until the fd is closed; -1 where there is no flock). A remove_leftovers
    running between mkstemp and flock could remove the new file: then the path no longer names ours; make another."""
    while True:
        stem = temp_stem(dest.parent, dest.name)
        fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=_TEMP_SUFFIX, dir=dest.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the permissions any new file would
        if fcntl is None:  # Windows: an open file could not be renamed; nothing to hold it by
            os.close(fd)
            return -1, Path(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # no locks on this file system (some NFS set-ups): leftovers cannot be locked either
            return fd, Path(name)
        try:
            if os.stat(name).st_ino == os.fstat(fd).st_ino:
                return fd, Path(name)
        except FileNotFoundError:
            pass
        os.close(fd)


def remove_leftovers(dests: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, int]]:
    """Remove the temporary files that interrupted atomic writes of these destinations left; (path, bytes) of each.

    Only files named `.NAME.XXXXXXXX.part` (atomic_path's pattern for a destination NAME given here, in its folder),
    regular files, not held by a live writer. Nothing else is touched. One directory scan per folder.
    """
    if fcntl is None:
        return []
    by_folder: dict[Path, set[str]] = {}
    for dest in dests:
        d = Path(dest)
        by_folder.setdefault(d.parent, set()).add(temp_stem(d.parent, d.name))
    removed: list[tuple[Path, int]] = []
    for folder, names in by_folder.items():
        pattern = re.compile(r"\.(.+)\." + _RANDOM + re.escape(_TEMP_SUFFIX))
        try:
            entries = [e.name for e in os.scandir(folder)]
        except OSError:  # no such folder yet, or unreadable: nothing of ours there
            continue
        for entry in entries:
            match = pattern.fullmatch(entry)
            if match is None or match.group(1) not in names:
                continue
            path = folder / entry
            size = _remove_if_abandoned(path)
            if size is not None:
                removed.append((path, size))
    return removed


def _remove_if_abandoned(path: Path) -> int | None:
    """Unlink a regular file nobody holds a flock on; its size, or None when it was left alone."""
    assert fcntl is not None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            return None
        try:
            if os.stat(path).st_ino != info.st_ino:
                return None
            path.unlink()
        except OSError:
            return None
        return int(info.st_size)
    finally:
        os.close(fd)


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
