"""The chaos soak: `python -m soak [--minutes N | --smoke]`; exit 0 only if every check passed (see soak/README.md)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from soak import report
from soak.config import ServeConfig, SqlHosts
from soak.faults import ConnectionLane, DataDirLane, DiskLane, Lane, Schedule, ServerLane, SighupLane, SqlLane
from soak.generator import FileGenerator, SqlGenerator
from soak.observe import LogTail, Poller, ProcSample, Scrape, proc_sample, scrape
from soak.setup import schedules, serve, small_filesystem, snapshot_code, wait_for
from soak.xmpp_load import XmppLoad
from tests.integration.live_prosody import LiveProsody, running_prosody
from tests.integration.private_sql import PrivateServer, private_mariadb, private_postgres
from tests.integration.push_servers import CarbonServer, InfluxServer, carbon_cache, influxd
from tests.integration.servers import free_port

XMPP_HOSTS = ("xmpp.soak", "chat.soak")
FILE_HOSTS = ("files1.soak", "files2.soak", "files3.soak")
PG_HOSTS = ("pg1.soak", "pg2.soak")
MARIA_HOSTS = ("maria1.soak", "maria2.soak")
XMPP_ACCOUNTS = 8
PASSWORD = "soak-password"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the chaos phase (default 10)")
    parser.add_argument("--smoke", action="store_true", help="one fault of each kind, quickly (about a minute)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule and the generators")
    parser.add_argument("--users", type=int, default=150, help="generated users per file host (default 150)")
    parser.add_argument("--rate", type=float, default=10.0, help="file rewrites per second (default 10)")
    parser.add_argument("--json", type=Path, default=Path("soak-summary.json"), help="where to write the summary")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data) afterwards")
    parser.add_argument(
        "--isolate-reloads",
        action="store_true",
        help="send a SIGHUP only while both push targets are up and their queues are empty",
    )
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 600:
        parser.error("--minutes: expected more than 0 and at most 600")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the soak, prints the summary, writes it as JSON; 0 when every check passed."""
    args = parse_args(argv)
    summary = run(args)
    print(report.text(summary))
    args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"summary written to {args.json}")
    return 0 if summary["passed"] else 1


