"""Renders counts for people (a table) and for scripts (stable JSON); Prometheus text is exporters.prometheus's."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence

from prosody_lastlog.core.connected import ConnectedMode
from prosody_lastlog.core.counting import HostCounts
from prosody_lastlog.core.model import CountingChoice, ReadProblem
from prosody_lastlog.core.rules import ServerFacts
from prosody_lastlog.core.windows import Window


def to_json_document(
    counts: Mapping[str, HostCounts],
    *,
    now: int,
    windows: Sequence[Window],
    problems: Sequence[ReadProblem],
    connected_detection: ConnectedMode = ConnectedMode.NONE,
    servers: Mapping[str, ServerFacts] | None = None,
) -> dict[str, object]:
    """The JSON interface; its documented keys never change, new keys may be added."""
    shortest, longest = windows[0], windows[-1]
    return {
        "now": now,
        "connected_detection": connected_detection.value,
        "windows": {w.label: w.seconds for w in windows},
        "prosody": {
            source: {
                "version": "13" if server.thirteen else "0.12",
                "evidence": server.evidence,
                "module": server.module.path if server.module else None,
                "module_note": server.module_note,
            }
            for source, server in (servers or {}).items()
        },
        "hosts": {
            host: {
                "active": dict(c.active),
                "activity_records": c.activity_records,
                "registered_accounts": c.registered_accounts,
                "never_active": c.never_active,
                "registered": dict(c.registered),
                "returning": dict(c.returning),
                "inactive": dict(c.inactive),
                "never_used": dict(c.never_used),
                "cohorts": [
                    {"month": cohort.month, "registered": cohort.registered, "retained": list(cohort.retained)}
                    for cohort in c.cohorts
                ],
                "store": c.store.value,
                "store_basis": c.counting.basis.value,
                "store_reason": c.counting.reason,
                "accounts_rule": c.counting.accounts.value,
                "accounts_reason": c.counting.accounts_reason,
                "disabled": c.disabled,
                "no_account": c.no_account,
                "connected": c.connected,
                "future_timestamps": c.future,
                "stickiness": {f"{shortest.label}/{longest.label}": c.stickiness(shortest, longest)},
            }
            for host, c in counts.items()
        },
        "problems": len(problems),
        "problem_kinds": dict(sorted(Counter(p.kind for p in problems).items())),
    }


def render_json(document: Mapping[str, object]) -> str:
    """Pretty, stable JSON text."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def render_table(counts: Mapping[str, HostCounts], *, windows: Sequence[Window]) -> str:
    """A fixed-width table, one row per host, then how each host is counted: its store and which accounts count,
    with why, numbered once per distinct choice."""
    shortest, longest = windows[0], windows[-1]
    header = ["host", "store", "registered", "records", "never", "left out"]
    header += [f"active {w.label}" for w in windows] + [f"new {w.label}" for w in windows]
    header.append(f"{shortest.label}/{longest.label}")
    rows = [header]
    notes: dict[str, int] = {}
    for host, c in counts.items():
        ratio = c.stickiness(shortest, longest)
        note = notes.setdefault(_how_counted(c.counting), len(notes) + 1)
        registered = "-" if c.registered_accounts is None else str(c.registered_accounts)
        row = [host, f"{c.store.value} [{note}]", registered, str(c.activity_records), str(c.never_active)]
        row.append(str(c.disabled))
        row += [str(c.active[w.label]) for w in windows] + [str(c.registered[w.label]) for w in windows]
        row.append("-" if ratio is None else f"{ratio:.2f}")
        rows.append(row)
    if len(rows) == 1:
        return "no hosts with last-activity data found\n"
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    lines.extend(f"[{number}] {text}" for text, number in notes.items())
    return "\n".join(lines) + "\n"


COHORT_NOTE = (
    "Sign-up cohorts (UTC months): the accounts registered in each month, then how many of them were last active in "
    "or after it (+0) and each month since (+1, +2, ...). Last-activity data keeps one time per account, so it cannot "
    "tell an account that came back and left from one that stayed."
)


def render_cohorts(counts: Mapping[str, HostCounts]) -> str:
    """Per host with cohorts, a triangle: a row per sign-up month, its size, then its accounts last active in or
    after each month since; empty text where no host has cohorts."""
    blocks = []
    for host, c in counts.items():
        if not c.cohorts:
            continue
        months = max(len(cohort.retained) for cohort in c.cohorts)
        rows = [["cohort", "registered", *(f"+{k}" for k in range(months))]]
        rows += [[cohort.month, str(cohort.registered), *map(str, cohort.retained)] for cohort in c.cohorts]
        widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(months + 2)]
        lines = [f"{host}:"]
        lines += ["  " + "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=False)) for row in rows]
        blocks.append("\n".join(lines))
    return "\n" + "\n\n".join(blocks) + f"\n\n{COHORT_NOTE}\n" if blocks else ""


def _how_counted(choice: CountingChoice) -> str:
    return f"{choice.store.value} ({choice.basis.value}): {choice.reason}; accounts: {choice.accounts_reason}"
