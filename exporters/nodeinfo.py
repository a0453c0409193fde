"""NodeInfo for federated-server directories: per host, public usage figures, only for the hosts opted in.

The documents (nodeinfo_pages.py serves them). NodeInfo (nodeinfo.diaspora.software): `/.well-known/nodeinfo`
links to `/nodeinfo/2.1` and `/nodeinfo/2.0`, whose documents carry usage.users.total, activeMonth (30 days) and
activeHalfyear (180 days). The older NodeInfo2 1.0 document (`/.well-known/x-nodeinfo2`, the one the community
mod_nodeinfo2 served) carries activeWeek too. Every figure is counted by the rules of every other count; nothing
about any one account is in them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from prosody_lastlog.core.counting import HostCounts
from prosody_lastlog.core.windows import Window

log = logging.getLogger(__name__)

WEEK, MONTH, HALF_YEAR = Window(7 * 86400, "7d"), Window(30 * 86400, "30d"), Window(180 * 86400, "180d")
NODEINFO_WINDOWS = (WEEK, MONTH, HALF_YEAR)  # counted for NodeInfo whether or not --window names them
SCHEMA = "http://nodeinfo.diaspora.software/ns/schema/"  # + the version: a link's rel, a document's profile
DISCOVERY_PATH, NODEINFO2_PATH = "/.well-known/nodeinfo", "/.well-known/x-nodeinfo2"
DOCUMENT_PATHS = {"/nodeinfo/2.1": "2.1", "/nodeinfo/2.0": "2.0"}  # the newest first, as the discovery lists them
PATHS = (DISCOVERY_PATH, *DOCUMENT_PATHS, NODEINFO2_PATH)
SOFTWARE = "prosody"
# How long a crawler or a proxy may keep a document: the counts move slowly, directories crawl daily or so.
DOCUMENT_MAX_AGE = 1800
DISCOVERY_MAX_AGE = 86400
_HOMEPAGE, _REPOSITORY = "https://prosody.im/", "https://hg.prosody.im/"
_NOT_IN_A_HOST = frozenset("/\\@:?#[] \t")  # a URL, an address, a port: not a host name


@dataclass(frozen=True)
class PublicHost:
    """What a host opted in to NodeInfo publishes besides its counts."""

    name: str  # the XMPP domain, as Prosody names it (lower-case)
    open_registrations: bool  # anyone may register in-band (see prosody.config: allow_registration and modules)
    node_name: str | None = None  # metadata.nodeName, if the admin set one


def host_name(text: str) -> str | None:
    """A host name as Prosody writes it (lower-case, no trailing dot, Unicode where it is internationalized: the
    A-label `xn--mnchen-3ya.example` is `münchen.example`); None if `text` is not a host name."""
    name = text.strip().rstrip(".").lower()
    if not name or not name.isprintable() or _NOT_IN_A_HOST.intersection(name):
        return None
    try:
        return name.encode("ascii").decode("idna") if name.isascii() else name
    except UnicodeError:
        return None


def public_hosts(
    names: Iterable[str], open_registration: Collection[str] | None, node_names: Mapping[str, str]
) -> dict[str, PublicHost]:
    """The hosts to publish (names checked by host_name), by name: whether their config opens registration (None:
    no config read, so Prosody's default, closed, with a warning), and the node names set."""
    hosts = sorted({host for name in names if (host := host_name(name)) is not None})
    if hosts and open_registration is None:
        log.warning("nodeinfo: no Prosody config read, so openRegistrations is false (Prosody's default)")
    opened = open_registration or ()
    return {name: PublicHost(name, name in opened, node_names.get(name)) for name in hosts}


def nodeinfo(host: PublicHost, counts: HostCounts, version: str, schema: str = "2.1") -> dict[str, object]:
    """The NodeInfo document of one host, in schema 2.1 or 2.0 (which has no repository or homepage)."""
    software = {"name": SOFTWARE, "version": version}
    if schema == "2.1":
        software |= {"repository": _REPOSITORY, "homepage": _HOMEPAGE}
    return {
        "version": schema,
        "software": software,
        "protocols": ["xmpp"],
        "services": {"inbound": [], "outbound": []},
        "openRegistrations": host.open_registrations,
        "usage": {"users": _users(counts)},
        "metadata": {"nodeName": host.node_name} if host.node_name else {},
    }


def nodeinfo2(host: PublicHost, counts: HostCounts, version: str) -> dict[str, object]:
    """The NodeInfo2 1.0 document (/.well-known/x-nodeinfo2) of one host: the 2.1 figures and activeWeek."""
    return {
        "version": "1.0",
        "server": {
            "baseUrl": f"https://{a_label(host.name)}/",
            "name": host.node_name or host.name,
            "software": SOFTWARE,
            "version": version,
        },
        "protocols": ["xmpp"],
        "services": {"inbound": [], "outbound": []},
        "openRegistrations": host.open_registrations,
        "usage": {"users": _users(counts) | {"activeWeek": counts.active[WEEK.label]}},
    }


def _users(counts: HostCounts) -> dict[str, int]:
    """usage.users: registered accounts (left out where they are not known, as with another auth provider: never
    guessed), and those active in 180 and 30 days."""
    users = {} if counts.registered_accounts is None else {"total": counts.registered_accounts}
    return users | {"activeHalfyear": counts.active[HALF_YEAR.label], "activeMonth": counts.active[MONTH.label]}


def discovery(host: PublicHost) -> dict[str, object]:
    """The /.well-known/nodeinfo document: links to the host's documents over HTTPS (crawlers try it first), on the
    domain itself (its A-label form where it is internationalized), whatever the request's Host header said."""
    site = f"https://{a_label(host.name)}"
    return {"links": [{"rel": SCHEMA + schema, "href": site + path} for path, schema in DOCUMENT_PATHS.items()]}


def render_document(document: Mapping[str, object]) -> str:
    """A document as `count --format nodeinfo` prints it."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def a_label(name: str) -> str:
    """A host name's A-label form (IDNA), as a Host header carries an internationalized domain."""
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name
