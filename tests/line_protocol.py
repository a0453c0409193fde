"""A small line protocol parser for the tests, written from the InfluxDB 1.x reference independently of the exporter.

It reads lines as influxd 1.6 does: a backslash escapes a following comma or space (and, in tag keys, tag values
and field keys, an equals sign) and is an ordinary character before anything else; string field values are in
double quotes with `\\"` and `\\\\` escaped; `1i` is an integer, `t`/`true`/`f`/`false` (any case as listed) a
boolean, any other number a float; a line starting with `#` is a comment. Lines are split on `\\n` only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

FieldValue = int | float | bool | str

_TRUE = {"t", "T", "true", "True", "TRUE"}
_FALSE = {"f", "F", "false", "False", "FALSE"}
_INTEGER = re.compile(r"-?[0-9]+i")
_TIMESTAMP = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class Line:
    """One parsed point; `timestamp` is None when the line has none."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    timestamp: int | None


def parse(text: str) -> list[Line]:
    """Every point of a line protocol text; ValueError naming the line for anything malformed."""
    return [_Line(raw).parse() for raw in text.split("\n") if raw.strip() and not raw.startswith("#")]


class _Line:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def fail(self, problem: str) -> ValueError:
        return ValueError(f"{problem} at {self.at} in {self.text!r}")

    def token(self, stops: str, escapable: str) -> tuple[str, str]:
        """Characters up to the first unescaped one of `stops` (consumed, returned second; "" at the end)."""
        out = []
        while self.at < len(self.text):
            char = self.text[self.at]
            if char == "\\" and self.at + 1 < len(self.text) and self.text[self.at + 1] in escapable:
                out.append(self.text[self.at + 1])
                self.at += 2
                continue
            self.at += 1
            if char in stops:
                return "".join(out), char
            out.append(char)
        return "".join(out), ""

    def parse(self) -> Line:
        measurement, stop = self.token(", ", ", ")
        if not measurement:
            raise self.fail("empty measurement")
        tags: dict[str, str] = {}
        while stop == ",":
            key, equals = self.token("=, ", ",= ")
            if equals != "=" or not key:
                raise self.fail("bad tag key")
            value, stop = self.token(", ", ",= ")
            if not value:
                raise self.fail("empty tag value")
            tags[key] = value
        if stop != " ":
            raise self.fail("no fields")
        fields: dict[str, FieldValue] = {}
        while True:
            key, equals = self.token("=, ", ",= ")
            if equals != "=" or not key:
                raise self.fail("bad field key")
            fields[key], stop = self.field_value()
            if stop != ",":
                break
        timestamp = None
        if stop == " ":
            rest = self.text[self.at :]
            if not _TIMESTAMP.fullmatch(rest):
                raise self.fail("bad timestamp")
            timestamp = int(rest)
        return Line(measurement, tags, fields, timestamp)

    def field_value(self) -> tuple[FieldValue, str]:
        if self.text.startswith('"', self.at):
            self.at += 1
            out = []
            while True:
                if self.at >= len(self.text):
                    raise self.fail("unterminated string")
                char = self.text[self.at]
                if char == "\\" and self.text[self.at + 1 : self.at + 2] in {'"', "\\"}:
                    out.append(self.text[self.at + 1])
                    self.at += 2
                    continue
                self.at += 1
                if char == '"':
                    break
                out.append(char)
            stop = self.text[self.at : self.at + 1]
            if stop not in {",", " ", ""}:
                raise self.fail("text after a string")
            self.at += 1
            return "".join(out), stop
        raw, stop = self.token(", ", "")
        if _INTEGER.fullmatch(raw):
            return int(raw[:-1]), stop
        if raw in _TRUE or raw in _FALSE:
            return raw in _TRUE, stop
        try:
            number = float(raw)
        except ValueError:
            raise self.fail(f"bad field value {raw!r}") from None
        if not math.isfinite(number):
            raise self.fail("NaN or infinity")
        return number, stop
