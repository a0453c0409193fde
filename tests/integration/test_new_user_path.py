"""The README's "Install on your server" steps, run as written: its own ```sh and ```yaml blocks, with only the
substitutions a test needs (a temporary venv, the wheel and sdist built from this tree instead of PyPI's, a
temporary Prosody config, free ports); a fresh venv, the real daemon and a real Prometheus. A README line a
substitution targets, or a new one this test does not know, fails the test: the README and this test cannot drift
apart."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.servers import free_port, running
from tests.integration.test_wheel import ROOT, SAMPLE, clean_copy, run

pytestmark = pytest.mark.integration

HEADING = "## Install on your server: from nothing to a dashboard in ten minutes"
EXPECTED: dict[str, Any] = json.loads((SAMPLE / "expected.json").read_text(encoding="utf-8"))
NOW: int = EXPECTED["now"]
ACTIVE: dict[str, dict[str, int]] = EXPECTED["active_users"]
WINDOWS = ("1d", "7d", "30d")
# The daemon's clock starts at NOW (--as-of) and runs: the sample's counts hold for its first 9 s.
STEADY_SECONDS = 8.5
DEADLINE = 30.0


@dataclass
class Block:
    """The lines of one fenced block of a step; each must be claimed by `take` or `skip`, once."""

    step: int
    lines: list[str]
    claimed: set[int] = field(default_factory=set)

    def take(self, pattern: str) -> re.Match[str]:
        """The single line fully matching `pattern`: the README still has the command a substitution targets."""
        found = [(i, m) for i, line in enumerate(self.lines) if (m := re.fullmatch(pattern, line))]
        assert len(found) == 1, f"README step {self.step}: no single line matches {pattern!r} in {self.lines}"
        ((index, match),) = found
        assert index not in self.claimed, f"README step {self.step}: {self.lines[index]!r} claimed twice"
        self.claimed.add(index)
        return match

    def skip(self, pattern: str) -> None:
        """A line that is there but not run here (root-only set-up such as apt, adduser, systemctl)."""
        self.take(pattern)

    def done(self) -> None:
        """Fails on README lines no substitution knows about: a new command must be taught to this test."""
        new = [line for i, line in enumerate(self.lines) if i not in self.claimed]
        assert not new, f"README step {self.step} has commands this test does not run or skip: {new}"


def readme_steps() -> dict[int, str]:
    """The numbered steps (`**1. ...`) of the README's install section, by number."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert HEADING in readme, f"README.md lost its section {HEADING!r}"
    section = readme.split(HEADING, 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^\*\*(\d+)\. ", section, flags=re.MULTILINE)
    steps = {int(number): text for number, text in zip(parts[1::2], parts[2::2], strict=True)}
    assert sorted(steps) == [1, 2, 3, 4, 5], f"README install steps are now {sorted(steps)}"
    return steps


def block(steps: dict[int, str], step: int, language: str) -> Block:
    """The one ```language block of a step."""
    found = re.findall(rf"^```{language}\n(.*?)^```", steps[step], flags=re.MULTILINE | re.DOTALL)
    assert len(found) == 1, f"README step {step}: {len(found)} ```{language} blocks, expected one"
    return Block(step, [line for line in found[0].splitlines() if line.strip()])


def replace(argv: list[str], old: str, new: str | Path) -> list[str]:
    """`argv` with its single argument `old` replaced."""
    assert argv.count(old) == 1, f"{old!r} is not exactly once in {argv}"
    return [str(new) if part == old else part for part in argv]


def prosody_config(root: Path) -> Path:
    """A Debian-like /etc/prosody: prosody.cfg.lua including conf.d/, whose hosts record last activity into a
    copy of the sample's data_path."""
    data = root / "var-lib-prosody"
    shutil.copytree(SAMPLE / "data", data)
    (root / "conf.d").mkdir(parents=True)
    config = root / "prosody.cfg.lua"
    config.write_text(
        f'data_path = "{data}"\nmodules_enabled = {{ "roster", "saslauth", "lastlog2" }}\nInclude "conf.d/*.cfg.lua"\n',
        encoding="utf-8",
    )
    hosts = "".join(
        f'Component "{host}" "muc"\n    modules_enabled = {{ "lastlog2" }}\n'
        if host.startswith("conference.")
        else f'VirtualHost "{host}"\n'
        for host in ACTIVE
    )
    (root / "conf.d" / "hosts.cfg.lua").write_text(hosts, encoding="utf-8")
    return config


@dataclass(frozen=True)
class Installed:
    link: str  # where step 1 links the command (the unit runs it from there)
    command: Path  # the venv's own, used instead
    index: Path  # the built sdist and wheel: what PyPI would serve


def step_1_install(steps: dict[int, str], tmp: Path) -> Installed:
    """A fresh venv with the wheel built from a clean copy of this tree, pip-installed as the README says."""
    sh = block(steps, 1, "sh")
    sh.skip(r"apt install python3-venv")
    venv_line = sh.take(r"python3 -m venv (/\S+)")
    prefix = venv_line.group(1)
    pip = sh.take(rf"{re.escape(prefix)}/bin/pip install prosody-lastlog").group(0)
    link = sh.take(rf"ln -s {re.escape(prefix)}/bin/prosody-lastlog (/\S+/prosody-lastlog)").group(1)
    sh.done()

    source, out, venv = tmp / "source", tmp / "dist", tmp / "opt-prosody-lastlog"
    clean_copy(source)
    run(sys.executable, "-m", "build", "--outdir", out, source, cwd=tmp)  # the sdist, and the wheel made from it
    (wheel,) = out.glob("*.whl")
    run(*replace(replace(shlex.split(venv_line.group(0)), "python3", sys.executable), prefix, venv), cwd=tmp)
    pip_argv = [part.replace(prefix, str(venv), 1) for part in shlex.split(pip)]
    run(*replace(pip_argv, "prosody-lastlog", wheel), cwd=tmp)
    command = venv / "bin" / "prosody-lastlog"
    assert command.is_file(), f"the wheel installed no {command}"
    return Installed(link, command, out)


def step_2_count(steps: dict[int, str], installed: Installed, config: Path, tmp: Path) -> str:
    """The README's `count`, with --config and --now added; returns the daemon's user."""
    sh = block(steps, 2, "sh")
    user = sh.take(r"adduser --system --group --no-create-home (\S+)").group(1)
    sh.skip(rf"adduser {re.escape(user)} prosody")
    count = shlex.split(sh.take(rf"runuser -u {re.escape(user)} -- (prosody-lastlog count)").group(1))
    sh.done()
    assert Path(installed.link).name == count[0], f"step 2 runs {count[0]}, step 1 links {installed.link}"
    argv = [*replace(count, count[0], installed.command), "--config", str(config), "--now", str(NOW)]
    table_text, _, notes = run(*argv, cwd=tmp).partition("\n\n")  # the table, then how each host is counted
    header, *rows = table_text.splitlines()
    assert notes.startswith("[1] "), notes
    columns = re.split(r"\s{2,}", header.strip())
    table = {row.split()[0]: dict(zip(columns, re.split(r"\s{2,}", row.strip()), strict=True)) for row in rows}
    assert set(table) == set(ACTIVE), f"one line per host expected:\n{header}\n" + "\n".join(rows)
    for host, counts in ACTIVE.items():
        assert {window: int(table[host][f"active {window}"]) for window in WINDOWS} == counts, host
    return user


@dataclass(frozen=True)
class Unit:
    argv: list[str]  # ExecStart, substituted
    listen: str  # the address the README's curl and scrape job use
    metrics_url: str  # the README's curl URL, substituted
    grep: str
    source: Path  # the unpacked sdist, where the README's later steps run


def step_3_unit(steps: dict[int, str], installed: Installed, config: Path, user: str, tmp: Path) -> Unit:
    """The sdist fetched and unpacked as the README says; its unit's ExecStart, as the README describes it, with
    the venv's command, the config and a free port."""
    sh = block(steps, 3, "sh")
    download = sh.take(r"(/\S+)/bin/pip download --no-deps --no-binary :all: --dest (/\S+) prosody-lastlog")
    prefix, dest = download.group(1), download.group(2)
    sh.take(rf"tar -xzf {re.escape(dest)}/prosody_lastlog-\*\.tar\.gz -C {re.escape(dest)}")
    sh.take(rf"cd {re.escape(dest)}/prosody_lastlog-\*/")
    fetched = tmp / "fetched"
    pip = replace(shlex.split(download.group(0)), f"{prefix}/bin/pip", installed.command.with_name("pip"))
    # The build stands in for PyPI's release (the index still serves setuptools, which pip prepares the sdist with).
    run(*replace(pip, dest, fetched), "--find-links", installed.index, cwd=tmp)
    (tarball,) = fetched.glob("prosody_lastlog-*.tar.gz")
    run("tar", "-xzf", tarball, "-C", fetched, cwd=tmp)
    (source,) = (path for path in fetched.glob("prosody_lastlog-*") if path.is_dir())
    unit_path = sh.take(r"cp (contrib/[\w.-]+\.service) /etc/systemd/system/").group(1)
    sh.skip(r"systemctl daemon-reload")
    sh.skip(rf"systemctl enable --now {re.escape(Path(unit_path).stem)}")
    curl = sh.take(r"curl -sS (http://\S+/metrics) \| grep '([^']+)'")
    sh.done()

    unit = configparser.ConfigParser(interpolation=None, strict=False, comment_prefixes=("#", ";"))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    assert unit.read(source / unit_path, encoding="utf-8"), f"{unit_path} is not in the source tree"
    assert unit["Service"]["User"] == user, f"the unit runs as {unit['Service']['User']}, step 2 adds {user}"
    exec_start = shlex.split(unit["Service"]["ExecStart"])
    assert exec_start[0] == installed.link, f"the unit runs {exec_start[0]}, step 1 links {installed.link}"
    described = re.search(r"it runs `(prosody-lastlog serve [^`]+)`", steps[3])
    assert described, "README step 3 no longer says which command the unit runs"
    said = shlex.split(described.group(1))
    assert [Path(exec_start[0]).name, *exec_start[1:]] == said, f"README step 3 says {said}, the unit {exec_start}"
    listen = exec_start[exec_start.index("--listen") + 1]
    assert urllib.parse.urlsplit(curl.group(1)).netloc == listen, "the README's curl is not the unit's address"

    address = f"127.0.0.1:{free_port()}"
    argv = replace(exec_start, installed.link, installed.command)
    argv = replace(replace(argv, "/etc/prosody/prosody.cfg.lua", config), listen, address)
    return Unit([*argv, "--as-of", str(NOW)], listen, curl.group(1).replace(listen, address), curl.group(2), source)


def step_4_scrape_job(steps: dict[int, str], unit: Unit) -> tuple[str, str]:
    """The README's scrape job, its target the daemon's port; and the job name."""
    text = " ".join(steps[4].split())
    for wanted in (
        "under `scrape_configs:` in `/etc/prometheus/prometheus.yml`",
        "`promtool check config /etc/prometheus/prometheus.yml`",
        "then `systemctl reload prometheus`",
    ):
        assert wanted in text, f"README step 4 no longer says {wanted}"
    yaml = block(steps, 4, "yaml")
    job = yaml.take(r"  - job_name: (\S+)").group(1)
    yaml.take(r"    static_configs:")
    yaml.take(rf'      - targets: \["{re.escape(unit.listen)}"\]')
    yaml.done()
    address = urllib.parse.urlsplit(unit.metrics_url).netloc
    return "".join(line.replace(unit.listen, address) + "\n" for line in yaml.lines), job


@dataclass(frozen=True)
class Prometheus:
    base: str
    config: Path
    process: subprocess.Popen[bytes]


@contextmanager
def debian_prometheus(tmp: Path) -> Iterator[Prometheus]:
    """A real Prometheus on loopback, already running as Debian's package leaves it: scraping itself, under
    `scrape_configs:` last in its prometheus.yml (every second here)."""
    address = f"127.0.0.1:{free_port()}"
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n"
        f'  - job_name: prometheus\n    static_configs:\n      - targets: ["{address}"]\n',
        encoding="utf-8",
    )
    command = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address={address}",
    ]
    with running(command, ready_url=f"http://{address}/-/ready", log=tmp / "prometheus.log") as process:
        yield Prometheus(f"http://{address}", config, process)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def scraped(base: str, promql: str, job: str, at: float) -> dict[str, float]:
    """The query's value per host, as of `at`, from `job` only."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
    answer = json.loads(get(url))
    assert answer["status"] == "success", answer
    results: list[dict[str, Any]] = answer["data"]["result"]
    assert all(result["metric"]["job"] == job for result in results), results
    return {result["metric"]["host"]: float(result["value"][1]) for result in results}


def target_health(base: str, job: str) -> str | None:
    """The health ("up", "down", "unknown") of the job's target on Prometheus' Status → Targets; None if absent."""
    targets = json.loads(get(f"{base}/api/v1/targets"))["data"]["activeTargets"]
    health = {target["labels"]["job"]: str(target["health"]) for target in targets}
    return health.get(job)


def wait_until(done: Callable[[], bool]) -> None:
    """Polls `done` until it holds or the deadline passes (the caller asserts, with details)."""
    deadline = time.monotonic() + DEADLINE
    while not done() and time.monotonic() < deadline:
        time.sleep(0.2)


def test_the_readme_install_steps_take_a_new_user_to_per_host_counts_in_prometheus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    monkeypatch.delenv("PROSODY_CONFIG", raising=False)
    steps = readme_steps()
    installed = step_1_install(steps, tmp_path)
    config = prosody_config(tmp_path / "etc-prosody")
    user = step_2_count(steps, installed, config, tmp_path)
    unit = step_3_unit(steps, installed, config, user, tmp_path)
    scrape_job, job = step_4_scrape_job(steps, unit)
    daily = re.search(r'`(prosody_active_users\{window="1d"\})`', steps[4])
    assert daily, "README step 4 no longer names the daily active users query"
    queries = {window: daily.group(1).replace('"1d"', f'"{window}"') for window in WINDOWS}
    wanted = {window: {host: float(counts[window]) for host, counts in ACTIVE.items()} for window in WINDOWS}
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: run `make test`, which installs the Debian packages"

    # Step 4's reload comes first: Prometheus applies new targets only every 5 s, and the sample's counts hold for
    # the daemon's first 9 s; the daemon it then scrapes runs the same command either way.
    with debian_prometheus(tmp_path) as prometheus:
        with prometheus.config.open("a", encoding="utf-8") as yml:
            yml.write(scrape_job)
        run(promtool, "check", "config", prometheus.config, cwd=tmp_path)
        prometheus.process.send_signal(signal.SIGHUP)  # what `systemctl reload prometheus` does on Debian
        wait_until(lambda: target_health(prometheus.base, job) is not None)
        assert target_health(prometheus.base, job) is not None, (tmp_path / "prometheus.log").read_text()

        started = time.time()  # the daemon's clock reads at most NOW + (t - started) at time t
        with running(unit.argv, ready_url=unit.metrics_url, log=tmp_path / "daemon.log"):
            grepped = [line for line in get(unit.metrics_url).splitlines() if re.search(unit.grep, line)]
            labels = [dict(re.findall(r'(\w+)="([^"]*)"', line)) for line in grepped]
            shown = {(series.get("host"), series.get("window")) for series in labels}
            assert {(host, window) for host in ACTIVE for window in WINDOWS} <= shown, grepped

            def seen() -> dict[str, dict[str, float]]:
                at = min(time.time(), started + STEADY_SECONDS)  # while the sample's counts hold
                return {window: scraped(prometheus.base, promql, job, at) for window, promql in queries.items()}

            wait_until(lambda: target_health(prometheus.base, job) == "up" and seen() == wanted)
            assert target_health(prometheus.base, job) == "up", get(f"{prometheus.base}/api/v1/targets")
            late = f"{time.time() - started:.1f} s after the daemon started (the sample's counts hold 9 s)"
            assert seen() == wanted, f"{late}; the daemon's log:\n{(tmp_path / 'daemon.log').read_text()[-3000:]}"

    dashboards = re.findall(r"`(dashboards/[\w.-]+\.json)`", steps[5])
    assert dashboards, "README step 5 no longer names a dashboard file"
    for dashboard in dashboards:
        assert json.loads((unit.source / dashboard).read_text(encoding="utf-8"))["panels"], dashboard
