"""Exceptions the CLI turns into one clear line and a non-zero exit (never a traceback), and OutOfMemoryWarning (here,
below esrgan.upscale and esrgan.video, which both warn it)."""

from __future__ import annotations

import unicodedata


class EsrganError(Exception):
    """Base class: the message is shown to the user as is, so it names the file and the problem."""


class CheckpointError(EsrganError):
    """A model file that cannot be read, is unsafe, or is not a generator esrgan knows (RRDBNet, SRVGGNetCompact)."""


class ImageError(EsrganError):
    """An image that cannot be read or written (corrupt, too large, unsupported)."""


class ModelNotAvailableError(EsrganError):
    """A named model whose weights are not on this machine; the message says how to get them."""


class DownloadError(EsrganError):
    """A download that failed or did not match its published hash; nothing is left in the cache."""


class ConfigError(EsrganError):
    """A training config with unknown keys, wrong types or impossible values."""


class OutOfMemoryWarning(UserWarning):
    """A forward pass ran out of memory and is being retried with smaller tiles (esrgan.upscale.Upscaler: the tile
    then stays at most that small for the images after it), or a video's frames with fewer frames a pass."""


def one_line(what: object) -> str:
    """An exception (or any message) as one line: whitespace collapsed, else the exception type's name. Library
    messages can span lines (urllib's redirect loop, PyTorch's), and every error this package shows is one line."""
    text = " ".join(str(what).split())
    if text or not isinstance(what, BaseException):
        return text
    return type(what).__name__


def shown(text: str) -> str:
    """text as it can be printed on one line of any terminal: control characters ("\\n" in a file name made a
    two-line error) and line separators escaped as Python writes them, and the bytes of a file name that is not
    UTF-8 (which Python holds as lone surrogates: printing one raised UnicodeEncodeError, a traceback, under a
    strict UTF-8 locale such as en_US.UTF-8) as \\xNN. Printable text, however foreign, is left as it is."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cs":
            code = ord(ch)
            out.append(f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}")
        elif category in ("Cc", "Zl", "Zp"):
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


def format_bytes(n: int) -> str:
    """A size for people: 1 decimal MB from 0.1 MB up, else kB (never "0.0 MB" for a small file)."""
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{max(n, 1) / 1e3:.3g} kB" if n else "0 bytes"


def out_of_memory(exc: BaseException) -> bool:
    """Whether exc is a failed allocation: MemoryError (numpy, Python), torch.OutOfMemoryError (CUDA, MPS) or the
    plain RuntimeError torch's CPU allocator raises ("DefaultCPUAllocator: can't allocate memory"). One file too
    large for the memory fails alone; the batch goes on (its memory is freed when the exception is)."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch.OutOfMemoryError from 2.5
    text = str(exc)
    if isinstance(exc, oom) or "can't allocate memory" in text or "out of memory" in text.lower():
        return True
    # oneDNN (CPU convolutions): a primitive whose descriptor was made (so the convolution is implemented) and that
    # then cannot be created is out of memory for its scratchpad; an unimplemented one fails at the descriptor
    # ("could not create a primitive descriptor for ..."). Seen under a 200 MiB address-space limit on Zen 4.
    return "could not create a primitive" in text and "could not create a primitive descriptor" not in text
