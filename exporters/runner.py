"""Runs one push target on its own thread, so a slow or dead target never holds up counting, scrapes or others.

Built first, started after: the constructor only checks and stores, start() starts the thread. publish() only
queues points. The thread sends them in batches through the exporter's `send`; a failed send is retried after an
exponential backoff with jitter (1 s, 2 s, 4 s, ... up to 5 minutes), the points staying queued (they carry their
own timestamps, so nothing is lost across an outage shorter than the queue holds). Past `max_points` the oldest
are dropped and counted. Errors are logged once per state change, not per attempt.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exporters.points import Point, aligned, points_of
from prosody_lastlog.core.counting import Snapshot

log = logging.getLogger(__name__)


class ExportError(Exception):
    """A target refused or could not be reached; the message names the target (never a credential)."""


class RejectedBatchError(ExportError):
    """The target refused the batch itself (malformed, too large): sending it again cannot help, so it is dropped."""


@dataclass(frozen=True)
class ExportStatus:
    """How a push target is doing, for the daemon's own metrics."""

    errors_total: int  # failed send attempts since start
    queue_length: int  # points waiting to be sent
    dropped_total: int  # points dropped: the queue was full (oldest first), or the target refused their batch


class PushExporter:
    """One push target: publish() never blocks; the thread sends, retries and drops as described above."""

    def __init__(
        self,
        name: str,
        send: Callable[[Sequence[Point]], None],
        *,
        interval: float = 60.0,
        max_points: int = 100_000,
        batch_points: int = 5_000,
        latest_only: bool = False,
        retry_min: float = 1.0,
        retry_max: float = 300.0,
    ) -> None:
        if interval <= 0 or max_points < 1 or batch_points < 1 or not 0 < retry_min <= retry_max:
            raise ValueError("interval, max_points, batch_points and retry delays must be positive")
        self.name = name
        self.interval = interval
        self._send = send
        self._max_points = max_points
        self._batch_points = batch_points
        self._latest_only = latest_only
        self._retry_min, self._retry_max = retry_min, retry_max
        self._queue: deque[Point] = deque()
        self._condition = threading.Condition()
        self._sending = 0  # points taken for the send in progress (still counted as queued)
        self._errors = self._dropped = 0
        self._failing = False
        self._closing = False
        self._stopping = threading.Event()  # set by close(): ends a backoff wait
        self._thread = threading.Thread(target=self._run, name=f"prosody-lastlog-{name}", daemon=True)

    def start(self) -> None:
        """Starts the sending thread (once)."""
        self._thread.start()

    def publish(self, snapshot: Snapshot) -> None:
        """Queues the snapshot's points, stamped with the start of their interval."""
        points = points_of(snapshot, timestamp=aligned(snapshot.taken, self.interval))
        with self._condition:
            if self._latest_only:
                self._queue.clear()
            self._queue.extend(points)
            overflow = len(self._queue) - self._max_points
            for _ in range(max(0, overflow)):
                self._queue.popleft()
            if overflow > 0:
                self._dropped += overflow
                log.warning("%s: queue full, dropped the %d oldest point(s)", self.name, overflow)
            self._condition.notify_all()

    def flush(self, timeout: float) -> bool:
        """Waits until every queued point is sent; False if that did not happen within `timeout` seconds."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._queue and not self._sending, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stops the thread after one last attempt to send what is queued (bounded by `timeout`); never started,
        there is nothing to stop."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._queue:
            log.warning("%s: stopped with %d point(s) unsent", self.name, len(self._queue))

    def status(self) -> ExportStatus:
        """Errors, queue length and drops so far."""
        with self._condition:
            return ExportStatus(self._errors, len(self._queue) + self._sending, self._dropped)

    def _run(self) -> None:
        delay = self._retry_min
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                batch = self._take()
            try:
                self._send(batch)
            except RejectedBatchError as exc:
                self._rejected(batch, exc)
                continue
            except Exception as exc:  # a plugin's failure must not kill the thread
                self._failed(batch, exc)
                if self._stopping.wait(delay * random.uniform(0.5, 1.0)):  # only close() cuts the backoff short
                    return
                delay = min(delay * 2, self._retry_max)
                continue
            self._sent()
            delay = self._retry_min

    def _take(self) -> list[Point]:
        """The next batch; with latest_only, the whole (single) snapshot."""
        count = len(self._queue) if self._latest_only else min(self._batch_points, len(self._queue))
        batch = [self._queue.popleft() for _ in range(count)]
        self._sending = len(batch)
        return batch

    def _failed(self, batch: list[Point], exc: Exception) -> None:
        with self._condition:
            self._errors += 1
            self._sending = 0
            if not self._latest_only or not self._queue:  # a newer snapshot replaces the failed one
                self._queue.extendleft(reversed(batch))
                overflow = len(self._queue) - self._max_points
                for _ in range(max(0, overflow)):
                    self._queue.popleft()
                self._dropped += max(0, overflow)
            self._condition.notify_all()
        if not self._failing:
            reason = str(exc) if isinstance(exc, ExportError | OSError) else f"unexpected {type(exc).__name__}"
            log.error("%s: push failed, retrying with backoff: %s", self.name, reason)
            log.debug("%s: push failure", self.name, exc_info=not isinstance(exc, ExportError))
        self._failing = True

    def _rejected(self, batch: list[Point], exc: RejectedBatchError) -> None:
        with self._condition:
            self._errors += 1
            self._dropped += len(batch)
            self._sending = 0
            self._condition.notify_all()
        log.error("%s: the target refused a batch of %d point(s), dropped: %s", self.name, len(batch), exc)

    def _sent(self) -> None:
        with self._condition:
            self._sending = 0
            self._condition.notify_all()
        if self._failing:
            log.warning("%s: push works again", self.name)
            self._failing = False
