"""A fast reader for the exact text Prosody's serializer writes for a small record; anything else is left to the
sandbox.

`parse` accepts only what util.datamanager writes (`"return " .. serialize(data) .. ";\\n"`, default preset) for a
table of string keys whose values are plain strings, numbers, booleans, `{}`, or one level of such tables: every
last-activity record, and account records without odd characters. It then gives exactly the value the Lua sandbox
gives; for any other text it gives None. It never evaluates anything: the text is matched whole by one regular
expression, then turned into JSON by replacing the few structural bytes and parsed by the standard library's C
JSON scanner. What makes that exact:

- strings are only printable ASCII without `"` `'` `\\` (so without escapes) nor `[` `]` `=` `;` (so the
  structural bytes rewritten below never occur inside one), read alike by Lua and JSON;
- an integer has at most 18 digits: a 64-bit Lua integer, as Python's int (a longer one Lua makes a float);
  a number with a fraction or an exponent is a float in both, both parsers rounding correctly (C strtod, and
  Python's own);
- keys repeat as Lua's table constructor assigns them: the last one wins, as in a dict built from JSON;
- at most MAX_BYTES bytes: far under every default limit of the sandbox (values, depth, instructions, time).

`activity_reader` goes one step further for the two commonest records, mod_lastlog2's and Prosody 13's
account_activity, in exactly that form: it gives the UserActivity `stores.interpret` makes of the sandbox's value
(as an ActivityRow), without building the value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from prosody_lastlog.core.model import Store

MAX_BYTES = 4096

# A UserActivity's fields in order (`UserActivity(*row)`): a tuple is quicker to make, and to send to another
# process (pickled, it is ~10x faster than the frozen dataclass).
ActivityRow = tuple[str, float | None, float | None, bool, float | None, bool]

_STRING = rb'"[ !#-&(-:<>-Z^-~]*+"'  # printable ASCII except  " ' ; = [ \ ]
_INTEGER = rb"-?(?:0|[1-9][0-9]{0,17})(?=;)"
_FLOAT = rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++(?:e[-+][0-9]{1,3})?|e[-+][0-9]{1,3})"
_SCALAR = rb"(?>" + _STRING + rb"|" + _INTEGER + rb"|" + _FLOAT + rb"|true|false|\{\})"
_INNER_ITEM = rb"\n\t\t\[" + _STRING + rb"\] = " + _SCALAR + rb";"
_ITEM = rb"\n\t\[" + _STRING + rb"\] = (?:\{(?:" + _INNER_ITEM + rb")++\n\t\}|" + _SCALAR + rb");"
_RECORD = re.compile(rb"return \{(?:" + _ITEM + rb")++\n\};\n")
_LAST_INNER_ITEM_END = b";\n\t}"  # `;` before a closing brace: JSON has no trailing separator
_TO_JSON = bytes.maketrans(b"=;", b":,")  # `["k"] = v;` becomes `"k" : v,` once `[` and `]` are deleted
_scan = json.JSONDecoder().raw_decode

# mod_lastlog2: up to three events, each `{ timestamp = <integer>, ip = <string>? }` (ip on either side); an
# address is short, so a whole record is too (well under MAX_BYTES). Each of the three places has a group per event.
_IP = rb'(?:\n\t\t\["ip"\] = "[ !#-&(-:<>-Z^-~]{0,100}+";)?'
_EVENT = (
    rb"(?:"
    + rb"|".join(
        rb'\n\t\["%s"\] = \{' % name + _IP + rb'\n\t\t\["timestamp"\] = (' + _INTEGER + rb");" + _IP + rb"\n\t\};"
        for name in (b"login", b"logout", b"registered")
    )
    + rb")"
)
_LASTLOG2 = re.compile(rb"return \{" + _EVENT + rb"(?:" + _EVENT + rb"(?:" + _EVENT + rb")?)?\n\};\n")
# Most files differ from another only in their digits. Two texts alike once every digit is made 0 are both in
# _LASTLOG2 or both not (the pattern asks nothing of digits but how many there are in a row and, for a timestamp,
# no leading zero, which Lua and int() read alike anyway); and the timestamps are at the same places. So the
# places are kept per such shape, for a few thousand shapes.
_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_MAX_SHAPES = 4096
_lastlog2_shapes: dict[bytes, tuple[slice | None, slice | None, slice | None]] = {}
_ACCOUNT_FIELD = re.compile(rb'\n\t\["(created|disabled)"\] = ([^;\n]*)')
_WHOLE = re.compile(rb"-?[0-9]+")
_NUMBER_START = frozenset(bytes([byte]) for byte in b"-0123456789")
_ACCOUNT_ACTIVITY = re.compile(rb'return \{\n\t\["timestamp"\] = (' + _INTEGER + rb");\n\};\n")


def parse(text: bytes) -> dict[str, Any] | None:
    """The record `text` holds if it is in Prosody's canonical form (as the sandbox would give it), else None."""
    if len(text) > MAX_BYTES or _RECORD.fullmatch(text) is None:
        return None
    # `return {` ... `;\n};\n`: keep from `{`, drop the last item's `;` and the wrapper's `;\n`.
    body = text[7:-5].replace(_LAST_INNER_ITEM_END, b"}").translate(_TO_JSON, b"[]") + b"}"
    value: dict[str, Any] = _scan(body.decode("ascii"))[0]
    return value


