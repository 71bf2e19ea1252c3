"""Time, injected: every time-dependent function takes a clock instead of reading time.

Tests use :class:`ManualClock`; production code uses :class:`SystemClock`.
Durations on the CLI and in policy files (``90s``, ``15m``, ``24h``, ``7d``)
are parsed by :func:`parse_duration`.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "format_duration", "parse_duration"]


class Clock(Protocol):
    """Anything that tells the current time as seconds since the epoch."""

    def now(self) -> float:
        """Current time in seconds since the epoch (UTC)."""
        ...


class SystemClock:
    """The machine's wall clock."""

    def now(self) -> float:
        """Current time in seconds since the epoch (UTC)."""
        return time.time()


class ManualClock:
    """A clock that only moves when told to (for tests and simulations)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        """The time this clock was set to."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self._now += seconds

    def set(self, when: float) -> None:
        """Set the clock to an absolute time."""
        self._now = float(when)


_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | int | float | timedelta) -> float:
    """Seconds in a duration given as ``timedelta``, a number of seconds, or text like ``15m``.

    Raises:
        ValueError: the duration is malformed, zero or negative.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or text like '15m'")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"invalid duration {value[:40]!r}: use a number with an optional unit "
                "s, m, h, d or w (e.g. '90s', '15m', '24h', '7d')"
            )
        seconds = float(int(match.group(1)) * _UNITS[match.group(2)])
    else:
        raise ValueError("a duration must be a number of seconds or text like '15m'")
    if not seconds > 0 or seconds != seconds:
        raise ValueError("a duration must be positive")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human rendering such as ``2h 5m`` or ``40s``."""
    seconds = round(seconds)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds}s")
    return " ".join(parts[:2])
