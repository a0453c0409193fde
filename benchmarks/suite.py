"""Benchmark suite: prosody-lastlog side by side with the seed module and an I/O floor, in one run, on the same data.

    make bench                     # 10k and 100k users
    make bench-1m                  # 10k, 100k and 1M users (generated once, then cached: ≈ 4 GB + 12 GB at 1M)
    .venv/bin/python benchmarks/suite.py [--sizes 10000,100000] [--million] [--repeat 3] [--no-files]
        [--no-prosody13] [--no-sql] [--no-daemon] [--renames 20] [--load-seconds 10] [--json PATH] [--cache-dir DIR]

For each N: N users on 3 hosts, written through Prosody's own util.datamanager (Debian prosody, Lua 5.4) by
prosody_seed.lua with a fixed random seed: 63% login and logout, 27% login only, 10% registered only, last activity
spread over 120 days, most usernames and one host needing percent-encoding. Kept in
$XDG_CACHE_HOME/prosody-lastlog-bench/users-N (default ~/.cache) and made again only when prosody_seed.lua changes.
Each figure is the median of --repeat runs (default 3); the 1-minute load average before each part is recorded
beside it, as this machine's other work skews absolute times (ratios much less).

files     each side in a fresh process, timed inside it (start-up excluded), interleaved, each right after a
          page-cache warm-up that reads every file
  seed      Prosody's util.datamanager running mod_measure_active_users' algorithm, Lua 5.4 (scan.py)
  floor     benchmarks/io_floor.c, built here with cc: lists the store directories, opens, reads and closes every
            file, one thread, nothing else; no reader of these files can do less
  ours      our cold scan: the file reader (its default worker processes) and counting core, in a fresh Python
            process (scan.py's child)
  ratios    ours / seed, ours / floor (target ≤ 1.5); ours must count exactly what the seed counts
  command   the whole `prosody-lastlog count --format json` as cron runs it, timed from spawn to exit
            (interpreter, imports, scan, count, output), over the floor; and what its imports cost alone, in a
            fresh interpreter (target ≤ 50 ms); it must count what the seed counts
files 13  the same, on a Prosody 13 file store of N users (benchmarks/prosody13.py): written by Prosody 13's own
          util.datamanager (Debian 13's package in the tree tools/prosody13-tree.sh builds, its Lua 5.4, chrooted)
          like a Debian 13 server's: per user lastlog2 (as above), account_activity ({timestamp}, for the 90% who
          logged in) and accounts (mod_auth_internal_hashed's record: 2% disabled, 3% of users deleted, i.e. no
          record, and 5% more accounts with no activity); in $XDG_CACHE_HOME/prosody-lastlog-bench/prosody13-users-N
  seed      Prosody 13's datamanager running Debian 13's packaged mod_measure_active_users: its lastlog2 users,
            each counted if mod_auth_internal_hashed's is_enabled says so (record there, not disabled), last active
            at the later of login and logout (prosody13_seed.lua, in Prosody 13's Lua 5.4)
  floor     io_floor over each host's lastlog2 files and, listing the host's accounts directory first, the account
            file of each of those users that has one, then those of the accounts with no lastlog2 file (never
            active: their registration time): exactly the files our reader reads
  ours      our cold scan, counting lastlog2 as that module does (--store lastlog2), accounts checked; it must count
            exactly what the seed counts. Target: ours / floor ≤ 1.5
  default   ours by default settings, which reads account_activity on Prosody 13 data (no module found), with its
            floor (account_activity + accounts); counts as the seed, as account_activity holds the later of each
            user's login and logout. Target: ≤ 1.5 too
  as 0.12   the same lastlog2 files with nothing else (hard links, `view-0.12`): read as Prosody 0.12 data, no
            account file read; ours must count what the Prosody 0.12 seed counts there. The account check costs the
            difference with ours (and its floor the difference with the floor), medians of per-repeat differences
SQL       N users' lastlog2 rows, made by sql_count.rows, in a fresh database on PostgreSQL and on MariaDB at
          127.0.0.1 (sql_count.py)
  seed      the seed's access pattern: users(), then one get (a round trip) per user; above sql_count.SEED_SAMPLE
            users the gets of an even sample are timed and scaled up, and its counts are not compared
  pushdown  our count: the aggregate in the engine (SqlReader)
  floors    a bare scan of the rows, and the per-account GROUP BY alone: no exact count can do less
  ratios    pushdown / seed (target at 1M: pushdown ≤ 1 s and ≤ 0.02 of the seed, i.e. ≥ 50x faster),
            pushdown / scan floor; the pushdown must count what the seed counts
  serve     a full read; a look after 1,000 logins (target at 1M ≤ 1 s); the same accounts read as --sql-binlog
            reads them (target ≤ 1 s); /metrics p99 under --threads clients while serve looks every 5 s with 10
            logins a second (target ≤ 10 ms), and during a full read (sql_refresh.py)
daemon    `prosody-lastlog serve` on the same files (daemon.py)
  startup   seconds from process start to /metrics answering with all N users
  RSS       bytes per tracked user above serve on an empty data dir (target ≤ 120 at 1M, where fixed costs fade)
  /metrics  p50 and p99 latency under a loopback load of --threads clients for --load-seconds (target p99 ≤ 10 ms,
            flat: p99 / p99 at the smallest N stays ≈ 1)
  rename    ms from a Prosody-style rename of a user's file to /metrics showing it, median and p99 of --renames
            (target ≤ 2000 ms)

Needs Debian's prosody and lua5.4 and a C compiler (`make bench` installs them); for the Prosody 13 set, the tree
tools/prosody13-tree.sh builds (`make bench` does) and root, as it is entered by chroot (--no-prosody13 without);
for SQL, the PostgreSQL and MariaDB servers the tests use (tests/sql_servers.py; TEST_POSTGRES_*/TEST_MYSQL_*
override; --no-sql without them).
Prints one table (a column per N; last, each target and whether it is met, at 1M or at the largest N measured) and
writes the same figures as JSON to benchmarks/results/suite-<date>.json (not versioned). Absolute times drift between
machines and runs: the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import daemon
import prosody13
import scan
import sql_count
import sql_refresh

from prosody_lastlog.core.model import Store

HERE = Path(__file__).resolve().parent
FLOOR_SOURCE = HERE / "io_floor.c"
MILLION = 1_000_000

Figures = dict[str, float | bool]  # one N's figures, by dotted name ("files.ours_over_floor")


@dataclass(frozen=True)
class Target:
    """A figure's target (issue 6; the imports: issue 18): at most `limit`, at `users` users if set, else at the
    largest N measured."""

    figure: str
    limit: float
    text: str
    users: int | None = None


TARGETS = [
    Target("files.ours_over_floor", 1.5, "≤ 1.5"),
    Target("files.command_import_ms", 50, "≤ 50"),
    Target("files13.ours_over_floor", 1.5, "≤ 1.5"),
    Target("files13.default_over_floor", 1.5, "≤ 1.5"),
    *(Target(f"sql.{engine}.pushdown_s", 1.0, "≤ 1", MILLION) for engine in sql_count.SERVERS),
    *(Target(f"sql.{engine}.pushdown_over_seed", 0.02, "≤ 0.02", MILLION) for engine in sql_count.SERVERS),
    *(Target(f"sql.{engine}.steady_s", 1.0, "≤ 1", MILLION) for engine in sql_count.SERVERS),
    Target("sql.MySQL.follow_s", 1.0, "≤ 1", MILLION),
    *(Target(f"sql.{engine}.metrics_looks_p99_ms", 10, "≤ 10", MILLION) for engine in sql_count.SERVERS),
    Target("daemon.rss_bytes_per_user", 120, "≤ 120", MILLION),
    Target("daemon.p99_ms", 10, "≤ 10"),
    Target("daemon.rename_p99_ms", 2000, "≤ 2000"),
]


@dataclass(frozen=True)
class FloorRun:
    """One run of the I/O floor: the store files it read, and the account files."""

    seconds: float
    files: int
    bytes: int
    account_files: int = 0


def build_floor(directory: Path) -> Path:
    """Compiles io_floor.c with the system C compiler into `directory`; returns the executable."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("no C compiler for the I/O floor: install gcc (tools/install-debian-packages.sh does)")
    executable = directory / "io_floor"
    subprocess.run([compiler, "-O2", "-std=c11", "-Wall", "-o", str(executable), str(FLOOR_SOURCE)], check=True)
    return executable


