"""InfluxDB line protocol: a pure formatter, and the transports that carry its lines.

One line per point: measurement `<prefix>_<family>`, tags `host` and (windowed families only) `window`, sorted by
key, one integer field `value=<n>i`, and the point's timestamp. Escaping follows the line protocol reference:
commas and spaces in measurements, commas, equals signs and spaces in tag keys, tag values and field keys, each
with a backslash. Three characters cannot be written and are replaced by a space: newline and carriage return
(a line ends there) and the backslash itself (InfluxDB 1.x and Telegraf have no escape for it, so a backslash at
the end of a name, or before an escaped character, would change how the line parses). An empty tag value is not
allowed, so the tag is left out, as InfluxDB does for a missing tag. Text is UTF-8; what UTF-8 cannot encode (a
lone surrogate) becomes `?`.

Transports: appending to a file (for Telegraf's `inputs.tail`) or writing to stdout, with nanosecond timestamps
(line protocol's default, which Telegraf's parser assumes); or HTTP writes to InfluxDB 1.x (`/write`) or the 2.x
API (`/api/v2/write`, also served by InfluxDB 1.8+ and 3.x) with `precision=s`. A batch the server refuses for its
content (400, including "partial write", 413, 422) is logged and dropped, since sending it again cannot succeed;
every other failure raises ExportError and the runner retries it with backoff, the points staying queued.
"""

from __future__ import annotations

import base64
import gzip as gzip_codec
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

from exporters.points import Point
from exporters.runner import ExportError, PushExporter, RejectedBatchError
from exporters.secrets import secret_setting
from prosody_lastlog import __version__

NAME = "influxdb"
PRECISIONS = {"s": 1, "ns": 1_000_000_000}  # timestamp unit -> multiplier of the points' Unix seconds
REJECTED_STATUSES = frozenset({400, 413, 422})  # the batch itself is refused: dropped, never sent again
ERROR_TEXT_CHARS = 200  # of the server's answer, in an error message

_PREFIX = re.compile(r"[A-Za-z0-9_.-]*")
_UNWRITABLE = str.maketrans({"\n": " ", "\r": " ", "\\": " "})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})


def escape_measurement(name: str) -> str:
    """A measurement name as line protocol writes it."""
    return name.translate(_UNWRITABLE).translate(_MEASUREMENT_ESCAPES)


def escape_key(text: str) -> str:
    """A tag key, tag value or field key as line protocol writes it."""
    return text.translate(_UNWRITABLE).translate(_KEY_ESCAPES)


