"""The `inactive` command: the accounts inactive for a given time, listed for an admin to review. It reads every
source the counts read, by the same rules, prints on stdout only, and deletes nothing."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from exporters.account_list import (
    ListRequest,
    render_json,
    render_names,
    render_prosodyctl,
    to_json_document,
    unprintable,
)
from prosody_lastlog.core.connected import NOBODY
from prosody_lastlog.core.inactive import InactiveList, list_inactive
from prosody_lastlog.core.windows import parse_window
from prosody_lastlog.count import as_of, report_problems
from prosody_lastlog.settings import source_options
from prosody_lastlog.sources.kinds import log_choices
from prosody_lastlog.sources.plan import plan_sources

log = logging.getLogger("prosody_lastlog")


def run_inactive(args: argparse.Namespace) -> int:
    """Lists the inactive accounts of every host read, in --format; 0 when done."""
    plan = plan_sources(source_options(args), environ=os.environ)
    now, connected = as_of(args, plan)
    request = ListRequest(
        now, parse_window(args.older_than), parse_window(args.never_used_for) if args.never_used_for else None
    )
    lists: list[InactiveList] = []
    thirteen_hosts: set[str] = set()
    for source in plan.sources:
        result = source.read()
        log_choices(source.name, result.server, {host: data.counting for host, data in result.hosts.items()})
        report_problems(result.problems)
        online = connected if source.counts_connected else NOBODY
        for host, data in result.hosts.items():
            lists.append(
                list_inactive(
                    data,
                    now=now,
                    older_than=request.older_than,
                    never_used_for=request.never_used_for,
                    connected=online,
                )
            )
            if result.server is not None and result.server.thirteen:
                thirteen_hosts.add(host)
    lists.sort(key=lambda hosts: hosts.host)
    _report_what_is_not_listed(lists, json_format=args.format == "json")
    if args.format == "json":
        text = render_json(to_json_document(lists, request))
    elif args.format == "prosodyctl":
        text = render_prosodyctl(lists, request, thirteen_hosts)
    else:
        text = render_names(lists)
    sys.stdout.write(text)
    return 0


def _report_what_is_not_listed(lists: list[InactiveList], *, json_format: bool) -> None:
    for hosts in lists:
        if hosts.unknown:
            log.warning(
                "%s: %d account(s) never active with no registration time: not known to be inactive, not listed",
                hosts.host,
                hosts.unknown,
            )
    hidden = 0 if json_format else unprintable(lists)
    if hidden:
        log.warning("%d account(s) left out: their names hold control characters (--format json lists them)", hidden)