@dataclass
class Rig:
    """Everything the soak started, for the chaos phase and the checks."""

    args: argparse.Namespace
    work: Path
    prosody: LiveProsody
    postgres: PrivateServer
    mariadb: PrivateServer
    carbon: ServerLane[CarbonServer]
    influx: ServerLane[InfluxServer]
    files: FileGenerator
    sql_generators: list[SqlGenerator]
    config: ServeConfig
    accounts: list[tuple[str, str]]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Sets everything up, runs the chaos phase, quiesces, checks; everything started is stopped on the way out."""
    duration = 36.0 if args.smoke else args.minutes * 60
    work = Path(tempfile.mkdtemp(prefix="prosody-lastlog-soak-"))
    state = report.State(work=work, smoke=args.smoke, seed=args.seed, duration=duration)
    started = time.monotonic()
    with ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        state.fs_kind = stack.enter_context(small_filesystem(work / "textfile"))
        rig = _set_up(stack, args, work, margin=int(duration) + 3600)
        state.code = snapshot_code(work)
        daemon = stack.enter_context(serve(rig.config.settings, work / "pushed.jsonl", work, state.code))
        state.daemon, state.log = daemon, LogTail(daemon.stderr)
        state.setup_seconds = time.monotonic() - started
        _chaos(stack, rig, state)
    state.leftovers = report.leftovers()
    state.total_seconds = time.monotonic() - started
    return report.summarize(state)


def _set_up(stack: ExitStack, args: argparse.Namespace, work: Path, *, margin: int) -> Rig:
    """Prosody with its accounts, the databases with their tables, the push targets, the data, serve's config."""
    prosody = stack.enter_context(running_prosody(work / "prosody", XMPP_HOSTS))
    accounts = [(f"user{n}@{XMPP_HOSTS[n % 2]}", PASSWORD) for n in range(XMPP_ACCOUNTS)]
    for jid, password in accounts:
        prosody.create_user(jid, password)
    postgres = stack.enter_context(private_postgres())
    mariadb = stack.enter_context(private_mariadb())
    for server in (postgres, mariadb):
        server.create_database("prosody")
    carbon_port, influx_port = free_port(), free_port()
    carbon: ServerLane[CarbonServer] = ServerLane(
        "carbon", partial(carbon_cache, work / "carbon", port=carbon_port), []
    )
    influx: ServerLane[InfluxServer] = ServerLane("influxd", partial(influxd, work / "influxd", port=influx_port), [])
    for lane in (carbon, influx):
        stack.callback(lane.close)
    carbon.up()
    influx.up().query(None, "CREATE DATABASE prosody")
    files = FileGenerator(prosody.data, FILE_HOSTS, args.users, margin=margin, seed=args.seed)
    stack.callback(files.close)
    files.populate()
    sql_generators = [
        SqlGenerator(partial(postgres.connect, "prosody"), "PostgreSQL", PG_HOSTS, 100, margin=margin, seed=2),
        SqlGenerator(partial(mariadb.connect, "prosody"), "MySQL", MARIA_HOSTS, 100, margin=margin, seed=3),
    ]
    for generator in sql_generators:
        generator.populate()
    config = ServeConfig(
        prosody_config=work / "serve.cfg.lua",
        settings=work / "serve.toml",
        data_path=prosody.data,
        pidfile=prosody.pidfile,
        file_hosts=XMPP_HOSTS + FILE_HOSTS,
        sql=(
            SqlHosts("PostgreSQL", postgres.port, postgres.superuser, PG_HOSTS),
            SqlHosts("MySQL", mariadb.port, mariadb.superuser, MARIA_HOSTS),
        ),
        listen_port=free_port(),
        textfile=work / "textfile" / "prosody.prom",
        carbon_port=carbon_port,
        influx_url=f"http://127.0.0.1:{influx_port}",
    )
    config.write()
    return Rig(args, work, prosody, postgres, mariadb, carbon, influx, files, sql_generators, config, accounts)


def _chaos(stack: ExitStack, rig: Rig, state: report.State) -> None:
    """Load and fault lanes for the run's duration, then quiesce and gather what the checks need."""
    assert state.daemon is not None and state.log is not None
    base = f"http://127.0.0.1:{rig.config.listen_port}"
    wait_for(lambda: _all_up(base), 120, f"serve answering with every source up (its log: {state.daemon.stderr})")
    sources = scrape(base).by_label("prosody_lastlog_source_up", "source")
    state.source_of = {
        "postgresql": next(s for s in sources if f":{rig.postgres.port}/" in s),
        "mariadb": next(s for s in sources if f":{rig.mariadb.port}/" in s),
    }
    scrapes = Poller("scrape", partial(scrape, base), 0.5)
    procs = Poller("proc", partial(proc_sample, state.daemon.pid), 2.0)
    log_poller = Poller("log", state.log.poll, 0.2)
    load = XmppLoad(rig.prosody.c2s_port, rig.accounts, seed=rig.args.seed)
    writers = [Poller("files", rig.files.step, 1 / rig.args.rate, keep=False)]
    writers += [Poller(f"sql-{g.driver}", g.step, 0.5, keep=False) for g in rig.sql_generators]
    for poller in (scrapes, procs, log_poller, *writers):
        poller.start()
        stack.callback(poller.stop)
    load.start()
    stack.callback(load.stop)
    plan = schedules(state.duration, smoke=rig.args.smoke, seed=rig.args.seed)
    state.lanes = _lanes(rig, state, plan, scrapes)
    state.t0 = time.time()
    for lane in state.lanes:
        stack.callback(lane.close)
        lane.start(state.t0)
    time.sleep(max(0.0, state.t0 + state.duration - time.time()))
    for lane in state.lanes:
        lane.stop()
    state.chaos_end = time.time()
    # Quiesce: no more logins or writes; every source back; queues drained; then compare.
    load.stop()
    for writer in writers:
        writer.stop()
    longest = max((hold for schedule in plan.values() for _, hold in schedule), default=0.0)
    try:
        state.drained_at = wait_for(
            partial(_settled, base, list(state.source_of.values()), time.time()),
            2 * longest + 90,
            "every source refreshed and both queues empty",
        )
    except TimeoutError as exc:
        state.failures.append(str(exc))
        state.drained_at = time.time()
    time.sleep(3.0)  # the watcher's last events; carbon flushes its cache about once a second
    state.final = scrape(base)
    state.counted = fresh_count(rig.config.settings, int(state.final.at), state.code)
    textfile = rig.config.textfile
    state.textfile = textfile.read_text() if textfile.exists() else ""
    state.textfile_dir = sorted(p.name for p in textfile.parent.iterdir())
    state.collect_points(rig.work / "pushed.jsonl", rig.carbon.current, rig.influx.current)
    scrapes.stop()  # before serve stops: a refused scrape then is no failure of serve
    state.daemon.stop()
    for poller in (procs, log_poller):
        poller.stop()
    state.xmpp, state.files, state.sql_generators = load.stats, rig.files, rig.sql_generators
    state.scrapes = [s for s in scrapes.results if isinstance(s, Scrape)]
    state.procs = [s for s in procs.results if isinstance(s, ProcSample)]
    state.poll_errors = procs.errors[-3:] + scrapes.errors[-3:]


