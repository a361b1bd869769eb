"""The control socket against a hostile member of control.group, under real systemd."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .swlab import Syncwarden

pytestmark = pytest.mark.system

FLOOD = Path(__file__).with_name("controlflood.py")
SOCKET = "/run/syncwarden/control.sock"
# Root asks with the project's own client and a 5 s timeout: one answer back, or it fails.
ASK = ("import json, sys\n"
       "sys.path.insert(0, '/usr/local/lib/syncwarden')\n"
       "from supervisor.control import request\n"
       f"print(json.dumps(request('status', path={SOCKET!r}, timeout=5)))\n")


def as_user(sandbox, user: str, *argv, check=True):
    """argv inside the container as a user that exists only there (with its groups)."""
    return sandbox.run("setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--",
                       *argv, check=check)


def flood_state(sandbox) -> dict:
    r = sandbox.run("cat", "/tmp/flood.json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else {}


@pytest.mark.cyrus(replicas=["replica1"], users=["bob"])
def test_a_hostile_member_neither_stalls_nor_kills_the_daemon(sandbox, cyrus):
    sw = Syncwarden(sandbox, cyrus)
    sw.setup(links=["replica1"])
    assert sw.wait_state("replica1", "live")
    pid = sw.main_pid()
    sandbox.run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", "adm",
                "swmember")
    sandbox.run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "swother")
    sandbox.write_file("/usr/local/lib/controlflood.py", FLOOD.read_text(), mode=0o644)
    sandbox.run("systemd-run", "--quiet", "--unit=controlflood", "--uid=swmember",
                "/usr/bin/python3", "/usr/local/lib/controlflood.py", SOCKET, "/tmp/flood.json",
                "/tmp/flood.stop")
    deadline = time.monotonic() + 60
    while flood_state(sandbox).get("state") != "ready" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert flood_state(sandbox).get("state") == "ready"

    # While 1,000 connections that never read come and go, root is answered every time.
    for _ in range(5):
        started = time.monotonic()
        answer = json.loads(sandbox.run("python3", "-c", ASK, timeout=30).stdout)
        print(f"root's status answered in {time.monotonic() - started:.2f}s (incl. nsenter)")
        assert answer["ok"] is True and answer["result"]["links"][0]["name"] == "replica1"
        doc = json.loads(sw.cli("status", "--json", check=False).stdout)
        assert doc["daemon"]["running"] is True
        time.sleep(1)

    sandbox.run("touch", "/tmp/flood.stop")
    deadline = time.monotonic() + 60
    while flood_state(sandbox).get("state") != "done" and time.monotonic() < deadline:
        time.sleep(0.2)
    summary = flood_state(sandbox)
    print(f"flood: {summary.get('rounds')} rounds, {summary.get('connected')} connections,"
          f" {summary.get('failed')} refused by the kernel")
    assert summary["state"] == "done" and summary["rounds"] >= 5, summary
    assert summary["connected"] >= 5000, summary
    # every garbage request got one JSON line saying what was wrong
    answers = [json.loads(a) if a else None for a in summary["answers"]]
    assert all(a["ok"] is False for a in answers[:-1]) and answers[-1] is None   # said nothing
    assert [a["error"] for a in answers[1:4]] == [
        "unknown quarantine action 'retyr' (expected one of list, retry, drop)",
        "hold: link must be a string, got a list",
        "status: unknown field 'extra'"]
    assert answers[0]["error"].startswith("bad request")
    assert answers[5]["error"] == "bad request: longer than 65536 bytes"
    assert answers[6]["error"] == "permission denied: 'drain' needs root"

    # the same daemon, never restarted, still serving members and telling others why not
    assert sw.main_pid() == pid
    restarts = sandbox.run("systemctl", "show", "-p", "NRestarts", "--value",
                           "syncwarden").stdout.strip()
    assert restarts == "0"
    member = as_user(sandbox, "swmember", "syncwarden", "status", "--json", check=False)
    assert json.loads(member.stdout)["daemon"]["running"] is True
    other = as_user(sandbox, "swother", "syncwarden", "status", check=False)
    assert other.returncode == 3          # status: the daemon did not answer this user
    assert other.stderr == (f"syncwarden status: permission denied on {SOCKET}: you are not"
                            " root or in group adm\n")
    # what status.json tells is no more readable than the socket
    assert sandbox.run("stat", "-c", "%a %U %G", "/run/syncwarden/status.json").stdout \
        .strip() == "640 root adm"
    assert sw.wait_state("replica1", "live")
