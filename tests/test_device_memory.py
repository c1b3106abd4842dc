"""How much host memory the automatic tile may use: the machine's MemAvailable, a container's memory cgroup and the
address-space limit, whichever is least (esrgan.device.host_memory_available)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_a_memory_cgroup, needs_memory_cgroups

from esrgan.device import address_space_headroom, cgroup_headroom, host_memory_available

MiB = 1 << 20

# Run in a child: prints the headroom, allocates and touches 256 MiB, prints it again.
_CHILD = """
import sys
from esrgan.device import available_memory, cgroup_headroom
import torch
before = (cgroup_headroom(), available_memory(torch.device("cpu")))
block = bytearray(256 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
after = (cgroup_headroom(), available_memory(torch.device("cpu")))
print(*before, *after)
"""


def _v2_level(folder: Path, limit: str, usage: int, inactive: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "memory.max").write_text(limit + "\n")
    (folder / "memory.current").write_text(f"{usage}\n")
    (folder / "memory.stat").write_text(
        f"anon {usage - inactive}\nfile {inactive}\ninactive_file {inactive}\n"
    )


def _proc(tmp_path: Path, cgroup_lines: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_lines)
    (proc / "meminfo").write_text("MemTotal: 67108864 kB\nMemAvailable: 50331648 kB\n")  # 48 GiB free
    (proc / "self" / "status").write_text("VmSize: 1048576 kB\n")
    return proc


def test_a_container_limit_is_seen_through_cgroup_v2_files(tmp_path: Path) -> None:
    """A cgroup v2 tree as the kernel lays it out (files on disk): the least room over the process's cgroup and its
    ancestors, reclaimable page cache counted as free; "max" is no limit."""
    root = tmp_path / "cgroup"
    _v2_level(root / "system.slice", "max", 900 * MiB)
    _v2_level(root / "system.slice" / "docker-1.scope", str(2048 * MiB), 1500 * MiB, inactive=300 * MiB)
    proc = _proc(tmp_path, "0::/system.slice/docker-1.scope\n")
    assert cgroup_headroom(proc=proc, cgroup_root=root) == (2048 - 1500 + 300) * MiB
    assert host_memory_available(proc=proc, cgroup_root=root) == 848 * MiB  # not the host's 48 GiB
    # a tighter parent wins (a Kubernetes pod's limit above its container's)
    _v2_level(root / "system.slice", str(1024 * MiB), 900 * MiB)
    assert cgroup_headroom(proc=proc, cgroup_root=root) == 124 * MiB
    # over the limit already (the kernel reclaims or kills): nothing is free, never a negative size
    _v2_level(root / "system.slice", str(512 * MiB), 900 * MiB)
    assert host_memory_available(proc=proc, cgroup_root=root) == 0
    # no limit anywhere: the machine's MemAvailable
    _v2_level(root / "system.slice", "max", 900 * MiB)
    _v2_level(root / "system.slice" / "docker-1.scope", "max", 1500 * MiB)
    assert cgroup_headroom(proc=proc, cgroup_root=root) is None
    assert host_memory_available(proc=proc, cgroup_root=root) == 48 << 30


def test_a_container_without_its_own_cgroup_namespace(tmp_path: Path) -> None:
    """Docker on cgroup v1 without a cgroup namespace: /proc/self/cgroup names the host's path, and the container's
    own cgroup is mounted at the root of the memory hierarchy: its files there are the limit."""
    memory = tmp_path / "cgroup" / "memory"
    memory.mkdir(parents=True)
    (memory / "memory.limit_in_bytes").write_text(f"{1536 * MiB}\n")
    (memory / "memory.usage_in_bytes").write_text(f"{600 * MiB}\n")
    (memory / "memory.stat").write_text(f"cache {200 * MiB}\ntotal_inactive_file {100 * MiB}\n")
    proc = _proc(tmp_path, "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n")
    assert cgroup_headroom(proc=proc, cgroup_root=tmp_path / "cgroup") == (1536 - 600 + 100) * MiB
    # v1's "no limit" is a page-rounded 2**63 - 1
    (memory / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_headroom(proc=proc, cgroup_root=tmp_path / "cgroup") is None


def _in_a_memory_cgroup(limit: int, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -c code args` in a new v1 memory cgroup of `limit` bytes (conftest.in_a_memory_cgroup)."""
    return in_a_memory_cgroup(limit, sys.executable, "-c", code, *args)[0]


@needs_memory_cgroups
def test_a_real_memory_cgroup_bounds_what_the_tile_may_use(tmp_path: Path) -> None:
    """A real cgroup with a 1 GiB limit, the child process inside it: the free memory the automatic tile is sized
    from is under the limit (MemAvailable said the whole machine's), and falls as the child allocates."""
    r = _in_a_memory_cgroup(1024 * MiB, _CHILD)
    assert r.returncode == 0, r.stderr
    cg_before, free_before, cg_after, free_after = map(int, r.stdout.split())
    machine = host_memory_available()  # this process, outside the group
    assert machine is not None and machine > 2 * 1024 * MiB, (
        "the test needs a machine with more than the limit free"
    )
    # two readings a moment apart (the process may touch a page between them); python + torch are already charged
    assert 0 < cg_before < 1024 * MiB and abs(free_before - cg_before) < 4 * MiB
    assert cg_after > 0 and abs(free_after - cg_after) < 4 * MiB
    assert 200 * MiB < free_before - free_after < 300 * MiB  # the 256 MiB the child touched


def test_an_address_space_limit_is_counted(tmp_path: Path) -> None:
    """ulimit -v (RLIMIT_AS): the room left is the limit minus the process's virtual size, in a real child."""
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, resource.RLIM_INFINITY));"
        "from esrgan.device import address_space_headroom, host_memory_available;"
        "vm = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:')][0];"
        "print(address_space_headroom(), host_memory_available(), vm)"
    )
    if sys.platform != "linux":
        pytest.skip("reads /proc")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    room, free, vm = map(int, r.stdout.split())
    assert 0 < room <= (6 << 30) - vm + 16 * MiB and room > (6 << 30) - vm - 64 * MiB
    assert free <= room
    import resource

    unlimited = resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY
    assert (address_space_headroom() is None) == unlimited  # this process


