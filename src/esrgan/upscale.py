"""Upscaler: numpy arrays, PIL images and files in, the same kind out, with any model file, size or precision.

    from esrgan import Upscaler
    up = Upscaler.from_pretrained("realesrgan-x4plus")      # or Upscaler.from_file("model.pth"), Upscaler(model)
    big = up.upscale(pil_image)                             # PIL in -> PIL out (mode kept), numpy in -> numpy out
    up.upscale_file("in.png", "out.png")                    # keeps bit depth, ICC profile and EXIF
    out = up.upscale_image(read_image("in.png"))            # decoded image in -> ImageData out, for write_image

How the image kinds are handled (and why):
- Grey: replicated to 3 channels for the model; the output channels are averaged back (the mean, not the first
  channel: it cancels the small colour casts a colour model adds to a grey input). A grey image stored as colour
  (R == G == B at every pixel: black-and-white JPEGs, grey GIFs and palettes) goes the same way and comes back
  with its three channels equal again: as colour, a colour model tints it (realesrgan-x4plus: channels up to 6
  levels apart; realesr-animevideov3: 8). One pixel with unequal channels makes it a colour image.
- Grey models (1 channel in and out, as some released models and other tools' training make): a grey image goes
  through as it is; a colour image one channel at a time (R, G, B each as a grey image: the colour is kept,
  at three passes' cost), as alpha goes through any model.
- Alpha: by default through the model too, as a grey image (sharp edges stay sharp), then each output pixel is
  clamped to the min..max of the input alpha over the 3x3 neighbourhood of the input pixel it comes from (at the
  model's scale, before any resize to another outscale): a model's ringing would otherwise stay in the mask
  (realesrgan-x4plus left alpha > 0 on half of a clear background, realesr-animevideov3 took an opaque photo's to
  254). So flat alpha stays exactly flat (clear stays 0, opaque stays the maximum) and edges cannot overshoot; an
  alpha plane of one value skips the model (the same result). alpha_mode="bicubic" uses MATLAB-style bicubic
  instead (smooth, never hallucinates texture into the mask).
- Colour under transparent pixels is arbitrary (often black or white) and would bleed into the visible edge
  through the model's receptive field, giving dark or light halos. So before the model, fully transparent pixels
  get the colour of the nearest visible ones (a pull-push fill: an alpha-weighted image pyramid, coarse levels fill
  the holes of finer ones). Pixels with any opacity keep their colour exactly. This is "colour bleeding" rather
  than premultiplying: premultiplied colour would darken the edge for the model, and dividing by the upscaled
  alpha afterwards amplifies the model's errors where alpha is small.
- 8-bit stays 8-bit, 16-bit stays 16-bit, float stays float. A float array is taken to be in [0, 1] (values
  outside are clipped, with a warning; the output is clamped to it). A PIL "F" image has no such convention
  (Pillow's convert("F") gives 0..255, float TIFFs hold any range), so its own finite min..max is mapped to [0, 1]
  and the output mapped back, as the CLI does for float TIFFs (esrgan.datatiff).
- Precision: 16-bit and float inputs are computed in fp32 whatever the precision asked for (a warning says so when
  bf16 or fp16 was asked for explicitly). bf16 keeps 8 significant bits: a real 16-bit photo computed in it comes
  out with ~1,700 distinct levels where fp32 gives ~48,000 (a median step of 85/65535, i.e. ~9-10 bits); fp16
  keeps 11. 8-bit inputs use the reduced precision, whose error is below the 8-bit step. `last_precision` says what
  the last image was computed in.
- outscale: the model's scale first, then MATLAB bicubic (esrgan.resize.imresize, antialiased when shrinking) to
  round(size * outscale). The model output is kept as uint16 in between (a 1/65535 step, far below 8-bit output
  precision), then resized one channel at a time, so the float memory is one channel of the model output.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .archs import Generator, build_generator
from .compact import SRVGGNetCompact
from .defaults import ALPHA_MODES, DEFAULT_OVERLAP
from .device import (
    ModelRunner,
    PrecisionWarning,
    available_memory,
    precision_name,
    release_memory,
    resolve_device,
    resolve_precision,
)
from .errors import CheckpointError, EsrganError, OutOfMemoryWarning, one_line, out_of_memory
from .generator import RRDBNet
from .imagedata import channels_equal, orient, unorient
from .imageio import PIL_LAYOUTS, ImageData, ImageWarning, cmyk_to_rgb, profile_fits
from .tiling import (
    EXACT_COST,
    FLUSH_BYTES,
    TileError,
    TileLayout,
    auto_tile_size,
    balanced_tile,
    computed_pixels,
    default_overlap,
    exact_or_blend,
    from_unit,
    gather_rows,
    tile_grid,
    tiled_rows,
    to_unit,
)

if TYPE_CHECKING:  # video imports Upscaler; Upscaler.upscale_video imports video when called
    from .video import VideoResult

AlphaMode = Literal["model", "bicubic"]
ImageT = TypeVar("ImageT", np.ndarray, Image.Image)
T = TypeVar("T")
GPU_MAX_TILE = 1024
"""Largest automatic tile on CUDA: a 1024^2 image is one pass where half the free memory holds it (realesrgan-x4plus
in fp16: ~8.3 KB per input pixel, 8.7 GB); larger images are batched tiles. Not above 1024: the x4 tail's feature maps
(64 x 4096^2 per tile) stay under 2^31 elements, the limit of many cudnn kernels (x8 models: 720, by the same rule,
in Upscaler.tile_size)."""
CPU_MAX_TILE = 352
"""Largest automatic tile on the CPU, in input pixels (the balanced tile is then chosen below it). bench/speed.py's
tile sweep (docs/benchmarks.md): per pixel, 192-352 tiles are the fastest and 512 costs 10-20 % more (its feature
maps fall out of the caches), more than the extra overlap that smaller tiles recompute."""
Progress = Callable[[int, int], None]

MIN_TILE = 32
"""Smallest tile side (besides 0): smaller tiles are mostly overlap (tile 17 with an overlap of 16 steps by one
pixel: 2,304 tiles for a 64x64 image). A tile must also be at least twice an overlap given with it; without one
the overlap is at most half the tile (Upscaler.overlap_for)."""
MAX_TILE = 4096
MIN_OUTSCALE = 0.25
MAX_OUTSCALE = 16.0
"""The outscale range (the CLI's --outscale, the page's "output scale"): below it results shrink to a few pixels."""


def check_tile(tile: int | None, overlap: int | None = None, *, zero: str = "no tiling") -> None:
    """Raise EsrganError, naming the allowed range, for a tile side that is not 0, None or MIN_TILE..MAX_TILE (and at
    least twice an overlap given; without one the overlap adapts: Upscaler.overlap_for). zero: what 0 means to the
    caller (the CLI: no tiling; the page: automatic)."""
    if overlap is not None and overlap < 0:
        raise EsrganError(f"tile overlap must be >= 0, not {overlap}")
    low = MIN_TILE if overlap is None else max(MIN_TILE, 2 * overlap)
    if tile is not None and tile != 0 and not low <= tile <= MAX_TILE:
        why = f" (twice the tile overlap of {overlap})" if low > MIN_TILE else ""
        raise EsrganError(f"tile must be 0 ({zero}) or {low}-{MAX_TILE}{why}, not {tile}")


def check_model_channels(model: Generator, source: str | Path = "model") -> None:
    """Raise CheckpointError, naming source (the model file or name), for a model this pipeline cannot feed.

    An RGB model (3 channels in and out) takes every image as RGB (grey and alpha planes replicated to 3, the
    output averaged back to one); a grey model (1 in, 1 out) takes every plane alone (a colour image's R, G and B
    one at a time). Nothing else: checked once here, since otherwise a 2- or 4-channel model loads fine and then
    fails on every image after the full compute (or turns colour images grey, for 3 in and 1 out).
    """
    cfg = model.config
    if (cfg.num_in_ch, cfg.num_out_ch) not in ((3, 3), (1, 1)):
        raise CheckpointError(
            f"{source}: a model with {cfg.num_in_ch} input and {cfg.num_out_ch} output channels; esrgan upscales "
            "with RGB models (3 channels in and 3 out) and grey ones (1 in and 1 out)"
        )


def outside(value: float, low: float, high: float, *, digits: int = 6) -> str:
    """`value`, outside low..high, written with `digits` significant digits, or as many more as it takes not to
    read as inside the range (16.0000000001 is not "16", which the range allows)."""
    for n in range(digits, 18):
        text = f"{value:.{n}g}"
        shown = float(text)
        if not low <= shown <= high or math.isnan(value):
            return text
    return repr(value)


def check_outscale(outscale: float | None) -> None:
    """Raise EsrganError, naming the allowed range, for an outscale outside MIN_OUTSCALE..MAX_OUTSCALE."""
    if outscale is not None and not MIN_OUTSCALE <= outscale <= MAX_OUTSCALE:  # also refuses NaN
        raise EsrganError(
            f"outscale must be {MIN_OUTSCALE:g}-{MAX_OUTSCALE:g}, not {outside(outscale, MIN_OUTSCALE, MAX_OUTSCALE)}"
        )


def check_fit(fit: tuple[int | None, int | None] | None) -> None:
    """Raise EsrganError for a target size that is not (width, height) of positive sides, at least one given."""
    if fit is None:
        return
    if len(fit) != 2 or all(v is None for v in fit):
        raise EsrganError("a target size needs a width, a height or both")
    for name, value in zip(("width", "height"), fit, strict=True):
        if value is not None and not 1 <= value <= MAX_TARGET_SIDE:
            raise EsrganError(f"{name} must be 1-{MAX_TARGET_SIDE}, not {value}")


MAX_TARGET_SIDE = 1 << 20
"""The largest --width / --height (a sanity bound: the output's format and memory decide what really fits)."""


def fit_size(
    height: int, width: int, fit: tuple[int | None, int | None], *, even: bool = False
) -> tuple[int, int]:
    """(height, width) of an image of this size scaled to fit within `fit` = (width, height) (None: no bound on
    that side), aspect ratio kept: the limiting side exactly its target, the other rounded (to an even number with
    `even`, as video's subsampled chroma wants: FFmpeg's scale=W:-2). Raises EsrganError when that scale is outside
    MIN_OUTSCALE..MAX_OUTSCALE (the model's output is resized to it)."""
    target_w, target_h = fit
    by_w = math.inf if target_w is None else target_w / width
    by_h = math.inf if target_h is None else target_h / height
    scale = min(by_w, by_h)
    if not MIN_OUTSCALE <= scale <= MAX_OUTSCALE:
        box = "x".join("any" if v is None else str(v) for v in fit)
        raise EsrganError(
            f"a {width}x{height} image within {box} would be scaled by "
            f"{outside(scale, MIN_OUTSCALE, MAX_OUTSCALE, digits=3)}: outside "
            f"{MIN_OUTSCALE:g}-{MAX_OUTSCALE:g} (the range --outscale allows)"
        )

    def free(side: int) -> int:
        return max(2, 2 * round(side * scale / 2)) if even else max(1, round(side * scale))

    if by_w <= by_h:
        assert target_w is not None  # by_w is finite
        return free(height), target_w
    assert target_h is not None
    return target_h, free(width)


# Pillow modes and what they are upscaled as; the result has the mode on the right. The 8-bit ones as read_image
# takes them (P: "RGBA" when the palette has transparency), plus modes only an in-memory image has here: CMYK and
# LAB converted by Pillow (read_image converts a CMYK file through its profile), 16-bit and 32-bit grey kept.
_PIL_MODES = {
    **PIL_LAYOUTS,
    "CMYK": "RGB",
    "LAB": "RGB",
    "I;16": "I;16",
    "I;16L": "I;16",
    "I;16B": "I;16",
    "I;16N": "I;16",
    "I": "I",
    "F": "F",
}


class HostBytes(NamedTuple):
    """Host memory an upscale needs beyond its input, estimated (Upscaler.host_bytes): written whole, written as
    it is computed (both with `band` and `forward`), the tiling's band of a tile row of output, and the model's
    forward pass at the tile it will use (0 on a GPU, or for a pass no larger than one already run): the two that
    a smaller tile makes smaller."""

    whole: int
    streamed: int
    band: int
    forward: int


_RESERVE_LOCK = threading.Lock()  # Upscaler.reserving's additions and removals

SMALLER_TILE_COST = 1.25
"""The most computation (input pixels the model runs over, overlaps included) a plan that keeps an output whole
with smaller tiles may take against its tile's, where writing it as it is computed would do (Upscaler.plan_memory,
whole_first)."""


class MemoryPlan(NamedTuple):
    """How an image is upscaled in the host memory free (Upscaler.plan_memory): written as it is computed or held
    whole, and the bytes to hold aside (Upscaler.reserving) while it is, so that its tiles leave them out."""

    streamed: bool
    reserve: int


class Upscaler:
    """Runs a generator (RRDBNet or SRVGGNetCompact) over images of any size: tiled, in the best safe precision of the device.

    device: auto|cpu|cuda|mps. precision: auto|fp32|bf16|fp16 (see esrgan.device for the fallbacks).
    tile: largest tile side in input pixels (MIN_TILE..MAX_TILE, and >= 2 x tile_overlap when one is given; each
    axis is cut into equal tiles no larger, tiling.tile_grid), 0 = no tiling,
    None = from the free memory. tile_overlap: input pixels shared by neighbouring tiles (a margin of it discarded,
    the rest blended); None = twice the network's receptive radius with the radius discarded (exact tiles) where the
    image affords it (`tiling`), else tiling.default_overlap(tile): DEFAULT_OVERLAP growing with the tile to
    MAX_DEFAULT_OVERLAP, at most half the tile. batch: tiles per forward pass; None =
    from the free memory on a GPU (as many equal tiles as fit in half of it), 1 on the CPU (no gain there).
    alpha_mode: "model" or "bicubic". outscale: final scale (MIN_OUTSCALE..MAX_OUTSCALE); None = the model's scale. interpolate / interpolate_alpha: network
    interpolation, theta = (1 - a) * theta_model + a * theta_other (e.g. model = PSNR-oriented, other = GAN).
    compile: run the model through torch.compile (ModelRunner engine="compiled"): each new tile shape compiles
    first (tens of seconds), so it pays for long batches of same-sized images and for video, not for one image.
    16-bit and float images, computed in fp32 when the precision is reduced, run compiled too (in fp32).
    copy_model: the upscaler works on its own copy of the model (taken here, on the device; the weights as they
    are now), so the module given is left as it was (its device, train/eval mode, requires_grad, memory format)
    and a notebook can go on training it; False uses the module itself (no second copy of a large model's weights
    in memory), which is then put in eval mode, frozen and moved to the device, and whose later changes reach
    some engines and not others (the packed, ncnn and CUDA reduced-precision engines copy the weights at their
    first pass). from_pretrained and from_file load a model of their own and use it without a copy.
    """

    def __init__(
        self,
        model: Generator,
        *,
        device: str = "auto",
        precision: str = "auto",
        tile: int | None = None,
        tile_overlap: int | None = None,
        batch: int | None = None,
        alpha_mode: str = "model",
        outscale: float | None = None,
        fit: tuple[int | None, int | None] | None = None,
        interpolate: str | Path | Generator | None = None,
        interpolate_alpha: float | None = None,
        compile: bool = False,
        copy_model: bool = True,
    ) -> None:
        inner = getattr(
            model, "_orig_mod", None
        )  # torch.compile(model): the model, run the way compile=True runs it
        if isinstance(inner, RRDBNet | SRVGGNetCompact):
            model, compile = inner, True
        # spandrel's and BasicSR's users pass other things
        if not isinstance(model, RRDBNet | SRVGGNetCompact):
            what = (
                "a state dict"
                if isinstance(model, dict)
                else f"a {type(model).__module__}.{type(model).__name__}"
            )
            raise TypeError(
                f"Upscaler needs an esrgan model (RRDBNet or SRVGGNetCompact), not {what}: load a model file or a "
                "named model with esrgan.load_model(path_or_name), or use Upscaler.from_pretrained(path_or_name)"
            )
        if alpha_mode not in ALPHA_MODES:
            raise EsrganError(f"alpha mode must be one of {', '.join(ALPHA_MODES)}, not {alpha_mode!r}")
        check_tile(tile, tile_overlap)
        if batch is not None and batch < 1:
            raise EsrganError(f"batch must be >= 1, not {batch}")
        check_outscale(outscale)
        check_fit(fit)
        if fit is not None and outscale is not None:
            raise EsrganError("a target size (--width / --height) and --outscale exclude each other")
        check_model_channels(model)
        if interpolate is not None:
            if interpolate_alpha is None:
                raise EsrganError("network interpolation needs an alpha in [0, 1] (--alpha)")
            model = _interpolated(model, interpolate, interpolate_alpha)  # a new model: no copy needed
        elif interpolate_alpha is not None:
            raise EsrganError(
                "interpolate_alpha (--alpha) needs a second model to interpolate with (interpolate)"
            )
        elif copy_model:
            model = _copied(model)
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.model = model.to(self.device)
        self._engine = "compiled" if compile else "auto"  # the fp32 runner of 16-bit images too (runner_for)
        self.runner = ModelRunner(self.model, self.device, self.dtype, engine=self._engine)
        self.precision = precision
        self._fp32_runner: ModelRunner | None = None  # for high-bit-depth inputs when self.dtype is reduced
        self.last_precision = precision_name(self.dtype)
        """The precision the last image was computed in (fp32 for high-bit-depth inputs, and after a NaN/Inf)."""
        self.tile = tile
        self.tile_overlap = DEFAULT_OVERLAP if tile_overlap is None else tile_overlap
        self._overlap_given = tile_overlap is not None
        self.tile_cap: int | None = None
        """The largest tile side since a forward pass ran out of memory (None: no such pass yet): every image after
        it is tiled at most this large, whatever `tile` says (0 included). Set by `shrink_tile`."""
        self._passed = (
            0  # pixels of the largest pass run (tile area x batch): a pass no larger fits (_fitting)
        )
        self._foreseen: set[tuple[int, int]] = set()  # (tile given, tile used) already said by _fitting
        self.host_reserve = 0
        """Host bytes the caller holds beside the upscaling (video: the frames in flight and the encoder's; a batch's
        image: its output held whole, or the rows in flight: `plan_memory`), left out of the tile's budget on the
        CPU (the automatic tile's, and a tile given that `_fitting` makes smaller)."""
        self.batch_cap: int | None = None
        """The most tiles a forward pass since one of several tiles ran out of memory (None: none yet); set by
        `shrink_tile`, which halves the batch before the tile."""
        self.last_tile, self.last_batch = 0, 1
        """The tile side (0: the whole image) and tiles per pass of the last image begun, for shrink_tile."""
        self.batch = batch
        self.alpha_mode: AlphaMode = "bicubic" if alpha_mode == "bicubic" else "model"
        self.outscale = outscale
        self.fit = None if fit is None else (fit[0], fit[1])
        self.fit_even = False  # video sets it on its copy: the free side of a fitted size even
        # a grey image stored as colour (R == G == B) comes back grey: the colour model's output channels averaged,
        # as a grey image's are. esrgan evaluate sets it False: the literature's protocol (BasicSR's test) scores
        # the colour model's own RGB output of a grey image read as three equal channels
        self.keep_grey = True

    # --- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name: str, **options: Any) -> Upscaler:
        """A named model (see `esrgan models`) or a model file, told apart by zoo.resolve_model_path.

        Raises ModelNotAvailableError saying how to get the weights of an absent named model.
        """
        from .zoo import load_model

        model = load_model(name)
        check_model_channels(model, name)  # here, where the error can name the file
        return cls(model, **{"copy_model": False, **options})  # its own model: no copy

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> Upscaler:
        """Any model file: ours, BasicSR/Real-ESRGAN (RRDBNet or compact), ESRGAN, old-style .pth, ncnn .param."""
        from .checkpoints import load_model

        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{path}: no such model file")
        model = load_model(path)
        check_model_channels(model, path)  # here, where the error can name the file
        return cls(model, **{"copy_model": False, **options})  # its own model: no copy

    @property
    def scale(self) -> float:
        """Final scale of the output: outscale, or the model's own scale (also with a target size, `fit`, where
        each image has its own scale: output_size gives the size)."""
        return float(self.outscale) if self.outscale is not None else float(self.model.scale)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the output of an image of this size. With `fit` (width, height), either may be None:
        the largest size with the image's aspect ratio within them, the side that limits it exactly; the scale
        this takes must be within --outscale's range (EsrganError otherwise, naming the image's size)."""
        if self.fit is not None:
            return fit_size(height, width, self.fit, even=self.fit_even)
        if self.outscale is None:
            return height * self.model.scale, width * self.model.scale
        return max(1, round(height * self.outscale)), max(1, round(width * self.outscale))

    def runner_for(self, pixels: np.dtype) -> ModelRunner:
        """The forward pass for pixels of this dtype: this Upscaler's precision for 8-bit, fp32 for 16-bit and float
        (reduced precision would leave a 16-bit output with ~9-11 bits of real precision: see the module docstring).
        """
        if np.dtype(pixels) == np.uint8 or self.runner.dtype == torch.float32:
            return self.runner
        if self._fp32_runner is None:
            if self.precision != "auto":
                import warnings

                warnings.warn(
                    f"16-bit and float images are computed in fp32: {precision_name(self.runner.dtype)} would leave "
                    "them with ~9-11 bits of precision (8-bit images still use it)",
                    PrecisionWarning,
                    stacklevel=3,
                )
            self._fp32_runner = ModelRunner(self.model, self.device, torch.float32, engine=self._engine)
        return self._fp32_runner

    @staticmethod
    def computed_dtype(image: ImageData) -> np.dtype:
        """The dtype image's planes reach the model in (what runner_for, precision_for and tile_size take): uint8
        for a measurement's 8-bit samples over 0..255 (held as uint16 planes, computed as the same pixels in a PNG),
        else its pixels'."""
        return np.dtype(np.uint8) if _byte_samples(image) else image.pixels.dtype

    def precision_for(self, pixels: np.dtype | type) -> str:
        """The precision images with pixels of this dtype are computed in: fp32 for 16-bit and float, else this
        Upscaler's (after an NaN/Inf recomputation, fp32). fp16 asked on a CPU says bf16 or fp32 here."""
        return precision_name(self.runner_for(np.dtype(pixels)).dtype)

    def tile_size(
        self,
        height: int,
        width: int,
        pixels: np.dtype | type = np.uint8,
        *,
        commit: bool = False,
        foresee: bool = False,
    ) -> int:
        """The tile side used for an image of this size and pixel dtype (0 when it is processed whole).

        Automatic: the largest tile whose forward pass fits in half the free memory (on a GPU: CUDA's free memory,
        up to GPU_MAX_TILE, so a 1024x1024 image is one tile on a big GPU), then, for the blend, balanced (fewest
        tiles, each as small as can be); with the exact overlap (`tiling`) tile_grid balances it per axis. After a
        forward pass ran out of memory, at most `tile_cap` whatever was asked. On a CPU, a tile given whose pass
        would not fit in the memory free is made smaller for the image (`_fitting`; commit: the pass is about to
        run, `retrying` asks; foresee: the same tile, without the warning, for an estimate made before it)."""
        tile, cap = self.tile, self.tile_cap
        if tile is not None and cap is not None and (tile == 0 or tile > cap):
            tile = cap
        if (commit or foresee) and tile is not None and self.device.type == "cpu":
            tile = self._fitting(tile, height, width, np.dtype(pixels), warn=commit)
        if tile is None:
            bpp, fixed = self.runner_for(np.dtype(pixels)).activation_bytes()
            limit = GPU_MAX_TILE if self.device.type == "cuda" else CPU_MAX_TILE
            if cap is not None:
                limit = min(limit, cap)
            reserved = self.host_reserve if self.device.type == "cpu" else 0
            free = available_memory(self.device) - fixed - reserved
            if (
                self.device.type == "cuda"
            ):  # the tail's maps, num_feat x (tile * scale)^2, under 2^31 elements
                cfg = self.model.config
                limit = min(limit, int(math.isqrt(2**31 // cfg.num_feat) // cfg.scale) // 8 * 8)
            tile = auto_tile_size(free, bpp, batch=self.batch or 1, maximum=limit)
            if tile < max(height, width):  # tiled: tiled_rows holds a tile row of output in float32, count it
                tile = auto_tile_size(
                    free, bpp, batch=self.batch or 1, maximum=limit, band_bytes_per_row=self._band_row(width)
                )
            if self._overlap_given:  # an overlap given without a tile: the automatic tile leaves room for it
                tile = max(tile, self._least_tile())
            if tile >= max(height, width):  # one tile: whole, no layout to weigh (a 3x3 image's was an error)
                return 0
            # the blend's overlap follows the tile, so it is balanced here; the exact overlap does not (the largest
            # tile, which tile_grid balances for it), and is taken if it costs at most EXACT_COST x that blend
            blend = balanced_tile(max(height, width), tile, self.overlap_for(tile))
            exact = self.tiling(height, width, tile)
            blended = self.tiling(height, width, blend, exact=False)
            if exact.margin is None or computed_pixels(*exact[:4]) > EXACT_COST * computed_pixels(
                *blended[:4]
            ):
                tile = blend
        return 0 if tile >= max(height, width) else tile

    def overlap_for(self, tile: int) -> int:
        """The blend's overlap with this tile: the one given, else tiling.default_overlap(tile) (DEFAULT_OVERLAP,
        more for large tiles, at most half the tile: a small --tile works without choosing an overlap). What an
        image is tiled with is `tiling` (the exact overlap where the network's receptive radius allows)."""
        if self._overlap_given or tile <= 0:
            return self.tile_overlap
        return default_overlap(tile)

    def tiling(self, height: int, width: int, tile: int, *, exact: bool = True) -> TileLayout:
        """How an image of this size is tiled with this tile (from tile_size): the padded size, tile, overlap and
        margin (None: the default share of the overlap).

        Without an overlap given: the exact overlap (twice the network's receptive radius, the radius discarded:
        tiled = untiled) where it fits the tile and costs at most 10 % more on this image than the blend of
        overlap_for (tiling.exact_or_blend): realesr-animevideov3 (radius 18) and realesr-general-x4v3 (34) at the
        automatic tiles; RRDBNet, whose radius is 349 input pixels at 23 blocks, gets the blend. For a
        pixel-unshuffle model (x1, x2) that is tiled: the image padded to a multiple of the unshuffle factor (as the
        model pads it whole), and tile, overlap and so every tile's start multiples of it, so each tile groups pixels
        into the same 2x2 / 4x4 blocks as the untiled pass (otherwise a tile starting at an odd row is another
        computation throughout). exact=False: the blend whatever the radius."""
        overlap = self.overlap_for(tile)
        factor = self.model.config.unshuffle
        if factor > 1 and tile > 0:
            height, width = -(-height // factor) * factor, -(-width // factor) * factor
            tile, overlap = max(factor, tile // factor * factor), -(-overlap // factor) * factor
        margin = None
        if exact and not self._overlap_given:
            radius = self.model.config.receptive_radius
            overlap, margin = exact_or_blend(height, width, tile, overlap, radius, factor)
        return TileLayout(height, width, tile, overlap, margin)

    def batch_size(self, height: int, width: int, tile: int, pixels: np.dtype | type = np.uint8) -> int:
        """Tiles per forward pass for this image and tile: the batch given, else on CUDA as many of the image's
        tiles as fit in half the free memory (the tile already fits one), else 1; at most `batch_cap` after a
        pass of several tiles ran out of memory."""
        cap = self.batch_cap or 1 << 30
        if self.batch is not None:
            return min(self.batch, cap)
        if self.device.type != "cuda" or tile == 0:
            return 1
        bpp, fixed = self.runner_for(np.dtype(pixels)).activation_bytes()
        fits = int((available_memory(self.device) - fixed) * 0.5 / (bpp * tile * tile))
        return max(1, min(fits, cap, _tile_count(self.tiling(height, width, tile))))

    # --- public entry points --------------------------------------------------------------------------------------
    def upscale(self, image: ImageT, *, on_tile: Progress | None = None) -> ImageT:
        """Upscale a numpy array (HxW, HxWx1..4; uint8, uint16 or float in [0, 1]) or a PIL image; same type back.

        numpy: same dtype (in native byte order: a big-endian '>u2' array gives uint16) and layout; float values
        outside [0, 1] are clipped to it (an ImageWarning says how many), NaN is taken as 0.
        PIL: same mode (L, LA, RGB, RGBA, I;16, I, F), except palette -> RGB/RGBA, 1 -> L, CMYK/YCbCr/LAB/HSV ->
        RGB; EXIF in image.info is carried over, and the ICC profile where its colour space fits the output (RGB
        for RGB/RGBA, GRAY for the grey modes): a CMYK image with a CMYK profile is converted through it to sRGB
        (and carries an sRGB profile), other colour spaces' profiles are dropped. Mode F keeps its range: its finite min..max is mapped to [0, 1] for the model and the output back to it
        (NaN and -inf come back as the minimum, +inf as the maximum).
        """
        if isinstance(image, Image.Image):
            return self._upscale_pil(image, on_tile)
        if isinstance(image, np.ndarray):
            return self._upscale_numpy(image, on_tile)
        raise TypeError(f"expected a numpy array or a PIL image, not {type(image).__name__}")

    def upscale_file(
        self,
        src: str | Path,
        dst: str | Path,
        *,
        format: str | None = None,
        quality: int | None = None,
        overwrite: bool = False,
        max_pixels: int | None = None,
        on_tile: Progress | None = None,
        png_compression: int | None = None,
    ) -> Path:
        """Read src (any format esrgan.imageio reads), upscale, write dst atomically with bit depth, ICC and EXIF.

        An existing dst raises OutputExistsError before any work unless overwrite. png_compression: zlib level 0-9
        for PNG output (default esrgan.imageio.DEFAULT_PNG_COMPRESSION, a fast one). For many files,
        esrgan.pipeline.upscale_files overlaps reading, upscaling and writing. An animated GIF, APNG or WebP
        written as GIF, PNG or WebP is upscaled frame by frame (esrgan.animation.upscale_animation; on_tile is not
        called); into another format, its first frame, with a warning.
        """
        from .animation import is_animation_job, upscale_animation
        from .atomic import OutputExistsError
        from .imageio import DEFAULT_MAX_PIXELS, read_image, write_image

        dst = Path(dst)
        if not overwrite and dst.exists():
            raise OutputExistsError(dst)
        if is_animation_job(Path(src), dst, format):
            done = upscale_animation(
                self, src, dst, format=format, quality=quality, png_compression=png_compression,
                overwrite=overwrite, max_pixels=max_pixels,
            )  # fmt: skip
            return done.dst
        data = read_image(
            src, max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels, measurements=True
        )
        result = self.upscale_image(data, on_tile=on_tile)
        return write_image(
            dst, result, format=format, quality=quality, overwrite=overwrite, png_compression=png_compression
        )

    def upscale_image(self, image: ImageData, *, on_tile: Progress | None = None) -> ImageData:
        """The entry point for a decoded image: esrgan.imageio.ImageData (as read_image returns it) in, the same
        image upscaled out, ready for write_image.

        Keeps the bit depth (8 or 16), alpha, ICC profile, EXIF and format of the input; only the pixels change
        (tiled as this Upscaler is set up: automatic tile from the free memory unless a tile was given).
        on_tile(done, total) is called after every tile (alpha run through the model counts as a second pass);
        an exception it raises stops the work at that tile boundary. `upscale_file`, the CLI, `esrgan serve` and
        video frames all go through here.
        """
        # a measurement raster is held as stored; the model sees it as it is shown (its orientation tag applied),
        # as the same pixels in a plain TIFF or a PNG
        turned = image.samples.orientation if image.samples is not None else 1
        if turned != 1:
            image = _map_planes(image, image.bit_depth, lambda plane: orient(plane, turned), validity=True)
        byte_samples = _byte_samples(image)
        if byte_samples:  # computed as the same pixels in a PNG are: at 8 bits, in this Upscaler's precision
            image = _map_planes(image, 8, lambda plane: (plane // 257).astype(np.uint8))
        if image.extra is None and image.valid is None:
            colour, alpha = self.upscale_planes(image.pixels, image.alpha, on_tile=on_tile)
            out = replace(image, pixels=colour, alpha=alpha)
        else:
            out = self._upscale_bands(image, on_tile)
        if byte_samples:
            out = _map_planes(out, 16, lambda plane: plane.astype(np.uint16) * np.uint16(257))
        if turned != 1:
            out = _map_planes(out, out.bit_depth, lambda plane: unorient(plane, turned), validity=True)
        if out.samples is not None:  # a measurement image or DICOM: say what made it (DICOM's new UIDs)
            out = replace(out, samples=replace(out.samples, derivation=self.fingerprint))
        return out

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the model's architecture and weights with this upscaler's outscale: what tells the outputs of
        one set-up from another's (DICOM derives its new series UID from it). Hashed once per Upscaler: 0.06 s for
        realesrgan-x4plus on a 2-core AMD EPYC Zen 3."""
        fit = "" if self.fit is None else f" fit {self.fit}"  # only when set: fingerprints stay as they were
        digest = hashlib.sha256(
            f"{type(self.model).__name__} {self.model.scale} {self.outscale}{fit}".encode()
        )
        for name, tensor in self.model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def upscale_video(self, src: str | Path, dst: str | Path, **options: Any) -> VideoResult:
        """Every frame of a video through this upscaler, sound and timing kept: esrgan.video.upscale_video (options:
        codec, crf, pix_fmt, frames, segment_frames, frame_batch, overwrite, max_pixels, on_frame)."""
        from .video import upscale_video

        return upscale_video(self, src, dst, **options)

    def upscale_planes(
        self, colour: np.ndarray, alpha: np.ndarray | None, *, on_tile: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The core: colour HxWx1 or HxWx3 and optional alpha HxW, both uint8, uint16 or float, same dtype (either
        byte order; the output is in native order).

        Returns (colour, alpha) at the output size, in the input dtype. Float is taken to be in [0, 1]: values
        outside are clipped to it (one ImageWarning a call says how many), NaN becomes 0; the output is clamped.
        """
        if colour.ndim != 3 or colour.shape[2] not in (1, 3):
            raise EsrganError(f"colour must be HxWx1 or HxWx3, not {colour.shape}")
        if alpha is not None and alpha.shape != colour.shape[:2]:
            raise EsrganError(f"alpha must be {colour.shape[:2]}, not {alpha.shape}")
        if not colour.dtype.isnative:  # big-endian ('>u2'): computed, and returned, in native order
            colour = colour.astype(colour.dtype.newbyteorder("="))
        if alpha is not None and not alpha.dtype.isnative:
            alpha = alpha.astype(alpha.dtype.newbyteorder("="))
        dtype = colour.dtype
        if dtype.kind == "f":
            colour = colour.astype(np.float32, copy=False)
            alpha = None if alpha is None else alpha.astype(np.float32, copy=False)
            outside = sum(int(np.count_nonzero((p < 0) | (p > 1))) for p in (colour, alpha) if p is not None)
            if outside:  # said, not silently changed: e.g. 0..255 floats would come back all white
                warnings.warn(
                    f"{outside} float values outside [0, 1] clipped to it (float images are taken to be in [0, 1])",
                    ImageWarning,
                    stacklevel=2,
                )
            colour = np.clip(np.nan_to_num(colour), 0.0, 1.0)
            alpha = None if alpha is None else np.clip(np.nan_to_num(alpha), 0.0, 1.0)
        elif dtype not in (np.uint8, np.uint16):
            raise EsrganError(f"pixels must be uint8, uint16 or float, not {dtype}")
        h, w = colour.shape[:2]
        runner = self.runner_for(dtype)
        grey = self._stored_grey(colour)
        if grey:  # a grey image stored as colour: the grey path, its output's channels equal again
            colour = colour[:, :, :1]
        model_alpha = self._model_alpha(alpha)
        colour_passes = self._colour_passes(colour.shape[2])
        passes = colour_passes + model_alpha
        if alpha is not None:
            colour = bleed_colour(colour, alpha)

        def planes(tile: int) -> tuple[np.ndarray, np.ndarray | None]:
            per_pass = _tile_count(self.tiling(h, w, tile))

            def progress(k: int) -> Progress | None:
                if on_tile is None:
                    return None
                report = on_tile
                return lambda done, total: report(k * per_pass + done, passes * per_pass)

            if on_tile is not None:  # the total is known now: progress before the first tile is done
                on_tile(0, passes * per_pass)
            try:
                if colour_passes == 1:
                    out_colour = self._run(runner, colour, tile, dtype, progress(0))
                    if grey:
                        out_colour = np.repeat(out_colour, 3, axis=2)
                else:  # each channel's output copied in and dropped: no second copy of them all
                    out_colour = np.empty((*self.output_size(h, w), 3), dtype)
                    for k in range(3):
                        out_colour[:, :, k] = self._run(
                            runner, colour[:, :, k : k + 1], tile, dtype, progress(k)
                        )[:, :, 0]
                out_alpha: np.ndarray | None = None
                if alpha is not None:
                    if model_alpha:  # clamped to its input's neighbourhoods: no ringing kept in the mask
                        out_alpha = self._run(
                            runner, alpha[:, :, None], tile, dtype, progress(colour_passes), bounds=alpha
                        )[:, :, 0]
                    elif self.alpha_mode == "model":  # one value: what the clamp would make of any output
                        out_alpha = np.full(self.output_size(h, w), alpha.flat[0], dtype)
                    else:
                        out_alpha = _resize_plane(alpha, self.output_size(h, w), dtype)
            except (RuntimeError, MemoryError) as exc:  # the band, its flush, the output: beside the pass
                if not out_of_memory(exc):
                    raise
                raise TileError(f"the image: {one_line(exc)}", where="the image") from exc
            return out_colour, out_alpha

        result = self.retrying(h, w, dtype, planes)
        self.last_precision = precision_name(runner.dtype)  # fp32 too if a NaN/Inf made the runner switch
        return result

    # --- internals ------------------------------------------------------------------------------------------------
    def _upscale_bands(self, image: ImageData, on_tile: Progress | None) -> ImageData:
        """A measurement image (esrgan.datatiff): pixels without data filled from their neighbours, colour (and
        alpha) as usual, then each extra band alone as grey (a multi-frame DICOM's later frames: each frame, grey
        or colour); the validity of each output pixel is that of the nearest input pixel."""
        colour, alpha, extra, valid = image.pixels, image.alpha, image.extra, image.valid
        c = colour.shape[2]
        if valid is not None:  # per band: a band keeps its values where another has none
            colour = np.dstack(
                [bleed_colour(colour[:, :, k : k + 1], valid[:, :, k].astype(np.uint8)) for k in range(c)]
            )
            if alpha is not None:
                alpha = bleed_colour(alpha[:, :, None], valid[:, :, c].astype(np.uint8))[:, :, 0]
        # extra bands alone as grey; a multi-frame DICOM's frames as what they are (grey or RGB)
        group = c if image.samples is not None and image.samples.frames > 1 else 1
        bands = [] if extra is None else [extra[:, :, k : k + group] for k in range(0, extra.shape[2], group)]
        if valid is not None:
            first = c + (alpha is not None)
            bands = [bleed_colour(b, valid[:, :, first + k].astype(np.uint8)) for k, b in enumerate(bands)]
        first_passes = self._passes(colour, alpha)
        all_passes = first_passes + len(bands)

        def progress(first_pass: int, passes: int) -> Progress | None:
            if on_tile is None:
                return None
            report = on_tile

            def tell(done: int, total: int) -> None:
                if done == 0 and first_pass:  # a later pass's start is where the pass before it ended
                    return
                per_pass = total // passes  # total: `passes` passes at the tile used now (a retry's)
                report(first_pass * per_pass + done, all_passes * per_pass)

            return tell

        out_colour, out_alpha = self.upscale_planes(colour, alpha, on_tile=progress(0, first_passes))
        size = out_colour.shape[:2]
        out_extra = np.empty((*size, len(bands) * group), out_colour.dtype)
        for k, b in enumerate(bands):  # each band's result copied in and dropped: no second copy of them all
            band, _ = self.upscale_planes(b, None, on_tile=progress(first_passes + k, 1))
            out_extra[:, :, k * group : (k + 1) * group] = band
        return replace(
            image,
            pixels=out_colour,
            alpha=out_alpha,
            extra=out_extra if bands else None,
            valid=None if valid is None else nearest(valid, size),
        )

    def _colour_passes(self, channels: int) -> int:
        """Passes of the model over an image's colour: a grey model takes a colour image one channel at a time."""
        return 3 if channels == 3 and self.model.config.num_in_ch == 1 else 1

    def _passes(self, colour: np.ndarray, alpha: np.ndarray | None) -> int:
        """Passes of the model upscale_planes makes over these planes: a grey image stored as colour is one, and
        an alpha plane of one value none."""
        channels = 1 if self._stored_grey(colour) else colour.shape[2]
        return self._colour_passes(channels) + self._model_alpha(alpha)

    def _stored_grey(self, colour: np.ndarray) -> bool:
        """Whether HxWxC colour is a grey image stored as colour (R == G == B), which takes the grey path."""
        return self.keep_grey and colour.shape[2] == 3 and channels_equal(colour)

    def _model_alpha(self, alpha: np.ndarray | None) -> bool:
        """Whether an alpha plane goes through the model: alpha_mode "model", and more than one value in it."""
        return alpha is not None and self.alpha_mode == "model" and not constant(alpha)

    def retrying(self, height: int, width: int, dtype: np.dtype, attempt: Callable[[int], T]) -> T:
        """attempt(tile) with the tile of an image of this size and dtype; while it raises a TileError of a forward
        pass out of memory, again with fewer or smaller tiles (`shrink_tile`) down to the smallest; when no tile
        works, the caps go back to what they were before this image. upscale_image goes through it, and the batch's
        streamed outputs (an attempt writes the whole file: rows given out cannot be taken back). Real-ESRGAN and
        the ncnn ports end the run at the first CUDA out-of-memory; a memory estimate cannot see what another
        process takes between it and the pass."""
        caps = self.tile_cap, self.batch_cap
        while True:
            try:
                tile = self.tile_size(height, width, dtype, commit=True)
                done = attempt(tile)
                side = min(tile or max(height, width), max(height, width))
                self._passed = max(
                    self._passed, min(side, height) * min(side, width) * (self.last_batch or 1)
                )
                return done
            except TileError as exc:
                try:
                    self.shrink_tile(exc, height, width)
                except TileError:  # no tile worked: the next images start where this one did
                    self.tile_cap, self.batch_cap = caps
                    self.release()
                    raise
            self.release()  # here, not in the except block: the exception's traceback holds the pass's tensors

    def shrink_tile(self, exc: TileError, height: int, width: int) -> None:
        """After `exc` ended a pass over an image of this size: when its forward pass ran out of memory (CUDA's free
        memory taken by another process, an estimate too low, a --tile too large for the device) and a smaller tile
        is left, half the tiles of a pass of several (`batch_cap`), else half the side of the tile it had (a quarter
        of a pass's memory, `tile_cap`), for this image's next attempt and the images after it, with an
        OutOfMemoryWarning; otherwise raises: exc itself, or at the smallest tile a TileError saying so. Then,
        outside the except block, `release()`, and start the image again (`retrying` does all of it). Nothing is
        lost but time: the output is blended the same whatever the tile (seams >= 50 dB)."""
        cause = exc.__cause__
        if cause is None or not out_of_memory(cause):
            raise exc
        import warnings

        tile, batch = self.last_tile, self.last_batch
        side = tile or max(height, width)
        # several tiles a pass: fewer of them first (on CUDA the automatic batch fills half the free memory)
        if batch > 1:
            self.batch_cap = min(batch // 2, self.batch_cap or batch)
            warnings.warn(
                f"out of memory with {batch} tiles of {side}x{side} pixels a pass on {self.device.type}; trying "
                f"{batch // 2} a pass (also for the images after it)",
                OutOfMemoryWarning,
                stacklevel=3,
            )
            return
        smaller = self._smaller_tile(side)
        if smaller is None:
            said = one_line(cause)
            # oneDNN's "could not create a primitive" is counted as memory (errors.out_of_memory) but not said so
            what = "out of memory" if "primitive" not in said else "the forward pass failed"
            raise TileError(
                f"{exc.where}: {what} even with tiles of {side}x{side} pixels, the smallest tried "
                f"({said[:160]}); free some memory{self._elsewhere()}",
                where=exc.where,
            ) from cause
        self.tile_cap = min(smaller, self.tile_cap or smaller)
        warnings.warn(
            f"out of memory with {'the whole image' if tile == 0 else f'tiles of {side}x{side} pixels'} on "
            f"{self.device.type}; trying tiles of {smaller}x{smaller} (also for the images after it)",
            OutOfMemoryWarning,
            stacklevel=3,
        )

    def release(self) -> None:
        """Give back what a pass that ran out of memory left taken: the engines' caches (ncnn's pooled blobs) and
        the device's cached blocks, after collecting the failed pass's reference cycles."""
        for runner in (self.runner, self._fp32_runner):
            if runner is not None:
                runner.release()
        release_memory(self.device)

    def _fitting(self, tile: int, height: int, width: int, pixels: np.dtype, *, warn: bool = True) -> int:
        """`tile` (a tile given, --tile; 0: the whole image), or when its pass would not fit in the host memory free
        now (the machine's, a container's, `ulimit -v`), the largest tile whose pass takes at most half of it, for
        this image, with an OutOfMemoryWarning (once per tile given and tile used; none when not `warn`). On a CPU a pass too large is
        seldom an error the retry (shrink_tile) could catch: Linux hands out memory it does not have, and the
        kernel's OOM killer ends the process without a word when it is touched (measured: `--tile 384 --precision
        fp32`, the ncnn engine's ~50 KB an input pixel, on a 384x384 photo in a 900 MiB container).

        "Would not fit": the pass (ModelRunner.pass_bytes: the engine's estimate for that tile) and the tiling's
        float32 band of a tile row of output over three quarters of the memory free (the packed fp32 engine's
        estimate runs ~20 % short at large tiles). A pass no larger than one this upscaler has run is not counted:
        the engines keep what a pass took for the next (ncnn's pool, the heap), which then reads as taken; its band,
        which grows with the image's width and is given back after each image, still is. Not where the free memory
        cannot be read; GPUs raise an error the retry catches."""
        from .device import host_memory_available
        from .errors import format_bytes

        longest = max(height, width)
        side = min(tile or longest, longest)
        batch = self.batch or 1
        if side <= MIN_TILE or (side == longest and height * width * batch <= self._passed):
            return tile
        free = host_memory_available()
        if free is None:
            return tile
        free = max(0, free - self.host_reserve)
        runner = self.runner_for(pixels)
        row = self._band_row(width)

        def need(t: int) -> int:
            span_h, span_w = min(t, height), min(t, width)
            return self._pass_host_bytes(runner, span_h, span_w) + (row * span_h if t < longest else 0)

        if need(side) <= 0.75 * free:
            return tile
        low = self._least_tile()
        fit = next((t for t in range(side // 8 * 8, low, -8) if need(t) <= 0.5 * free), low)
        if fit >= side:
            return tile
        said = (tile, fit)
        if warn and said not in self._foreseen:
            self._foreseen.add(said)
            import warnings

            whole = "the whole image" if side == longest else f"tiles of {side}x{side} pixels"
            warnings.warn(
                f"out of memory with {whole} on cpu, foreseen: a pass needs about {format_bytes(need(side))} and "
                f"{format_bytes(free)} is free"
                + (
                    f" ({format_bytes(self.host_reserve)} more is set aside beside the pass)"
                    if self.host_reserve
                    else ""
                )
                + f"; tiles of at most {fit}x{fit} instead",
                OutOfMemoryWarning,
                stacklevel=4,
            )
        return fit

    def _pass_host_bytes(self, runner: ModelRunner, tile_h: int, tile_w: int) -> int:
        """Host memory a forward pass over tiles of tile_h x tile_w (this upscaler's batch of them) takes beyond
        what the engine holds already: none on a GPU (its memory is the device's) or for a pass no larger than one
        this upscaler has run (the engines keep what a pass took, which then reads as taken)."""
        batch = self.batch or 1
        if self.device.type != "cpu" or tile_h * tile_w * batch <= self._passed:
            return 0
        return runner.pass_bytes(tile_h, tile_w, batch)

    def batch_fits(self, height: int, width: int, frames: int, pixels: np.dtype | type = np.uint8) -> bool:
        """Whether a pass over `frames` whole images of this size fits in the host memory free as `_fitting` sees
        it (always on a GPU, whose out-of-memory is an error the caller retries): a video's frame batches."""
        from .device import host_memory_available

        if self.device.type != "cpu" or height * width * frames <= self._passed:
            return True
        free = host_memory_available()
        return (
            free is None or self.runner_for(np.dtype(pixels)).pass_bytes(height, width, frames) <= 0.75 * free
        )

    def _smaller_tile(self, side: int) -> int | None:
        """Half of `side` (a tile side, or the image's longest side when it was whole), a multiple of 8, at least
        MIN_TILE (and room for an overlap given); None when `side` is already that small."""
        smaller = max(self._least_tile(), side // 2 // 8 * 8)
        return smaller if smaller < side else None

    def _least_tile(self) -> int:
        """The smallest tile side tried: MIN_TILE, or room for an overlap given (twice it and 8, a multiple of 8)."""
        if self._overlap_given:
            return max(MIN_TILE, -(-(2 * self.tile_overlap + 8) // 8) * 8)
        return MIN_TILE

    def _band_row(self, width: int) -> int:
        """Bytes of the tiling's band (a tile row of output, float32, on the host) per input row of the tile, for an
        image `width` wide."""
        return self.model.scale * width * self.model.scale * self.model.config.num_out_ch * 4

    def _elsewhere(self) -> str:
        return " or try --device cpu" if self.device.type != "cpu" else ""

    def host_bytes(self, image: ImageData) -> HostBytes:
        """Host memory an upscale of image needs beyond the input it holds, estimated (HostBytes). whole:
        upscale_image then write_image: the output, a copy of it for the encoder (Pillow's) and the tiling's float32
        band of a tile row of output (on the host when the model runs on the CPU), and with another output size
        (--outscale, --width) the model-scale intermediate and the resize's float planes. streamed: upscale_rows
        into write_image_rows: the band and the rows in flight (at most 8 FLUSH_BYTES, measured at about 6 on a
        4352x2448 photo at x4 on a 2-core AMD EPYC Zen 4). Both count the model's forward pass at the tile it will
        use (on a CPU: `_pass_host_bytes`). It had been left out (its tile is kept to half of what is free), but
        the output held whole may take the other half and more: a 512x4096 photo at x4 in a container with 393 MB
        free was written whole (358 MB) beside a 65 MB pass, and the kernel killed it."""
        h, w = image.height, image.width
        scale = self.model.scale
        out_h, out_w = self.output_size(h, w)
        channels = (
            image.channels + (image.alpha is not None) + (0 if image.extra is None else image.extra.shape[2])
        )
        itemsize = 2 if image.pixels.dtype.itemsize >= 2 else 1
        out_bytes = out_h * out_w * channels * itemsize
        # the tile the pass will use: a --tile whose pass and band would not fit is made smaller (_fitting)
        computed = self.computed_dtype(image)
        tile = self.tile_size(h, w, computed, foresee=True)
        layout = self.tiling(h, w, tile)
        tile_h, tile_w = (
            tile_grid(layout.height, layout.width, layout.tile, layout.overlap)[:2] if tile else (h, w)
        )
        band = tile_h * self._band_row(w) if self.device.type == "cpu" else 0
        converted = 2 * min(FLUSH_BYTES, out_h * out_w * 3 * 4)  # rows being normalised and converted
        forward = self._pass_host_bytes(self.runner_for(computed), tile_h, tile_w)
        whole = 2 * out_bytes + band + converted + forward
        if (out_h, out_w) != (h * scale, w * scale):  # uint16 at the model's scale, then one plane at a time
            whole += h * scale * w * scale * (channels * 2 + 4) + out_h * (w * scale + out_w) * 4
        streamed = band + converted + forward + min(8 * FLUSH_BYTES, out_bytes)
        return HostBytes(whole, streamed, band, forward)

    @contextlib.contextmanager
    def reserving(self, nbytes: int) -> Iterator[None]:
        """host_reserve raised by nbytes while inside (the tile leaves that memory out), and lowered by as much
        afterwards: threads that share this upscaler add their reserves up (restoring the value seen on entry
        dropped another thread's reserve in the middle of its pass, or left one raised for good)."""
        nbytes = max(0, nbytes)
        with _RESERVE_LOCK:
            self.host_reserve += nbytes
        try:
            yield
        finally:
            with _RESERVE_LOCK:
                self.host_reserve -= nbytes

    def plan_memory(
        self,
        image: ImageData,
        free: int,
        whole: Callable[[HostBytes], int] = lambda need: need.whole,
        streamed: Callable[[HostBytes], int] | None = lambda need: need.streamed,
        *,
        whole_first: bool = False,
    ) -> MemoryPlan | None:
        """How this image is upscaled within `free` host bytes: held whole, else (where `streamed` is given: the
        image and format allow it) written as it is computed, else the one of those two whose tiles, made small
        enough to leave the output's (or the rows') memory out, compute the fewest pixels; None when nothing fits.
        whole / streamed: a caller's cost of each way from host_bytes (the web page adds its previews and
        threads). whole_first: whole with smaller tiles before streamed, where they compute at most
        SMALLER_TILE_COST x the pixels (the web page: a streamed result is a PNG, where whole the upload's format
        is kept; tiles of 32 would take ten times as long).

        The tile (automatic or given) is fitted to half of what is free, without the output: counted beside it,
        an output that fit whole had been written beside a pass that took the rest (the kernel killed it), and
        counting it (session 32) refused images a smaller tile fits. A plan's `reserve` is held (`reserving`)
        while the image is upscaled, so that its pass takes those smaller tiles."""
        need = self.host_bytes(image)
        dtype = self.computed_dtype(image)

        def computed() -> int:  # input pixels the model runs over at the tile used now
            tile = self.tile_size(image.height, image.width, dtype, foresee=True)
            return computed_pixels(*self.tiling(image.height, image.width, tile)[:4])

        def smaller(stream: bool, cost: Callable[[HostBytes], int]) -> tuple[int, MemoryPlan] | None:
            reserve = cost(need) - need.band - need.forward  # what the tiling does not take, set aside
            if reserve >= free:
                return None
            with self.reserving(reserve):
                if cost(self.host_bytes(image)) > free:
                    return None
                return computed(), MemoryPlan(stream, reserve)

        if whole(need) <= free:
            return MemoryPlan(False, 0)
        if whole_first:
            fitted = smaller(False, whole)
            if fitted is not None and fitted[0] <= SMALLER_TILE_COST * computed():
                return fitted[1]
        if streamed is not None and streamed(need) <= free:
            return MemoryPlan(True, 0)
        ways = [smaller(False, whole)] + ([] if streamed is None else [smaller(True, streamed)])
        found = [way for way in ways if way is not None]
        return min(found, key=lambda way: way[0])[1] if found else None

    def stream_reason(self, image: ImageData) -> str | None:
        """None when `upscale_rows` can upscale this image (its output then never has to be held whole), else why
        not, in a few words: only colour (grey or RGB) at the model's own scale streams; alpha is a second pass
        over the image, a resize needs the rows around each output row, a measurement image has its bands."""
        if image.alpha is not None:
            return "it has an alpha channel"
        if image.extra is not None or image.valid is not None or image.samples is not None:
            return "it is a measurement image"
        h, w = image.pixels.shape[:2]
        if self.output_size(h, w) != (h * self.model.scale, w * self.model.scale):
            return f"its output is not at the model's own scale ({self.model.scale}x)"
        # a grey model takes grey stored as RGB in one pass, as the grey image (upscale_rows)
        if self._colour_passes(image.channels) > 1 and not channels_equal(image.pixels):
            return "a grey model upscales a colour image one channel at a time"
        return None

    def upscale_rows(
        self, image: ImageData, *, on_tile: Progress | None = None, tile: int | None = None
    ) -> Iterator[np.ndarray]:
        """The output of upscale_image(image).pixels in bands of rows, top to bottom (each (n, W * scale, C), the
        input's dtype), each as soon as the tiles above the next tile row are done: at most a band of tiles' rows
        is held, never the whole output (imageio.write_image_rows writes them as they come). The same pixels as
        upscale_image, tile for tile. Only for what stream_reason allows (EsrganError otherwise). A forward pass out
        of memory is a TileError, not retried here: a caller that can start its output over does (`retrying`,
        passing each attempt's `tile`)."""
        reason = self.stream_reason(image)
        if reason is not None:
            raise EsrganError(f"cannot upscale row by row: {reason}")
        plane, dtype = image.pixels, image.pixels.dtype
        h, w = plane.shape[:2]
        grey = self._stored_grey(plane)  # as upscale_planes: the grey path
        if grey:
            plane = plane[:, :, :1]
        if tile is None:  # else the tile `retrying` chose for this attempt
            tile = self.tile_size(h, w, dtype)
        runner = self.runner_for(dtype)
        if on_tile is not None:
            on_tile(0, _tile_count(self.tiling(h, w, tile)))
        for _, rows in self._tiled(runner, plane, tile, dtype, on_tile, dtype):
            yield np.repeat(rows, 3, axis=2) if grey else rows
        self.last_precision = precision_name(runner.dtype)

    def _tiled(
        self,
        runner: ModelRunner,
        plane: np.ndarray,
        tile: int,
        dtype: np.dtype,
        on_tile: Progress | None,
        out_dtype: np.dtype,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """The model over an HxWx1 or HxWx3 array, tiled, at the model's scale: (first row, rows) pieces of the
        output in out_dtype, top to bottom, cropped to the image's own size (the padding to the model's alignment
        dropped)."""
        batch = self.batch_size(plane.shape[0], plane.shape[1], tile, dtype)
        self.last_tile, self.last_batch = tile, batch
        if plane.shape[2] != 1 and self.model.config.num_in_ch == 1:
            raise EsrganError("a grey model takes one channel at a time")  # upscale_planes splits colour
        grey = plane.shape[2] == 1 and self.model.config.num_in_ch == 3  # replicated to RGB, averaged back
        if not plane.flags.writeable:  # e.g. np.asarray(PIL image): torch wants a writable buffer
            plane = plane.copy()
        image = torch.from_numpy(np.ascontiguousarray(plane)).permute(2, 0, 1)
        if grey:
            image = image.expand(3, -1, -1)
        h, w = plane.shape[:2]
        padded_h, padded_w, tile, overlap, margin = self.tiling(h, w, tile)
        if (padded_h, padded_w) != (h, w):  # reflect, as RRDBNet.forward pads an unaligned image itself
            mode = "reflect" if h > padded_h - h and w > padded_w - w else "replicate"
            image = F.pad(image[None].float(), (0, padded_w - w, 0, padded_h - h), mode=mode)[0].to(
                image.dtype
            )
        out_h, out_w = h * self.model.scale, w * self.model.scale
        bands = tiled_rows(
            runner,
            image,
            scale=self.model.scale,
            tile=tile,
            overlap=overlap,
            margin=margin,
            batch=batch,
            device=runner.device,
            out_dtype=out_dtype,
            grey=grey,
            on_tile=on_tile,
        )
        for first, rows in bands:
            if first < out_h:
                yield first, rows[: out_h - first, :out_w]
            del rows  # not held while the next piece is made

    def _run(
        self,
        runner: ModelRunner,
        plane: np.ndarray,
        tile: int,
        dtype: np.dtype,
        on_tile: Progress | None,
        *,
        bounds: np.ndarray | None = None,
    ) -> np.ndarray:
        """Model (and outscale resize) over an HxWx1 or HxWx3 array; HxWx(same C) of dtype back. bounds: an HxW
        plane (the alpha that went in) whose 3x3 neighbourhoods' min..max each output pixel at the model's scale is
        clamped to (`within_neighbours`), before the resize."""
        h, w = plane.shape[:2]
        size = self.output_size(h, w)
        native = size == (h * self.model.scale, w * self.model.scale)
        # resize needs an intermediate: uint16 for integer outputs (see the module docstring), float32 for float
        inter = dtype if native else (np.dtype(np.float32) if dtype.kind == "f" else np.dtype(np.uint16))
        pieces = self._tiled(runner, plane, tile, dtype, on_tile, inter)
        if bounds is not None:
            pieces = within_neighbours(pieces, bounds, self.model.scale)
        out = gather_rows(pieces, h * self.model.scale)
        if native:
            return np.ascontiguousarray(out)
        resized = np.empty((*size, out.shape[2]), dtype=dtype)
        for c in range(out.shape[2]):
            resized[:, :, c] = _resize_plane(out[:, :, c], size, dtype)
        if bounds is not None and dtype.kind == "f":
            # the float resize of a flat 1.0 gave 0.9999999: the input's extremes kept exact, as integers keep them
            lo, hi = float(bounds.min()), float(bounds.max())
            near = 4 * float(np.finfo(dtype).eps) * max(1.0, abs(hi), abs(lo))  # the resize's float rounding
            np.clip(resized, lo, hi, out=resized)
            resized[resized > hi - near] = hi
            resized[resized < lo + near] = lo
        return resized

    def _upscale_numpy(self, array: np.ndarray, on_tile: Progress | None) -> np.ndarray:
        if array.ndim not in (2, 3) or (array.ndim == 3 and not 1 <= array.shape[2] <= 4):
            raise EsrganError(f"expected an HxW or HxWxC (C = 1..4) image array, not shape {array.shape}")
        if array.shape[0] == 0 or array.shape[1] == 0:
            raise EsrganError(f"empty image of shape {array.shape}")
        if not array.dtype.isnative:  # e.g. '>u2' from a big-endian file: same values, output in native order
            array = array.astype(array.dtype.newbyteorder("="))
        a = array[:, :, None] if array.ndim == 2 else array
        n_colour = 1 if a.shape[2] <= 2 else 3
        alpha = a[:, :, n_colour] if a.shape[2] in (2, 4) else None
        colour, out_alpha = self.upscale_planes(a[:, :, :n_colour], alpha, on_tile=on_tile)
        planes = colour if out_alpha is None else np.concatenate([colour, out_alpha[:, :, None]], axis=2)
        if array.ndim == 2:
            planes = planes[:, :, 0]
        return planes.astype(array.dtype, copy=False)

    def _upscale_float_range(self, values: np.ndarray, on_tile: Progress | None) -> np.ndarray:
        """A float32 HxW image of any range (PIL mode F): its finite min..max mapped to [0, 1], upscaled, and the
        output mapped back. NaN and -inf go in as the minimum, +inf as the maximum (the float array path's 0 and 1);
        a constant image comes back constant."""
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        span = hi - lo
        unit = (values.astype(np.float64) - lo) / span if span > 0 else np.zeros(values.shape)
        unit = np.clip(np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0).astype(np.float32)
        out = self._upscale_numpy(unit, on_tile)
        return (out.astype(np.float64) * span + lo).astype(np.float32)

    def _upscale_pil(self, image: Image.Image, on_tile: Progress | None) -> Image.Image:
        mode = image.mode
        if mode not in _PIL_MODES:
            raise EsrganError(f"unsupported PIL image mode {mode!r}")
        target = _PIL_MODES[mode]
        if mode == "P":
            target = "RGBA" if "transparency" in image.info else "RGB"
        icc = image.info.get("icc_profile") or None
        if target == "F":
            out = self._upscale_float_range(np.asarray(image, dtype=np.float32), on_tile)
            result = Image.fromarray(out)
        elif target in ("I;16", "I"):
            array = np.asarray(image)
            if target == "I":  # 32-bit integer images hold 16-bit data in practice (Pillow's 16-bit PNG mode)
                array = np.clip(array, 0, 65535)
            array = array.astype(np.uint16)
            out = self._upscale_numpy(array, on_tile)
            result = Image.fromarray(out.astype(np.int32) if target == "I" else out)
        else:
            if mode == "CMYK":  # through its CMYK profile to sRGB where it has one, as files are read
                array, icc = cmyk_to_rgb(image, "PIL image", icc)
            else:
                array = np.asarray(image if mode == target else image.convert(target))
            out = self._upscale_numpy(array, on_tile)
            result = Image.fromarray(out)
        # the profile only where it describes the output: a LAB, CMYK or YCbCr image's no longer does
        if icc is not None and profile_fits(icc, 1 if out.ndim == 2 or out.shape[2] <= 2 else 3):
            result.info["icc_profile"] = icc
        # what Pillow's writers take from info by default, as the file path keeps them (README, Metadata): the EXIF,
        # XMP, the resolution (kept as it is: the print grows with the pixels) and a JPEG comment
        for key in ("exif", "xmp", "dpi", "comment"):
            if key in image.info:
                result.info[key] = image.info[key]
        return result


def _byte_samples(image: ImageData) -> bool:
    """Whether a measurement image's planes are 8-bit samples over 0..255 (esrgan.datatiff maps every 8-bit raster
    and DICOM so unless given a value range; MONOCHROME1 inverted): their uint16 planes are the 8-bit values times
    257, and the file stores 8 bits, so fp32 and 16-bit planes would buy nothing but time and another result than
    the same pixels in a PNG."""
    sm = image.samples
    return (
        sm is not None and sm.dtype == np.uint8 and all(r in ((0.0, 255.0), (255.0, 0.0)) for r in sm.ranges)
    )


def _map_planes(
    image: ImageData, bits: int, change: Callable[[np.ndarray], np.ndarray], *, validity: bool = False
) -> ImageData:
    """image at `bits` with change applied to its colour, alpha and extra planes (and its validity mask too where
    `validity`; the rest kept)."""
    return replace(
        image,
        bit_depth=bits,
        pixels=change(image.pixels),
        alpha=None if image.alpha is None else change(image.alpha),
        extra=None if image.extra is None else change(image.extra),
        valid=image.valid if image.valid is None or not validity else change(image.valid),
    )


def _copied(model: Generator) -> Generator:
    """A copy of `model`'s weights (same values, dtype and device) in a new module of its architecture, in eval mode
    and frozen, sharing nothing with it: the module the caller gave is left as it was. The module is built on the
    meta device (no random initialisation to throw away) and only the weights are copied, so what else hangs on the
    caller's module (hooks holding loggers or locks, a training graph) is not: copy.deepcopy of such a module
    raised. A subclass (its own forward) or a module whose weights are not its architecture's plain ones
    (weight_norm's weight_g/weight_v) is deep-copied instead, or refused with the way out (copy_model=False)."""
    import copy

    if type(model) in (RRDBNet, SRVGGNetCompact):
        first = next(model.parameters())
        with torch.device("meta"):
            copied = build_generator(model.config)
        copied = copied.to_empty(device=first.device).to(dtype=first.dtype)
        try:
            copied.load_state_dict(model.state_dict(), strict=True)
            return copied.eval().requires_grad_(False)
        except RuntimeError:  # other keys than the architecture's
            pass
    try:
        copied = copy.deepcopy(model)
    except Exception as exc:
        raise EsrganError(
            f"cannot copy this {type(model).__name__} ({one_line(exc)}): pass copy_model=False to upscale with "
            "the module itself (it is then put in eval mode and frozen)"
        ) from None
    for parameter in copied.parameters():
        parameter.grad = None  # a model in training may hold its gradients: not needed here
    return copied.eval().requires_grad_(False)


def _interpolated(model: Generator, other: str | Path | Generator, alpha: float) -> Generator:
    """theta = (1 - alpha) * theta_model + alpha * theta_other, computed in fp32 on the host."""
    from .checkpoints import interpolate_state_dicts
    from .zoo import load_model

    other_model = other if isinstance(other, RRDBNet | SRVGGNetCompact) else load_model(other)
    if other_model.config != model.config:
        raise CheckpointError(
            f"cannot interpolate models of different architectures: {model.config} and {other_model.config}"
        )
    mixed = build_generator(model.config)
    sd = interpolate_state_dicts(
        {k: v.cpu() for k, v in model.state_dict().items()},
        {k: v.cpu() for k, v in other_model.state_dict().items()},
        alpha,
    )
    mixed.load_state_dict(sd, strict=True)
    return mixed.eval().requires_grad_(False)


def constant(plane: np.ndarray) -> bool:
    """Whether every value of a (non-empty) array is the first one."""
    return bool((plane == plane.flat[0]).all())


def neighbour_bounds(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The min and max of an HxW plane over each pixel's 3x3 neighbourhood (the part inside the image)."""
    lo, hi = plane.copy(), plane.copy()
    for axis in (0, 1):  # separable: rows, then columns
        for bound, pick in ((lo, np.minimum), (hi, np.maximum)):
            src = bound.copy()
            n = src.shape[axis]
            if n > 1:
                ahead = [slice(None), slice(None)]
                behind = [slice(None), slice(None)]
                ahead[axis], behind[axis] = slice(1, None), slice(None, n - 1)
                pick(bound[tuple(behind)], src[tuple(ahead)], out=bound[tuple(behind)])
                pick(bound[tuple(ahead)], src[tuple(behind)], out=bound[tuple(ahead)])
    return lo, hi


def within_neighbours(
    pieces: Iterable[tuple[int, np.ndarray]], plane: np.ndarray, scale: int
) -> Iterator[tuple[int, np.ndarray]]:
    """The (first row, rows) pieces of a model's output of `plane` (HxW, at `scale`, each (n, W', 1)) with each
    output pixel clamped to the min..max of `plane` over the 3x3 neighbourhood of the input pixel it comes from
    (y // scale, x // scale), in the pieces' dtype (8-bit bounds times 257 for a 16-bit intermediate): flat
    regions stay exactly flat, and edges cannot ring past the values around them."""
    lo, hi = neighbour_bounds(plane)
    for first, rows in pieces:
        if rows.dtype != lo.dtype:
            lo, hi = (_as_levels(b, rows.dtype) for b in (lo, hi))
        ys = np.arange(first, first + rows.shape[0]) // scale
        xs = np.arange(rows.shape[1]) // scale
        if not rows.flags.writeable:
            rows = rows.copy()
        np.clip(rows, lo[ys][:, xs, None], hi[ys][:, xs, None], out=rows)
        yield first, rows


def _as_levels(plane: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """An array of uint8, uint16 or float levels in another of these dtypes, the same fraction of full scale
    (exact: 8-bit to 16-bit is times 257)."""
    if plane.dtype == dtype or plane.dtype.kind == dtype.kind == "f":
        return plane.astype(dtype, copy=False)
    if plane.dtype == np.uint8 and dtype == np.uint16:
        return plane.astype(np.uint16) * np.uint16(257)
    raise EsrganError(f"no exact conversion of {plane.dtype} levels to {dtype}")


def nearest(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an HxW[xC] array to size (H', W'): output pixel centres mapped onto the input
    grid (for an integer factor s, output (y, x) takes input (y // s, x // s))."""
    h, w = plane.shape[:2]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * (h / size[0])).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * (w / size[1])).astype(np.intp), w - 1)
    return np.ascontiguousarray(plane[rows][:, cols])


def _tile_count(layout: TileLayout) -> int:
    _, _, ys, xs = tile_grid(layout.height, layout.width, layout.tile, layout.overlap)
    return len(ys) * len(xs)


def _to_float(array: np.ndarray) -> torch.Tensor:
    return to_unit(torch.from_numpy(np.ascontiguousarray(array)))


def _resize_plane(plane: np.ndarray, size: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """MATLAB bicubic of one HxW plane (any of our dtypes) to size, clamped and converted to dtype."""
    from .resize import imresize

    return from_unit(imresize(_to_float(plane), size=size), dtype)


def bleed_colour(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Give fully transparent pixels the colour of the nearest visible ones (pull-push fill); others unchanged.

    Pull: a pyramid of 2x2 sums of (colour x visible, visible). Push: from the coarsest level down, each level's
    holes take the bilinearly upsampled colour of the level above, so fills vary smoothly instead of repeating
    the edge pixel. Costs a float copy of the image while it runs (RGBA images with transparent pixels only).
    """
    visible = alpha > 0
    if visible.all() or not visible.any():
        return colour
    m = torch.from_numpy(visible).float()[None, None]
    c = _to_float(colour).permute(2, 0, 1)[None] * m
    levels = [(c, m)]
    while not bool((m > 0).all()):  # coarsen until every cell has a visible pixel (at 1x1 at the latest)
        kernel = (2 if m.shape[-2] > 1 else 1, 2 if m.shape[-1] > 1 else 1)
        c, m = (F.avg_pool2d(t, kernel, ceil_mode=True) for t in (c, m))
        levels.append((c, m))
    c, m = levels[-1]
    filled = c / m.clamp_min(1e-12)
    for c, m in reversed(levels[:-1]):
        up = F.interpolate(filled, size=c.shape[-2:], mode="bilinear", align_corners=False)
        filled = torch.where(m > 0, c / m.clamp_min(1e-12), up)
    out = colour.copy()
    fill = from_unit(filled[0].permute(1, 2, 0), colour.dtype)
    out[~visible] = fill[~visible]
    return out
