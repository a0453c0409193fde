"""Cold-scan benchmark: prosody-lastlog against Prosody's own datamanager running the seed algorithm.

Generates N users' lastlog2 files with Prosody's real util.datamanager (Lua 5.4), then times, each in a
fresh process ("cold": no state carried over; the page cache is warmed for both) and repeated: our reader +
counting core, and Prosody's datamanager + mod_measure_active_users' arithmetic. Prints µs per user file,
peak RSS and the ratio, and checks both give the same counts.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from prosody_lastlog.core.counting import count_hosts
from prosody_lastlog.core.model import Store
from prosody_lastlog.core.rules import Policy
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.sources.files import FileStoreReader

HERE = Path(__file__).resolve().parent
SEED_SCRIPT = HERE / "prosody_seed.lua"
SEED_USERS = HERE / "seed_users.lua"  # the users it writes, shared with prosody13_seed.lua
NOW = 1_763_900_000
HOSTS = ("example.com", "chat.example.org", "münchen.example")
WINDOWS = ("1d", "7d", "30d")


@dataclass(frozen=True)
class Run:
    """One timed scan: seconds inside the process, its peak RSS, and the counts it found; for ours also the user
    records read, how many of them have no account record (marked only where accounts are checked), and the
    registered accounts with no record, whose account files it read for their registration times."""

    seconds: float
    peak_rss_kib: int
    counts: dict[str, list[int]]
    users: int = 0
    no_account: int = 0
    account_only: int = 0


def generator_version() -> str:
    """Identifies the generator (prosody_seed.lua and the users it writes): a cached data set made by another version
    is made again."""
    return hashlib.sha256(SEED_SCRIPT.read_bytes() + SEED_USERS.read_bytes()).hexdigest()[:16]


def generate(data_dir: Path, users: int) -> float:
    """Writes the users' files through Prosody's datamanager; returns the seconds it took."""
    started = time.perf_counter()
    subprocess.run(["lua5.4", str(SEED_SCRIPT), "write", str(data_dir), str(users), str(NOW), "42", *HOSTS], check=True)
    return time.perf_counter() - started


def warm_page_cache(data_dir: Path) -> None:
    """Reads every file once: this machine's kernel evicts idle page cache, which made whichever side ran
    first after a pause pay for disk reads."""
    for directory, _, names in os.walk(data_dir):
        for name in names:
            Path(directory, name).read_bytes()


def run_prosody(data_dir: Path) -> Run:
    """Prosody's datamanager and the seed module's arithmetic, in a fresh Lua 5.4 process."""
    return run_seed(["lua5.4", str(SEED_SCRIPT), "count", str(data_dir), str(NOW), *HOSTS])


def run_seed(command: list[str]) -> Run:
    """A seed script's count (`command`), in a fresh process: one line per host "<host> <1d> <7d> <30d> <files>",
    then "elapsed <seconds>" as timed inside."""
    output, rss = _run_child(command)
    lines = output.splitlines()
    counts = {}
    for line in lines[:-1]:
        host, *numbers = line.rsplit(" ", 4)
        counts[host] = [int(n) for n in numbers[:3]]
    return Run(float(lines[-1].split()[1]), rss, counts)


def run_ours(data_dir: Path, store: Store | None = None) -> Run:
    """prosody-lastlog's file reader and counting core, in a fresh Python process; default settings, or every host
    counted from `store` (the --store option)."""
    output, rss = _run_child(
        [sys.executable, __file__, "--child", str(data_dir), *(["--store", store.value] if store else [])]
    )
    result = json.loads(output)
    return Run(result["seconds"], rss, result["counts"], result["users"], result["no_account"], result["account_only"])


def compile_bytecode() -> None:
    """Compiles the package's modules as `pip install` does, so the command timings below load bytecode, as on an
    admin's server, and not source (a checkout run with PYTHONDONTWRITEBYTECODE compiles every module each time)."""
    for package in ("prosody_lastlog", "exporters"):
        compileall.compile_dir(HERE.parent / package, quiet=1)


