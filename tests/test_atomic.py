"""esrgan.atomic: files written together (atomic_paths) appear together or not at all, old ones left as they were.

Also `unprivileged_cli`, for the tests of other modules that write into a read-only folder: the session may run as
root, whom chmod does not stop.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from esrgan.atomic import OutputExistsError, atomic_paths


# --- the CLI as a user without root's powers -----------------------------------------------------------------------
@functools.cache
def _drop_root() -> tuple[str, ...] | None:
    """The command prefix under which a chmod 555 folder refuses writes: none for a user, setpriv without
    capabilities for root (CAP_DAC_OVERRIDE writes anywhere); None where that does not work here."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = (setpriv, "--bounding-set", "-all", "--inh-caps", "-all")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "ro")
        folder.mkdir(mode=0o555)
        folder.chmod(0o555)
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", f"open({str(folder / 'x')!r}, 'w')"], capture_output=True
        )
        return prefix if probe.returncode != 0 and not (folder / "x").exists() else None


def read_only(folder: Path) -> Path:
    """chmod 555 `folder` (made if missing); unprivileged_cli cannot write there. pytest's clean-up still removes it."""
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    return folder


def unprivileged_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`esrgan ARGS...` in a subprocess that file permissions bind; skips the test where that cannot be had."""
    prefix = _drop_root()
    if prefix is None:
        pytest.skip("running as root without a working setpriv: a read-only folder cannot be made")
    return subprocess.run(
        [*prefix, sys.executable, "-m", "esrgan.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, no traceback, and one `esrgan: error:` line naming every needle."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("esrgan: error: "), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def files(folder: Path) -> dict[str, bytes]:
    """Every file under folder (hidden ones too: a leftover temporary file counts), by name, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- atomic_paths -----------------------------------------------------------------------------------------------------
def test_pair_is_written_together(tmp_path: Path) -> None:
    with atomic_paths([tmp_path / "m.bin", tmp_path / "m.param"]) as (bin_tmp, param_tmp):
        assert bin_tmp.parent == param_tmp.parent == tmp_path
        bin_tmp.write_bytes(b"weights")
        param_tmp.write_bytes(b"graph")
        assert files(tmp_path).keys() == {bin_tmp.name, param_tmp.name}  # nothing under the final names yet
    assert files(tmp_path) == {"m.bin": b"weights", "m.param": b"graph"}


def test_a_failed_second_rename_puts_the_first_file_back(tmp_path: Path) -> None:
    """The old .bin is replaced first; the .param cannot be (a folder is there): the old .bin comes back."""
    (tmp_path / "m.bin").write_bytes(b"old weights")
    (tmp_path / "m.param").mkdir()
    pair = [tmp_path / "m.bin", tmp_path / "m.param"]
    with pytest.raises(IsADirectoryError), atomic_paths(pair, overwrite=True) as (bin_tmp, param_tmp):
        bin_tmp.write_bytes(b"new weights")
        param_tmp.write_bytes(b"new graph")
    assert files(tmp_path) == {"m.bin": b"old weights"}  # no temporary file, no backup link left
    assert (tmp_path / "m.param").is_dir()


def test_an_error_while_writing_leaves_the_old_pair(tmp_path: Path) -> None:
    old = {"m.bin": b"old weights", "m.param": b"old graph"}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    pair = [tmp_path / "m.bin", tmp_path / "m.param"]
    with pytest.raises(OSError, match="disk full"), atomic_paths(pair, overwrite=True) as (bin_tmp, _):
        bin_tmp.write_bytes(b"new weights")
        raise OSError("disk full")
    assert files(tmp_path) == old


def test_without_overwrite_a_file_that_appears_meanwhile_is_kept_and_ours_removed(tmp_path: Path) -> None:
    pair = [tmp_path / "m.bin", tmp_path / "m.param"]
    with pytest.raises(OutputExistsError, match=r"m\.param"), atomic_paths(pair) as (bin_tmp, param_tmp):
        bin_tmp.write_bytes(b"new weights")
        param_tmp.write_bytes(b"new graph")
        (tmp_path / "m.param").write_bytes(b"someone else's")
    assert files(tmp_path) == {"m.param": b"someone else's"}  # our .bin went with the failed pair
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match=r"m\.bin"), atomic_paths(pair):  # before anything is written
        raise AssertionError("not reached")


def test_a_name_too_long_for_its_temporary_file_is_written_and_its_leftover_removed(tmp_path: Path) -> None:
    """A legal name of 241-255 bytes cannot take the 15 bytes of `.NAME.XXXXXXXX.part`: it was refused ("File name
    too long") although the name itself can be made. Its temporary file now holds the name's first bytes and a hash
    of the whole name; a kill -9 (os._exit in a real child) leaves it, and remove_leftovers finds it by that hash,
    not the temporary file of another long name that begins alike."""
    from esrgan.atomic import atomic_write_bytes, remove_leftovers, temp_stem

    names = ["é" * 125 + ".png", "é" * 125 + ".jpg", "a" * 255]  # 254, 254 and 255 bytes: as long as names go
    for name in names:
        atomic_write_bytes(tmp_path / name, name.encode())
        assert (tmp_path / name).read_bytes() == name.encode()
        stem = temp_stem(tmp_path, name)
        assert (
            len(os.fsencode(f".{stem}.abcdefgh.part")) <= 255 and stem.encode("utf-8").decode("utf-8") == stem
        )
    assert temp_stem(tmp_path, names[0]) != temp_stem(tmp_path, names[1])
    assert temp_stem(tmp_path, "short.png") == "short.png"
    assert sorted(os.listdir(tmp_path)) == sorted(names)  # no temporary file left

    killed = tmp_path / "killed"
    killed.mkdir()
    child = (
        "import os, sys\nfrom esrgan.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n    os._exit(9)\n"
    )
    for name in names[:2]:
        r = subprocess.run([sys.executable, "-c", child, str(killed / name)], capture_output=True, text=True)
        assert r.returncode == 9, r.stderr
    left = sorted(os.listdir(killed))
    assert len(left) == 2 and all(n.startswith(".é") and n.endswith(".part") for n in left), left
    removed = remove_leftovers([killed / names[0]])
    assert [p.name for p, _ in removed] == [n for n in left if temp_stem(killed, names[0]) in n]
    assert len(os.listdir(killed)) == 1  # the other name's leftover is not ours to remove
