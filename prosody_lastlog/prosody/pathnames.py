"""Prosody's file store: where it is by default, and its name encoding (util.datamanager `encode`,
`store_encode`, `decode`)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote_to_bytes

DEFAULT_DATA_PATH = Path("/var/lib/prosody")  # data_path unset: Debian's CFG_DATADIR (/usr/bin/prosody)

_NOT_ALNUM = re.compile(rb"[^A-Za-z0-9]")
_NOT_STORE_SAFE = re.compile(rb"[^A-Za-z0-9_]")
_ENCODED = re.compile(r"(?:[A-Za-z0-9]|%[0-9A-Fa-f]{2})*")


def _percent(match: re.Match[bytes]) -> bytes:
    return b"%%%02x" % match.group()[0]


def encode_name(name: str) -> str:
    """Encodes a host or user name: every byte outside [A-Za-z0-9] becomes %xx (lowercase hex)."""
    return _NOT_ALNUM.sub(_percent, name.encode("utf-8")).decode("ascii")


def encode_store(store: str) -> str:
    """Encodes a store name: like `encode_name`, but `_` is kept."""
    return _NOT_STORE_SAFE.sub(_percent, store.encode("utf-8")).decode("ascii")


def decode_name(encoded: str) -> str | None:
    """Decodes a path part back to the host, user or store name; None if Prosody could not have written it.

    Prosody leaves only ASCII letters and digits bare and writes everything else as %xx; the bytes must be
    UTF-8. Names arrive from os.scandir, where undecodable bytes are surrogate escapes.
    """
    if encoded.isascii() and encoded.isalnum():  # the common case, and faster than the pattern
        return encoded
    if not _ENCODED.fullmatch(encoded):
        return None
    try:
        return unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError:
        return None
