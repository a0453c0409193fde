"""NodeInfo over HTTP: the documents of nodeinfo.py for the hosts opted in, chosen by the request's Host header."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus

from exporters.http_transport import PLAIN_TEXT, Reply, Request
from exporters.nodeinfo import (
    DISCOVERY_MAX_AGE,
    DISCOVERY_PATH,
    DOCUMENT_MAX_AGE,
    DOCUMENT_PATHS,
    SCHEMA,
    PublicHost,
    discovery,
    host_name,
    nodeinfo,
    nodeinfo2,
)
from prosody_lastlog.core.counting import HostCounts

COUNTS_REUSED_SECONDS = 1.0  # a host's counts serve every request within this: a flood costs a count a second


class NodeInfoPages:
    """Answers the NodeInfo paths for the hosts opted in, chosen by the request's Host header; 404 for any other
    host. Documents are built from the counts as of the request (at most COUNTS_REUSED_SECONDS old), with an ETag
    (a request naming it gets 304) and a public Cache-Control. Called on the HTTP server's one thread."""

    def __init__(
        self,
        hosts: Mapping[str, PublicHost],
        counts: Callable[[str, float], HostCounts | None],
        version: Callable[[], str | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hosts = dict(hosts)  # by host_name
        self._counts = counts  # one host's as of a time, with NODEINFO_WINDOWS; None before it is counted
        self._version = version
        self._clock = clock
        self._counted: dict[str, tuple[float, HostCounts | None]] = {}  # host -> (when, its counts then)

    def answer(self, request: Request, path: str) -> Reply:
        """The reply to a GET of one of PATHS."""
        host = self._host(request.headers.get("host", ""))
        if host is None:
            return _not_found()
        if path == DISCOVERY_PATH:
            return _json(request, discovery(host), "application/json", DISCOVERY_MAX_AGE)
        version = self._version()
        counts = self._counts_of(host.name)
        if version is None or counts is None:
            why = "Prosody's version is not known" if version is None else "not counted yet"
            headers = [("Content-Type", PLAIN_TEXT), ("Retry-After", "60"), ("Cache-Control", "no-store")]
            return HTTPStatus.SERVICE_UNAVAILABLE, headers, f"{why}: try again later\n".encode()
        schema = DOCUMENT_PATHS.get(path)
        if schema is not None:
            content_type = f'application/json; profile="{SCHEMA}{schema}#"'
            return _json(request, nodeinfo(host, counts, version, schema), content_type, DOCUMENT_MAX_AGE)
        return _json(request, nodeinfo2(host, counts, version), "application/json", DOCUMENT_MAX_AGE)

    def _host(self, authority: str) -> PublicHost | None:
        """The opted-in host a Host header names: any port, a trailing dot, any case, its A-label or its Unicode name
        (sent as UTF-8, which the transport reads as Latin-1, or as Latin-1)."""
        name, _, port = authority.rpartition(":") if authority.count(":") == 1 else (authority, "", "")
        if port and not port.isdigit():
            return None
        with contextlib.suppress(UnicodeError):
            name = name.encode("latin-1").decode("utf-8")
        found = host_name(name)
        return None if found is None else self._hosts.get(found)

    def _counts_of(self, host: str) -> HostCounts | None:
        now = self._clock()
        taken, counts = self._counted.get(host, (-COUNTS_REUSED_SECONDS, None))
        if not 0 <= now - taken < COUNTS_REUSED_SECONDS:
            counts = self._counts(host, now)
            self._counted[host] = (now, counts)
        return counts


def _json(request: Request, document: Mapping[str, object], content_type: str, max_age: int) -> Reply:
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    tag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = [
        ("Content-Type", content_type),
        ("Cache-Control", f"public, max-age={max_age}"),
        ("ETag", tag),
        ("Vary", "Host"),
        ("Access-Control-Allow-Origin", "*"),  # directories' web pages fetch it from the browser
    ]
    if _matches(request.headers.get("if-none-match"), tag):
        return HTTPStatus.NOT_MODIFIED, headers[1:], b""
    return HTTPStatus.OK, headers, body


def _matches(if_none_match: str | None, tag: str) -> bool:
    """Whether an If-None-Match header names this entity tag (weak comparison, as RFC 9110 asks for GET)."""
    if if_none_match is None:
        return False
    tags = {part.strip().removeprefix("W/") for part in if_none_match.split(",")}
    return "*" in tags or tag in tags


def _not_found() -> Reply:
    return HTTPStatus.NOT_FOUND, [("Content-Type", PLAIN_TEXT)], b"not found\n"
