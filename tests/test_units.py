"""Durations and sizes as written in the config."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.config import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("1m30s", 90.0),
        ("0s", 0.0),
        ("3", 3.0),
        (3, 3.0),
        (0.25, 0.25),
        (" 2s ", 2.0),
        ("7d", 604800.0),  # outbox.keep
        ("1d12h", 129600.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad", ["5x", "", "s", "1 s", "1.s", "-1s", -1, -0.5, True, None, [], float("nan"), "1w"]
)
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(bad)


def test_parse_duration_message_shows_examples() -> None:
    with pytest.raises(ValueError, match=r"invalid duration '5x' \(use e\.g\. 500ms, 2s, 5m, 7d\)"):
        parse_duration("5x")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64MiB", 64 * 1024**2),
        ("1MiB", 1024**2),
        ("512KiB", 512 * 1024),
        ("1GiB", 1024**3),
        ("100KB", 100_000),
        ("10MB", 10_000_000),
        ("123", 123),
        ("123B", 123),
        ("1.5MiB", 1_572_864),
        ("1.1KB", 1100),
        ("64mib", 64 * 1024**2),
        (123, 123),
        (1024.0, 1024),
        (0, 0),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["64M", "1k", "x", "", "-1", -5, "1.5B", 0.5, True, None, "1 0B"])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match=r"size"):
        parse_size(bad)


@given(st.integers(min_value=0, max_value=10**9))
def test_duration_milliseconds_round_trip(ms: int) -> None:
    assert parse_duration(f"{ms}ms") == pytest.approx(ms / 1000)


@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=59),
)
def test_duration_compound_round_trip(hours: int, minutes: int, seconds: int) -> None:
    text = f"{hours}h{minutes}m{seconds}s"
    assert parse_duration(text) == hours * 3600 + minutes * 60 + seconds


@given(
    st.integers(min_value=0, max_value=2**40),
    st.sampled_from(
        [("B", 1), ("KB", 1000), ("MB", 1000**2), ("KiB", 1024), ("MiB", 1024**2), ("GiB", 1024**3)]
    ),
)
def test_size_round_trip(count: int, unit: tuple[str, int]) -> None:
    suffix, factor = unit
    assert parse_size(f"{count}{suffix}") == count * factor