def check_prefix(prefix: str) -> None:
    """Raises ValueError unless `prefix` is letters, digits, `_`, `.` and `-` (or empty: bare family names)."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError("prefix: expected letters, digits, '_', '.' or '-' (or empty for bare names)")


def format_line_protocol(points: Sequence[Point], *, prefix: str = "prosody", precision: str = "s") -> bytes:
    """The points as line protocol, one `\\n`-terminated line each, timestamps in `precision` ("s" or "ns")."""
    check_prefix(prefix)
    scale = PRECISIONS[precision]
    lines = []
    for point in points:
        tags = {"host": point.host, point.label: point.window or ""}
        tag_set = "".join(
            f",{escape_key(key)}={escape_key(value)}" for key, value in sorted(tags.items()) if value != ""
        )
        measurement = escape_measurement(f"{prefix}_{point.name}" if prefix else point.name)
        lines.append(f"{measurement}{tag_set} value={point.value}i {point.timestamp * scale}\n")
    return "".join(lines).encode("utf-8", errors="replace")


# --- transports ----------------------------------------------------------------------------------------------------


def append_to_file(path: Path, body: bytes) -> None:
    """Appends the lines with one write of the open-append-close file, so a reader never sees half a batch's line.

    Opening it again for each batch lets logrotate move the file away (Telegraf's tail follows the name).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as exc:
        raise ExportError(f"{path}: {exc.strerror}") from None


def write_to_stdout(body: bytes) -> None:
    """Writes the lines to standard output and flushes them."""
    sys.stdout.flush()
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would resend the credentials elsewhere and turn the POST into a GET: fail instead."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def post_lines(url: str, body: bytes, *, headers: Mapping[str, str], compress: bool, timeout: float) -> None:
    """POSTs line protocol to an InfluxDB write URL; 2xx is success.

    Raises RejectedBatchError for REJECTED_STATUSES and ExportError for anything else, naming the URL (which never
    holds credentials: they travel in headers) and the start of the server's answer.
    """
    data = gzip_codec.compress(body) if compress else body
    request_headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "User-Agent": f"prosody-lastlog/{__version__}",
        **({"Content-Encoding": "gzip"} if compress else {}),
        **headers,
    }
    request = urllib.request.Request(url, data=data, headers=request_headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            message = f"{url} answered {exc.code}: {_error_text(exc)}"
        if exc.code in REJECTED_STATUSES:
            raise RejectedBatchError(message) from None
        raise ExportError(message) from None
    except urllib.error.URLError as exc:
        raise ExportError(f"{url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ExportError(f"{url}: {exc or type(exc).__name__}") from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(4 * ERROR_TEXT_CHARS).decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException):
        text = ""
    return " ".join(text.split())[:ERROR_TEXT_CHARS] or exc.reason


def write_url(url: str, path: str, params: Mapping[str, str]) -> str:
    """The write endpoint under the base `url` (which may have a path, e.g. behind a reverse proxy)."""
    query = urllib.parse.urlencode({key: value for key, value in params.items() if value})
    return f"{url.rstrip('/')}{path}?{query}"


# --- the exporter --------------------------------------------------------------------------------------------------


def create(
    *,
    url: str = "http://127.0.0.1:8086",
    api: str = "v1",
    database: str = "prosody",
    retention_policy: str = "",
    username: str = "",
    password: str = "",
    password_file: str = "",
    org: str = "",
    bucket: str = "",
    token: str = "",
    token_file: str = "",
    file: str = "",
    gzip: bool = False,
    prefix: str = "prosody",
    interval: float = 60,
    max_points: int = 100_000,
    timeout: float = 10.0,
) -> PushExporter:
    """The `[exporters.influxdb]` exporter: to `file` ("-": stdout) if set, else HTTP writes to `url`.

    api "v1": POST /write?db=&rp=&precision=s, `username`/`password` as HTTP basic auth. api "v2": POST
    /api/v2/write?org=&bucket=&precision=s with `Authorization: Token <token>` (InfluxDB 1.8+: bucket
    "database/retention-policy", token "username:password"). `password_file`/`token_file`: read the secret from
    the first line of a file instead. Raises ValueError naming the first bad setting.
    """
    texts = {"url": url, "api": api, "database": database, "retention_policy": retention_policy}
    texts |= {"username": username, "password": password, "password_file": password_file, "org": org}
    texts |= {"bucket": bucket, "token": token, "token_file": token_file, "file": file}
    for setting, value in texts.items():
        if not isinstance(value, str):
            raise ValueError(f"{setting}: expected a string")
    if api not in {"v1", "v2"}:
        raise ValueError(f"api: expected v1 or v2, not {api!r}")
    if not isinstance(gzip, bool):
        raise ValueError("gzip: expected true or false")
    check_prefix(prefix)
    _check_positive("interval", interval)
    _check_positive("timeout", timeout)
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise ValueError("max_points: expected a positive whole number")

    deliver: Callable[[bytes], None]
    if file:
        precision = "ns"
        deliver = write_to_stdout if file == "-" else partial(append_to_file, _file_path(file))
    else:
        precision = "s"
        target, headers = _http_target(
            url=url,
            api=api,
            database=database,
            retention_policy=retention_policy,
            username=username,
            password=secret_setting("password", password, password_file),
            org=org,
            bucket=bucket,
            token=secret_setting("token", token, token_file),
        )
        deliver = partial(post_lines, target, headers=headers, compress=gzip, timeout=float(timeout))

    def send(points: Sequence[Point]) -> None:
        deliver(format_line_protocol(points, prefix=prefix, precision=precision))

    return PushExporter(NAME, send, interval=float(interval), max_points=max_points)


def _check_positive(setting: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{setting}: expected a positive number of seconds")


def _file_path(file: str) -> Path:
    path = Path(file)
    if not path.parent.is_dir():
        raise ValueError(f"file: the directory {str(path.parent)!r} does not exist")
    return path


def _http_target(
    *,
    url: str,
    api: str,
    database: str,
    retention_policy: str,
    username: str,
    password: str,
    org: str,
    bucket: str,
    token: str,
) -> tuple[str, dict[str, str]]:
    """The write URL and the authentication header for the chosen API; ValueError for settings that do not fit."""
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ValueError("url: not a valid URL") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("url: credentials do not belong in the URL; use username/password or token (or *_file)")
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"url: expected the server's base URL, http(s)://host:port[/path], not {url!r}")
    if api == "v1":
        if token:
            raise ValueError("token: api v1 authenticates with username and password")
        if not database:
            raise ValueError("database: required with api v1")
        if bool(username) != bool(password):
            raise ValueError("username, password: set both or neither")
        auth = base64.b64encode(f"{username}:{password}".encode()).decode()
        headers = {"Authorization": f"Basic {auth}"} if username else {}
        return write_url(url, "/write", {"db": database, "rp": retention_policy, "precision": "s"}), headers
    if username or password:
        raise ValueError('username, password: api v2 authenticates with a token (InfluxDB 1.8+: "user:password")')
    if not org or not bucket:
        raise ValueError("org, bucket: both are required with api v2 (InfluxDB 1.8+ ignores org: any value)")
    if not token.isprintable():
        raise ValueError("token: contains control characters")  # never echoed: it is a secret
    headers = {"Authorization": f"Token {token}"} if token else {}
    return write_url(url, "/api/v2/write", {"org": org, "bucket": bucket, "precision": "s"}), headers
