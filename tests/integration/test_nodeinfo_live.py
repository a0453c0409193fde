"""NodeInfo against a real Prosody 0.12 and 13: `serve --config` publishes the version the running server reports
through its admin socket, openRegistrations exactly where Prosody takes an in-band registration, and the figures
`count --format json` gives for the same data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from prosody_lastlog.cli import main
from tests.integration.live_prosody import running_prosody
from tests.integration.servers import free_port
from tests.integration.xmpp_client import XmppClient
from tests.prosody13_cases import prosody_13
from tests.test_nodeinfo import assert_nodeinfo2, assert_nodeinfo_2_1, http_get, serving

pytestmark = pytest.mark.integration

OPEN, CLOSED, ALLOWLIST = "open.example", "closed.example", "allowlist.example"
PASSWORD = "nodeinfo test password"


@pytest.mark.parametrize("version", ["0.12", "13"])
def test_nodeinfo_of_a_running_prosody(version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runtime = prosody_13() if version == "13" else None
    root = tmp_path / "prosody"
    with running_prosody(
        root,
        [OPEN, CLOSED, ALLOWLIST],
        runtime=runtime,
        preamble="allow_registration = true",
        modules=["register"],
        host_options={
            CLOSED: "    allow_registration = false",
            ALLOWLIST: '    allowlist_registration_only = true\n    registration_allowlist = { "192.0.2.1" }',
        },
    ) as live:
        running = live.runtime.host_path("/usr/lib/prosody/prosody.version").read_text().strip()
        # Prosody itself: anyone may register on the open host, nobody on the closed one.
        with XmppClient(live.c2s_port, OPEN) as client:
            assert client.register("alice", PASSWORD)
        for host in (CLOSED, ALLOWLIST):  # closed; open only to an address this client does not have
            with XmppClient(live.c2s_port, host) as client:
                assert not client.register("mallory", PASSWORD), host
        live.create_user(f"bob@{CLOSED}", PASSWORD)
        live.create_user(f"carol@{OPEN}", PASSWORD)  # never logs in
        for user, host in [("alice", OPEN), ("bob", CLOSED)]:
            with XmppClient(live.c2s_port, host) as client:
                client.login(user, PASSWORD)
        deadline = time.monotonic() + 5
        while not all((live.data / f"{host.replace('.', '%2e')}/lastlog2/{user}.dat").exists()
                      for user, host in [("alice", OPEN), ("bob", CLOSED)]):  # fmt: skip
            assert time.monotonic() < deadline, "logins not recorded"
            time.sleep(0.05)
        port = free_port()
        args = ["--config", str(live.config), "--listen", f"127.0.0.1:{port}"]
        args += [arg for host in (OPEN, CLOSED, ALLOWLIST) for arg in ("--nodeinfo-host", host)]
        args += ["--nodeinfo-node-name", f"{OPEN}=Open chat"]
        with serving(args, tmp_path) as logged:
            documents = {}
            for host in (OPEN, CLOSED, ALLOWLIST):
                status, _, body = http_get(f"http://127.0.0.1:{port}/nodeinfo/2.1", host)
                assert status == 200, body
                documents[host] = json.loads(body)
                assert_nodeinfo_2_1(documents[host])
                status, _, body = http_get(f"http://127.0.0.1:{port}/.well-known/x-nodeinfo2", host)
                assert status == 200, body
                assert_nodeinfo2(json.loads(body))
            assert f"version: Prosody {running}, from the running Prosody, asked at" in logged()
        assert (
            main(["count", "--config", str(live.config), "--format", "json", "--window", "30d", "--window", "180d"])
            == 0
        )
        counted = json.loads(capsys.readouterr().out)["hosts"]
    for host, document in documents.items():
        assert document["software"]["version"] == running  # 13's, though this machine's package is 0.12
        assert document["openRegistrations"] is (host == OPEN)
        total = counted[host]["registered_accounts"]  # not known for a host with no data yet: left out
        assert document["usage"]["users"] == {
            **({} if total is None else {"total": total}),
            "activeHalfyear": counted[host]["active"]["180d"],
            "activeMonth": counted[host]["active"]["30d"],
        }
    assert documents[OPEN]["usage"]["users"] == {"total": 2, "activeHalfyear": 1, "activeMonth": 1}
    assert documents[CLOSED]["usage"]["users"] == {"total": 1, "activeHalfyear": 1, "activeMonth": 1}
    assert documents[ALLOWLIST]["usage"]["users"] == {"activeHalfyear": 0, "activeMonth": 0}
    assert documents[OPEN]["metadata"] == {"nodeName": "Open chat"} and documents[CLOSED]["metadata"] == {}
