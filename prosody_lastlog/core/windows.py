"""Activity windows such as `1d`, `7d`, `30d`, `1h` or `90d`."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_WINDOW = re.compile(r"(\d+)([smhdw])")


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """A window of `seconds`, shown as `label`; a user is active in it if now - last_active < seconds."""

    seconds: int
    label: str


DEFAULT_WINDOWS = (Window(86400, "1d"), Window(7 * 86400, "7d"), Window(30 * 86400, "30d"))


def parse_window(text: str) -> Window:
    """Parses `<number><unit>` with unit s, m, h, d or w; raises ValueError on anything else."""
    match = _WINDOW.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"invalid window {text!r}: expected a positive number and a unit s, m, h, d or w (e.g. 1d)")
    return Window(int(match.group(1)) * _UNITS[match.group(2)], match.group(1) + match.group(2))


def parse_windows(texts: list[str]) -> tuple[Window, ...]:
    """Parses, de-duplicates (by length) and sorts windows; no texts means the default 1d, 7d, 30d."""
    if not texts:
        return DEFAULT_WINDOWS
    by_seconds: dict[int, Window] = {}
    for text in texts:
        window = parse_window(text)
        by_seconds.setdefault(window.seconds, window)
    return tuple(sorted(by_seconds.values()))
