"""Device and precision choice, with safe fallbacks, and the forward pass that checks its own output.

- fp16 is never used on the CPU (slow and overflow-prone there): asking for it gives bf16 where the CPU computes
  bf16 natively, else fp32, with a warning. bf16 on a CPU without native support (it would be emulated, slower
  than fp32) also falls back to fp32.
- ModelRunner is the one place that picks a forward pass. On the CPU in fp32 it is esrgan.ncnn.NcnnRRDBNet (ncnn's
  runtime, Winograd convolutions) for an x4/x8 RRDBNet that is not ESRGAN+ and for any SRVGGNetCompact, where the
  runtime imports and its net takes at most half the memory free; otherwise, and in bf16 where oneDNN packs bf16
  weights, an RRDBNet runs on esrgan.fast.PackedRRDBNet (pre-packed oneDNN convolutions, channels-last, the tail
  in stripes: see bench/speed.py and docs/benchmarks.md for what it is worth) and an SRVGGNetCompact as the module
  (under autocast in bf16). On CUDA reduced precision runs a copy of the weights cast once to
  fp16/bf16, channels-last, with cudnn.benchmark (the tiles repeat one shape); autocast would recast the fp32
  weights on every call. Elsewhere (MPS, or the CPU without oneDNN) reduced precision uses torch.autocast over the
  fp32 module; engine="compiled" runs that module through torch.compile (measured by bench/speed.py, not a
  default).
- The runner's output stays on its device: tiling blends and converts it there and copies finished rows back.
- A batch whose reduced-precision output has NaN/Inf is recomputed in fp32 without reloading anything (the runner
  then stays in fp32: an overflowing model overflows again).
- High-bit-depth inputs (16-bit, float) are computed in fp32 whatever the precision (esrgan.upscale): bf16 keeps 8
  significant bits and fp16 11, so a 16-bit output computed in them has about 9-11 bits of real precision.

ESRGAN_CPU_BF16=1 (or 0) overrides the CPU's bf16 detection: for CPUs whose flags are not readable here (macOS,
Windows), or to run the bf16 path on any CPU (emulated there: slow, but the same numbers).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .archs import Generator, GeneratorConfig
from .defaults import DEVICES, PRECISIONS
from .errors import EsrganError
from .generator import RRDBConfig, RRDBNet, count_parameters
from .ncnn import NcnnRRDBNet, ncnn_runtime_problem, ncnn_supports
from .ncnn import ncnn_runtime_available as ncnn_runtime_available  # re-exported: bench/engine_memory.py
from .tiling import all_finite

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Precision names (as the CLI, the web page and config files spell them) and their dtypes."""
ENGINES = ("auto", "ncnn", "packed", "module", "compiled")


class PrecisionWarning(UserWarning):
    """A precision request that could not be honoured, or a reduced-precision output recomputed in fp32."""


def precision_name(dtype: torch.dtype) -> str:
    """fp32, bf16 or fp16 (as DTYPES spells them); another dtype as torch prints it."""
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))


def resolve_device(name: str = "auto") -> torch.device:
    """auto = CUDA if available, else Apple MPS, else CPU. An explicit device that is absent is an error."""
    if name not in DEVICES:
        raise EsrganError(f"unknown device {name!r} (choose from {', '.join(DEVICES)})")
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise EsrganError(
            f"device {name!r} is not available on this machine (torch {torch.__version__}); use --device cpu"
        )
    return torch.device(name)


def torch_device(device: str | torch.device) -> torch.device:
    """A device as load_model takes it: a name resolve_device knows (auto included), or what torch.device takes
    ("cuda:1", a torch.device). One absent here, or unknown, is the same EsrganError as resolve_device's, where
    torch's own would be an AssertionError ("Torch not compiled with CUDA enabled") at the first tensor moved."""
    if isinstance(device, str) and device in DEVICES:
        return resolve_device(device)
    try:
        dev = torch.device(device)
    except RuntimeError:  # torch's "Expected one of cpu, cuda, ... device type at start of device string"
        raise EsrganError(
            f"unknown device {device!r} (choose from {', '.join(DEVICES)}, or e.g. cuda:1)"
        ) from None
    if dev.type in ("cuda", "mps"):
        resolve_device(dev.type)  # absent: raises
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise EsrganError(
            f"device {str(dev)!r} is not available on this machine ({torch.cuda.device_count()} CUDA devices)"
        )
    return dev


