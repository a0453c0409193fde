"""Turns one stored record (a plain value, from a file or SQL rows) into a UserActivity."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prosody_lastlog.core.model import Store, UserActivity
from prosody_lastlog.prosody.sandbox import PlainValue

# mod_lastlog's first version stored no `event`; its own reader then assumed "login".
_LASTLOG_ACTIVITY_EVENTS = {None, "login", "logout"}


@dataclass(slots=True)
class Interpreted:
    """The activity a record gives (None if it gives no account at all) and what was odd about it."""

    activity: UserActivity | None
    oddities: list[str] = field(default_factory=list)


def interpret(store: Store, user: str, value: PlainValue | None) -> Interpreted:
    """Reads the record of `user` in `store`; odd parts are named and skipped, never fatal."""
    if not isinstance(value, dict):
        return Interpreted(None, [f"expected a table, got {_type_name(value)}"])
    if store is Store.LASTLOG2:
        return _lastlog2(user, value)
    if store is Store.LASTLOG:
        return _lastlog(user, value)
    return _account_activity(user, value)


def _lastlog2(user: str, record: dict[object, PlainValue]) -> Interpreted:
    oddities: list[str] = []
    login = _event_time(record, "login", oddities)
    logout = _event_time(record, "logout", oddities)
    registered = _event_time(record, "registered", oddities)
    # mod_measure_active_users: last_active = max(login.timestamp or 0, logout.timestamp or 0).
    times = [t for t in (login, logout) if t is not None]
    session_open = login if login is not None and (logout is None or login > logout) else None
    activity = UserActivity(user, max(times) if times else None, registered, session_open=session_open)
    return Interpreted(activity, oddities)


def _lastlog(user: str, record: dict[object, PlainValue]) -> Interpreted:
    oddities: list[str] = []
    when = _timestamp(record, "timestamp", oddities)
    event = record.get("event")
    if event is not None and not isinstance(event, str):
        oddities.append(f"'event' is {_type_name(event)}, not a string")
        return Interpreted(UserActivity(user, None), oddities)
    if event in _LASTLOG_ACTIVITY_EVENTS:
        session_open = when if event != "logout" else None  # mod_lastlog keeps only the latest event
        return Interpreted(UserActivity(user, when, session_open=session_open), oddities)
    if event == "registered":
        return Interpreted(UserActivity(user, None, registered=when), oddities)
    return Interpreted(UserActivity(user, None), oddities)  # "message" on a component: a room, not a user


def _account_activity(user: str, record: dict[object, PlainValue]) -> Interpreted:
    oddities: list[str] = []
    return Interpreted(UserActivity(user, _timestamp(record, "timestamp", oddities)), oddities)


def account_facts(record: PlainValue | None) -> tuple[float | None, bool]:
    """An account record's creation time (Prosody 13's `created`) and whether it is disabled: Prosody 13's
    mod_auth_internal_hashed answers `enabled = not account.disabled`, so anything but nil and false disables."""
    if not isinstance(record, dict):
        return None, False
    return _timestamp(record, "created", []), record.get("disabled") not in (None, False)


def registration(created: float | None, registered: float | None, details: float | None) -> float | None:
    """An account's registration time, by one precedence: Prosody 13's `created` in the account record, else the
    activity store's own (mod_lastlog2's `registered`, mod_lastlog's `registered` event), else mod_register_ibr's
    account_details `registered`."""
    if created is not None:
        return created
    return registered if registered is not None else details


def registration_time(record: PlainValue | None) -> float | None:
    """mod_register_ibr's `registered` in an account_details record (the rest of it, form fields, is not read)."""
    return _timestamp(record, "registered", []) if isinstance(record, dict) else None


def _event_time(record: dict[object, PlainValue], key: str, oddities: list[str]) -> float | None:
    entry = record.get(key)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        oddities.append(f"'{key}' is {_type_name(entry)}, not a table")
        return None
    return _timestamp(entry, "timestamp", oddities, context=f"'{key}'")


_INT64 = 2**63  # Lua's integers are 64-bit


def _timestamp(
    record: dict[object, PlainValue], key: str, oddities: list[str], *, context: str = "record"
) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        oddities.append(f"{context} timestamp is {_type_name(value)}, not a number")
        return None
    if isinstance(value, int) and not -_INT64 <= value < _INT64:  # JSON from SQL: no float holds it
        oddities.append(f"{context} timestamp is out of range")
        return None
    if not math.isfinite(value):
        oddities.append(f"{context} timestamp is not finite")
        return None
    return value


def _type_name(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    return "a number" if isinstance(value, int | float) else "an array"  # an array: JSON, from SQL