def account_fields(text: bytes) -> dict[str, Any] | None:
    """An account record's `created` and `disabled` (those present), as `parse` gives them but a table as `{}`, if
    `text` is in Prosody's canonical form; else None. Nothing else of the record (password hashes) is decoded.

    In that form a top-level item is a line `\t["key"] = value;` (nested ones have two tabs), a value holds no `;`
    nor newline but as the start of a table, and of repeated keys the last one holds, as in Lua."""
    if len(text) > MAX_BYTES or _RECORD.fullmatch(text) is None:
        return None
    return {key.decode(): _top_level_value(value) for key, value in _ACCOUNT_FIELD.findall(text)}


def _top_level_value(token: bytes) -> Any:
    first = token[:1]
    if first in _NUMBER_START:  # an integer or a float literal, as the canonical form allows them
        return int(token) if _WHOLE.fullmatch(token) else float(token)
    if first == b'"':
        return token[1:-1].decode("ascii")  # canonical strings hold no escapes
    return {} if first == b"{" else token == b"true"  # a table; or true, false


def activity_reader(store: Store) -> Callable[[str, bytes], ActivityRow | None]:
    """For `store`, a function of a user and its file's text: the UserActivity `interpret(store, user, <the
    sandbox's value of the text>)` gives, with no oddity, if the text is a mod_lastlog2 or account_activity record
    exactly as Prosody writes it; else None."""
    return _ACTIVITY_READERS.get(store, _unrecognized)


def _lastlog2(user: str, text: bytes) -> ActivityRow | None:
    shape = text.translate(_ZEROS)
    places = _lastlog2_shapes.get(shape)
    if places is None:
        match = _LASTLOG2.fullmatch(text)
        if match is None:
            return None
        places = _last_login_logout_registered(match)
        if len(_lastlog2_shapes) < _MAX_SHAPES:
            _lastlog2_shapes[shape] = places
    at_login, at_logout, at_registered = places
    login = None if at_login is None else int(text[at_login])
    logout = None if at_logout is None else int(text[at_logout])
    # As stores.interpret: active at the later of login and logout; a login after any logout is a session.
    last_active = logout if login is None else login if logout is None else max(login, logout)
    session_open = login if login is not None and (logout is None or login > logout) else None
    return user, last_active, None if at_registered is None else int(text[at_registered]), False, session_open, False


def _last_login_logout_registered(match: re.Match[bytes]) -> tuple[slice | None, slice | None, slice | None]:
    """Where each event's timestamp is; a repeated event's is the last one's, as in Lua."""
    places: list[slice | None] = []
    for event in range(3):  # the groups are login, logout, registered in the first place, then the second, third
        found = [match.span(1 + 3 * place + event) for place in range(3)]
        places.append(next((slice(*span) for span in reversed(found) if span[0] >= 0), None))
    return places[0], places[1], places[2]


def _account_activity(user: str, text: bytes) -> ActivityRow | None:
    match = _ACCOUNT_ACTIVITY.fullmatch(text)
    return None if match is None else (user, int(match[1]), None, False, None, False)


def _unrecognized(user: str, text: bytes) -> None:
    return None


_ACTIVITY_READERS = {Store.LASTLOG2: _lastlog2, Store.ACCOUNT_ACTIVITY: _account_activity}
