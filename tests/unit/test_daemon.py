"""The daemon's main loop in a thread: real sockets for notify, journal and control."""

import json
import socket
import threading
import time

import pytest

from supervisor.control import request
from supervisor.daemon import Daemon
from supervisor.paths import Instance
from supervisor.systemd.journal import Journal
from supervisor.systemd.notify import Notifier

from .fakes import FakeSystemd

IMAPD = """configdirectory: {d}
sync_log: on
sync_log_channels: replica1
sync_try_imap: no
replica1_sync_host: 127.0.0.1
replica1_sync_port: {port}
"""


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def running(tmp_path, monkeypatch):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))          # nothing listens: the replica is down
    (tmp_path / "imapd.conf").write_text(IMAPD.format(d=tmp_path, port=port.getsockname()[1]))
    cfg = tmp_path / "syncwarden.yaml"
    cfg.write_text(f"cyrus: {{imapd_conf: {tmp_path}/imapd.conf}}\n"
                   f"links: {{replica1: {{host: 127.0.0.1, port: {port.getsockname()[1]}}}}}\n"
                   "probe: {interval: 100ms, timeout: 100ms}\n")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(tmp_path / "journal"))
    systemd = FakeSystemd()
    d = Daemon(cfg, systemd_factory=lambda: systemd, journal=Journal(str(tmp_path / "journal")),
               notifier=Notifier(), instance=Instance(root=tmp_path))
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", d.run()), daemon=True)
    t.start()
    yield d, tmp_path, notify, journal, result
    d.request_stop()
    t.join(5)
    port.close()


def recv_until(sock, prefix):
    while True:
        msg = sock.recv(4096).decode()
        if msg.startswith(prefix):
            return msg


def test_ready_status_and_control_socket(running):
    d, tmp, notify, _, _ = running
    assert recv_until(notify, "READY=1") == "READY=1"
    status = recv_until(notify, "STATUS=")
    assert status.startswith("STATUS=replica1 down (unreachable")
    assert recv_until(notify, "WATCHDOG=1")
    answer = request("status", path=d.socket_path)
    link = answer["result"]["links"][0]
    assert link["state"] == "down" and link["replica"]["reachable"] is False
    written = json.loads((d.status_path).read_text())
    assert written["pid"] > 0 and written["written_at"] > 0


def test_bad_reload_keeps_running_config(running):
    d, tmp, notify, journal, _ = running
    recv_until(notify, "READY=1")
    (tmp / "syncwarden.yaml").write_text("links: {replica1: {host: h, port: nope}}\n")
    d.request_reload()
    journal.settimeout(5)
    while True:
        entry = journal.recv(65536).decode()
        if "reload rejected" in entry:
            break
    assert "links.replica1.port: expected an integer" in entry
    assert recv_until(notify, "READY=1")
    assert request("status", path=d.socket_path)["ok"]


def test_stop_request_ends_loop(running):
    d, tmp, notify, _, result = running
    recv_until(notify, "READY=1")
    d.request_stop()
    assert wait_for(lambda: "rc" in result) and result["rc"] == 0
    assert recv_until(notify, "STOPPING=1")
    assert not (d.socket_path).exists()


def test_bad_config_refuses_to_start(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("links: {Bad.Name: {host: h, port: 1}}\n")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(tmp_path / "journal"))
    rc = Daemon(cfg, journal=Journal(str(tmp_path / "journal")),
                instance=Instance(root=tmp_path)).run()
    assert rc == 2
    assert "links.Bad.Name: invalid link name" in capsys.readouterr().out
    assert b"MESSAGE=refusing to start" in journal.recv(65536)
