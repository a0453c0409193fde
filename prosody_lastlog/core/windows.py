"""Activity windows such as `1d`, `7d`, `30d`, `1h` or `90d`; inactive windows (`90d`, `1y`) are told alike."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_WINDOW = re.compile(r"(\d+)([smhdwy])")


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """A window of `seconds`, shown as `label`; a user is active in it if now - last_active < seconds."""

    seconds: int
    label: str


DEFAULT_WINDOWS = (Window(86400, "1d"), Window(7 * 86400, "7d"), Window(30 * 86400, "30d"))
# The ages for the inactive-account counts: an account is inactive for an age if its last activity (else its
# registration) is at least that long ago.
DEFAULT_AGES = (Window(90 * 86400, "90d"), Window(180 * 86400, "180d"), Window(365 * 86400, "365d"))


def parse_window(text: str) -> Window:
    """Parses `<number><unit>` with unit s, m, h, d, w or y (365 days); raises ValueError on anything else."""
    match = _WINDOW.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"invalid window {text!r}: expected a positive number and a unit s, m, h, d, w or y (e.g. 1d)")
    return Window(int(match.group(1)) * _UNITS[match.group(2)], match.group(1) + match.group(2))


def parse_windows(texts: list[str], default: tuple[Window, ...] = DEFAULT_WINDOWS) -> tuple[Window, ...]:
    """Parses, de-duplicates (by length) and sorts windows; no texts means `default` (1d, 7d, 30d)."""
    if not texts:
        return default
    by_seconds: dict[int, Window] = {}
    for text in texts:
        window = parse_window(text)
        by_seconds.setdefault(window.seconds, window)
    return tuple(sorted(by_seconds.values()))
