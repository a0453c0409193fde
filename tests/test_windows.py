"""Window parsing."""

from __future__ import annotations

import pytest

from prosody_lastlog.core.windows import DEFAULT_WINDOWS, Window, parse_window, parse_windows


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("1d", Window(86400, "1d")),
        ("90d", Window(7776000, "90d")),
        ("1h", Window(3600, "1h")),
        ("2w", Window(1209600, "2w")),
        ("30m", Window(1800, "30m")),
        ("45s", Window(45, "45s")),
        ("2y", Window(2 * 365 * 86400, "2y")),
        (" 7D ", Window(604800, "7d")),
    ],
)
def test_parses_units(text: str, window: Window) -> None:
    assert parse_window(text) == window


@pytest.mark.parametrize("text", ["", "d", "0d", "-1d", "1.5d", "1x", "1 d", "1dd"])
def test_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="invalid window"):
        parse_window(text)


def test_default_and_dedup_and_order() -> None:
    assert parse_windows([]) == DEFAULT_WINDOWS
    assert [w.label for w in parse_windows(["30d", "24h", "1d", "1h"])] == ["1h", "24h", "30d"]