def run_floor(executable: Path, data_dir: Path) -> FloorRun:
    """Opens and reads every user file of every host's lastlog2 store, in C."""
    return floor(executable, [str(store) for store in sorted(data_dir.glob("*/lastlog2"))])


def floor(executable: Path, args: list[str]) -> FloorRun:
    """io_floor on `args` (store directories, each with `-a <accounts directory>` before it to read its users'
    account files too)."""
    output = subprocess.run([str(executable), *args], capture_output=True, text=True, check=True).stdout
    values = dict(line.split(" ", 1) for line in output.splitlines())
    return FloorRun(float(values["seconds"]), int(values["files"]), int(values["bytes"]), int(values["account_files"]))


def files_figures(executable: Path, data_dir: Path, users: int, repeat: int) -> Figures:
    """The seed, the floor and our cold scan on one data set, interleaved, each after a page-cache warm-up.

    The warm-up is the floor itself: it reads every file, as scan.warm_page_cache does, in a fraction of the time.
    scan.Run's peak RSS is left out: a child's ru_maxrss includes this process's RSS at the fork."""
    load = _load_1min()
    floors: list[FloorRun] = []
    ours: list[scan.Run] = []
    wholes: list[scan.Run] = []
    seeds: list[scan.Run] = []
    scan.compile_bytecode()
    for _ in range(repeat):
        run_floor(executable, data_dir)
        floors.append(run_floor(executable, data_dir))
        run_floor(executable, data_dir)
        ours.append(scan.run_ours(data_dir))
        run_floor(executable, data_dir)
        wholes.append(scan.run_command(data_dir))
        run_floor(executable, data_dir)
        seeds.append(scan.run_prosody(data_dir))
    floor_s = statistics.median(run.seconds for run in floors)
    ours_s = statistics.median(run.seconds for run in ours)
    seed_s = statistics.median(run.seconds for run in seeds)
    whole_s = statistics.median(run.seconds for run in wholes)
    files = floors[0].files
    return {
        "files.load_1min": load,
        "files.seed_s": seed_s,
        "files.floor_s": floor_s,
        "files.ours_s": ours_s,
        "files.seed_us_per_file": seed_s / files * 1e6,
        "files.floor_us_per_file": floor_s / files * 1e6,
        "files.ours_us_per_file": ours_s / files * 1e6,
        "files.ours_over_seed": ours_s / seed_s,
        "files.ours_over_floor": ours_s / floor_s,
        "files.seed_over_floor": seed_s / floor_s,
        "files.command_s": whole_s,
        "files.command_over_floor": whole_s / floor_s,
        "files.command_import_ms": scan.import_seconds() * 1000,
        "files.files": files,
        "files.mib": floors[0].bytes / 2**20,
        "files.counts_agree": all(run.counts == seeds[0].counts for run in ours + wholes + seeds)
        and all(run.files == users for run in floors),
    }


