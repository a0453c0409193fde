"""Prosody's datamanager name encoding, checked against the examples Prosody itself produces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prosody_lastlog.prosody.pathnames import decode_name, encode_name, encode_store


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("example.com", "example%2ecom"),
        ("xn--mnchen-3ya.example", "xn%2d%2dmnchen%2d3ya%2eexample"),
        ("münchen.example", "m%c3%bcnchen%2eexample"),
        ("bob.smith@x y", "bob%2esmith%40x%20y"),
        ("john_doe+x%y", "john%5fdoe%2bx%25y"),
        ("Ünïcode", "%c3%9cn%c3%afcode"),
    ],
)
def test_encode_and_decode_match_prosody(name: str, encoded: str) -> None:
    assert encode_name(name) == encoded
    assert decode_name(encoded) == name


def test_store_names_keep_underscores() -> None:
    assert encode_store("account_activity") == "account_activity"
    assert encode_store("last.log") == "last%2elog"


def test_decode_accepts_uppercase_hex() -> None:
    assert decode_name("example%2Ecom") == "example.com"


@given(st.text())
def test_round_trip(name: str) -> None:
    name = name.encode("utf-8", "replace").decode("utf-8")
    assert decode_name(encode_name(name)) == name.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


@pytest.mark.parametrize("name", ["_global", "a.b", "%ff", "%c3", "%zz", "caf\u00e9", "x%2"])
def test_names_prosody_cannot_write_decode_to_none(name: str) -> None:
    assert decode_name(name) is None
