"""A stoppable thread that calls a function every interval, with random jitter, until stopped."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicTimer:
    """Calls `action` every `interval` seconds plus up to `jitter` seconds; `stop()` returns promptly."""

    def __init__(
        self,
        action: Callable[[], None],
        *,
        interval: float,
        jitter: float = 0.0,
        name: str = "prosody-lastlog-timer",
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._action = action
        self._interval = interval
        self._jitter = jitter
        self._rng = rng
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Starts the thread; the first call comes one interval from now."""
        self._thread.start()

    def stop(self) -> None:
        """Stops the thread and waits for it (a running action finishes first)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval + self._jitter * self._rng()):
            try:
                self._action()
            except Exception:  # a failed round must not end the timer; the next one may work
                log.exception("periodic refresh failed")
