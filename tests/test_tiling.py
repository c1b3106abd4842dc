"""Tiled inference: fixed-shape tiles covering the image, blended seams (tiled ~= untiled), failures never hidden."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import photo_preserving_rrdb, psnr
from foreign_arch import randomize
from tile_reference import hard_paste_tiled, tiled_pixels
from torch import Tensor

from esrgan.compact import CompactConfig, SRVGGNetCompact
from esrgan.device import ModelRunner
from esrgan.generator import RRDBConfig, RRDBNet
from esrgan.tiling import (
    DEFAULT_OVERLAP,
    EXACT_COST,
    MAX_DEFAULT_OVERLAP,
    OVERLAP_COST,
    TileError,
    _edge_weights,
    balanced_tile,
    default_margin,
    default_overlap,
    exact_or_blend,
    from_unit,
    tile_grid,
    tile_starts,
    to_unit,
    upscale_tiled,
)
from esrgan.upscale import CPU_MAX_TILE, Upscaler


@pytest.fixture(scope="module")
def wide_model() -> RRDBNet:
    """A tiny x4 RRDBNet whose random weights are large enough that far pixels change the output (wide field)."""
    torch.manual_seed(0)
    model = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=12, num_block=2, num_grow=8, scale=4)
    return randomize(model, seed=3)


def chw(photo: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)


def runner(model: RRDBNet) -> ModelRunner:
    return ModelRunner(model, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("overlap", [0, 8, 16, 32])
@pytest.mark.parametrize("maximum", [64, 272, 512])
def test_balanced_tile_needs_no_more_tiles_and_wastes_less(maximum: int, overlap: int) -> None:
    """For every side length: the balanced tile fits the maximum, needs exactly as many tiles as the maximum does,
    and computes no more pixels; for power-of-two images at the CPU maximum it stays within 1.1x of the image."""
    if overlap >= maximum // 2:
        pytest.skip("overlap too large for this tile")
    for length in range(1, 3000, 7):
        side = balanced_tile(length, maximum, overlap)
        assert 1 <= side <= max(maximum, 1) and (side == length or side % 8 == 0)
        if length <= maximum:
            assert side == length
            continue
        starts, fixed = tile_starts(length, side, overlap), tile_starts(length, maximum, overlap)
        assert len(starts) == len(fixed)
        assert len(starts) * side <= len(fixed) * maximum
        ends = [s + side for s in starts]
        assert starts[0] == 0 and ends[-1] == length
        assert all(s <= e_prev - overlap for s, e_prev in zip(starts[1:], ends, strict=False))
    for length in (1024, 2048, 4096):
        side = balanced_tile(length, 512, 16)
        assert (len(tile_starts(length, side, 16)) * side / length) ** 2 < 1.1, (length, side)


def test_tile_grid_cuts_each_axis_evenly() -> None:
    """tile_grid: one tile shape, no more tiles per axis than the square tile needs, never more pixels computed, and
    the short side of a wide photo gets a short tile (400x600 under 352: 2x2 tiles of 216x328, not 328x328)."""
    for h, w, tile, overlap in itertools.product(
        (37, 200, 400, 513, 1080), (64, 600, 1920), (64, 272, 352), (8, 24)
    ):
        th, tw, ys, xs = tile_grid(h, w, tile, overlap)
        assert th <= max(tile, 1) or th == h
        for length, side, starts in ((h, th, ys), (w, tw, xs)):
            assert starts == tile_starts(length, side, overlap) and starts[-1] + side == length
            square = tile_starts(length, min(tile, length), overlap)
            assert len(starts) == len(square) and side <= min(tile, length)
    assert tile_grid(400, 600, 328, 48)[:2] == (224, 328)
    assert tile_grid(50, 70, 0, 24) == (50, 70, [0], [0])


def test_default_overlap_grows_with_the_tile_within_its_price() -> None:
    """The default overlap: 24 for small tiles, more for large ones (up to MAX_DEFAULT_OVERLAP), at most half the
    tile, never decreasing with it, and recomputing per axis no more than OVERLAP_COST x what the hard paste's
    10-pixel padding recomputes at the same largest forward pass (where it is above 24)."""
    previous = 0
    for tile in range(32, 2049):
        overlap = default_overlap(tile)
        assert min(DEFAULT_OVERLAP, tile // 2) <= overlap <= min(MAX_DEFAULT_OVERLAP, tile // 2)
        assert (overlap % 2 == 0 or overlap == tile // 2) and overlap >= previous
        if overlap > DEFAULT_OVERLAP:
            assert (tile - 20) / (tile - overlap) <= OVERLAP_COST
        previous = overlap
    assert default_overlap(64) == DEFAULT_OVERLAP and default_overlap(352) == 50
    assert default_overlap(1024) == MAX_DEFAULT_OVERLAP and default_overlap(0) == DEFAULT_OVERLAP


def reach(model: torch.nn.Module, scale: int, size: int) -> int:
    """How far (in input pixels, each side) one input pixel changes the output: an impulse at a few positions
    near the middle, in float64 so that no change is lost to rounding."""
    model = model.double().eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, size, size, generator=gen, dtype=torch.float64) * 0.5 + 0.25
    far = 0
    with torch.no_grad():
        base = model(x)
        for c in range(size // 2, size // 2 + 4):  # 4 phases: a pixel-unshuffle block's positions
            bumped = x.clone()
            bumped[0, :, c, c] += 0.3
            cols = torch.nonzero((model(bumped) - base).abs().amax(dim=(0, 1, 2)) > 0)[:, 0]
            far = max(far, c - int(cols.min()) // scale, int(cols.max()) // scale - c)
    return far


@pytest.mark.parametrize(
    "config",
    [
        RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=4),
        RRDBConfig(num_feat=8, num_block=2, num_grow=4, scale=2, pixel_unshuffle=False),
        RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=8),
        RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=2),  # Real-ESRGAN's: unshuffle 2
        RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=1),  # unshuffle 4
        RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=1, pixel_unshuffle=False),
        RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=4, image_residual=True, plus=True),
        CompactConfig(num_feat=8, num_conv=0, scale=4),
        CompactConfig(num_feat=8, num_conv=5, scale=3),
    ],
    ids=str,
)
def test_receptive_radius_bounds_what_one_input_pixel_changes(config: RRDBConfig | CompactConfig) -> None:
    """The exact overlap rests on receptive_radius being an upper bound on how far an input pixel reaches: measured
    with an impulse through random weights (which reach as far as the architecture allows). It is tight within 2
    pixels (the tail's fractions of one) or, with a pixel unshuffle, within the block's 1-3 pixels."""
    model = RRDBNet.from_config(config) if isinstance(config, RRDBConfig) else SRVGGNetCompact(config)
    randomize(model, seed=1)
    measured = reach(model, config.scale, size=(2 * config.receptive_radius + 24) // 4 * 4)
    assert measured <= config.receptive_radius <= measured + max(2, config.unshuffle - 1)
    assert RRDBConfig().receptive_radius == 349 and CompactConfig(num_conv=32).receptive_radius == 34


def test_exact_overlap_where_the_image_affords_it() -> None:
    """Twice the radius with the radius as margin, where it fits in half the tile and computes at most EXACT_COST x
    the blend's pixels on this image; else the blend as given."""

    def pixels(h: int, w: int, tile: int, overlap: int) -> int:
        th, tw, ys, xs = tile_grid(h, w, tile, overlap)
        return len(ys) * len(xs) * th * tw

    sizes = itertools.product((100, 300, 512, 741, 2048), (90, 400), (64, 128, 281, 352), (9, 18, 34))
    for h, w, tile, radius in sizes:
        blend = default_overlap(tile)
        overlap, margin = exact_or_blend(h, w, tile, blend, radius)
        if margin is None:
            assert overlap == blend
            assert 4 * radius > tile or pixels(h, w, tile, 2 * radius) > EXACT_COST * pixels(
                h, w, tile, blend
            )
        else:
            assert (overlap, margin) == (2 * radius, radius) and 4 * radius <= tile
            assert pixels(h, w, tile, overlap) <= EXACT_COST * pixels(h, w, tile, blend)
    # a compact model at the CPU's automatic tile of a 512x512 photo: exact (2 x 2 tiles either way)
    assert exact_or_blend(512, 512, 352, default_overlap(352), 18) == (36, 18)
    assert exact_or_blend(512, 512, 352, default_overlap(352), 34) == (68, 34)
    # tile 128 on 512 pixels: 6 x 6 tiles of 120 instead of 5 x 5 of 128 (1.27x the pixels): the blend
    assert exact_or_blend(512, 512, 128, 28, 18) == (28, None)
    assert exact_or_blend(300, 260, 128, 28, 18) == (36, 18)  # 3 x 3 tiles either way
    # RRDBNet: 23 blocks never fit; 6 blocks (94) on an H200's 1024 tiles of a 2048 image: 1.24x, the blend
    assert exact_or_blend(4096, 4096, 1024, 64, RRDBConfig().receptive_radius) == (64, None)
    assert exact_or_blend(2048, 2048, 1024, 64, RRDBConfig(num_block=6).receptive_radius) == (64, None)
    assert exact_or_blend(100, 100, 0, 24, 18) == (24, None)  # one tile
    assert exact_or_blend(300, 300, 128, 28, 9, factor=4) == (20, 9)  # a pixel unshuffle's multiple


def test_upscaler_tiles_a_small_field_network_exactly(photo: np.ndarray) -> None:
    """Where the image affords it, the Upscaler's default overlap is twice the network's receptive radius and its
    margin the radius: a compact network (16 convs, radius 18; He init, which keeps the signal through every layer)
    on a real 300x260 photo comes out as the untiled pass does, up to float rounding (measured 8e-7), where the
    blend of the default overlap it had before differs by 8e-4; also at the automatic tile, balanced down."""
    torch.manual_seed(0)
    model = SRVGGNetCompact(CompactConfig(num_feat=16, num_conv=16, scale=4))
    model.init_weights(last_scale=1.0)
    crop = np.ascontiguousarray(photo[100:400, 150:410])
    image = crop.astype(np.float32) / 255  # float: nothing rounded away
    whole = Upscaler(model.eval(), device="cpu", precision="fp32", tile=0).upscale(image)
    up = Upscaler(model, device="cpu", precision="fp32", tile=128)
    assert up.tiling(300, 260, up.tile_size(300, 260)) == (300, 260, 128, 36, 18)  # 3 x 3 tiles, as the blend
    blended = Upscaler(model, device="cpu", precision="fp32", tile=128, tile_overlap=default_overlap(128))
    exact_error = np.abs(up.upscale(image) - whole).max()
    assert exact_error < 1e-5 < 1e-4 < np.abs(blended.upscale(image) - whole).max()
    auto = Upscaler(model, device="cpu", precision="fp32")
    big = np.ascontiguousarray(photo[:, :400]).astype(np.float32) / 255  # 512 x 400: 2 x 2 tiles under 352
    tile = auto.tile_size(512, 400)  # the largest tile: the exact overlap does not change with the tile
    assert tile == CPU_MAX_TILE and auto.tiling(512, 400, tile)[3:] == (36, 18)
    assert tile_grid(512, 400, tile, 36)[:2] == (280, 224)  # balanced per axis for it
    reference = Upscaler(model, device="cpu", precision="fp32", tile=0).upscale(big)
    assert np.abs(auto.upscale(big) - reference).max() < 1e-5
    wider = Upscaler(SRVGGNetCompact(CompactConfig(num_feat=4, num_conv=32)), device="cpu", precision="fp32")
    tile = wider.tile_size(400, 600)  # realesr-general-x4v3's radius, 34: 1.10x the blend's pixels, exact
    assert tile == CPU_MAX_TILE and wider.tiling(400, 600, tile)[3:] == (68, 34)
    assert tile_grid(400, 600, tile, 68)[:2] == (240, 336)  # balanced per axis for the exact overlap
    # on 512x512 it would run 4 tiles of 296 against the balanced blend's 4 of 280 (1.12x): the blend
    tile = wider.tile_size(512, 512)
    assert tile == 288 and wider.tiling(512, 512, tile)[3:] == (44, None)
    given = Upscaler(model, device="cpu", precision="fp32", tile=128, tile_overlap=36)
    assert given.tiling(300, 260, 128)[3:] == (36, None)  # an overlap given is blended as given
    small = Upscaler(model, device="cpu", precision="fp32", tile=64)
    assert small.tiling(300, 260, 64)[3:] == (default_overlap(64), None)  # 36 > half of 64
    assert up.tiling(512, 512, 128)[3:] == (28, None)  # 6 x 6 tiles of 120 instead of 5 x 5 of 128 (1.27x)
    assert up.tiling(300, 300, 128)[3:] == (28, None)  # tiles of 128 instead of 120: 1.14x, the blend


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(100, 32, 8), (64, 64, 8), (65, 32, 16), (40, 100, 4)]
)
def test_tile_starts_cover_with_fixed_size_tiles(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    covered = np.zeros(length, bool)
    for s in starts:
        assert s >= 0 and s + size <= length  # every tile is full-size and inside the image
        covered[s : s + size] = True
    assert covered.all()
    assert starts[0] == 0 and starts[-1] + size == length
    for a, b in itertools.pairwise(starts):
        assert a + size - b >= overlap  # neighbours share at least `overlap` pixels


def test_tiled_matches_untiled_with_default_overlap(photo: np.ndarray, wide_model: RRDBNet) -> None:
    crop = photo[100:196, 150:246]  # 96x96 real photo: 3x3 tiles of 40 pixels
    image = chw(crop)
    whole = upscale_tiled(runner(wide_model), image, scale=4, tile=0)
    tiled = upscale_tiled(runner(wide_model), image, scale=4, tile=40, overlap=DEFAULT_OVERLAP)
    hard = upscale_tiled(runner(wide_model), image, scale=4, tile=40, overlap=0)
    assert whole.shape == tiled.shape == (384, 384, 3) and tiled.dtype == np.uint8
    blended, seams = psnr(whole, tiled, peak=255), psnr(whole, hard, peak=255)
    print(
        f"tiny random x4 model, 96x96 photo crop, tile 40: blended {blended:.1f} dB, overlap 0 {seams:.1f} dB"
    )
    assert blended >= 50.0
    assert (
        seams < blended - 10
    )  # without the overlap the seams are visible: the blend is what buys the accuracy


def test_seam_error_sits_on_the_tile_borders_without_overlap(photo: np.ndarray, wide_model: RRDBNet) -> None:
    crop = photo[100:164, 150:214]  # 64x64: two tiles of 32 along each axis, seam at input pixel 32
    image = chw(crop)
    whole = upscale_tiled(runner(wide_model), image, scale=4, tile=0).astype(np.int16)
    for overlap, limit in ((0, None), (DEFAULT_OVERLAP, 0.5)):
        tiled = upscale_tiled(runner(wide_model), image, scale=4, tile=32, overlap=overlap).astype(np.int16)
        err = np.abs(tiled - whole).mean(axis=2)
        seam = max(
            err[:, 120:136].mean(), err[120:136, :].mean()
        )  # bands around the seams (output pixel 128)
        far = err[:32, :32].mean()  # a corner 96 output pixels away from both seams
        if limit is None:
            assert seam > 4 * far + 1  # hard-pasted tiles: the error concentrates at the seams
        else:
            assert seam <= limit  # blended: no seam left


def test_real_esrgan_x4plus_tiled_matches_untiled(photo: np.ndarray) -> None:
    from esrgan.zoo import load_model

    try:
        model = load_model("realesrgan-x4plus")
    except Exception as exc:
        pytest.skip(f"realesrgan-x4plus not available: {exc}")
    crop = photo[64:192, 160:288]  # 128x128 real photo (face and background); tile 96: 2x2 tiles of 80
    image = chw(crop)
    run = ModelRunner(model, torch.device("cpu"), torch.float32)
    whole = upscale_tiled(run, image, scale=4, tile=0)
    tiled = upscale_tiled(run, image, scale=4, tile=96)  # the default overlap of tile 96: 26, margin 10
    hard = upscale_tiled(run, image, scale=4, tile=96, overlap=0)
    value, seams = psnr(whole, tiled, peak=255), psnr(whole, hard, peak=255)
    print(f"realesrgan-x4plus fp32, 128x128 crop, tile 96: default overlap {value:.1f} dB, 0: {seams:.1f} dB")
    assert value > seams + 5.0
    # Measured 48.0 dB (overlap 0: 40.5). The 23-block model carries the padding's error ~40 pixels into a tile,
    # so tiles this small stay under 50 dB whatever the overlap (160x160 crop, tiles of 96: 49.0); the automatic
    # CPU tile on whole photos is >= 50 dB (docs/benchmarks.md, "Tile seams").
    assert value >= 46.0


@pytest.fixture(scope="module")
def deep_model() -> RRDBNet:
    """A small random x4 RRDBNet (8 blocks) whose output depends on pixels ~12 input pixels away: a tile's output
    within 10 pixels of its edge (Real-ESRGAN's tile_pad) still differs from the untiled output by ~1e-5."""
    torch.manual_seed(0)
    return randomize(RRDBNet(num_feat=12, num_block=8, num_grow=8, scale=4), seed=3)


@pytest.mark.parametrize(("h", "w"), [(96, 96), (120, 150), (200, 176)])
def test_margin_and_blend_beat_the_hard_paste(photo: np.ndarray, deep_model: RRDBNet, h: int, w: int) -> None:
    """Discarding a margin and blending inside what is kept (the defaults at this tile: overlap 24 = 2 x margin 10 +
    blend 4) is >= 3 dB closer to the untiled output than Real-ESRGAN's hard paste (tile 64, pad 10), computing
    <= 1.3x its pixels with tiles no larger than its largest forward pass (64 + 2 x 10), balanced as the automatic
    tile is."""
    image = chw(photo[150 : 150 + h, 150 : 150 + w])
    run = runner(deep_model)
    whole = upscale_tiled(run, image, scale=4, tile=0, out_dtype=np.float32)
    hard, theirs = hard_paste_tiled(run, image.float() / 255, scale=4, tile=64)
    tile = balanced_tile(max(h, w), 64 + 20, 24)
    assert default_overlap(tile) == 24 and default_margin(24) == 10
    ours = upscale_tiled(run, image, scale=4, tile=tile, out_dtype=np.float32)
    blended = upscale_tiled(run, image, scale=4, tile=tile, overlap=24, margin=0, out_dtype=np.float32)
    base = psnr(whole, hard.permute(1, 2, 0), clip=True)
    gain, ratio = psnr(whole, ours, clip=True) - base, tiled_pixels(h, w, tile, 24) / theirs
    print(f"{h}x{w}: hard paste {base:.1f} dB, ours {gain:+.1f} dB at {ratio:.2f}x the compute")
    assert gain >= 3.0 and ratio <= 1.3
    # measured: +15.5..+18 dB; blending over the whole overlap instead (margin 0) is far worse than both
    assert psnr(whole, blended, clip=True) < base


@pytest.mark.parametrize("name", ["astronaut", "coffee", "stereo_motorcycle"])
def test_default_tiling_matches_untiled_on_whole_photos(deep_model: RRDBNet, name: str) -> None:
    """The Upscaler's defaults on whole real photos larger than the CPU's automatic tile (512x512 and 400x600: 2x2
    tiles; 500x741: 2x3) with a small deep model: >= 50 dB against the untiled output, and >= 3 dB closer to it than the hard
    paste with the same largest forward pass (CPU_MAX_TILE = 332 + 2 x 10) at <= 1.3x its compute. Measured (uint8):
    72.7 and 72.5 dB with overlap 16 and no margin, ~100 dB with overlap 24 and margin 10; float: see the print
    (realesrgan-x4plus: docs/benchmarks.md)."""
    skdata = pytest.importorskip("skimage.data")
    loaded = getattr(skdata, name)()
    photo = np.ascontiguousarray(
        loaded[0] if isinstance(loaded, tuple) else loaded
    )  # motorcycle: a stereo pair
    h, w = photo.shape[:2]
    up = Upscaler(deep_model, device="cpu", precision="fp32")
    tile = up.tile_size(h, w)
    assert (
        0 < tile < max(h, w) and up.overlap_for(tile) > DEFAULT_OVERLAP
    )  # really tiled, with a wider overlap
    # Three passes over the photo, not five: the untiled and the default-tiled outputs in float (uint8 rounding would
    # hide the difference between two good schemes), the Upscaler's own for the tiled one (its float path, fed the
    # values its uint8 path computes on: to_unit), and their uint8 versions rounded as the tiler rounds (from_unit).
    # These equal, bit for bit, what Upscaler(tile=0).upscale(photo) and up.upscale(photo) return (checked on all
    # three photos when the two uint8 passes were dropped).
    run, image = runner(deep_model), chw(photo)
    exact = upscale_tiled(run, image, scale=4, tile=0, out_dtype=np.float32)
    ours = up.upscale(to_unit(torch.from_numpy(photo)).numpy())
    assert ours.dtype == np.float32
    whole, tiled = (from_unit(torch.from_numpy(a.copy()), np.uint8) for a in (exact, ours))
    assert psnr(whole, tiled, peak=255) >= 50.0
    hard, theirs = hard_paste_tiled(run, image.float() / 255, scale=4, tile=CPU_MAX_TILE - 20)
    base, value = psnr(exact, hard.permute(1, 2, 0), clip=True), psnr(exact, ours, clip=True)
    ratio = tiled_pixels(h, w, tile, up.overlap_for(tile)) / theirs
    print(f"{name}: hard paste {base:.1f} dB, the defaults {value:.1f} dB at {ratio:.2f}x the compute")
    assert value >= base + 3.0 and ratio <= 1.3


def test_margin_outputs_are_discarded(photo: np.ndarray, wide_model: RRDBNet) -> None:
    """Whatever a tile outputs within `margin` input pixels of an inner edge is not in the result."""
    image, run, m = chw(photo[100:190, 150:230]), runner(wide_model), 6

    def spoiled(batch: Tensor) -> Tensor:
        y = run(batch).clone()
        for band in (y[..., : 4 * m, :], y[..., -4 * m :, :], y[..., : 4 * m], y[..., -4 * m :]):
            band += 0.3
        return y

    clean = upscale_tiled(run, image, scale=4, tile=40, overlap=16, margin=m, out_dtype=np.float32)
    dirty = upscale_tiled(spoiled, image, scale=4, tile=40, overlap=16, margin=m, out_dtype=np.float32)
    inner = (slice(4 * m, -4 * m), slice(4 * m, -4 * m))  # outer image borders keep their tile's pixels
    assert np.abs(clean[inner] - dirty[inner]).max() < 1e-6
    with pytest.raises(ValueError, match="margin"):
        upscale_tiled(run, image, scale=4, tile=40, overlap=16, margin=9)


def test_failing_tile_raises_instead_of_a_black_patch(photo_small: np.ndarray, wide_model: RRDBNet) -> None:
    calls = 0
    run = runner(wide_model)

    def flaky(batch: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("CUDA out of memory (simulated on the second tile)")
        return run(batch)

    with pytest.raises(TileError, match=r"tile at x=\d+, y=\d+.*smaller --tile"):
        upscale_tiled(flaky, chw(photo_small), scale=4, tile=24, overlap=4)


def test_non_finite_or_wrong_shape_tile_raises(photo_small: np.ndarray, wide_model: RRDBNet) -> None:
    run = runner(wide_model)
    with pytest.raises(TileError, match="NaN or Inf"):
        upscale_tiled(lambda b: run(b) * float("nan"), chw(photo_small), scale=4, tile=24, overlap=4)
    with pytest.raises(TileError, match="returned shape"):
        upscale_tiled(lambda b: run(b)[..., :-1], chw(photo_small), scale=4, tile=24, overlap=4)


def host_assembly(
    forward: ModelRunner, image: Tensor, *, tile: int, overlap: int, out_dtype: type, grey: bool = False
) -> np.ndarray:
    """The reference the device assembly must reproduce: every tile through the forward, the weighted outputs
    summed into one full-size float64 host buffer, divided by the summed weights, rounded with numpy."""
    scale, (h, w) = 4, image.shape[1:]
    th, tw = balanced_tile(h, tile, overlap), balanced_tile(w, tile, overlap)  # each axis cut evenly
    acc, norm = np.zeros((h * scale, w * scale, 3)), np.zeros((h * scale, w * scale, 1))
    for y in tile_starts(h, th, overlap):
        for x in tile_starts(w, tw, overlap):
            crop = image[:, y : y + th, x : x + tw][None].float()
            crop = crop / {torch.uint8: 255.0, torch.uint16: 65535.0}.get(image.dtype, 1.0)
            res = forward(crop)[0].permute(1, 2, 0).cpu().double().numpy()
            m = default_margin(overlap)
            wy = _edge_weights(y, th, h, scale, overlap, m).double().numpy()[:, None, None]
            wx = _edge_weights(x, tw, w, scale, overlap, m).double().numpy()[None, :, None]
            acc[y * scale : (y + th) * scale, x * scale : (x + tw) * scale] += res * wy * wx
            norm[y * scale : (y + th) * scale, x * scale : (x + tw) * scale] += wy * wx
    out = acc / norm
    if grey:  # averaged before clamping, as the band is
        out = out.mean(axis=2, keepdims=True)
    out = np.clip(out, 0, 1)
    peak = {np.uint8: 255.0, np.uint16: 65535.0}.get(out_dtype)
    return out.astype(out_dtype) if peak is None else np.round(out * peak).astype(out_dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("grey", [False, True])
def test_device_assembly_equals_the_host_reference(photo: np.ndarray, dtype: type, grey: bool) -> None:
    """Blending on the forward's device, converting there and copying finished rows back gives the full-buffer
    host assembly's pixels (uint8 / uint16 / float, colour and grey), to within float32 rounding."""
    crop = photo[150:210, 200:270]  # 60x70 real photo, 3x3 tiles of 28
    peak = {np.uint8: 255.0, np.uint16: 65535.0}.get(dtype, 1.0)
    pixels = (
        (crop.astype(np.float64) / 255.0 * peak).round().astype(dtype)
        if dtype != np.float32
        else crop / 255.0
    )
    image = chw(pixels.astype(dtype))
    if grey:
        image = image[:1].expand(3, -1, -1)
    run = ModelRunner(photo_preserving_rrdb(spread=0.5), torch.device("cpu"), torch.float32)
    got = upscale_tiled(run, image, scale=4, tile=28, overlap=8, out_dtype=dtype, grey=grey, device="cpu")
    ref = host_assembly(run, image, tile=28, overlap=8, out_dtype=dtype, grey=grey)
    assert got.dtype == ref.dtype and got.shape == ref.shape == (240, 280, 1 if grey else 3)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64)) / peak
    # float32 accumulation vs float64: a value on a rounding half may land one level off, never more
    assert diff.max() <= (1.0 / peak if peak > 1 else 1e-6)
    assert (diff > 1e-7).mean() < 1e-2


def test_forward_returning_device_tensors(photo_small: np.ndarray, wide_model: RRDBNet) -> None:
    """The forward's contract: tiles arrive on the device upscale_tiled was given (cut there from an image moved
    once), and whatever it returns (its own device, reduced precision, a channels-last layout) is blended where
    it is. The CPU is such a device: the result equals the plain float32 path's."""
    run = runner(wide_model)
    seen: list[tuple[torch.device, torch.dtype]] = []

    def device_forward(batch: Tensor) -> Tensor:
        seen.append((batch.device, batch.dtype))
        return run(batch).to(memory_format=torch.channels_last)

    def half_forward(batch: Tensor) -> Tensor:
        return run(batch).to(torch.bfloat16)

    image = chw(photo_small)
    plain = upscale_tiled(run, image, scale=4, tile=24, overlap=8)
    moved = upscale_tiled(
        device_forward, image, scale=4, tile=24, overlap=8, batch=2, device=torch.device("cpu")
    )
    assert seen and all(d == torch.device("cpu") and t == torch.float32 for d, t in seen)
    assert np.array_equal(plain, moved)
    reduced = upscale_tiled(half_forward, image, scale=4, tile=24, overlap=8, device="cpu")
    assert psnr(plain, reduced, peak=255) > 40  # bf16 outputs blended after a cast to float32


def test_upscaler_device_path_keeps_alpha_and_grey(photo: np.ndarray) -> None:
    """Upscaler (tiles cut on its device, blended on the runner's output device) against the host reference for
    an RGBA uint8 image and a 16-bit grey one."""
    model = photo_preserving_rrdb(spread=0.5)
    up = Upscaler(model, device="cpu", precision="fp32", tile=32, tile_overlap=8)
    run = ModelRunner(model, torch.device("cpu"), torch.float32)
    crop = np.ascontiguousarray(photo[200:250, 180:236])
    alpha = np.ascontiguousarray(crop[:, :, 0])
    rgba = up.upscale(np.dstack([crop, alpha]))
    from esrgan.upscale import bleed_colour

    colour = host_assembly(run, chw(bleed_colour(crop, alpha)), tile=32, overlap=8, out_dtype=np.uint8)
    a = host_assembly(
        run, chw(alpha[:, :, None]).expand(3, -1, -1), tile=32, overlap=8, out_dtype=np.uint8, grey=True
    )
    from scipy import ndimage

    # the model's alpha is kept within the min..max of each input pixel's 3x3 neighbourhood
    for f in (ndimage.minimum_filter, ndimage.maximum_filter):
        bound = f(alpha, 3, mode="nearest").repeat(4, 0).repeat(4, 1)[:, :, None]
        a = np.maximum(a, bound) if f is ndimage.minimum_filter else np.minimum(a, bound)
    assert (
        np.abs(rgba[:, :, :3].astype(int) - colour).max() <= 1
        and np.abs(rgba[:, :, 3:].astype(int) - a).max() <= 1
    )
    grey16 = (crop.mean(axis=2) * 257).astype(np.uint16)
    out = up.upscale(grey16)
    ref = host_assembly(
        run, chw(grey16[:, :, None]).expand(3, -1, -1), tile=32, overlap=8, out_dtype=np.uint16, grey=True
    )
    assert out.dtype == np.uint16 and np.abs(out.astype(int) - ref[:, :, 0]).max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_reduced_precision_matches_the_cpu(photo: np.ndarray, precision: str) -> None:
    """On CUDA: weights cast once, channels-last, blended on the GPU; within reduced-precision rounding of the CPU's
    fp32 result."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    crop = np.ascontiguousarray(photo[100:228, 150:278])
    model = photo_preserving_rrdb(spread=0.5)
    cpu = Upscaler(model, device="cpu", precision="fp32", tile=64).upscale(crop)
    gpu = Upscaler(photo_preserving_rrdb(spread=0.5), device="cuda", precision=precision, tile=64)
    out = gpu.upscale(crop)
    assert gpu.last_precision == precision and gpu.runner._cast is not None
    assert psnr(cpu, out, peak=255) > 40


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_output_dtype_assembled_on_the_host(
    photo_small: np.ndarray, wide_model: RRDBNet, dtype: type
) -> None:
    image = chw(photo_small)
    out = upscale_tiled(runner(wide_model), image, scale=4, tile=24, overlap=8, out_dtype=dtype)
    assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == (192, 160, 3)
    ref = upscale_tiled(runner(wide_model), image, scale=4, tile=24, overlap=8, out_dtype=np.float32)
    peak = {np.uint8: 255.0, np.uint16: 65535.0, np.float32: 1.0}[dtype]
    # the integer outputs are the float result rounded to the nearest level
    assert np.abs(out.astype(np.float64) / peak - ref).max() <= 0.5 / peak + 1e-6


def test_uint16_input_equals_its_float_version(photo_small: np.ndarray, wide_model: RRDBNet) -> None:
    deep = photo_small.astype(np.uint16) * 257
    a = upscale_tiled(runner(wide_model), chw(deep), scale=4, tile=24, overlap=8, out_dtype=np.uint16)
    b = upscale_tiled(runner(wide_model), chw(photo_small), scale=4, tile=24, overlap=8, out_dtype=np.uint16)
    assert np.abs(a.astype(np.int32) - b.astype(np.int32)).max() <= 2


def test_grey_band_averaged_back_to_one_channel(photo_small: np.ndarray, wide_model: RRDBNet) -> None:
    grey = torch.from_numpy(photo_small.mean(axis=2).astype(np.uint8))[None]
    out = upscale_tiled(runner(wide_model), grey.expand(3, -1, -1), scale=4, tile=24, overlap=8, grey=True)
    assert out.shape == (192, 160, 1)


def test_progress_and_batching_give_the_same_result(photo_small: np.ndarray, wide_model: RRDBNet) -> None:
    seen: list[tuple[int, int]] = []
    image = chw(photo_small)
    one = upscale_tiled(runner(wide_model), image, scale=4, tile=24, overlap=8)
    batched = upscale_tiled(
        runner(wide_model),
        image,
        scale=4,
        tile=24,
        overlap=8,
        batch=3,
        on_tile=lambda d, t: seen.append((d, t)),
    )
    assert np.abs(one.astype(int) - batched.astype(int)).max() <= 1
    assert seen[-1][0] == seen[-1][1] and len(seen) == -(-seen[-1][1] // 3)


def test_invalid_tiling_is_rejected(photo_small: np.ndarray, wide_model: RRDBNet) -> None:
    with pytest.raises(ValueError, match="overlap"):
        upscale_tiled(runner(wide_model), chw(photo_small), scale=4, tile=16, overlap=16)


@pytest.mark.parametrize("shape", [(3, 100), (100, 3), (1, 60)])
def test_strip_thinner_than_the_overlap(
    photo: np.ndarray, wide_model: RRDBNet, shape: tuple[int, int]
) -> None:
    """Regression: a strip thinner than the overlap was refused ("overlap must be smaller than the tile")."""
    strip = np.ascontiguousarray(photo[200 : 200 + shape[0], 100 : 100 + shape[1]])
    whole = upscale_tiled(runner(wide_model), chw(strip), scale=4, tile=0)
    tiled = upscale_tiled(runner(wide_model), chw(strip), scale=4, tile=32, overlap=DEFAULT_OVERLAP)
    assert tiled.shape == (shape[0] * 4, shape[1] * 4, 3)
    assert psnr(whole, tiled, peak=255) >= 50.0


@pytest.mark.parametrize("scale", [2, 1])
def test_pixel_unshuffle_models_tile_like_the_whole_image(scale: int, photo: np.ndarray) -> None:
    """x2 / x1 models (Real-ESRGAN's design: the input pixel-unshuffled by 2 / 4) on an odd-sized photo: every tile
    groups pixels into the blocks the untiled pass does (tiles laid out on the image padded as the model pads it,
    starts on the factor), so tiling changes only what seams change. Before: tiles starting on odd rows were
    another computation throughout (x2 60 dB, x1 63 dB against untiled; now 152 / 90)."""
    from esrgan.generator import RRDBNet
    from esrgan.upscale import Upscaler

    torch.manual_seed(0)
    model = RRDBNet(num_feat=16, num_block=1, num_grow=8, scale=scale).eval()
    x = photo[50:169, 60:269].astype(np.float32) / 255  # 119 x 209
    whole = Upscaler(model, device="cpu", precision="fp32", tile=0).upscale(x).astype(np.float64)
    tiled = Upscaler(model, device="cpu", precision="fp32", tile=64).upscale(x).astype(np.float64)
    assert tiled.shape == whole.shape == (119 * scale, 209 * scale, 3)
    assert 10 * np.log10(1 / np.mean((tiled - whole) ** 2)) > 85


@pytest.mark.parametrize("engine", ["module", "packed"])
def test_an_image_residual_unshuffle_model_tiles_exactly_at_an_odd_size(
    engine: str, photo: np.ndarray
) -> None:
    """x2 with pixel unshuffle and the bicubic image residual (1 block: radius 39, exact at tile 184) on a 290x101
    photo: the tiles pad the image once, so the residual at the last columns comes from the padded pixels; the
    untiled pass (module and packed engine) now takes it from the padded input too. Before: 0.23 off in [0, 1] at
    the last three output columns (found by a review)."""
    torch.manual_seed(0)
    config = RRDBConfig(num_feat=4, num_block=1, num_grow=4, scale=2, image_residual=True)
    model = randomize(RRDBNet.from_config(config), seed=3)
    x = np.ascontiguousarray(photo[100:390, 200:301]).astype(np.float32) / 255
    runs = {}
    for tile in (0, 184):
        up = Upscaler(model, device="cpu", precision="fp32", tile=tile)
        up.runner = ModelRunner(up.model, up.device, torch.float32, engine=engine)
        runs[tile] = up.upscale(x)
    assert Upscaler(model, tile=184).tiling(290, 101, 184) == (
        290,
        102,
        184,
        78,
        39,
    )  # exact, on the padded size
    assert np.abs(runs[184] - runs[0]).max() < 1e-5


def test_an_overlap_given_without_a_tile_gets_a_tile_that_holds_it(photo: np.ndarray) -> None:
    """`--tile-overlap 352` and an automatic tile: the tile is made large enough for the overlap (it was divided
    by tile - overlap = 0: a traceback that stopped the batch); balanced_tile refuses such a pair in one line."""
    from esrgan.errors import EsrganError
    from esrgan.generator import RRDBNet
    from esrgan.tiling import balanced_tile
    from esrgan.upscale import Upscaler

    torch.manual_seed(0)
    model = RRDBNet(num_feat=16, num_block=1, num_grow=8, scale=4).eval()
    x = np.ascontiguousarray(photo[100:140, 50:450])
    up = Upscaler(model, device="cpu", precision="fp32", tile_overlap=352)
    assert up.tile_size(40, 400) == 0  # one tile: 712 and more hold the overlap twice
    assert np.array_equal(up.upscale(x), Upscaler(model, device="cpu", precision="fp32", tile=0).upscale(x))
    with pytest.raises(EsrganError, match="a tile overlap of 352 needs tiles larger than 352"):
        balanced_tile(1000, 352, 352)


def test_all_finite_is_false_for_any_nan_or_inf_and_true_past_a_sum_that_overflows() -> None:
    """all_finite checks a pass's output through its float32 sum (one read, no mask): a NaN or an Inf anywhere makes
    it False (+Inf beside -Inf sums to NaN), and finite values whose sum overflows are still finite."""
    from esrgan.tiling import all_finite

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        t = torch.rand(2, 3, 40, 50).to(dtype)
        assert all_finite(t)
        for bad in (float("nan"), float("inf"), float("-inf")):
            u = t.clone()
            u[1, 2, 39, 49] = bad
            assert not all_finite(u), (dtype, bad)
        u = t.clone()
        u[0, 0, 0, 0], u[1, 1, 1, 1] = float("inf"), float("-inf")
        assert not all_finite(u)
    assert all_finite(torch.full((8,), 3e38))  # finite values, an overflowing sum
    assert all_finite(torch.full((70_000,), 60_000.0, dtype=torch.float16))  # an fp16 sum would overflow