def cpu_has_native_bf16() -> bool:
    """True if the CPU has bf16 arithmetic instructions that oneDNN uses (x86 avx512_bf16 / amx_bf16, Arm bf16).

    Read from /proc/cpuinfo's flags (Linux); torch exposes no direct query. Elsewhere (macOS, Windows): False,
    i.e. fp32, the safe choice. The environment variable ESRGAN_CPU_BF16=1 or 0 overrides the detection.
    """
    forced = os.environ.get("ESRGAN_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return "bf16" in _cpu_flags()


def cpu_packs_bf16() -> bool:
    """True if oneDNN can pack bf16 convolution weights here (AVX512BW+VL+DQ, or AVX-NE-CONVERT, or Arm bf16):
    esrgan.fast's bf16 engine needs it; elsewhere bf16 runs through the model under autocast."""
    return "pack" in _cpu_flags()


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """{"bf16"} for native bf16 arithmetic, {"pack"} for bf16 weight packing, from /proc/cpuinfo."""
    if not torch.backends.mkldnn.is_available():
        return frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    out = set()
    if flags & {"avx512_bf16", "amx_bf16", "bf16"}:
        out.add("bf16")
    if {"avx512bw", "avx512vl", "avx512dq"} <= flags or flags & {"avx_ne_convert", "bf16"}:
        out.add("pack")
    return frozenset(out)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Map auto|fp32|bf16|fp16 to a dtype this device computes well, warning when the request is changed."""
    if precision not in PRECISIONS:
        raise EsrganError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if device.type == "cpu":
        best = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        if precision == "auto":
            return best
        if precision == "fp16" or (precision == "bf16" and best == torch.float32):
            warnings.warn(
                f"{precision} is not supported well on this CPU; using {precision_name(best)}",
                PrecisionWarning,
                stacklevel=2,
            )
            return best
        return DTYPES[precision]
    if device.type == "mps":  # autocast on MPS: fp16 from torch 2.5, bf16 from 2.6; before that fp32 only
        version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
        wanted = torch.float16 if precision == "auto" else DTYPES[precision]
        if wanted == torch.bfloat16 and version < (2, 6):
            wanted = torch.float16
        if wanted != torch.float32 and version < (2, 5):
            wanted = torch.float32
        if precision not in ("auto", precision_name(wanted)):
            warnings.warn(
                f"{precision} is not available on MPS with torch {torch.__version__}; using {precision_name(wanted)}",
                PrecisionWarning,
                stacklevel=2,
            )
        return wanted
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU has no bf16; using fp16", PrecisionWarning, stacklevel=2)
        return torch.float16
    return torch.float16 if precision == "auto" else DTYPES[precision]


def release_memory(device: torch.device | None = None) -> None:
    """After an out-of-memory: collect what the failed work left in reference cycles (a traceback's frames hold
    its tensors), then give the device's cached blocks back (CUDA's or MPS's caching allocator; all CUDA devices
    when device is None), so that the next attempt or file starts from a clean allocator."""
    import gc

    gc.collect()
    kind = None if device is None else device.type
    if kind in (None, "cuda") and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if kind == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "empty_cache"):
        torch.mps.empty_cache()


def available_memory(device: torch.device) -> int:
    """Bytes free for activations: CUDA's mem_get_info, MPS's recommended working set (torch 2.5+), else
    host_memory_available() (4 GiB when nothing can be read)."""
    if device.type == "cuda":  # plus what PyTorch's caching allocator holds unused: it is ours to reuse
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + max(0, int(cached))
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):  # 2.3-2.4: as a CPU
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    free = host_memory_available()
    return 4 << 30 if free is None else free


_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a page-rounded 2**63 - 1


def host_memory_available(
    *, proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """Bytes this process can still allocate on the host: the least of the machine's MemAvailable, what its
    memory cgroups allow (v1 or v2, every level up to the root: a container's --memory, a systemd or Kubernetes
    limit) and its address-space limit (RLIMIT_AS, ulimit -v). None when none of them can be read (not Linux).

    MemAvailable alone sees the whole machine: in a 2 GiB container on a 64 GiB host it chose tiles for 30 GiB, and
    the kernel's OOM killer ended the run without a word. psutil is not a dependency, and reads none of the limits.
    """
    found: list[int] = []
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroup = cgroup_headroom(proc=proc, cgroup_root=cgroup_root)
    if cgroup is not None:
        found.append(cgroup)
    address = address_space_headroom(proc=proc)
    if address is not None:
        found.append(address)
    return max(0, min(found)) if found else None


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20
_MMAP_THRESHOLD_MAX = 32 << 20  # the most glibc's own sliding threshold rises to (64-bit)


@functools.cache
def _glibc() -> Any:
    """The C library through ctypes where it is glibc (mallopt and malloc_trim are glibc's), else None."""
    import ctypes
    import ctypes.util

    try:
        if "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""):
            return None
        name = ctypes.util.find_library("c")
        return None if name is None else ctypes.CDLL(name)
    except (OSError, ValueError, AttributeError):  # no confstr (Windows), no such name
        return None


@contextlib.contextmanager
def freed_memory_returned() -> Iterator[None]:
    """While inside, the C heap gives large blocks back to the system when they are freed (glibc: a fixed mmap
    threshold of MMAP_THRESHOLD; elsewhere nothing changes). glibc raises its threshold to the size of each large
    block freed, after which blocks that size come from heaps it keeps: a streamed upscale, which frees a few MB of
    rows many times, grew from 690 MB to 1.14 GB of RSS that way (a 4352x2448 photo at x4, 2-core AMD EPYC Zen 4),
    past what it had been sized for. Each block over a MiB then costs a mmap and its page faults (bench/stream.py:
    1.4-2.2x the time, docs/benchmarks.md), so on the way out the threshold goes to glibc's own ceiling (where its
    sliding threshold ends up in a long run anyway) and the heaps are trimmed: what follows pays nothing more."""
    libc = _glibc()
    if libc is None or not libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        yield
        return
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        libc.malloc_trim(0)


def cgroup_headroom(*, proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process's memory cgroups still allow (limit - usage + reclaimable page cache, the least over the
    process's cgroup and its ancestors, v2 and v1); None when no level has a limit or none can be read."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    best: int | None = None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2 (alone at the root, or beside v1 under unified/)
            mounts = [cgroup_root, cgroup_root / "unified"]
            files = ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            mounts = [cgroup_root / "memory"]
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        for mount in mounts:
            if not (mount / files[0]).is_file() and not (mount / path.lstrip("/") / files[0]).is_file():
                continue
            # inside a container without its own cgroup namespace the path is the host's, and the mount shows
            # the container's own cgroup at its root: start from the deepest level that exists
            level = mount / path.lstrip("/")
            while level != mount and not level.is_dir():
                level = level.parent
            while True:
                room = _cgroup_level_room(level, *files)
                if room is not None:
                    best = room if best is None else min(best, room)
                if level == mount or mount not in level.parents:
                    break
                level = level.parent
            break
    return best


def _cgroup_level_room(level: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        text = (level / limit_file).read_text().strip()
        if text == "max" or int(text) >= _NO_LIMIT:
            return None
        limit, usage = int(text), int((level / usage_file).read_text())
    except (OSError, ValueError):
        return None
    inactive = 0  # page cache the kernel reclaims before it kills: free for our purpose
    with contextlib.suppress(OSError, ValueError):
        for line in (level / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
                break
    return limit - usage + inactive


def address_space_headroom(*, proc: Path = Path("/proc")) -> int | None:
    """RLIMIT_AS (ulimit -v) minus this process's virtual size; None without such a limit."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in (proc / "self" / "status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return soft - int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def activation_bytes_per_pixel(config: GeneratorConfig, dtype: torch.dtype) -> float:
    """Peak activation memory of a generator's forward pass (the module's) per input pixel.

    RRDBNet: the peak is in the tail, at the output resolution: about 3.5 feature maps of num_feat channels at
    scale**2 times the input pixels, plus the dense-block concatenations at input resolution. Measured for
    realesrgan-x4plus: 15 KB/pixel in fp32, 8 KB in bf16; this estimate gives 16.6 and 8.3.
    SRVGGNetCompact: two num_feat maps alive at input resolution (a conv's output and its PReLU's), then the last
    conv's planes, their pixel shuffle, the nearest base and the sum at output resolution.
    """
    elem = 4 if dtype == torch.float32 else 2
    if not isinstance(config, RRDBConfig):
        return elem * (3 * config.num_feat + 4 * config.num_out_ch * config.scale**2)
    return elem * (config.scale**2 * config.num_feat * 3.5 + (config.num_feat + 4 * config.num_grow) * 3)


NCNN_MEMORY_FACTOR = 3.0
"""ncnn's peak resident memory over activation_bytes_per_pixel's fp32 estimate: measured for realesrgan-x4plus on the
CPU (a helper's audit, session 22: 413 MB at 96^2 and 1157 MB at 160^2 input, ~47 KB per input pixel, against the
estimate's 16.6 KB), so the automatic tile of the ncnn engine fits the memory it is sized for."""

NCNN_FIXED_FACTOR = 6.0
"""ncnn's memory for a net before any tile, over the model's fp32 weight bytes: its copy of the weights and their
Winograd transforms (an 8x8 tile of each 3x3 kernel), made when the net is built. Measured for realesrgan-x4plus on
a 2-core AMD EPYC Zen 4 (session 27): +356 MiB for building the net and a first 32x32 pass, 5.6x its 64 MiB of
weights. Without it the automatic tile of a 384x384 photo in a 900 MiB container was sized as if that memory were
free, and the kernel's OOM killer ended the process."""


def _ncnn_fits(model: torch.nn.Module) -> bool:
    """Whether ncnn's net (NCNN_FIXED_FACTOR x the model's fp32 weights) would take at most half the host memory
    free, leaving the tiles the rest. In less, the fp32 default is the packed engine (its weights once): ncnn's net
    alone is more than a 350 MiB container holds beside realesrgan-x4plus's loaded model, and the kernel's OOM
    killer ended the process; the packed engine did it (session 27, 2-core AMD EPYC Zen 4). True where the free
    memory cannot be read."""
    free = host_memory_available()
    return free is None or 2 * NCNN_FIXED_FACTOR * 4 * count_parameters(model) <= free


def packed_bytes_per_pixel(config: RRDBConfig, dtype: torch.dtype) -> tuple[float, int]:
    """(bytes per input pixel, fixed bytes) of a PackedRRDBNet forward pass (esrgan.fast).

    Per pixel: the dense-block buffer (num_feat + 4 * num_grow channels), five num_feat maps alive in the trunk, and
    the float32 output twice (the engine's and the host copy). Fixed: the tail's stripes, whatever the tile.
    """
    from .fast import TAIL_BYTES

    elem = 4 if dtype == torch.float32 else 2
    trunk = elem * (config.num_feat + 4 * config.num_grow + 5 * config.num_feat)
    return trunk + 2 * 4 * config.num_out_ch * config.scale**2, 4 * TAIL_BYTES


# The cuDNN settings a pass changes are the process's: passes that overlap (threads sharing an Upscaler) count
# themselves in, the first one in saves the setting and the last one out puts it back (each restoring what it saw
# on entry let the first to finish switch a pass still running back, and left the process changed for good)
_SETTINGS_LOCK = threading.Lock()
_settings_users = {"benchmark": 0, "ieee": 0}
_settings_saved: dict[str, Any] = {}


def _enter_setting(name: str) -> None:
    with _SETTINGS_LOCK:
        if _settings_users[name] == 0:
            if name == "benchmark":
                _settings_saved[name] = torch.backends.cudnn.benchmark
                torch.backends.cudnn.benchmark = True
            else:
                _settings_saved[name] = _conv_fp32_precision()
                _set_conv_fp32_precision("ieee")
        _settings_users[name] += 1


def _leave_setting(name: str) -> None:
    with _SETTINGS_LOCK:
        _settings_users[name] -= 1
        if _settings_users[name] == 0:
            saved = _settings_saved.pop(name)
            if name == "benchmark":
                torch.backends.cudnn.benchmark = saved
            else:
                _set_conv_fp32_precision(saved)


@contextlib.contextmanager
def autotuned(device: torch.device, dtype: torch.dtype | None = None) -> Iterator[None]:
    """cuDNN's autotuning (torch.backends.cudnn.benchmark) on for a forward pass on CUDA, where the tiles repeat one
    shape and the kernels it picks are reused; the process's setting is put back after, so a program that upscales
    with esrgan and trains or computes beside it keeps its own (benchmark changes which kernels, and so which
    results, its other convolutions get). Elsewhere nothing.

    With `dtype` float32 the convolutions are IEEE fp32 during the pass (`ieee_fp32`). Overlapping passes (threads)
    share the settings: the last to end puts the process's back."""
    if device.type != "cuda":
        yield
        return
    _enter_setting("benchmark")
    try:
        with ieee_fp32(device) if dtype == torch.float32 else contextlib.nullcontext():
            yield
    finally:
        _leave_setting("benchmark")


@contextlib.contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """cuDNN's fp32 convolutions in IEEE fp32, not TF32, while the block runs on CUDA (elsewhere nothing): torch lets
    cuDNN compute fp32 convolutions in TF32 by default (10 bits of mantissa read from each input, what an fp16 input
    holds), and fp32 is what 16-bit images are computed in to keep their 16 bits (and what `--precision fp32`
    asks for). The process's setting is put back after, by the last of overlapping blocks."""
    if device.type != "cuda":
        yield
        return
    _enter_setting("ieee")
    try:
        yield
    finally:
        _leave_setting("ieee")


def _conv_settings() -> Any:
    """torch >= 2.9's cuDNN settings with fp32_precision (`.conv`, `.rnn`), or None before."""
    cudnn = torch.backends.cudnn
    return cudnn if hasattr(getattr(cudnn, "conv", None), "fp32_precision") else None


def _conv_fp32_precision() -> tuple[bool | None, tuple[str, str] | None]:
    """cuDNN's fp32 settings as torch holds them, to put back: allow_tf32 (None where torch >= 2.9 refuses to read
    it: its newer settings were set to disagree with it) and torch >= 2.9's (conv, rnn) fp32_precision."""
    try:
        legacy: bool | None = bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        legacy = None
    cudnn = _conv_settings()
    newer = None if cudnn is None else (str(cudnn.conv.fp32_precision), str(cudnn.rnn.fp32_precision))
    return legacy, newer


def _set_conv_fp32_precision(mode: str | tuple[bool | None, tuple[str, str] | None]) -> None:
    """Mode "ieee": no TF32 in cuDNN, through allow_tf32 = False on every torch (torch >= 2.9 records it as its newer
    settings' "none", which computes in IEEE fp32 and keeps allow_tf32 readable; its "ieee" makes reading
    allow_tf32 an error, for any code beside us, inductor's convolution templates and torch.backends.cudnn.flags()
    included). "tf32": TF32 allowed. Or what `_conv_fp32_precision` read, put back as it was."""
    if isinstance(mode, str):
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        return
    legacy, newer = mode
    if legacy is not None:
        torch.backends.cudnn.allow_tf32 = legacy
    cudnn = _conv_settings()
    if newer is not None and cudnn is not None:
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = newer


@functools.cache
def _say_once(message: str) -> None:
    """One warning per process for `message` (each ModelRunner would say it again: Upscaler makes a second for
    16-bit images)."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class ModelRunner:
    """The forward pass used by tiling: a batch (on any device) in, a float32 batch on `device` out, in `dtype`.

    On the CPU in fp32, where the ncnn runtime imports (`esrgan[ncnn]`, part of the standard set-up; a broken
    install is said once in a RuntimeWarning and skipped) and runs the model (ncnn_supports), it runs
    esrgan.ncnn.NcnnRRDBNet: ncnn's Winograd convolutions, 1.3x the packed fp32 engine on an AVX2 CPU.
    Otherwise on the CPU (fp32 or bf16, with oneDNN) an RRDBNet runs on esrgan.fast.PackedRRDBNet: weights packed once, channels-last,
    fused epilogues, the upsampling tail in stripes (bounded memory at any tile size). On CUDA in fp16/bf16: a copy
    of the model cast once to that dtype, channels-last (compiled too with engine="compiled"), with
    torch.backends.cudnn.benchmark on during the pass (`autotuned`). Elsewhere (an SRVGGNetCompact off ncnn too), or
    with engine="module" on the CPU, the model itself, under autocast for reduced precision (fp32 module = the eager
    reference).
    engine="compiled": that module through torch.compile (inductor, no freezing: freezing gave wrong outputs for
    this network); the first call per input shape compiles (~35 s on 2 cores), later processes reuse the on-disk
    cache in `cache_dir` (default: torch's own).
    Outputs with NaN/Inf in reduced precision are recomputed in fp32 with a PrecisionWarning, and the runner stays
    in fp32 afterwards. The model must already be on `device`.
    """

    def __init__(
        self,
        model: Generator,
        device: torch.device,
        dtype: torch.dtype,
        *,
        engine: str = "auto",
        cache_dir: str | Path | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise EsrganError(f"unknown engine {engine!r} ({', '.join(ENGINES)})")
        self.model = model.eval().requires_grad_(False)
        self.device = device
        self.dtype = dtype
        packable = (  # esrgan.fast packs RRDBNet's layers; other architectures run as modules
            isinstance(model.config, RRDBConfig)
            and device.type == "cpu"
            and dtype != torch.float16
            and torch.backends.mkldnn.is_available()
            and (dtype == torch.float32 or cpu_packs_bf16())
        )
        if engine == "packed" and not packable:
            raise EsrganError(
                f"the packed engine runs RRDBNet on the CPU in fp32 or bf16, not {type(model).__name__} on "
                f"{device.type} {precision_name(dtype)}"
            )
        wants_ncnn = device.type == "cpu" and dtype == torch.float32 and ncnn_supports(model.config)
        problem = ncnn_runtime_problem() if wants_ncnn or engine == "ncnn" else None  # imports ncnn once
        ncnn_ok = wants_ncnn and problem is None
        if engine == "ncnn" and not ncnn_ok:
            plus = isinstance(model.config, RRDBConfig) and model.config.plus
            raise EsrganError(
                "the ncnn engine runs x4/x8 RRDBNet and any SRVGGNetCompact on the CPU in fp32 and needs the ncnn "
                f'runtime (pip install "esrgan[ncnn]"), not ESRGAN+ models; here: {device.type} '
                f"{precision_name(dtype)}, scale {model.config.scale}{', ESRGAN+' if plus else ''}, "
                f"runtime {problem or 'installed'}"
            )
        if engine == "auto":  # fp32 on the CPU: ncnn's Winograd where installed and its net fits (_ncnn_fits)
            engine = "ncnn" if ncnn_ok and _ncnn_fits(model) else "packed" if packable else "module"
            if wants_ncnn and problem is not None and problem != "not installed":
                _say_once(f"the ncnn runtime is {problem}: fp32 runs on the {engine} engine instead")
        self.engine = engine
        self._packed: dict[torch.dtype, Callable[[Tensor], Tensor]] = {}
        self._ncnn: NcnnRRDBNet | None = None
        self.channels_last = self.engine == "compiled" or (self.engine == "module" and dtype != torch.float32)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._module: Callable[[Tensor], Tensor] = self.model
        self._cast: Generator | None = None  # CUDA reduced precision: the weights cast once (see _run)
        self._cast_forward: Callable[[Tensor], Tensor] | None = None  # _cast, compiled for engine="compiled"
        if self.engine == "compiled":
            if cache_dir is not None:
                # Inductor reads its cache location from the environment when it compiles, not at import time.
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_dir).expanduser())
            self._module = torch.compile(self.model, dynamic=False)

    def release(self) -> None:
        """After a pass that ran out of memory: drop the ncnn net, rebuilt at the next call. Its pool allocator keeps
        every blob the failed pass allocated (and reuses a pooled block only for a request of at least 3/4 its
        size), so the smaller tiles of the retry found the memory still taken: an x4 512x512 image in 300 MiB of
        address space (RLIMIT_AS, MALLOC_ARENA_MAX=1) still ran out at tiles of 128 without this, and is done at
        256 with it. Dropping the net makes ncnn print "FATAL ERROR! pool allocator destroyed too early" on
        stderr (its pool counts the failed allocation's null pointer as in use); the process would print it at
        exit anyway."""
        self._ncnn = None

    def activation_bytes(self) -> tuple[float, int]:
        """(peak bytes per input pixel, fixed bytes) of one forward pass, for choosing the tile."""
        if self.engine == "packed":
            assert isinstance(self.model.config, RRDBConfig)
            return packed_bytes_per_pixel(self.model.config, self.dtype)
        per_pixel = activation_bytes_per_pixel(self.model.config, self.dtype)
        if self.engine != "ncnn":
            return per_pixel, 0
        # ncnn keeps more blobs alive than the module's peak (NCNN_MEMORY_FACTOR), and a net not built yet (the
        # first image, or after release()) will take its weights' transforms (NCNN_FIXED_FACTOR) on top
        fixed = (
            0 if self._ncnn_net() is not None else int(NCNN_FIXED_FACTOR * 4 * count_parameters(self.model))
        )
        return per_pixel * NCNN_MEMORY_FACTOR, fixed

    def pass_bytes(self, height: int, width: int, batch: int = 1) -> int:
        """Estimated peak bytes of one forward pass over `batch` tiles of height x width: activation_bytes, with
        the packed engine's tail stripes at their size for this tile (TAIL_BYTES each at most: the fixed figure
        the automatic tile keeps is for any tile, 256 MiB where a 32x32 tile's whole pass took 174)."""
        per_pixel, fixed = self.activation_bytes()
        if self.engine == "packed":
            from .fast import TAIL_BYTES

            cfg = self.model.config
            assert isinstance(cfg, RRDBConfig)
            elem = 4 if self.dtype == torch.float32 else 2
            fixed = 4 * min(TAIL_BYTES, height * width * cfg.scale**2 * cfg.num_feat * elem)
        return int(per_pixel * height * width * batch) + fixed

    def _ncnn_net(self) -> NcnnRRDBNet | None:
        """The ncnn net the next pass runs on, None if it is built first: not built yet, released, or built for
        another thread count than torch's now. ncnn fixes its threads (and lays its Winograd kernels out for them)
        when the net is built, so a torch.set_num_threads after the first pass was ignored: the net is rebuilt."""
        if self._ncnn is not None and self._ncnn.threads != torch.get_num_threads():
            self._ncnn = None
        return self._ncnn

    def _run(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        if self.engine == "ncnn":
            net = self._ncnn_net()
            if net is None:
                net = self._ncnn = NcnnRRDBNet(self.model.config, self.model.state_dict())
            return net(x)
        if self.engine == "packed":
            if dtype not in self._packed:
                from .fast import PackedRRDBNet

                assert isinstance(self.model, RRDBNet)  # packable says so
                self._packed[dtype] = PackedRRDBNet(self.model, dtype)
            return self._packed[dtype](x)
        with torch.inference_mode():
            if dtype == torch.float32:
                return self._module(x.float())
            if self.device.type == "cuda":  # fp16/bf16 weights, not autocast (which re-casts them every call)
                if self._cast is None or next(self._cast.parameters()).dtype != dtype:
                    self._cast = copy.deepcopy(self.model).to(dtype=dtype, memory_format=torch.channels_last)  # type: ignore[call-overload]
                    self._cast_forward = (
                        torch.compile(self._cast, dynamic=False) if self.engine == "compiled" else self._cast
                    )
                assert self._cast_forward is not None
                return self._cast_forward(x.to(dtype).contiguous(memory_format=torch.channels_last))
            with torch.autocast(self.device.type, dtype=dtype):
                return self._module(x)

    def __call__(self, batch: Tensor) -> Tensor:
        x = batch.to(self.device, dtype=torch.float32, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autotuned(self.device, self.dtype):
            y = self._run(x, self.dtype)
        if self.dtype != torch.float32 and not all_finite(y):
            warnings.warn(
                f"the model produced NaN/Inf in {precision_name(self.dtype)}; recomputing in fp32 (and staying in fp32)",
                PrecisionWarning,
                stacklevel=2,
            )
            self.dtype = torch.float32
            self._packed.clear()
            self._cast = self._cast_forward = None
            with autotuned(self.device, torch.float32):
                y = self._run(x, torch.float32)
        return y.float().contiguous()
