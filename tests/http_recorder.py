"""A loopback HTTP server for transport tests: records every POST/PUT and answers from a queue."""

from __future__ import annotations

import gzip
import threading
import urllib.parse
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    """One request as received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """What the server received, and what it answers next (`default_status` when nothing is queued)."""

    url: str = ""
    default_status: int = 204
    requests: list[Request] = field(default_factory=list)
    answers: deque[tuple[int, bytes, dict[str, str]]] = field(default_factory=deque)  # status, body, headers
    stall: bool = False  # each answer waits until the test ends
    released: threading.Event = field(default_factory=threading.Event)

    def lines(self, index: int = -1) -> bytes:
        """A request's body, gunzipped if it was sent compressed."""
        request = self.requests[index]
        return gzip.decompress(request.body) if request.headers.get("Content-Encoding") == "gzip" else request.body


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every handler thread


@contextmanager
def recording_server(default_status: int = 204) -> Iterator[Recorder]:
    """A server on a free 127.0.0.1 port for the duration of the block; always shut down, threads joined."""
    recorder = Recorder(default_status=default_status)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            parts = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(parts.query)
            recorder.requests.append(Request(self.command, parts.path, query, dict(self.headers.items()), body))
            if recorder.stall:
                recorder.released.wait(10)
            status, text, headers = recorder.answers.popleft() if recorder.answers else (default_status, b"", {})
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def do_PUT(self) -> None:
            self.do_POST()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield recorder
    finally:
        recorder.released.set()
        server.shutdown()
        server.server_close()
        thread.join()
