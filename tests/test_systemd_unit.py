"""The shipped systemd unit runs a command line the CLI accepts, unprivileged and sandboxed."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from exporters.http_transport import MAX_CONNECTIONS
from prosody_lastlog.cli import build_parser

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "prosody-lastlog.service"


def read_unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_exec_start_parses_as_a_serve_command() -> None:
    command = shlex.split(read_unit()["Service"]["ExecStart"])
    assert command[0].endswith("/prosody-lastlog")
    args = build_parser().parse_args(command[1:])
    assert args.command == "serve" and str(args.config) == "/etc/prosody/prosody.cfg.lua"


def test_runs_unprivileged_read_only_in_the_prosody_group() -> None:
    service = read_unit()["Service"]
    assert service["User"] != "root" and service["SupplementaryGroups"] == "prosody"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "true"
    assert "/var/lib/prosody" in service["ReadOnlyPaths"]
    assert service["CapabilityBoundingSet"] == ""


def test_limits_fit_the_daemons_own_bounds() -> None:
    """Descriptors for every HTTP connection the daemon allows and its own; memory accounted and capped; a stop
    timeout above the daemon's own stop bound (docs/robustness.md)."""
    service = read_unit()["Service"]
    assert int(service["LimitNOFILE"]) >= 2 * MAX_CONNECTIONS
    assert service["MemoryAccounting"] == "yes" and service["MemoryHigh"] and service["MemoryMax"]
    assert int(service["TimeoutStopSec"].removesuffix("s")) >= 10