def files13_figures(executable: Path, data: prosody13.DataSet, users: int, repeat: int) -> Figures:
    """The Prosody 13 set: seed, floor and our cold scan, account check included; our scan by default settings; and
    the same users read as Prosody 0.12 data (no account file read), with its floor. All interleaved, each after a
    page-cache warm-up that reads the files it reads (its floor, run once more).

    The main trio reads lastlog2, as Debian 13's packaged module does (ours with --store lastlog2, the seed that
    module's algorithm), so the 0.12 reading of the view reads the very same activity files: their difference is
    the account check alone. Its costs are medians of the per-repeat differences and ratios (the runs interleave)."""
    load = _load_1min()
    floor_args = {
        "floor": data.floor_args(prosody13.ACTIVITY, accounts=True),
        "default_floor": data.floor_args(prosody13.DEFAULT_STORE, accounts=True),
        "no_check_floor": data.view_floor_args(),
    }
    sides: list[tuple[str, str, Callable[[], scan.Run] | None]] = [  # (name, its floor, its scan; None: the floor)
        ("floor", "floor", None),
        ("ours", "floor", partial(scan.run_ours, data.data_dir, Store.LASTLOG2)),
        ("seed", "floor", partial(prosody13.run_seed13, data)),
        ("default_floor", "default_floor", None),
        ("default_ours", "default_floor", partial(scan.run_ours, data.data_dir)),
        ("no_check_floor", "no_check_floor", None),
        ("no_check_ours", "no_check_floor", partial(scan.run_ours, data.view_dir)),
    ]
    floors: dict[str, list[FloorRun]] = {name: [] for name in floor_args}
    runs: dict[str, list[scan.Run]] = {name: [] for name, _, measure in sides if measure is not None}
    for _ in range(repeat):
        for name, files, measure in sides:
            floor(executable, floor_args[files])
            if measure is None:
                floors[name].append(floor(executable, floor_args[files]))
            else:
                runs[name].append(measure())
    floor(executable, floor_args["no_check_floor"])
    seed_012 = scan.run_prosody(data.view_dir)  # what Prosody 0.12 counts on the view, for the counts only
    seconds = {name: statistics.median(run.seconds for run in own) for name, own in floors.items()}
    seconds |= {name: statistics.median(run.seconds for run in own) for name, own in runs.items()}
    ours, no_check = runs["ours"], runs["no_check_ours"]
    main_floor, no_check_floor = floors["floor"], floors["no_check_floor"]
    seeded = runs["seed"][0].counts
    agree = (
        all(run.counts == seeded for run in ours + runs["seed"] + runs["default_ours"])
        and all(run.counts == seed_012.counts for run in no_check)
        and _floor_reads_ours(main_floor, ours)
        and _floor_reads_ours(floors["default_floor"], runs["default_ours"])
        and _floor_reads_ours(no_check_floor, no_check, accounts=False)
        and all(run.files == users for run in main_floor + no_check_floor)
    )
    return {f"files13.{name}_s": value for name, value in seconds.items()} | {
        "files13.load_1min": load,
        "files13.files": main_floor[0].files,
        "files13.account_files": main_floor[0].account_files,
        "files13.mib": main_floor[0].bytes / 2**20,
        "files13.seed_us_per_file": seconds["seed"] / users * 1e6,
        "files13.floor_us_per_file": seconds["floor"] / users * 1e6,
        "files13.ours_us_per_file": seconds["ours"] / users * 1e6,
        "files13.ours_over_seed": seconds["ours"] / seconds["seed"],
        "files13.ours_over_floor": seconds["ours"] / seconds["floor"],
        "files13.seed_over_floor": seconds["seed"] / seconds["floor"],
        "files13.default_over_floor": seconds["default_ours"] / seconds["default_floor"],
        "files13.default_over_seed": seconds["default_ours"] / seconds["seed"],
        "files13.no_check_over_floor": seconds["no_check_ours"] / seconds["no_check_floor"],
        "files13.check_s": _paired(ours, no_check, lambda a, b: a - b),
        "files13.check_ratio": _paired(ours, no_check, lambda a, b: a / b),
        "files13.check_us_per_file": _paired(ours, no_check, lambda a, b: a - b) / users * 1e6,
        "files13.check_floor_s": _paired(main_floor, no_check_floor, lambda a, b: a - b),
        "files13.check_floor_ratio": _paired(main_floor, no_check_floor, lambda a, b: a / b),
        "files13.counts_agree": agree,
    }


