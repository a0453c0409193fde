"""The list `prosody-lastlog inactive` prints: the one output that names accounts, and only on that command's stdout.

Three formats: `names` (one JID a line), `json` (the JIDs with the times they were judged by, and per host what
could not be listed) and `prosodyctl` (commented lines an admin reviews, then runs: Prosody's own delete command,
in the syntax of the Prosody that wrote the data). Nothing here deletes anything.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prosody_lastlog.core.windows import Window

if TYPE_CHECKING:  # the command line loads this module for FORMATS: no more than that at start-up
    from prosody_lastlog.core.inactive import InactiveList

FORMATS = ("names", "json", "prosodyctl")
# The delete command of each Prosody: 0.12's prosodyctl deletes from the data itself; 13's asks the running server
# (its admin socket) through the shell, whose `user:delete` is what 13's `prosodyctl deluser` calls too.
DELETE_012 = "prosodyctl deluser"
DELETE_13 = "prosodyctl shell user delete"


@dataclass(frozen=True)
class ListRequest:
    """What was asked: as of `now`, inactive for `older_than`, never-used accounts for `never_used_for`."""

    now: int
    older_than: Window
    never_used_for: Window | None = None


def jid(host: str, user: str) -> str:
    """The account's bare JID."""
    return f"{user}@{host}"


def unprintable(lists: Sequence[InactiveList]) -> int:
    """How many listed accounts have a JID a line-based format cannot show as is (control or separator
    characters); `names` and `prosodyctl` leave them out, `json` escapes them."""
    return sum(not jid(hosts.host, a.user).isprintable() for hosts in lists for a in hosts.accounts)


def render_names(lists: Sequence[InactiveList]) -> str:
    """One JID a line, host by host, users sorted."""
    return "".join(f"{name}\n" for name in _printable_jids(lists))


def render_prosodyctl(lists: Sequence[InactiveList], request: ListRequest, thirteen_hosts: Collection[str]) -> str:
    """Commented lines to review and then run: Prosody's delete command, one account a line, each JID quoted for
    the shell (a name may hold `$` or `;`)."""
    lines = [
        f"# prosody-lastlog inactive, as of {_utc(request.now)}: accounts inactive for {_rule(request)}.",
        "# Nothing has been deleted. Review these lines, then run them (e.g. with sh) as the user prosodyctl runs as.",
    ]
    for hosts in lists:
        names = _printable_jids([hosts])
        if not names:
            continue
        command = DELETE_13 if hosts.host in thirteen_hosts else DELETE_012
        note = " (Prosody 13: the server must be running)" if hosts.host in thirteen_hosts else ""
        lines.append(f"# {hosts.host}: {len(names)} account(s){note}")
        lines.extend(f"{command} {shlex.quote(name)}" for name in names)
    return "\n".join(lines) + "\n"


def to_json_document(lists: Sequence[InactiveList], request: ListRequest) -> dict[str, object]:
    """The JSON interface: its documented keys never change, new keys may be added. Times are Unix seconds."""
    never_used_for = request.never_used_for or request.older_than
    return {
        "now": request.now,
        "older_than": {request.older_than.label: request.older_than.seconds},
        "never_used_for": {never_used_for.label: never_used_for.seconds},
        "hosts": {
            hosts.host: {
                "listed": len(hosts.accounts),
                "never_active": sum(a.last_active is None for a in hosts.accounts),
                "unknown": hosts.unknown,
                "left_out": hosts.left_out,
            }
            for hosts in lists
        },
        "accounts": [
            {
                "jid": jid(hosts.host, a.user),
                "host": hosts.host,
                "user": a.user,
                "last_active": _seconds(a.last_active),
                "registered": _seconds(a.registered),
            }
            for hosts in lists
            for a in hosts.accounts
        ],
    }


def render_json(document: dict[str, object]) -> str:
    """Pretty, stable JSON text."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _printable_jids(lists: Sequence[InactiveList]) -> list[str]:
    names = (jid(hosts.host, a.user) for hosts in lists for a in hosts.accounts)
    return [name for name in names if name.isprintable()]


def _rule(request: ListRequest) -> str:
    never_used = request.never_used_for
    extra = f" (never used: {never_used.label} after registration)" if never_used is not None else ""
    return f"{request.older_than.label}{extra}"


def _seconds(value: float | None) -> int | None:
    return None if value is None else int(value)


def _utc(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