def _lanes(rig: Rig, state: report.State, plan: dict[str, Schedule], scrapes: Poller) -> list[Lane]:
    assert state.daemon is not None and state.log is not None

    def reload_allowed() -> bool:
        if not rig.args.isolate_reloads:
            return True
        if rig.carbon.active or rig.influx.active or not scrapes.results:
            return False
        last = scrapes.results[-1]
        queues = last.by_label("prosody_lastlog_export_queue_length", "exporter") if isinstance(last, Scrape) else {}
        return isinstance(last, Scrape) and last.error is None and not any(queues.values())

    rig.carbon.schedule, rig.influx.schedule = plan["carbon"], plan["influxd"]
    return [
        SqlLane("postgresql", rig.postgres, plan["postgresql"], ("stop", "freeze")),
        SqlLane("mariadb", rig.mariadb, plan["mariadb"], ("freeze", "stop")),
        rig.carbon,
        rig.influx,
        DiskLane(rig.work / "textfile", plan["disk"]),
        SighupLane(state.daemon.pid, rig.config, state.log, plan["sighup"], reload_allowed),
        ConnectionLane(rig.config.listen_port, plan["connections"]),
        DataDirLane(rig.prosody.data, plan["datadir"]),
    ]


def _all_up(base: str) -> bool:
    answer = scrape(base)
    ups = answer.by_label("prosody_lastlog_source_up", "source")
    return answer.error is None and len(ups) == 3 and all(ups.values()) and answer.health[0] == 200


def _settled(base: str, sql_sources: list[str], quiet: float) -> bool:
    """Healthy, each SQL source refreshed after the load stopped, both push queues empty."""
    answer = scrape(base)
    if answer.error or answer.health[0] != 200:
        return False
    refreshed = [answer.value("prosody_lastlog_last_refresh_timestamp_seconds", source=s) or 0.0 for s in sql_sources]
    queues = answer.by_label("prosody_lastlog_export_queue_length", "exporter")
    return all(at > quiet + 1 for at in refreshed) and not any(queues.values())


def fresh_count(settings: Path, now: int, code: Path) -> dict[str, Any]:
    """`prosody-lastlog count --config-file SETTINGS --now NOW --format json`: the same data, counted afresh."""
    command = ["count", "--config-file", str(settings), "--now", str(now), "--format", "json"]
    done = subprocess.run(
        [sys.executable, "-m", "prosody_lastlog", *command],
        cwd=code,
        env={**os.environ, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"count failed ({done.returncode}): {done.stderr[-2000:]}")
    document: dict[str, Any] = json.loads(done.stdout)
    return document