def _floor_reads_ours(floors: list[FloorRun], ours: list[scan.Run], *, accounts: bool = True) -> bool:
    """Whether the floor read as many files as our reader: a store file per user record and, where accounts are
    checked, an account file per user that has one and one per account with no record (its registration time)."""
    return all(
        (run.files, run.account_files) == (own.users, own.users - own.no_account + own.account_only if accounts else 0)
        for run in floors
        for own in ours
    )


def _paired(
    first: Sequence[FloorRun | scan.Run], second: Sequence[FloorRun | scan.Run], how: Callable[[float, float], float]
) -> float:
    """The median of `how(a, b)` over the runs of two interleaved sides, repeat by repeat."""
    return statistics.median(how(a.seconds, b.seconds) for a, b in zip(first, second, strict=True))


def sql_figures(engine: str, users: int, repeat: int, load_seconds: float) -> Figures:
    """The seed's access pattern, our pushdown and the engine's floors, serve's refreshes and /metrics while they
    run, in a fresh database of `users` users."""
    load = _load_1min()
    with sql_count.SERVERS[engine]() as server:
        loaded = sql_count.load(server, users)
        with sql_refresh.buffer_pool_for(server):
            seed_s, seeded = sql_count.time_seed_pattern(server, repeat)
            pushdown_s, pushed = sql_count.time_method(server, "pushdown", repeat)
            scan_s, group_s = sql_count.time_floors(server, repeat)
            refresh = sql_refresh.refresh_figures(server, users, repeat=repeat, changes=1000)
            under = sql_refresh.metrics_under_refreshes(
                server, users, threads=4, seconds=load_seconds, interval=5, reconcile=round(load_seconds) + 10
            )
    result: Figures = {
        f"sql.{engine}.load_1min": load,
        f"sql.{engine}.load_s": loaded,
        f"sql.{engine}.seed_s": seed_s,
        f"sql.{engine}.seed_sampled": seeded is None,
        f"sql.{engine}.pushdown_s": pushdown_s,
        f"sql.{engine}.scan_floor_s": scan_s,
        f"sql.{engine}.group_floor_s": group_s,
        f"sql.{engine}.pushdown_over_seed": pushdown_s / seed_s,
        f"sql.{engine}.pushdown_over_scan_floor": pushdown_s / scan_s,
        f"sql.{engine}.full_read_s": refresh["full_read_s"],
        f"sql.{engine}.steady_s": refresh["steady_s"],
        f"sql.{engine}.steady_over_pushdown": refresh["steady_s"] / pushdown_s,
        f"sql.{engine}.steady_bytes": refresh["steady_bytes"],
        f"sql.{engine}.follow_s": refresh["follow_s"],
        f"sql.{engine}.metrics_looks_p99_ms": under["looks_p99_ms"],
        f"sql.{engine}.metrics_full_read_p99_ms": under["full_read_p99_ms"],
        f"sql.{engine}.pushdown_bytes": refresh["pushdown_bytes"],
        f"sql.{engine}.seed_bytes": refresh["seed_bytes"],
    }
    if seeded is not None:
        result[f"sql.{engine}.counts_agree"] = pushed == seeded
    return result


