"""Durations and sizes as operators write them: ``500ms``, ``1m30s``, ``64MiB``, ``100KB``."""

from __future__ import annotations

import math
import re
from decimal import Decimal

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_HINT = "(use e.g. 500ms, 2s, 5m, 7d)"

# Binary (KiB) and decimal (KB) units are both common; bare K/M/G are refused because tools
# disagree on whether they mean 1000 or 1024.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_SIZE_HINT = "(use e.g. 64MiB, 512KiB, 100KB, 123)"


def _number(value: object, kind: str, hint: str) -> float | None:
    """A real (non-bool) number as float, None for anything else; rejects nan/inf/negatives."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        raise ValueError(f"invalid {kind} {value!r} {hint}")
    if value < 0:
        raise ValueError(f"{kind} must not be negative (got {value!r})")
    return float(value)


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string such as ``500ms``, ``2s``, ``5m``, ``1h``."""
    number = _number(value, "duration", _DURATION_HINT)
    if number is not None:
        return number
    if not isinstance(value, str):
        raise ValueError(f"invalid duration of type {type(value).__name__} {_DURATION_HINT}")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"duration must not be negative (got {value!r})")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not _DURATION.fullmatch(text):
        raise ValueError(f"invalid duration {value!r} {_DURATION_HINT}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))


def parse_size(value: object) -> int:
    """Bytes from a number or a string such as ``64MiB``, ``512KiB``, ``100KB``, ``123``."""
    number = _number(value, "size", _SIZE_HINT)
    if number is not None:
        return _whole(number, value)
    if not isinstance(value, str):
        raise ValueError(f"invalid size of type {type(value).__name__} {_SIZE_HINT}")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"size must not be negative (got {value!r})")
    match = _SIZE.fullmatch(text)
    unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"invalid size {value!r} {_SIZE_HINT}")
    # Decimal keeps "1.1KB" exact (1100), where float arithmetic gives 1100.0000000000002.
    return _whole(Decimal(match.group(1)) * unit, value)


def _whole(number: float | Decimal, original: object) -> int:
    if number != int(number):
        raise ValueError(f"size {original!r} is not a whole number of bytes")
    return int(number)
