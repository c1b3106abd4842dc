"""Exceptions the CLI turns into one clear line and a non-zero exit (never a traceback)."""

from __future__ import annotations


class EsrganError(Exception):
    """Base class: the message is shown to the user as is, so it names the file and the problem."""


class CheckpointError(EsrganError):
    """A model file that cannot be read, is unsafe, or does not fit RRDBNet."""


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