def daemon_figures(sets: dict[int, Path], args: argparse.Namespace) -> dict[int, Figures]:
    """daemon.py's measurements, `args.repeat` times per data set, each run with its own empty-dir baseline."""
    runs: dict[int, list[dict[str, float]]] = {users: [] for users in sets}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="prosody-lastlog-bench-") as tmp:
            empty = Path(tmp, "empty")
            empty.mkdir()
            baseline = daemon.measure(empty, 0, args, Path(tmp)).rss_bytes
            for users, data_dir in sets.items():
                load = _load_1min()
                measured = daemon.measure(data_dir, users, args, Path(tmp))
                runs[users].append(daemon.figures(measured, baseline) | {"load_1min": load})
                _progress(f"daemon {users:,} users", runs[users][-1], "p99_ms", "rename_median_ms")
    medians = {users: daemon.medians(own) for users, own in runs.items()}
    smallest = medians[min(medians)]["p99_ms"]
    return {
        users: {f"daemon.{key}": value for key, value in figures.items()}
        | {"daemon.p99_over_smallest": figures["p99_ms"] / smallest}
        for users, figures in medians.items()
    }


ROWS: list[tuple[str, str, str, float]] = [  # (label, figure, format, scale)
    ("files: load average (1 min) before", "files.load_1min", ".2f", 1),
    ("files: MiB of user files", "files.mib", ".1f", 1),
    ("files: seed, Prosody datamanager in Lua (s)", "files.seed_s", ".3f", 1),
    ("files: I/O floor, C open+read (s)", "files.floor_s", ".3f", 1),
    ("files: ours, cold scan (s)", "files.ours_s", ".3f", 1),
    ("files: seed µs/file", "files.seed_us_per_file", ".2f", 1),
    ("files: floor µs/file", "files.floor_us_per_file", ".2f", 1),
    ("files: ours µs/file", "files.ours_us_per_file", ".2f", 1),
    ("files: ours / seed", "files.ours_over_seed", ".2f", 1),
    ("files: ours / floor", "files.ours_over_floor", ".2f", 1),
    ("files: seed / floor", "files.seed_over_floor", ".2f", 1),
    ("files: whole `count` command, s", "files.command_s", ".3f", 1),
    ("files: whole `count` command / floor", "files.command_over_floor", ".2f", 1),
    ("files: `count` imports, ms", "files.command_import_ms", ".1f", 1),
    ("files: counts agree (ours = seed)", "files.counts_agree", "", 1),
    ("files 13: load average (1 min) before", "files13.load_1min", ".2f", 1),
    ("files 13: lastlog2 files (users)", "files13.files", ".0f", 1),
    ("files 13: account files (every account)", "files13.account_files", ".0f", 1),
    ("files 13: MiB of lastlog2 + account files", "files13.mib", ".1f", 1),
    ("files 13: seed, Prosody 13 datamanager (s)", "files13.seed_s", ".3f", 1),
    ("files 13: I/O floor, lastlog2 + accounts (s)", "files13.floor_s", ".3f", 1),
    ("files 13: ours, lastlog2 + accounts (s)", "files13.ours_s", ".3f", 1),
    ("files 13: seed µs/user", "files13.seed_us_per_file", ".2f", 1),
    ("files 13: floor µs/user", "files13.floor_us_per_file", ".2f", 1),
    ("files 13: ours µs/user", "files13.ours_us_per_file", ".2f", 1),
    ("files 13: ours / seed", "files13.ours_over_seed", ".2f", 1),
    ("files 13: ours / floor", "files13.ours_over_floor", ".2f", 1),
    ("files 13: seed / floor", "files13.seed_over_floor", ".2f", 1),
    ("files 13 default: floor, account_activity (s)", "files13.default_floor_s", ".3f", 1),
    ("files 13 default: ours, account_activity (s)", "files13.default_ours_s", ".3f", 1),
    ("files 13 default: ours / floor", "files13.default_over_floor", ".2f", 1),
    ("files 13 default: ours / seed", "files13.default_over_seed", ".2f", 1),
    ("files 13 as 0.12: floor, lastlog2 only (s)", "files13.no_check_floor_s", ".3f", 1),
    ("files 13 as 0.12: ours, no account read (s)", "files13.no_check_ours_s", ".3f", 1),
    ("files 13 as 0.12: ours / floor", "files13.no_check_over_floor", ".2f", 1),
    ("files 13: account check, ours (s)", "files13.check_s", ".3f", 1),
    ("files 13: account check, ours µs/user", "files13.check_us_per_file", ".2f", 1),
    ("files 13: ours with check / without", "files13.check_ratio", ".2f", 1),
    ("files 13: account check, floor (s)", "files13.check_floor_s", ".3f", 1),
    ("files 13: floor with accounts / without", "files13.check_floor_ratio", ".2f", 1),
    ("files 13: counts agree (ours = seed)", "files13.counts_agree", "", 1),
    *(
        row
        for engine in sql_count.SERVERS
        for row in (
            (f"{engine}: load average (1 min) before", f"sql.{engine}.load_1min", ".2f", 1),
            (f"{engine}: bulk load of the rows (s)", f"sql.{engine}.load_s", ".1f", 1),
            (f"{engine}: seed, users() + get each (s)", f"sql.{engine}.seed_s", ".3f", 1),
            (f"{engine}: seed timed on a sample, scaled up", f"sql.{engine}.seed_sampled", "", 1),
            (f"{engine}: ours, pushdown (s)", f"sql.{engine}.pushdown_s", ".3f", 1),
            (f"{engine}: floor, bare scan of the rows (s)", f"sql.{engine}.scan_floor_s", ".3f", 1),
            (f"{engine}: floor, per-account GROUP BY (s)", f"sql.{engine}.group_floor_s", ".3f", 1),
            (f"{engine}: pushdown / seed", f"sql.{engine}.pushdown_over_seed", ".4f", 1),
            (f"{engine}: serve, full read (s)", f"sql.{engine}.full_read_s", ".3f", 1),
            (f"{engine}: serve, a look after 1,000 logins (s)", f"sql.{engine}.steady_s", ".3f", 1),
            (f"{engine}: a look / pushdown", f"sql.{engine}.steady_over_pushdown", ".3f", 1),
            (f"{engine}: --sql-binlog, the same 1,000 read (s)", f"sql.{engine}.follow_s", ".3f", 1),
            (f"{engine}: /metrics p99 while looking (ms)", f"sql.{engine}.metrics_looks_p99_ms", ".2f", 1),
            (f"{engine}: /metrics p99 in a full read (ms)", f"sql.{engine}.metrics_full_read_p99_ms", ".2f", 1),
            (f"{engine}: KiB moved: seed", f"sql.{engine}.seed_bytes", ".0f", 1 / 1024),
            (f"{engine}: KiB moved: pushdown", f"sql.{engine}.pushdown_bytes", ".1f", 1 / 1024),
            (f"{engine}: KiB moved: a look", f"sql.{engine}.steady_bytes", ".1f", 1 / 1024),
            (f"{engine}: pushdown / scan floor", f"sql.{engine}.pushdown_over_scan_floor", ".2f", 1),
            (f"{engine}: counts agree (pushdown = seed)", f"sql.{engine}.counts_agree", "", 1),
        )
    ),
    ("daemon: load average (1 min) before", "daemon.load_1min", ".2f", 1),
    ("daemon: startup to /metrics (s)", "daemon.startup_s", ".2f", 1),
    ("daemon: RSS (MiB)", "daemon.rss_bytes", ".1f", 2**-20),
    ("daemon: RSS bytes per tracked user", "daemon.rss_bytes_per_user", ".0f", 1),
    ("daemon: /metrics requests/s", "daemon.requests_per_s", ".0f", 1),
    ("daemon: /metrics p50 (ms)", "daemon.p50_ms", ".2f", 1),
    ("daemon: /metrics p99 (ms)", "daemon.p99_ms", ".2f", 1),
    ("daemon: p99 / p99 at smallest N", "daemon.p99_over_smallest", ".2f", 1),
    ("daemon: /metrics failed requests", "daemon.load_errors", ".0f", 1),
    ("daemon: wrk p50 (ms)", "daemon.wrk_p50_ms", ".2f", 1),
    ("daemon: wrk p99 (ms)", "daemon.wrk_p99_ms", ".2f", 1),
    ("daemon: /nodeinfo/2.1 p99 (ms)", "daemon.nodeinfo_p99_ms", ".2f", 1),
    ("daemon: /nodeinfo/2.1 p99 / /metrics p99", "daemon.nodeinfo_p99_over_metrics", ".2f", 1),
    ("daemon: rename -> /metrics median (ms)", "daemon.rename_median_ms", ".1f", 1),
    ("daemon: rename -> /metrics p99 (ms)", "daemon.rename_p99_ms", ".1f", 1),
]


