"""Range checks of numeric config values: one clear line naming the key, before anything runs."""

from __future__ import annotations

import math

from mllmft.errors import ConfigError


def check_number(
    key: str,
    value,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    """``value`` is a finite number (an integer if ``integer``) within [low, high]; ``low_open`` /
    ``high_open`` exclude the bound itself."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ConfigError(
            f"{key}={value!r}; expected {'an integer' if integer else 'a finite number'}"
            f"{_interval(low, high, low_open, high_open)}"
        )
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ConfigError(
            f"{key}={value!r}; expected {'an integer' if integer else 'a value'}"
            f"{_interval(low, high, low_open, high_open)}"
        )


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low}"
    if low is None:
        return f" {'<' if high_open else '<='} {high}"
    return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
