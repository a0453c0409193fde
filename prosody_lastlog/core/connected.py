"""Who is connected right now: mod_measure_active_users counts a user with a live session active in every window.

From outside Prosody this is known one of three ways (the `mode`, exported as an info metric):
- `admin_socket`: exact; the running Prosody listed its sessions through mod_admin_socket.
- `heuristic`: the last-activity log shows a login with no later logout, made since Prosody (re)started.
  mod_lastlog2 and mod_lastlog record logins and logouts; Prosody 13's account_activity does not tell them apart,
  so there it finds nobody.
- `none`: neither is available; only stored activity counts.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from prosody_lastlog.core.model import UserActivity


class ConnectedSetting(StrEnum):
    """The `connected` setting: the ways of finding connected users that may be tried (ConnectedMode: the one found)."""

    AUTO = "auto"  # the admin socket if it answers, else the heuristic if Prosody's pidfile is found
    ADMIN_SOCKET = "admin-socket"
    HEURISTIC = "heuristic"
    OFF = "off"


class ConnectedMode(StrEnum):
    """How connected users are known: the way found by the `connected` setting (ConnectedSetting)."""

    ADMIN_SOCKET = "admin_socket"
    HEURISTIC = "heuristic"
    NONE = "none"


@dataclass(frozen=True)
class ConnectedUsers:
    """The current answer to "who is connected", in one of the three modes."""

    mode: ConnectedMode = ConnectedMode.NONE
    users: Mapping[str, frozenset[str]] = field(default_factory=dict, repr=False)  # admin_socket: host -> users
    prosody_started: int | None = None  # heuristic: Unix second Prosody started; None if it is not running

    def includes(self, host: str, user: str, session_open: float | None) -> bool:
        """Whether `user` of `host` (whose log shows a session opened at `session_open`) is connected now."""
        if self.mode is ConnectedMode.ADMIN_SOCKET:
            return user in self.users.get(host, ())
        if self.mode is ConnectedMode.HEURISTIC:
            started = self.prosody_started
            return session_open is not None and started is not None and session_open >= started
        return False

    def candidates(self, host: str) -> frozenset[str] | None:
        """The users of `host` that can be connected, if this mode names them (None: any with an open session)."""
        if self.mode is ConnectedMode.ADMIN_SOCKET:
            return self.users.get(host, frozenset())
        if self.mode is ConnectedMode.NONE:
            return frozenset()
        return None


NOBODY = ConnectedUsers()


def is_connected(connected: ConnectedUsers, host: str, user: UserActivity) -> bool:
    """Whether a user counts as connected now (so active in every window): mod_measure_active_users looks for
    sessions only among the users of the store it reads, so a registered account with no record there
    (`account_only`) never does, whatever its sessions."""
    return not user.account_only and connected.includes(host, user.user, user.session_open)