@dataclass(frozen=True)
class Verdict:
    """A target judged on its N, or on the largest N measured; value and met are None if it was not measured."""

    figure: str
    users: int
    target: str
    value: float | None
    met: bool | None


def check_targets(figures: dict[int, Figures]) -> list[Verdict]:
    """Every target, judged."""
    verdicts = []
    for target in TARGETS:
        users = target.users or max(figures)
        value = figures.get(users, {}).get(target.figure)
        assert not isinstance(value, bool), target.figure
        met = None if value is None else value <= target.limit
        verdicts.append(Verdict(target.figure, users, target.text, value, met))
    return verdicts


def print_table(figures: dict[int, Figures], verdicts: list[Verdict]) -> None:
    """The one table: a column per N, then the target and whether it is met, on the N it is judged on."""
    judged = {verdict.figure: verdict for verdict in verdicts}
    print(f"{'':<46}" + "".join(f"{f'{users:,}':>14}" for users in figures) + "   target")
    for label, key, spec, scale in ROWS:
        if not any(key in own for own in figures.values()):
            continue
        cells = "".join(f"{_cell(own.get(key), spec, scale):>14}" for own in figures.values())
        target = _target_cell(judged[key]) if key in judged else ""
        print(f"{label:<46}{cells}   {target}".rstrip())


