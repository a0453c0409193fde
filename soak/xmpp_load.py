"""XMPP load: several slixmpp clients log in to the real Prosody, stay a while, and log out or drop the connection."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import slixmpp

LOGIN_SECONDS = 10.0  # bound on connecting, authenticating and binding
ONLINE_SECONDS = (0.5, 6.0)
OFFLINE_SECONDS = (0.2, 3.0)
DROP_SHARE = 0.25  # sessions that end with a cut connection instead of a stream close


@dataclass
class XmppStats:
    """What the clients did."""

    logins: int = 0
    logouts: int = 0  # clean stream closes
    drops: int = 0  # connections cut without a close
    failures: int = 0  # logins that did not complete


class _Client(slixmpp.ClientXMPP):
    """A client for Prosody without TLS: plaintext stream, SASL PLAIN."""

    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password, plugin_config={"feature_mechanisms": {"unencrypted_plain": True}})
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.enable_plaintext = True
        self.started: asyncio.Event = asyncio.Event()
        self.gone: asyncio.Event = asyncio.Event()
        self.add_event_handler("session_start", self._session_start)
        self.add_event_handler("disconnected", lambda _: self.gone.set())
        self.add_event_handler("failed_auth", lambda _: self.gone.set())

    async def _session_start(self, _: object) -> None:
        self.send_presence()
        self.started.set()


class XmppLoad:
    """Runs one asyncio loop on a thread with one session loop per account until `stop()`."""

    def __init__(self, port: int, accounts: Sequence[tuple[str, str]], *, seed: int) -> None:
        self.port = port
        self.accounts = list(accounts)  # (jid, password)
        self.stats = XmppStats()
        self._random = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="soak-xmpp", daemon=True)
        logging.getLogger("slixmpp").setLevel(logging.CRITICAL)  # expected drops would be logged as errors

    def start(self) -> None:
        """Starts the clients."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Logs every client out cleanly and ends the loop."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the XMPP clients did not stop")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(_quiet_about_slixmpp_filters)
        try:
            self._loop.run_until_complete(self._main())
            # slixmpp leaves a filter task per closed stream; end them while the loop still runs.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            gc.collect()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _main(self) -> None:
        await asyncio.gather(*(self._sessions(jid, password) for jid, password in self.accounts))

    async def _pause(self, bounds: tuple[float, float]) -> bool:
        """Sleeps a random time within `bounds`; False when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self._random.uniform(*bounds))
        return not self._stopping.is_set()

    async def _sessions(self, jid: str, password: str) -> None:
        while await self._pause(OFFLINE_SECONDS):
            client = _Client(jid, password)
            try:
                client.connect("127.0.0.1", self.port)
                await asyncio.wait_for(client.started.wait(), LOGIN_SECONDS)
            except (TimeoutError, OSError):
                self.stats.failures += 1
                client.abort()
                continue
            self.stats.logins += 1
            await self._pause(ONLINE_SECONDS)
            if self._random.random() < DROP_SHARE and not self._stopping.is_set():
                client.abort()
                self.stats.drops += 1
            else:
                await client.disconnect(wait=2.0)
                self.stats.logouts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.gone.wait(), LOGIN_SECONDS)


def _quiet_about_slixmpp_filters(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """slixmpp leaves each closed stream's filter task pending: not worth a message; anything else is."""
    if str(context.get("message", "")).startswith("Task was destroyed but it is pending"):
        return
    loop.default_exception_handler(context)
