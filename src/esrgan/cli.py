"""The `esrgan` command: thin argparse subcommands that parse and call library functions, nothing else.

Each subcommand has an `_add_<name>` function (its arguments) and a `_run_<name>` function (the call). Errors the
library raises as EsrganError, and OSErrors (an unreadable model file or folder: `<file>: <reason>`), become one
line on stderr and exit code 1; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .defaults import (
    ALPHA_MODES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL,
    DEFAULT_NAME,
    DEFAULT_OVERLAP,
    DENOISE_MODEL,
    DENOISE_OTHER,
    DEVICES,
    MAX_DEFAULT_OVERLAP,
    PRECISIONS,
)
from .errors import EsrganError, shown

_STARTED = time.monotonic()  # the command's start: a training time budget counts from here

Runner = Callable[[argparse.Namespace], int]


def _err(msg: str) -> None:
    # one write with its newline, as esrgan.pipeline.Reporter.line: torchrun's ranks share the pipe, and print()
    # writes the end apart (seen in CI: two ranks' "terminated" on one line, then an empty one)
    sys.stderr.write(f"esrgan: error: {shown(msg)}\n")
    sys.stderr.flush()


def _model_arg(spec: str) -> str:
    """A model argument (name or file), refused when it names a FIFO or a device: opening one to sniff its format
    would wait for ever (a FIFO) or never end (/dev/zero). Anything else goes on to the loader as given."""
    from .imageio import special_file

    problem = special_file(_path(spec))
    if problem is not None:
        raise EsrganError(f"{spec}: not a regular file ({problem}); give a model file or a model name")
    return spec


def _os_error_line(exc: OSError) -> str:
    """An OSError as `<file>: <reason>` (PermissionError from a model loader, a folder that cannot be listed...):
    the file and the system's words for the problem, without the errno and the repr quotes."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    if exc.filename is None:
        return reason
    where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{where}: {reason}"


# --- info -----------------------------------------------------------------------------------------------------------
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a model file: layout, hyperparameters, parameter count, scale")
    p.add_argument("file", help="model file (.pth, .pt, .safetensors, ncnn .param) or a model name")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from .checkpoints import describe
    from .zoo import resolve_model_path

    print(describe(resolve_model_path(_model_arg(args.file))))
    return 0


# --- convert --------------------------------------------------------------------------------------------------------
def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="convert any model file (RRDBNet or compact) to ours or to another tool's layout"
    )
    p.add_argument("input", help="model file or model name")
    p.add_argument(
        "output",
        type=_path,
        help="output file (.safetensors for ours; .pth for basicsr/old/esrgan layouts; .param for ncnn, "
        "with the .bin written beside it)",
    )
    p.add_argument(
        "--layout",
        choices=["ours", "basicsr", "esrgan", "old", "ncnn"],
        default="ours",
        help="key layout of the output (default: ours = safetensors with hyperparameters in the metadata; ncnn = "
        "the .param/.bin pair realesrgan-ncnn-vulkan, upscayl and chaiNNer run, fp16 weights; RRDBNet at x4/x8, any "
        "compact model; an x8 RRDBNet: old, ncnn or ours)",
    )
    p.add_argument(
        "--half",
        action="store_true",
        help="store the weights in fp16: half the file, the same pictures (loading makes them float32 again; "
        "ncnn files are fp16 anyway)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .checkpoints import convert_file
    from .zoo import resolve_model_path

    src = resolve_model_path(_model_arg(args.input))
    out = convert_file(src, args.output, layout=args.layout, overwrite=args.overwrite, half=args.half)
    print(f"wrote {out}")
    return 0


# --- interpolate ----------------------------------------------------------------------------------------------------
def _add_interpolate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interpolate",
        help="network interpolation: theta = (1 - alpha) * theta_A + alpha * theta_B, key by key",
    )
    p.add_argument("a", help="model A (e.g. the PSNR-oriented model): file or name")
    p.add_argument("b", help="model B (e.g. the GAN model): file or name")
    p.add_argument("--alpha", type=float, required=True, help="weight of B, in [0, 1]")
    p.add_argument("-o", "--output", type=_path, required=True, help="output .safetensors file")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=_run_interpolate)


def _run_interpolate(args: argparse.Namespace) -> int:
    from .checkpoints import input_label, interpolate_files
    from .zoo import resolve_model_path

    a, b = resolve_model_path(_model_arg(args.a)), resolve_model_path(_model_arg(args.b))
    # the record names each input as typed (a model name, or the path: runs/gan/model.safetensors, not the
    # model.safetensors every trained model is)
    labels = (input_label(args.a), input_label(args.b))
    out = interpolate_files(a, b, args.alpha, args.output, overwrite=args.overwrite, labels=labels)
    print(f"wrote {out}")
    return 0


# --- models ---------------------------------------------------------------------------------------------------------
def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the named pretrained models, or download / convert one")
    p.add_argument("--download", metavar="NAME", help="download model NAME (ncnn models: convert it)")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    import json

    from . import zoo

    if args.download:
        print(zoo.resolve(args.download, download=True))
        return 0
    statuses = zoo.list_models()
    if args.json:
        print(json.dumps([zoo.status_dict(s) for s in statuses], indent=2))
    else:
        print(zoo.format_table(statuses))
    return 0