def _cell(value: float | bool | None, spec: str, scale: float) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value * scale, spec)


def _target_cell(verdict: Verdict) -> str:
    outcome = {None: "not measured", True: "pass", False: "MISS"}[verdict.met]
    return f"{verdict.target} at {verdict.users:,}: {outcome}"


def _progress(what: str, figures: Mapping[str, float], *keys: str) -> None:
    if measured := [f"{key} {figures[key]:.3g}" for key in keys if key in figures]:
        print(f"{what}: " + ", ".join(measured), flush=True)


def _sizes(text: str) -> list[int]:
    sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] < len(scan.HOSTS):
        raise argparse.ArgumentTypeError(f"sizes are user counts of at least {len(scan.HOSTS)}, comma-separated")
    return sizes


def _load_1min() -> float:
    return os.getloadavg()[0]


def _loads(load: tuple[float, float, float]) -> str:
    return " ".join(f"{value:.2f}" for value in load)


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_sizes, default=[10_000, 100_000], help="users per data set (10000,100000)")
    parser.add_argument("--million", action="store_true", help="also 1,000,000 users")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; medians are reported (3)")
    parser.add_argument("--no-files", dest="files", action="store_false", help="skip seed / floor / cold scan")
    parser.add_argument(
        "--no-prosody13", dest="prosody13", action="store_false", help="skip the Prosody 13 set of the files part"
    )
    parser.add_argument("--no-sql", dest="sql", action="store_false", help="skip PostgreSQL and MariaDB")
    parser.add_argument("--no-daemon", dest="daemon", action="store_false", help="skip the daemon")
    parser.add_argument("--renames", type=int, default=20, help="timed renames per daemon run (20)")
    parser.add_argument("--load-seconds", type=float, default=10.0, help="duration of each /metrics load test (10)")
    parser.add_argument("--threads", type=int, default=4, help="load generator clients (4)")
    parser.add_argument("--json", type=Path, help="results file (benchmarks/results/suite-<date>.json)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prosody-lastlog-bench",
        help="where generated users are kept between runs ($XDG_CACHE_HOME/prosody-lastlog-bench)",
    )
    args = parser.parse_args(None if argv is None else list(argv))
    if args.million and MILLION not in args.sizes:
        args.sizes = [*args.sizes, MILLION]
    if min(args.repeat, args.renames, args.threads) < 1:
        parser.error("--repeat, --renames and --threads need at least 1")
    return args


