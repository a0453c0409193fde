"""Connections give up on a database server that accepts connections but never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from prosody_lastlog.prosody.sql_settings import parse_sql_url
from prosody_lastlog.sources.database import CONNECT_TIMEOUT_SECONDS, connect
from prosody_lastlog.sources.results import DatabaseError


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port whose server accepts connections and then says nothing, as a frozen database does."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for connection in [*accepted, listener]:
            connection.close()


def test_a_silent_mariadb_fails_the_connection_within_the_timeout(silent_server: int) -> None:
    settings = parse_sql_url(f"mysql://prosody:secret@127.0.0.1:{silent_server}/prosody")
    started = time.monotonic()
    with pytest.raises(DatabaseError, match=f"cannot connect to .*127.0.0.1:{silent_server}") as raised:
        connect(settings)
    assert time.monotonic() - started < 3 * CONNECT_TIMEOUT_SECONDS
    assert "secret" not in str(raised.value)
