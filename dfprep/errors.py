"""User-facing errors: each carries a one-line reason the CLI prints before exiting non-zero (the lowest layer)."""

import re


class DfprepError(Exception):
    """Base class for errors the CLI reports as a single line (no traceback)."""


class ConfigError(DfprepError):
    """A pipeline file or flag is invalid: names the file, key and expected type."""


class LayoutError(DfprepError):
    """A dataset root does not match the adapter's expected layout."""


class ModelError(DfprepError):
    """A landmark/detector model is missing, corrupt or unknown."""


class RegionMapError(DfprepError):
    """A map cannot be built as asked: bad weights, too few landmarks, an unusable detector checkpoint."""


def one_line(exc: BaseException, limit: int = 200, fallback: str | None = None) -> str:
    """The first line of an exception's message (else `fallback` or its type name): errors stay one line."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else (fallback or type(exc).__name__)


def normalised_reason(error: str) -> str:
    """Group similar errors for the histogram: digits and paths folded."""
    text = re.sub(r"/[^\s:,)]+", "<path>", error)
    return re.sub(r"\d+", "N", text)[:120]