def measure_all(sets: dict[int, Path], args: argparse.Namespace, errors: list[str]) -> dict[int, Figures]:
    """Every part asked for, on every data set; a part that fails is noted in `errors` and the others still run."""
    figures: dict[int, Figures] = {users: {} for users in sets}
    if args.files:
        with tempfile.TemporaryDirectory(prefix="prosody-lastlog-floor-") as tmp:
            executable = build_floor(Path(tmp))
            for users, data_dir in sets.items():
                measure = partial(files_figures, executable, data_dir, users, args.repeat)
                figures[users] |= _attempt(errors, f"files, {users:,} users", measure, Figures())
                _progress(f"files {users:,} users", figures[users], "files.ours_over_seed", "files.ours_over_floor")
                if args.prosody13:
                    measure = partial(_files13, executable, args.cache_dir, users, args.repeat)
                    figures[users] |= _attempt(errors, f"files 13, {users:,} users", measure, Figures())
                    _progress(f"files 13 {users:,} users", figures[users], *_PROGRESS_13)
    if args.sql:
        for users in sets:
            for engine in sql_count.SERVERS:
                measure = partial(sql_figures, engine, users, args.repeat, args.load_seconds)
                figures[users] |= _attempt(errors, f"{engine}, {users:,} users", measure, Figures())
                _progress(f"{engine} {users:,} users", figures[users], f"sql.{engine}.pushdown_over_seed")
    if args.daemon:
        for users, own in _attempt(errors, "daemon", partial(daemon_figures, sets, args), dict[int, Figures]()).items():
            figures[users] |= own
    return figures


_PROGRESS_13 = ("files13.ours_over_seed", "files13.ours_over_floor", "files13.default_over_floor", "files13.check_s")


def _files13(executable: Path, cache_dir: Path, users: int, repeat: int) -> Figures:
    """The Prosody 13 set of `users` users (generated first if not cached), measured."""
    return files13_figures(executable, prosody13.dataset(cache_dir, users), users, repeat)


T = TypeVar("T")


def _attempt(errors: list[str], part: str, measure: Callable[[], T], failed: T) -> T:
    """measure(), or `failed` with the error noted: a long run keeps the figures of the parts that worked."""
    try:
        return measure()
    except Exception as error:
        traceback.print_exc()
        errors.append(f"{part}: {type(error).__name__}: {error}")
        return failed


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    date = time.strftime("%Y-%m-%dT%H%M%S")
    json_path = args.json or HERE / "results" / f"suite-{date}.json"
    load_at_start = os.getloadavg()
    sets = {users: daemon.dataset(args.cache_dir, users) for users in args.sizes}
    errors: list[str] = []
    figures = measure_all(sets, args, errors)
    verdicts = check_targets(figures)
    agree = all(value for own in figures.values() for key, value in own.items() if key.endswith("counts_agree"))
    load_at_end = os.getloadavg()
    document = {
        "date": date,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_average": {"start": load_at_start, "end": load_at_end},
        "settings": {key: value for key, value in vars(args).items() if key not in ("json", "cache_dir")},
        "generator": scan.generator_version(),
        "generator13": prosody13.generator_version(),
        "hosts": list(scan.HOSTS),
        "wrk": shutil.which("wrk") is not None,
        "figures": {str(users): own for users, own in figures.items()},
        "targets": [asdict(verdict) for verdict in verdicts],
        "counts_agree": agree,
        "errors": errors,
        "seconds": time.perf_counter() - started,
    }
    print(
        f"\nmedians of {args.repeat} run(s), {len(scan.HOSTS)} hosts, {os.cpu_count()} CPUs; load average "
        f"(1, 5, 15 min) at start {_loads(load_at_start)}, at end {_loads(load_at_end)}"
    )
    print_table(figures, verdicts)
    missed = [verdict.figure for verdict in verdicts if verdict.met is False]
    passed = sum(verdict.met is True for verdict in verdicts)
    print(f"targets: {passed} pass, {len(missed)} MISS" + (f" ({', '.join(missed)})" if missed else ""))
    if not agree:
        print("COUNTS DISAGREE: see the counts agree rows")
    for error in errors:
        print(f"FAILED {error}")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {json_path} ({document['seconds']:.0f} s)")
    return 0 if agree and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
