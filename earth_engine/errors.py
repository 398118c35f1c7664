"""Classification of computePixels failures into retryable and permanent ones."""
from __future__ import annotations

import enum
import re
from typing import Optional


class ErrorKind(enum.Enum):
    RATE_LIMITED = "rate_limited"  # 429: retry with backoff
    TRANSIENT = "transient"        # 5xx, timeouts, dropped connections, malformed replies: retry
    NO_SCENES = "no_scenes"        # nothing to composite: permanent, dead-letter with a clear reason
    PERMANENT = "permanent"        # 400, invalid geometry, anything unexpected: do not retry


class NoScenesError(Exception):
    """No unmasked Sentinel-2 observation for the tile in the window."""


class TooFewValidPixelsError(Exception):
    """The tile's valid-pixel fraction is below ``min_valid_fraction``."""


class MalformedResponseError(Exception):
    """computePixels answered 200 with something that is not the array we asked for."""


_NO_BANDS = re.compile(r"did not match any bands|no bands", re.I)
_RATE = re.compile(r"too many (concurrent )?requests|rate limit|quota exceeded|resource.?exhausted", re.I)
_TRANSIENT = re.compile(r"internal error|unavailable|deadline exceeded|backend error|try again", re.I)


def http_status(exc: BaseException) -> Optional[int]:
    """The HTTP status behind an ``ee.EEException``: the client raises it while handling the
    googleapiclient ``HttpError``, which stays reachable as ``__context__``."""
    seen = exc
    for _ in range(3):
        resp = getattr(seen, "resp", None)
        status = getattr(resp, "status", None)
        if status is not None:
            return int(status)
        cause = seen.__cause__ or seen.__context__
        if cause is None:
            return None
        seen = cause
    return None


def classify(exc: BaseException) -> ErrorKind:
    if isinstance(exc, NoScenesError):
        return ErrorKind.NO_SCENES
    if isinstance(exc, (TimeoutError, ConnectionError, MalformedResponseError)):
        return ErrorKind.TRANSIENT
    message = str(exc)
    status = http_status(exc)
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status is not None and (status >= 500 or status == 408):
        return ErrorKind.TRANSIENT
    if _NO_BANDS.search(message):
        return ErrorKind.NO_SCENES
    if status is None and _RATE.search(message):
        return ErrorKind.RATE_LIMITED
    if status is None and _TRANSIENT.search(message):
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT


def error_class(exc: BaseException) -> str:
    """A stable name for dead letters: the HTTP status where there is one, else the exception type."""
    if classify(exc) is ErrorKind.NO_SCENES:
        return "NoScenesError"
    status = http_status(exc)
    return f"HTTP{status}" if status is not None else type(exc).__name__
