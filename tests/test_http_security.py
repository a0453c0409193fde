"""serve over HTTPS and behind basic auth, as Prometheus' `tls_config` and `basic_auth` scrape them."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from prosody_lastlog.daemon import Daemon, ServeOptions
from prosody_lastlog.discovery import SourceOptions, plan_sources
from prosody_lastlog.http_server import load_credentials, load_tls
from prosody_lastlog.windows import DEFAULT_WINDOWS


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def secured(sample_tree: Path, tmp_path: Path) -> Iterator[tuple[Daemon, ssl.SSLContext]]:
    cert, key = self_signed(tmp_path)
    secrets = tmp_path / "users"
    secrets.write_text("# scrapers\nprometheus:s3cr3t pass\n")
    options = ServeOptions(port=0, tls=load_tls(cert, key), credentials=load_credentials(secrets))
    daemon = Daemon(
        plan_sources(SourceOptions(data_dir=sample_tree), environ={}), windows=DEFAULT_WINDOWS, options=options
    )
    daemon.start()
    yield daemon, ssl.create_default_context(cafile=str(cert))
    daemon.stop()


def fetch(url: str, context: ssl.SSLContext, auth: str | None = None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5, context=context) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_https_with_basic_auth(secured: tuple[Daemon, ssl.SSLContext]) -> None:
    daemon, context = secured
    assert daemon.server.url.startswith("https://127.0.0.1:")
    assert fetch(daemon.server.url, context) == 401
    assert fetch(daemon.server.url, context, "prometheus:wrong") == 401
    assert fetch(daemon.server.url, context, "nobody:s3cr3t pass") == 401
    assert fetch(daemon.server.url, context, "prometheus:s3cr3t pass") == 200


def test_plain_http_to_the_tls_port_gets_nothing(secured: tuple[Daemon, ssl.SSLContext]) -> None:
    daemon, _ = secured
    with pytest.raises(OSError):
        urllib.request.urlopen(daemon.server.url.replace("https://", "http://"), timeout=5)


@pytest.mark.parametrize("content", ["", "# only a comment\n", "no-colon\n", ":nouser\n", "user:\n"])
def test_bad_credential_files_are_refused_with_file_and_line(content: str, tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(content)
    with pytest.raises(ValueError, match=str(path)):
        load_credentials(path)


def test_a_silent_client_does_not_block_others(secured: tuple[Daemon, ssl.SSLContext]) -> None:
    daemon, context = secured
    host, port = daemon.server.url.removeprefix("https://").split("/")[0].split(":")
    with socket.create_connection((host, int(port))):  # connects, never starts TLS
        assert fetch(daemon.server.url, context, "prometheus:s3cr3t pass") == 200
