"""Exceptions the CLI turns into one clear line and a non-zero exit (never a traceback)."""

from __future__ import annotations


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


def one_line(what: object) -> str:
    """An exception (or any message) as one line: whitespace collapsed, else the exception type's name. Library
    messages can span lines (urllib's redirect loop, PyTorch's), and every error this package shows is one line."""
    text = " ".join(str(what).split())
    if text or not isinstance(what, BaseException):
        return text
    return type(what).__name__


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
    return isinstance(exc, oom) or "can't allocate memory" in text or "out of memory" in text.lower()