_DATA_CHILD = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from esrgan.data import PatchDataset
from esrgan.device import host_memory_available
free = host_memory_available()
data = PatchDataset(sys.argv[1], scale=4, patch_size=128, cache_max_mb=4096)
print(free, data.cache is not None)
"""


@needs_memory_cgroups
def test_training_data_is_not_cached_beyond_what_the_container_allows(tmp_path: Path, photo: object) -> None:
    """8 photos of 2560x2560 need 159 MiB decoded (with their LR), far under cache_max_mb (4096) but over half of what a 384 MiB
    container leaves: they are read per sample, with the reason logged (the cache was decoded whatever the limit)."""
    import numpy as np
    from PIL import Image

    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(np.asarray(photo)).resize((2560, 2560), Image.Resampling.BICUBIC).save(
        hr / "0.png", compress_level=0
    )
    for i in range(1, 8):
        os.link(hr / "0.png", hr / f"{i}.png")
    r = _in_a_memory_cgroup(384 * MiB, _DATA_CHILD, str(hr))
    assert r.returncode == 0, r.stderr
    free, cached = r.stdout.split()
    assert int(free) < 384 * MiB and cached == "False"
    assert "8 images need 159 MB decoded (> half the free memory, " in r.stderr


@pytest.fixture(scope="module")
def x4plus_loaded() -> int:
    """Bytes a process takes with realesrgan-x4plus loaded for fp32 on the CPU and no pass run, in a memory cgroup
    (measured once for both containers below)."""
    from esrgan.errors import ModelNotAvailableError
    from esrgan.zoo import load_model

    try:
        load_model("realesrgan-x4plus")
    except ModelNotAvailableError as exc:
        pytest.skip(str(exc))
    load = (
        "from esrgan.upscale import Upscaler; "
        "Upscaler.from_pretrained('realesrgan-x4plus', device='cpu', precision='fp32')"
    )
    _, base = in_a_memory_cgroup(None, sys.executable, "-c", load)  # the model loaded, no pass
    return base


@needs_memory_cgroups
@pytest.mark.parametrize("extra_mib", [350, 500])
def test_the_fp32_default_fits_a_small_container(tmp_path: Path, extra_mib: int, x4plus_loaded: int) -> None:
    """realesrgan-x4plus in fp32 (the CPU default without native bf16: the ncnn engine where installed) on a
    photo in a container of its loaded model + 350 or 500 MiB: the kernel's OOM killer ended both runs,
    because ncnn's net (its weights' Winograd transforms: +356 MiB, 5.6x the 64 MiB of weights) was not counted
    when the tile was sized, and at 350 it does not fit at all. Now the tile counts it (NCNN_FIXED_FACTOR) and
    where the net would take more than half the memory free, the packed engine runs instead (_ncnn_fits).
    A 96x96 crop (it was 128x128): with the net uncounted and ncnn forced, the run still takes ~740 MiB
    over the loaded model (-9 in both containers); 64x64 would take ~504, too close to 500 to prove anything."""
    from PIL import Image
    from skimage import data

    photo = tmp_path / "face.png"
    Image.fromarray(data.astronaut()[100:196, 180:276]).save(photo)
    base = x4plus_loaded
    cli = [
        sys.executable,
        "-m",
        "esrgan.cli",
        "upscale",
        photo,
        "-o",
        tmp_path / "out",
        "--precision",
        "fp32",
    ]
    proc, used = in_a_memory_cgroup(base + extra_mib * MiB, *cli)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])  # was -9
    assert Image.open(tmp_path / "out" / "face_x4.png").size == (384, 384)
    assert used <= base + extra_mib * MiB