def run_command(data_dir: Path) -> Run:
    """The whole `prosody-lastlog count` command as a cron job runs it, timed from spawn to exit: interpreter start,
    imports, the scan, the count and the JSON output. Call compile_bytecode() first."""
    command = [str(Path(sys.executable).with_name("prosody-lastlog")), "count", "--data-dir", str(data_dir)]
    command += ["--now", str(NOW), "--connected", "off", "--format", "json"]
    started = time.perf_counter()
    output, rss = _run_child(command)
    seconds = time.perf_counter() - started
    hosts = json.loads(output)["hosts"]
    return Run(seconds, rss, {host: [hosts[host]["active"][w] for w in WINDOWS] for host in hosts if host in HOSTS})


def import_seconds(repeat: int = 11) -> float:
    """What `count` pays for imports before it reads anything: the command's modules imported in a fresh
    interpreter (median of `repeat`). Call compile_bytecode() first."""
    code = "import time; t = time.perf_counter(); import prosody_lastlog.cli, prosody_lastlog.count; "
    code += "print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)]
    runs += [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
             for _ in range(repeat - 1)]  # fmt: skip
    return statistics.median(runs)


def child(data_dir: Path, store: Store | None = None) -> None:
    """Runs inside the fresh process: times read + count only."""
    started = time.perf_counter()
    result = FileStoreReader(data_dir, policy=None if store is None else Policy(forced_store=store)).read()
    counts = count_hosts(result.hosts.values(), now=NOW, windows=DEFAULT_WINDOWS)
    seconds = time.perf_counter() - started
    by_host = {host: [c.active[w] for w in WINDOWS] for host, c in counts.items()}
    every = [user for host in result.hosts.values() for user in host.users]
    users = [user for user in every if not user.account_only]  # records read
    print(
        json.dumps(
            {
                "seconds": seconds,
                "counts": by_host,
                "problems": len(result.problems),
                "users": len(users),
                "no_account": sum(user.no_account for user in users),
                "account_only": len(every) - len(users),
            }
        )
    )


def _run_child(command: list[str]) -> tuple[str, int]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"benchmark child failed ({process.returncode}): {' '.join(command)}")
    return output, usage.ru_maxrss


def _summary(name: str, runs: list[Run], users: int) -> float:
    seconds = statistics.median(run.seconds for run in runs)
    peak = max(run.peak_rss_kib for run in runs)
    print(f"{name:<44} median {seconds:8.3f} s  {seconds / users * 1e6:7.2f} µs/file  peak RSS {peak / 1024:6.1f} MiB")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Store, help=argparse.SUPPRESS)  # with --child
    args = parser.parse_args()
    if args.child:
        child(args.child, args.store)
        return 0
    with tempfile.TemporaryDirectory(prefix="prosody-lastlog-bench-") as tmp:
        data_dir = Path(tmp)
        print(f"generated {args.users} users on {len(HOSTS)} hosts in {generate(data_dir, args.users):.1f} s")
        ours, prosody = [], []
        for _ in range(args.repeat):  # interleaved, each after a page-cache warm-up, so both see the same state
            warm_page_cache(data_dir)
            ours.append(run_ours(data_dir))
            warm_page_cache(data_dir)
            prosody.append(run_prosody(data_dir))
    ours_s = _summary("prosody-lastlog (file reader + counting core)", ours, args.users)
    prosody_s = _summary("Prosody datamanager + seed algorithm (Lua 5.4)", prosody, args.users)
    print(f"ratio prosody-lastlog / Prosody: {ours_s / prosody_s:.2f}x")
    agree = all(run.counts == prosody[0].counts for run in ours + prosody)
    print(f"counts agree: {'yes' if agree else 'NO'} {prosody[0].counts}")
    print(f"this process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