# --- prepare --------------------------------------------------------------------------------------------------------
def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="cut HR training images into sub-images (480x480, step 240) and optionally their LR"
    )
    p.add_argument("hr_dir", type=_path, help="folder of HR images (e.g. DIV2K_train_HR)")
    p.add_argument("out_dir", type=_path, help="output folder for the sub-images (PNG)")
    p.add_argument("--size", type=int, default=480, help="sub-image size in pixels (default 480)")
    p.add_argument("--step", type=int, default=240, help="grid step in pixels (default 240)")
    p.add_argument(
        "--min-size",
        type=int,
        default=0,
        help="add a last crop flush with the border when the grid leaves more than this many pixels (default 0)",
    )
    p.add_argument(
        "--lr-scale",
        type=int,
        default=None,
        help="also write MATLAB-bicubic LR sub-images at this factor into OUT_DIR/LR_x<scale>",
    )
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace existing sub-images")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from .prepare import prepare

    res = prepare(
        args.hr_dir,
        args.out_dir,
        size=args.size,
        step=args.step,
        min_size=args.min_size,
        lr_scale=args.lr_scale,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    small = f" ({res.too_small} smaller than --size: nothing cut)" if res.too_small else ""
    kept = f", {res.kept} already there (kept; --overwrite replaces them)" if res.kept else ""
    lr = f" + {res.crops} LR in {args.out_dir / f'LR_x{args.lr_scale}'}" if args.lr_scale else ""
    images = f"{res.images} image{'' if res.images == 1 else 's'}"
    crops = f"{res.crops} sub-image{'' if res.crops == 1 else 's'}"
    print(f"{images} -> {crops} in {args.out_dir}{lr}{kept}{small}; {len(res.failed)} failed")
    return 1 if res.failed else 0


# --- train ----------------------------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one ESRGAN stage (psnr or gan) from a YAML config")
    # optional to argparse only so that `--resume CONFIG` (the config taken as --resume's value) can be read as
    # meant: _train_config says what is missing otherwise
    p.add_argument("config", nargs="?", help="YAML training config, e.g. configs/esrgan_x4_psnr.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.total_steps=1000 (repeatable; values parsed as YAML)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="PATH",
        help="continue from the run folder's latest checkpoint, or from PATH (a checkpoint)",
    )
    p.add_argument("--vgg-weights", metavar="PATH", help="torchvision VGG19 weights for the perceptual loss")
    p.set_defaults(func=_run_train, train_parser=p)


def _train_config(args: argparse.Namespace) -> None:
    """`esrgan train --resume CONFIG`: argparse takes CONFIG as --resume's value (a checkpoint path) and then
    missed the config ("the following arguments are required: config"). A .yaml/.yml value with no config given
    is the config, and --resume the bare flag (the run folder's latest checkpoint); without a config otherwise, the
    usage error says how to write the command."""
    if args.config is not None:
        return
    if isinstance(args.resume, str) and Path(args.resume).suffix.lower() in (".yaml", ".yml"):
        args.config, args.resume = args.resume, True
        return
    how = "esrgan train CONFIG [--resume [CHECKPOINT]]"
    if isinstance(args.resume, str):
        args.train_parser.error(
            f"the following arguments are required: config ({args.resume!r} was taken as --resume's checkpoint; "
            f"give the YAML config too: {how})"
        )
    args.train_parser.error(f"the following arguments are required: config ({how})")


class _ShownFormatter(logging.Formatter):
    """Log lines as errors.shown escapes them (a run folder named with a newline split its lines in two); a
    traceback that follows a line keeps its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return shown(super().formatMessage(record))


def _run_train(args: argparse.Namespace) -> int:
    import logging

    from .config import load_config
    from .errors import EsrganError
    from .train import StoppedWithRankZero, first_rank, stop_with_the_others, train

    handler = logging.StreamHandler()
    handler.setFormatter(_ShownFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        try:
            config = load_config(_path(args.config), args.overrides)
        except (EsrganError, OSError) as exc:  # under torchrun, the other ranks are told (not left waiting)
            stop_with_the_others(exc)
        result = train(config, resume=args.resume, vgg_weights=args.vgg_weights, started=_STARTED)
    except StoppedWithRankZero:  # torchrun: rank 0 says it, once
        return 1
    # stopped by Ctrl-C / SIGTERM (on any rank: all ranks agree on it): the shell's status for it (130, 143), so
    # `train psnr && train gan` stops
    status = 128 + result.signum if result.interrupted and result.signum else 0
    if not first_rank():  # torchrun: rank 0 wrote the run and says how it ended
        return status
    if result.interrupted:
        print(f"stopped at step {result.step}; checkpoint {result.checkpoint}; continue with --resume")
        return status
    steps = f"{result.step} step{'' if result.step == 1 else 's'}"
    print(f"finished {steps}; generator: {result.model_path}; checkpoint: {result.checkpoint}")
    return 0


# --- serve ----------------------------------------------------------------------------------------------------------
def _add_serve(sub: argparse._SubParsersAction) -> None:
    from .serve import (
        DEFAULT_HOST,
        DEFAULT_KEEP_SECONDS,
        DEFAULT_MAX_PIXELS,
        DEFAULT_MAX_UPLOAD_BYTES,
        DEFAULT_PORT,
    )

    p = sub.add_parser("serve", help="a local web page to upscale images and compare them with bicubic")
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"interface to listen on (default {DEFAULT_HOST}: this machine only)",
    )
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port, 1-65535 (default {DEFAULT_PORT})")
    p.add_argument(
        "--max-upload-mb",
        type=_positive_float("--max-upload-mb", most=_SERVE_MOST),
        default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
        help="largest upload in MiB, enforced while it streams (default %(default)g)",
    )
    p.add_argument(
        "--max-megapixels",
        type=_positive_float("--max-megapixels", most=_SERVE_MOST),
        default=DEFAULT_MAX_PIXELS / 2**20,
        help="largest input in mebipixels (2^20 pixels), checked from the header (default %(default)g = 4096x4096)",
    )
    p.add_argument(
        "--keep-minutes",
        type=_positive_float("--keep-minutes", most=_SERVE_MOST),
        default=DEFAULT_KEEP_SECONDS / 60,
        help="delete a finished job's files this long after it finished (default %(default)g); all are deleted at exit",
    )
    p.add_argument(
        "--model-file",
        action="append",
        metavar="NAME=PATH",
        help="offer this model file under NAME instead of the named models (repeatable)",
    )
    p.add_argument(
        "--no-token",
        action="store_true",
        help="ask for no token (by default every request needs the one in the address the server prints, new "
        "each start; ESRGAN_SERVE_TOKEN sets a fixed one): every user of this machine can then use the server and "
        "see, fetch and delete its jobs",
    )
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from .pipeline import warnings_as_lines
    from .serve import Limits, serve

    models = None
    if args.model_file:
        models = {}
        for item in args.model_file:
            name, eq, path = item.partition("=")
            if not (eq and name and path):
                raise EsrganError(f"--model-file takes NAME=PATH, not {item!r}")
            models[name] = _path(path)
    limits = Limits(  # at least one byte / pixel: --max-upload-mb 1e-9 is a tiny limit, not none
        max_upload_bytes=max(1, int(args.max_upload_mb * 2**20)),
        max_pixels=max(1, int(args.max_megapixels * 2**20)),
    )
    try:
        with warnings_as_lines():  # the jobs' warnings too (the log is the server's stderr)
            serve(
                args.host,
                args.port,
                models=models,
                limits=limits,
                keep_seconds=args.keep_minutes * 60,
                use_token=not args.no_token,
            )
    except KeyboardInterrupt:  # how a server is stopped, not an error (uvicorn raises it again at the end)
        print("esrgan serve: stopped; its files are deleted", file=sys.stderr, flush=True)
        return 130  # the shell's status for Ctrl-C, as every command here
    return 0


# --- evaluate -------------------------------------------------------------------------------------------------------
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score models against bicubic on a folder of HR images (Y-PSNR, Y-SSIM, NIQE; the literature's protocol)",
    )
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="NAME|PATH",
        help="model name (see `esrgan models`) or file; repeat to compare several side by side (none: the bicubic "
        "baseline alone, or with --sr)",
    )
    p.add_argument(
        "--sr",
        dest="sr_dirs",
        action="append",
        default=[],
        type=_path,
        metavar="DIR",
        help="a folder of SR results made elsewhere, paired with HR by name (baby.png, baby_x4.png, baby_out.png, "
        "...) and scored as a column named by the folder; repeat for several",
    )
    p.add_argument(
        "--hr", type=_path, required=True, metavar="DIR", help="folder of HR (ground-truth) images"
    )
    p.add_argument(
        "--lr",
        type=_path,
        metavar="DIR",
        help="folder of LR images paired by name (default: MATLAB bicubic downscale of HR, rounded to uint8, "
        "or uint16 with --bit-depth 16)",
    )
    p.add_argument(
        "--scale", type=int, help="upscaling factor (default: the models' scale; 4 without a model)"
    )
    p.add_argument(
        "--crop-border",
        type=int,
        metavar="N",
        help="pixels cut from every side before scoring (default: scale)",
    )
    p.add_argument("--no-niqe", action="store_true", help="skip NIQE (no-reference, lower is better)")
    p.add_argument(
        "--lpips",
        nargs="?",
        const="alex",
        choices=["alex", "vgg"],
        help="add LPIPS v0.1 (lower is better; bare --lpips = alex); skipped with a message when its weights "
        "are not on this machine",
    )
    p.add_argument(
        "--lpips-backbone", type=_path, metavar="PATH", help="torchvision-format AlexNet/VGG16 weight file"
    )
    p.add_argument("--lpips-lin", type=_path, metavar="PATH", help="LPIPS v0.1 lin-layer weight file")
    p.add_argument(
        "--round-y",
        action="store_true",
        help="round Y to integers as MATLAB does on uint8 (default: unrounded, as BasicSR)",
    )
    p.add_argument(
        "--value-range",
        metavar="LO:HI",
        type=_value_range,
        help="DICOM slices and measurement TIFFs: map LO..HI of their stored values (as `upscale --value-range` and "
        "data.value_range) instead of each file's own min..max; needed for measurement files given by --lr or --sr",
    )
    p.add_argument(
        "--bit-depth",
        type=int,
        choices=(8, 16),
        default=8,
        help="16: LR, outputs and metrics at 16-bit precision, for models trained with data.bit_depth 16 on "
        "16-bit images (default 8: the literature's protocol)",
    )
    p.add_argument(
        "--json",
        type=_path,
        metavar="FILE",
        help="write all numbers as JSON (refused if it exists unless --overwrite)",
    )
    p.add_argument(
        "--csv",
        type=_path,
        metavar="FILE",
        help="write one row per image and method as CSV (refused if it exists unless --overwrite)",
    )
    p.add_argument(
        "--report",
        type=_path,
        metavar="DIR",
        help="write DIR/<image>_mosaic.png (a zoomed crop per image) and DIR/index.html/.md (those already there "
        "are refused unless --overwrite; other files in DIR are left alone)",
    )
    p.add_argument(
        "--save-images",
        type=_path,
        metavar="DIR",
        help="save every result as DIR/<method>/<image>.png (files already there are refused: see --overwrite)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files --json, --csv, --report and --save-images would write where they already exist "
        "(default: refuse them before anything is scored)",
    )
    p.add_argument(
        "--tile", type=int, metavar="N", help="tile size in LR pixels (default: automatic; 0 = whole image)"
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="the models' precision (default: fp32, as the papers' numbers; auto = the device's fastest, e.g. bf16, "
        "which moves PSNR by up to 0.06 dB an image); the one used is recorded in the table, JSON, CSV and report",
    )
    p.add_argument("--device", default="auto", choices=DEVICES, help="default: auto")
    p.set_defaults(func=_run_evaluate)


def _check_output_file(flag: str, path: Path | None, *, overwrite: bool) -> None:
    """Refuse an output file that cannot be written, before the work whose numbers it would hold: a folder by that
    name, or a file where one of its folders should be (they would fail only after every image was scored); and an
    existing file (or link) unless overwrite."""
    if path is None:
        return
    if path.is_dir():
        raise EsrganError(f"{path}: is a folder; {flag} takes the name of a file to write")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise EsrganError(
            f"{path}: already exists; {flag} does not replace files unless --overwrite is given, or give another name"
        )
    _check_output_parents(flag, path)


def _check_output_dir(flag: str, path: Path | None) -> None:
    """As _check_output_file, for an output folder: an existing file by that name cannot become one."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise EsrganError(f"{path}: is a file; {flag} takes a folder")
    _check_output_parents(flag, path)


def _check_output_parents(flag: str, path: Path) -> None:
    import os

    for parent in path.parents:  # the nearest one that exists must be a folder we may write in
        if parent.exists():
            if not parent.is_dir():
                raise EsrganError(f"{path}: {parent} is a file, not a folder ({flag})")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise EsrganError(f"{path}: cannot write in {parent}: permission denied ({flag})")
            return


def _run_evaluate(args: argparse.Namespace) -> int:
    from .pipeline import warnings_as_lines

    # every output is checked before the models are loaded and the images scored: a bad --json used to fail after
    # all the work was done
    _check_output_file("--json", args.json, overwrite=args.overwrite)
    _check_output_file("--csv", args.csv, overwrite=args.overwrite)
    _check_output_dir("--report", args.report)
    _check_output_dir("--save-images", args.save_images)
    if args.json is not None and args.csv is not None and args.json.resolve() == args.csv.resolve():
        raise EsrganError(f"{args.json}: --json and --csv name the same file")
    from .evaluate import planned_outputs

    if args.json is not None or args.csv is not None:
        # a file --report or --save-images writes in this run (with --overwrite one replaced the other; without it
        # the run failed after all the scoring), or a folder they make: refused, --overwrite or not
        planned = planned_outputs(
            args.hr, args.models, sr_dirs=args.sr_dirs, save_images=args.save_images, report_dir=args.report
        )
        for flag, path in (("--json", args.json), ("--csv", args.csv)):
            if path is None:
                continue
            for other, written, what in planned:
                if path.resolve() == written.resolve():
                    raise EsrganError(
                        f"{path}: {flag} names a {what} that {other} writes in this run; give another name"
                    )
    if args.round_y and args.bit_depth == 16:  # before LPIPS and the models are loaded
        raise EsrganError(
            "--round-y rounds Y to integers as MATLAB does on 8-bit images: not with --bit-depth 16"
        )
    if args.lpips is None and (args.lpips_backbone is not None or args.lpips_lin is not None):
        raise EsrganError(
            "--lpips-backbone/--lpips-lin without --lpips: add --lpips alex or --lpips vgg (LPIPS is not computed "
            "without it)"
        )
    for spec in args.models:
        _model_arg(spec)
    from .evaluate import check_outputs

    # the report's mosaics and index pages and --save-images' files already there: refused unless --overwrite
    check_outputs(
        args.hr,
        args.models,
        sr_dirs=args.sr_dirs,
        save_images=args.save_images,
        report_dir=args.report,
        overwrite=args.overwrite,
    )
    with warnings_as_lines():  # `esrgan: warning: <file>: ...` lines, not Python's file:line format
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from .errors import ModelNotAvailableError
    from .evaluate import evaluate
    from .lpips import LPIPS, load_lpips
    from .results import format_table, write_csv, write_json

    lpips: LPIPS | None = None
    if args.lpips is not None:
        try:
            lpips = load_lpips(args.lpips, backbone_weights=args.lpips_backbone, lin_weights=args.lpips_lin)
        except ModelNotAvailableError as exc:
            # an optional extra (the other metrics are still worth having), unless the user named its files: then
            # a missing one is an error, before anything is scored
            if args.lpips_backbone is not None or args.lpips_lin is not None:
                raise
            print(f"LPIPS skipped: {exc}", file=sys.stderr, flush=True)

    result = evaluate(
        args.hr,
        args.models,
        sr_dirs=args.sr_dirs,
        lr_dir=args.lr,
        scale=args.scale,
        crop_border=args.crop_border,
        niqe=not args.no_niqe,
        lpips=lpips,
        round_y=args.round_y,
        bit_depth=args.bit_depth,
        value_range=args.value_range,
        tile=args.tile,
        precision=args.precision,
        device=args.device,
        save_images=args.save_images,
        overwrite=args.overwrite,
        report_dir=args.report,
        progress=lambda line: print(shown(line), file=sys.stderr, flush=True),
    )
    print(format_table(result))
    for path, writer in ((args.json, write_json), (args.csv, write_csv)):
        if path is not None:
            # refused before the work if it existed; one that appeared since is not replaced (OutputExistsError)
            writer(result, path, overwrite=args.overwrite)
            print(f"wrote {path}")
    if args.report is not None:
        print(f"wrote {args.report / 'index.html'}")
    print(f"{len(result.images)} images in {result.seconds:.1f} s")
    if result.failed:
        _err(
            f"{len(result.failed)} of {len(result.failed) + len(result.images)} files could not be evaluated:"
        )
        for _, reason in result.failed:
            print(f"  {shown(reason)}", file=sys.stderr)
        return 1
    return 0


# --- export-onnx --------------------------------------------------------------------------------------------------
def _add_export_onnx(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-onnx",
        help="export a model to ONNX (dynamic batch, height, width), checked against PyTorch with onnxruntime",
    )
    p.add_argument("model", help="model file (.pth, .pt, .safetensors, ncnn .param) or a model name")
    p.add_argument("output", type=_path, help="output .onnx file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=_run_export_onnx)


def _run_export_onnx(args: argparse.Namespace) -> int:
    from .onnx_export import export_onnx

    out = export_onnx(_model_arg(args.model), args.output, opset=args.opset, overwrite=args.overwrite)
    print(f"wrote {out} (checked against PyTorch with onnxruntime)")
    return 0


# --- upscale --------------------------------------------------------------------------------------------------------
def _denoise(args: argparse.Namespace) -> str | None:
    """--denoise DN as Real-ESRGAN's inference script does it: DN x realesr-general-x4v3 + (1 - DN) x its
    without-denoising twin, i.e. --interpolate TWIN --alpha 1-DN; the twin of a model file is the file of the same
    name with realesr-general-wdn-x4v3 in it, beside it. Sets args.interpolate/alpha; returns a problem or None."""
    if args.interpolate is not None:
        return "--denoise chooses the second model itself: give it or --interpolate, not both"
    if not 0.0 <= args.denoise <= 1.0:  # also refuses NaN
        return f"--denoise must be in [0, 1], not {args.denoise:g}"
    model = str(args.model)
    if model == DENOISE_MODEL:
        twin = DENOISE_OTHER
    elif DENOISE_MODEL in Path(model).name:
        twin = str(Path(model).with_name(Path(model).name.replace(DENOISE_MODEL, DENOISE_OTHER)))
    else:
        return (
            f"--denoise is {DENOISE_MODEL}'s (Real-ESRGAN's -dn: it mixes in {DENOISE_OTHER}); with another "
            "model, interpolate with --interpolate OTHER --alpha A"
        )
    if args.denoise < 1.0:  # 1: the model as it is, as Real-ESRGAN does
        args.interpolate, args.alpha = twin, 1.0 - args.denoise
    return None


def _add_upscale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upscale",
        help="upscale images and videos (files, folders, globs) with any ESRGAN-family model",
        description=(
            "Upscale images with an RRDBNet (ESRGAN) or SRVGGNetCompact (Real-ESRGAN compact) model, tiled with blended overlaps so any size fits in memory. "
            "Existing outputs are skipped (so rerunning an interrupted batch only does the rest) unless "
            "--overwrite; outputs are written atomically. Bit depth, alpha, ICC profile, EXIF, XMP and resolution "
            "(dpi, as it was: the print grows with the pixels) are kept where the output format holds them (TIFF: "
            "only the descriptive EXIF tags; JPEG and BMP: no alpha; JPEG, WEBP, BMP and GIF: 8 bits; GIF: 256 colours a "
            "frame, all-or-nothing transparency; PNG text: PNG only); what it cannot hold is named in a warning. "
            "Animated GIF, APNG and WebP: every frame, with its display time and the loop count. "
            "A file that fails is reported in one line and the batch goes on; the exit code is 1 if any failed."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument(
        "-o",
        "--output",
        type=_path,
        help="output folder (default: ./upscaled), or an output file when there is one input",
    )
    p.add_argument(
        "--recursive", action="store_true", help="descend into sub-folders (their structure is kept)"
    )
    p.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help="output file name pattern; fields {name} {scale} {ext} {model} (default: %(default)s)",
    )
    p.add_argument(
        "--format",
        type=_format_arg,
        choices=["png", "jpg", "webp", "tiff", "gif"],
        help="output format (default: the input's; a still GIF's is png; jpeg and tif are accepted too). An animated "
        "GIF, PNG or WebP stays animated in gif, png (APNG) or webp, every frame upscaled; jpg and tiff take its first "
        "frame",
    )
    p.add_argument(
        "--quality",
        type=int,
        help="JPEG or WEBP quality 0-100 (JPEG: default 95, 0 is 1; WEBP: default lossless); PNG and TIFF ignore it, "
        "with a warning",
    )
    p.add_argument(
        "--png-compression",
        type=int,
        choices=range(10),
        metavar="0-9",
        help="zlib level of PNG outputs: 0 = none (largest), 9 = smallest and slowest (default: 1, fast; "
        "a 2048x2048 photo: docs/benchmarks.md); other formats ignore it, with a warning",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=(
            f"model name (see `esrgan models`) or model file. Default: {DEFAULT_MODEL}, because it is trained on "
            "realistic degradations (blur, noise, JPEG) and so suits real photos, where the paper's models, "
            "trained on clean bicubic downscales, amplify noise and compression artefacts"
        ),
    )
    p.add_argument(
        "--outscale",
        type=float,
        help="final scale, 0.25-16 (the model, then a MATLAB-bicubic resize; default: the model's scale)",
    )
    p.add_argument(
        "--width",
        type=int,
        help="output width in pixels instead of a scale (the height follows the image's aspect ratio; with "
        "--height: the largest size within both); each image's scale must be 0.25-16. Default name: "
        "{name}_{scale}.{ext} with {scale} = 3840w, 2160h or 3840x2160",
    )
    p.add_argument("--height", type=int, help="output height in pixels instead of a scale (see --width)")
    p.add_argument(
        "--interpolate", metavar="OTHER", help="network interpolation with this second model (name or file)"
    )
    p.add_argument(
        "--alpha",
        type=float,
        help="interpolation weight of OTHER: theta = (1 - alpha) * MODEL + alpha * OTHER (needs --interpolate)",
    )
    p.add_argument(
        "--denoise",
        type=float,
        metavar="0-1",
        help=f"with {DENOISE_MODEL} only, Real-ESRGAN's denoise strength (-dn): 1 = the model as it is (strong "
        f"denoising; the default here), 0 = {DENOISE_OTHER} (keeps noise and grain), between: the two "
        "interpolated. Real-ESRGAN's script defaults to 0.5: give --denoise 0.5 for its output (a model file "
        f"named {DENOISE_MODEL}* finds its {DENOISE_OTHER} twin beside it)",
    )
    p.add_argument("--device", default="auto", choices=DEVICES, help="default: auto")
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto: fp16 on GPUs, bf16 on CPUs that compute it natively, else fp32; NaN/Inf outputs are redone in fp32",
    )
    p.add_argument(
        "--tile",
        type=int,
        help="largest tile side in input pixels, 32-4096 (and at least twice a --tile-overlap given; each side of "
        "the image is cut into equal tiles no larger); 0 = no tiling (default: from free memory)",
    )
    p.add_argument(
        "--tile-overlap",
        type=int,
        default=None,
        help="overlap between tiles in input pixels: a margin of it is discarded at each inner tile edge, the rest "
        f"blended (default: {DEFAULT_OVERLAP}, growing with the tile up to {MAX_DEFAULT_OVERLAP}; at most half of a "
        "--tile given without it)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="tiles per forward pass (default: as many as fit on a GPU, 1 on a CPU)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the model through torch.compile: tens of seconds to compile per tile shape, then faster "
        "(pays for long batches and videos on a GPU; 16-bit and float images' fp32 model is compiled too, when "
        "the first of them comes)",
    )
    p.add_argument(
        "--alpha-mode",
        choices=ALPHA_MODES,
        default=ALPHA_MODES[0],
        help="how an alpha channel is upscaled: through the model as a grey image (default) or bicubic",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    p.add_argument("--quiet", action="store_true", help="no progress, only errors")
    p.add_argument(
        "--stream",
        action="store_true",
        help="write PNG and TIFF outputs row by row as the model makes them, never holding a whole output "
        "(default: only outputs that would not fit in the free memory; not for alpha or another --outscale)",
    )
    p.add_argument(
        "--no-overlap",
        dest="overlap",
        action="store_false",
        help="read, upscale and write one file after the other (default: at once, in a reader thread, the model "
        "and writer threads)",
    )
    p.add_argument(
        "--max-megapixels",
        type=_positive_float("--max-megapixels"),
        help="refuse inputs larger than this, in mebipixels (2^20 pixels), checked from the header before decoding "
        f"(default {DEFAULT_MAX_PIXELS / 2**20:g} = {DEFAULT_MAX_PIXELS} pixels, a decompression-bomb guard)",
    )
    p.add_argument("--max-pixels", type=int, help=argparse.SUPPRESS)  # the old name, in pixels
    p.add_argument(
        "--value-range",
        metavar="LO:HI",
        type=_value_range,
        help="measurement TIFFs (float, signed, multi-band, GeoTIFF: docs/measurements.md): map LO..HI of every band "
        "onto the model's range instead of each file's own min..max, so that the tiles of a mosaic are treated "
        "alike; values outside are clipped (with a warning)",
    )
    v = p.add_argument_group(
        "videos",
        "videos (.mp4 .mkv .mov .webm .avi ...) keep their container unless -o or --name gives another suffix; "
        "timestamps, audio, subtitles, rotation and colour tags are kept (needs PyAV: pip install 'esrgan[video]')",
    )
    v.add_argument(
        "--codec",
        choices=["h264", "h265", "vp9", "av1", "ffv1"],
        help="video codec (default: h264; vp9 for .webm; ffv1 is lossless)",
    )
    v.add_argument(
        "--crf", type=int, help="constant quality, lower = better (default: h264 18, h265 20, vp9/av1 24)"
    )
    v.add_argument(
        "--pix-fmt", help="pixel format, e.g. yuv420p, yuv444p, yuv420p10le (default: the source's)"
    )
    v.add_argument("--frames", metavar="A:B", help="only frames A to B-1 (0-based), e.g. 0:100 for a preview")
    v.add_argument(
        "--segment-frames",
        type=int,
        default=240,
        help="frames per resumable segment: a rerun after a kill keeps the finished ones (default: %(default)s)",
    )
    v.add_argument(
        "--frame-batch",
        type=int,
        default=1,
        help="frames per forward pass where a frame is one tile (8-bit, no --outscale): faster with small models "
        "or frames (1.4x with a tiny model on a CPU, none with realesrgan-x4plus: docs/video.md) "
        "(default: %(default)s)",
    )
    p.set_defaults(func=_run_upscale)


class _Terminated(KeyboardInterrupt):
    """SIGTERM during `esrgan upscale`, raised in the main thread where Ctrl-C raises KeyboardInterrupt, so that the
    batch stops the same way (_stops_on_signals); the command then exits 143."""


SECOND_SIGNAL_GRACE = 2.0
"""Seconds after the signal that stops `esrgan upscale` during which another Ctrl-C or SIGTERM is the same request,
and is ignored: under torchrun one Ctrl-C can reach a rank as SIGINT and then SIGTERM (its agent sends SIGTERM when
it gets a second signal itself: a second Ctrl-C, or `timeout` passing the first one on), and a double tap is one
request. A later one ends the stop at once."""


@contextlib.contextmanager
def _stops_on_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM (systemd, a scheduler, torchrun's agent) stop a batch the same way: an exception in the
    main thread, after which the writers finish the files they are writing (whole; no temporary file stays).

    With SIGTERM's default the process died at once, leaving the files being written as hidden temporary files;
    a second signal during the stop ended the wait for the writers the same way. Another signal within
    SECOND_SIGNAL_GRACE seconds of the first is ignored; a later one still ends the stop at once (the next run
    removes what it leaves). Handlers are set only in the main thread and where SIGINT and SIGTERM have their
    usual ones (not where a program embedding us set its own or ignores them), and put back at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    first: list[float] = []  # when the signal that stopped the batch came

    def stop(signum: int, frame: object) -> None:
        now = time.monotonic()
        if first and now - first[0] < SECOND_SIGNAL_GRACE:
            return
        first[:] = [now]
        raise _Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    previous = {}
    for sig, usual in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(sig) == usual:
            previous[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_upscale(args: argparse.Namespace) -> int:
    # the checks that need no model first, before torch is imported (1.7 s of a typo's exit on a 2-core Zen 4)
    if (args.interpolate is None) != (args.alpha is None):
        _err("--interpolate and --alpha go together")
        return 2
    if args.denoise is not None and (problem := _denoise(args)):
        _err(problem)
        return 2
    fit = None if args.width is None and args.height is None else (args.width, args.height)
    if (
        args.quality is not None and not 0 <= args.quality <= 100
    ):  # was found per file, after the model had run
        _err(f"--quality must be 0-100, not {args.quality}")
        return 2
    if fit is not None and args.outscale is not None:
        _err("--width / --height and --outscale exclude each other: give a size or a scale")
        return 2
    if not args.name.strip():  # "" made every destination the output folder itself
        _err("--name must not be empty: it is the output file name pattern, e.g. {name}_x{scale}.{ext}")
        return 2
    from .pipeline import (
        Job,
        collect_inputs,
        output_folder,
        plan_jobs,
        repeated_outputs,
        shard_from_env,
        upscale_files,
        warnings_as_lines,
    )
    from .upscale import Upscaler, check_fit, check_outscale, check_tile

    try:  # before any model is loaded
        check_tile(args.tile, args.tile_overlap)
        check_outscale(args.outscale)
        check_fit(fit)
    except EsrganError as exc:
        _err(f"--{exc}")
        return 2
    _model_arg(args.model)
    if args.interpolate is not None:
        _model_arg(args.interpolate)
    options = {
        "device": args.device,
        "precision": args.precision,
        "tile": args.tile,
        "tile_overlap": args.tile_overlap,
        "batch": args.batch,
        "alpha_mode": args.alpha_mode,
        "outscale": args.outscale,
        "fit": fit,
        "interpolate": args.interpolate,
        "interpolate_alpha": args.alpha,
        "compile": args.compile,
    }
    video: dict[str, object] = {
        "codec": args.codec,
        "crf": args.crf,
        "pix_fmt": args.pix_fmt,
        "segment_frames": args.segment_frames,
        "frame_batch": args.frame_batch,
    }
    if args.frames is not None:
        from .video import parse_frames

        video["frames"] = parse_frames(args.frames)

    def plan() -> tuple[Upscaler, list[Job], list[tuple[str, str]]] | None:
        """The model, the jobs and the unusable inputs (each said here); None when there is nothing to do."""
        exclude = output_folder(args.output)
        sources, problems = collect_inputs(args.inputs, recursive=args.recursive, exclude=exclude)
        for arg, reason in problems:
            _err(f"{arg}: {reason}")
        if not sources:
            _err("nothing to upscale")
            return None
        model = _path(args.model)
        upscaler = Upscaler.from_pretrained(args.model, **options)  # a name or a file
        scale: float | str = upscaler.scale
        name = args.name
        if fit is not None:  # each image has its own scale: names say the target
            scale = (
                f"{args.width}x{args.height}"
                if None not in fit
                else f"{args.width}w"
                if args.width
                else f"{args.height}h"
            )
            name = "{name}_{scale}.{ext}" if name == DEFAULT_NAME else name
        jobs = plan_jobs(sources, args.output, name=name, format=args.format, scale=scale, model=model.stem)
        return upscaler, jobs, problems

    problems: list[tuple[str, str]] = []
    repeated: list[tuple[str, str]] = []  # torchrun: inputs whose output another input has, said by rank 0
    with warnings_as_lines(), shard_from_env() as shard:  # torchrun: this rank's part, one summary on rank 0
        # torchrun: rank 0 alone lists the inputs and plans (and says what is wrong with them, once); the other ranks
        # take their part of its list (Shard.share_jobs) and load the model once it has come
        if shard.main:
            try:
                planned = plan()
            except BaseException:
                # the other ranks end too, without a word: this one says why (its own error, also where one of
                # them is gone already)
                with contextlib.suppress(EsrganError):
                    shard.share_jobs(None)
                raise
            if planned is None:
                shard.share_jobs(None)
                return 1
            upscaler, jobs, problems = planned
            if shard.world > 1:  # one process says so per file in upscale_files; here the shards never meet
                clash = repeated_outputs(jobs)
                for k, reason in clash.items():
                    _err(f"{jobs[k].src}: {reason}")
                repeated = [(str(jobs[k].src), reason) for k, reason in clash.items()]
                jobs = [job for k, job in enumerate(jobs) if k not in clash]
            shard.share_jobs(jobs)
        else:
            shared = shard.share_jobs()
            if shared is None:  # rank 0 stopped before the work and said why
                return 1
            jobs = shared
            upscaler = Upscaler.from_pretrained(args.model, **options)
        part = upscale_files(
            upscaler,
            shard.take(jobs),
            format=args.format,
            quality=args.quality,
            png_compression=args.png_compression,
            overwrite=args.overwrite,
            max_pixels=args.max_pixels if args.max_megapixels is None else round(args.max_megapixels * 2**20),
            value_range=args.value_range,
            progress="quiet" if args.quiet else "auto",
            video=video,
            overlap=args.overlap,
            prefix=shard.prefix,
            stream=args.stream,
        )
        result = shard.gather(part)
    if result is None:  # another rank: rank 0 prints the summary and carries the exit code
        return 0
    result.failed += repeated
    failed = len(result.failed) + len(problems)
    if not args.quiet or failed:
        unused = f", {len(problems)} input{'s' if len(problems) > 1 else ''} not usable (see above)"
        print(shown(f"esrgan upscale: {result.summary()}" + (unused if problems else "")))
    return 1 if failed else 0


# --- demo -----------------------------------------------------------------------------------------------------------
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="upscale a real photograph (bundled with scikit-image) and write a bicubic-vs-model comparison",
    )
    p.add_argument(
        "-o",
        "--output",
        type=_path,
        default=_path("esrgan-demo"),
        help="output folder (default: %(default)s)",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name or file (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="default: auto")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="default: auto")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .pipeline import warnings_as_lines

    with warnings_as_lines():
        result = run_demo(
            args.output,
            model=_model_arg(args.model),
            device=args.device,
            precision=args.precision,
            overwrite=args.overwrite,
        )
    if result.skipped:
        print(f"the demo files are already there (--overwrite redoes them): {result.input.parent}")
    print(f"input (real photo): {result.input}")
    print(f"upscaled:           {result.output}")
    print(f"comparison:         {result.comparison}")
    if not result.skipped:
        print(f"took {result.seconds:.1f} s on {result.device} in {result.precision}")
    return 0


# --- end of sections; helpers add theirs above this line ------------------------------------------------------------

_SECTIONS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_info,
    _add_convert,
    _add_interpolate,
    _add_models,
    _add_prepare,
    _add_train,
    _add_serve,
    _add_evaluate,
    _add_export_onnx,
    _add_upscale,
    _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="esrgan",
        description="ESRGAN super-resolution: upscale images, evaluate and train models, convert model files.",
    )
    parser.add_argument("--version", action="version", version=f"esrgan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SECTIONS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # a file name that is not UTF-8 (held as surrogates) printed on a strict UTF-8 stream (en_US.UTF-8) raised
        # UnicodeEncodeError after its output was written: a traceback; the lines that name files escape such
        # characters themselves (errors.shown), any other line shows them as \udcNN instead of failing
        if getattr(stream, "errors", None) == "strict" and isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(_negative_ranges(sys.argv[1:] if argv is None else list(argv)))
    func: Runner = args.func
    if func is _run_train:
        _train_config(args)
    # upscale: SIGTERM stops a batch as Ctrl-C does; the handlers stay until the line that says so is written
    with _stops_on_signals() if func is _run_upscale else contextlib.nullcontext():
        return _call(func, args)


def _negative_ranges(argv: list[str]) -> list[str]:
    """`--value-range -1024:3071` as `--value-range=-1024:3071`: argparse takes a value that starts with "-" (and is
    no plain number) for an option and stopped with "expected one argument", while a CT's range starts below 0."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--value-range":
            value = next(it, None)
            if value is not None and value.startswith("-") and ":" in value:
                out.append(f"{arg}={value}")
                continue
            out.append(arg)
            if value is not None:
                out.append(value)
            continue
        out.append(arg)
    return out


def _call(func: Runner, args: argparse.Namespace) -> int:
    """func(args), and what it raises as one line and an exit status."""
    try:
        return func(args)
    except EsrganError as exc:
        _err(str(exc))
        return 1
    except FileExistsError as exc:  # OutputExistsError and friends
        _err(str(exc) if exc.filename is None else _os_error_line(exc))
        return 1
    except BrokenPipeError:
        # `esrgan info ... | head`: the reader has gone, which is no error of ours to report; the interpreter's
        # final flush of stdout would raise again: point stdout at /dev/null (the way Python's docs show)
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # unreadable model files, folders...: the file and the problem, not a traceback
        _err(_os_error_line(exc))
        return 1
    except MemoryError:
        _err("out of memory")
        return 1
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated)  # SIGTERM: the status a shell gives a process it ended
        _err("terminated" if terminated else "interrupted")
        status = 143 if terminated else 130
        ncnn = sys.modules.get("esrgan.ncnn")
        if ncnn is not None:  # an ncnn pass we stopped waiting for ends the process now, not after its tile
            ncnn.end_at_once(status)
        return status


def _format_arg(s: str) -> str:
    """--format as typed: any case, and the other names of two formats (jpeg, tif), as the choice it means."""
    s = s.lower().lstrip(".")
    return {"jpeg": "jpg", "tif": "tiff"}.get(s, s)


def _path(s: str) -> Path:
    return Path(s).expanduser()


def _value_range(text: str) -> tuple[float, float]:
    lo_text, sep, hi_text = text.partition(":")
    try:
        lo, hi = float(lo_text), float(hi_text)
    except ValueError:
        lo = hi = float("nan")
    if not sep or not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise argparse.ArgumentTypeError(
            f"--value-range takes LO:HI with LO < HI (e.g. 0:10000), not {text!r}"
        )
    return lo, hi


def _positive_float(flag: str, most: float = math.inf) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a number, not {text!r}") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{flag} must be a positive number, not {text!r}")
        if value > most:
            raise argparse.ArgumentTypeError(f"{flag} must be at most {most:.15g}, not {text!r}")
        return value

    return parse


_SERVE_MOST = 1e9
"""The largest --max-upload-mb, --max-megapixels and --keep-minutes (~1 PB, ~1e15 pixels, ~1,900 years): far past
any use, and short of a float overflow (1e306 MiB in bytes is inf) and of JSON's numbers (/api/config)."""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port takes a whole number, not {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be 1-65535, not {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
