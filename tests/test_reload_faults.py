"""SIGHUP on a running `serve` (issue 17): a config too costly to use is refused while the old one serves, a storm
of SIGHUPs makes a reload or two, and SIGTERM stops serve within 5 s, during a reload's count too."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from prosody_lastlog import serve
from prosody_lastlog.cli import build_parser, parse_settings
from prosody_lastlog.daemon.lifecycle import Daemon
from prosody_lastlog.serve import _reload, _start_daemon
from tests.integration.servers import free_port

STOP_SECONDS = 5.0  # the bound from SIGTERM to exit

# The five lines of issue 17: one 4 MiB string stored 100,000 times passes every limit of the evaluation.
FIVE_LINES = 'local s = string.rep("x", 4 * 1024 * 1024)\npadding = {}\nfor i = 1, 100000 do\n  padding[i] = s\nend\n'
NESTED = "x = " + "{" * 300 + "}" * 300 + "\n"  # past the Lua parser's limit of 200 levels


def sample_config(data: Path) -> str:
    return f'data_path = "{data}"\nmodules_enabled = {{ "lastlog2" }}\nVirtualHost "example.com"\n'


class Serve:
    """A `serve` process in its own session, its output in files read while it runs."""

    def __init__(self, args: list[str], directory: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.out, self.err = directory / "serve.out", directory / "serve.err"
        command = [sys.executable, "-m", "prosody_lastlog", "serve", *args, "--listen", f"127.0.0.1:{self.port}"]
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)

    @property
    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert self.process.poll() is None, f"serve exited ({self.process.returncode}):\n{self.log}"
            assert time.monotonic() < deadline, f"{what}: not within {seconds} s; log:\n{self.log}"
            time.sleep(0.05)

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            return str(response.read().decode())

    def stopped_within(self, seconds: float) -> float:
        """SIGTERM; the seconds serve took to exit (it must exit within `seconds`, with status 0)."""
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(seconds) == 0, self.log
        return time.monotonic() - sent


@contextmanager
def serving(args: list[str], directory: Path) -> Iterator[Serve]:
    """Runs `serve` until the block ends; then its whole session is gone, whatever happened."""
    serve = Serve(args, directory)
    try:
        serve.wait_for(lambda: "serving " in serve.out.read_text(), "serving")
        yield serve
    finally:
        with suppress(ProcessLookupError):
            os.killpg(serve.process.pid, signal.SIGKILL)  # serve and anything it started
        serve.process.wait()


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (FIVE_LINES, "the config's option values are too large to export (over 16777216 bytes of strings"),
        (NESTED, "the config is nested too deeply"),
    ],
    ids=["five-lines", "nested"],
)
def test_a_config_too_costly_to_use_is_refused_and_the_old_one_serves(
    bad: str, reason: str, sample_tree: Path, tmp_path: Path
) -> None:
    config = tmp_path / "prosody.cfg.lua"
    config.write_text(sample_config(sample_tree))
    with serving(["--config", str(config)], tmp_path) as serve:
        config.write_text(bad)
        serve.process.send_signal(signal.SIGHUP)
        serve.wait_for(lambda: "reload refused" in serve.log, "reload refused")
        assert f"reload refused, the running configuration stays: {config}: {reason}" in serve.log
        assert 'prosody_active_users{host="example.com"' in serve.scrape()  # the old configuration's
        serve.stopped_within(STOP_SECONDS)
    assert "Traceback" not in serve.log


def test_a_storm_of_sighups_makes_a_reload_or_two_and_sigterm_wins(sample_tree: Path, tmp_path: Path) -> None:
    with serving(["--data-dir", str(sample_tree)], tmp_path) as serve:
        answered, failed, storming = 0, 0, True

        def scrape_meanwhile() -> None:
            nonlocal answered, failed
            while storming:
                try:
                    serve.scrape()
                    answered += 1
                except OSError:
                    failed += 1
                time.sleep(0.01)

        scraper = threading.Thread(target=scrape_meanwhile)
        scraper.start()
        try:
            for _ in range(100):  # in about a second
                serve.process.send_signal(signal.SIGHUP)
                time.sleep(0.01)
        finally:
            storming = False
            scraper.join()
        serve.stopped_within(STOP_SECONDS)
    assert 1 <= serve.log.count("reloaded") <= 3, serve.log
    assert failed <= (answered + failed) // 10, f"{failed} of {answered + failed} scrapes failed"


def test_sigterm_during_a_reloads_count_stops_serve_at_once(sample_tree: Path, tmp_path: Path) -> None:
    """The new configuration counts two SQL hosts whose server accepts connections and never answers: each would
    take the connect timeout (5 s) to fail."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:
        silent.settimeout(20)
        sql = '{{ driver = "MySQL", host = "127.0.0.1", port = {port}, database = "{db}", username = "prosody" }}'
        port = silent.getsockname()[1]
        config = tmp_path / "prosody.cfg.lua"
        config.write_text(sample_config(sample_tree))
        with serving(["--config", str(config)], tmp_path) as serve:
            config.write_text(
                'modules_enabled = { "lastlog2" }\nstorage = "sql"\n'
                f'VirtualHost "a.example"\nsql = {sql.format(port=port, db="a")}\n'
                f'VirtualHost "b.example"\nsql = {sql.format(port=port, db="b")}\n'
            )
            serve.process.send_signal(signal.SIGHUP)
            connection, _ = silent.accept()  # the new configuration counts
            with connection:
                serve.stopped_within(STOP_SECONDS)
    assert "stopping on signal 15 during a reload" in serve.log
    assert "reloaded" not in serve.log and "Traceback" not in serve.log


@pytest.mark.parametrize("failing", ["plan", "count"])
def test_an_unforeseen_failure_of_a_reload_keeps_the_running_configuration(
    failing: str, sample_tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def plan_fails(*args: object, **kwargs: object) -> None:
        raise MemoryError

    def count_fails(self: Daemon) -> None:
        raise RuntimeError("what went wrong, which may hold a user name")

    argv = ["serve", "--data-dir", str(sample_tree), "--listen", f"127.0.0.1:{free_port()}"]
    args = build_parser().parse_args(argv)
    running = _start_daemon(args)
    try:
        if failing == "plan":
            monkeypatch.setattr(serve, "plan_sources", plan_fails)
        else:
            monkeypatch.setattr(Daemon, "count", count_fails)
        caplog.set_level(logging.DEBUG, logger="prosody_lastlog")
        assert _reload(running, args, lambda: parse_settings(argv)) is running
        with urllib.request.urlopen(running.server.url, timeout=5) as response:
            assert response.status == 200
    finally:
        running.stop()
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    expected = {
        "plan": "reload refused, the running configuration stays: unexpected MemoryError (-v logs where)",
        "count": "the new configuration did not start (unexpected RuntimeError (-v logs where)); the running one stays",
    }
    assert [record.getMessage() for record in errors] == [expected[failing]]
    assert all(record.exc_info is None for record in errors)
    assert any(record.exc_info for record in caplog.records if record.levelno == logging.DEBUG)
