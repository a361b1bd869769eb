"""The daemon's main loop in a thread: real sockets for notify, journal and control."""

import grp
import json
import selectors
import signal
import socket
import threading
import time

import pytest

from supervisor.control import request
from supervisor.daemon import Daemon
from supervisor.paths import Instance
from supervisor.link.quarantine_store import file_stem
from supervisor.systemd.journal import MESSAGE_IDS, Journal
from supervisor.systemd.notify import Notifier

from .fakes import FakeJournalFiles, FakeSystemd

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
def running(tmp_path, monkeypatch, request):
    # indirect parametrization seeds state files (relative to the state dir) before the start
    for name, content in getattr(request, "param", {}).items():
        seeded = Instance(root=tmp_path).state_dir / name
        seeded.parent.mkdir(parents=True, exist_ok=True)
        seeded.write_text(content)
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
               notifier=Notifier(), instance=Instance(root=tmp_path),
               journal_reader=FakeJournalFiles().reader, rival_scan=lambda conf, links: [])
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


def journal_entries(journal, until: str, timeout=5.0) -> str:
    journal.settimeout(timeout)
    while True:
        entry = journal.recv(65536).decode()
        if until in entry:
            return entry


def test_status_file_is_for_root_and_the_control_group_only(running):
    d, tmp, notify, _, _ = running
    recv_until(notify, "READY=1")
    assert wait_for(lambda: d.status_path.exists())
    st = d.status_path.stat()
    assert oct(st.st_mode & 0o777) == "0o640" and st.st_gid == grp.getgrnam("adm").gr_gid


@pytest.mark.parametrize("running", [{"role.json": '{"role": "mas'}], indirect=True)
def test_an_unreadable_role_starts_every_link_held_and_says_so(running):
    d, tmp, notify, journal, _ = running
    entry = journal_entries(journal, "damaged state")
    assert "role.json is unreadable" in entry and "every link held" in entry
    assert f"MESSAGE_ID={MESSAGE_IDS['state-damaged']}" in entry
    recv_until(notify, "READY=1")
    doc = request("status", path=d.socket_path)["result"]
    assert doc["role"] == "replica" and "assumed replica" in doc["role_source"]
    assert any("role.json is unreadable" in p for p in doc["problems"])
    assert doc["summary"].startswith("replica1 down (role is replica)")   # held: no worker


RECORD = {"link": "replica1", "user": "bob", "since": 1.0, "error": "x", "attempts": 1024,
          "next_retry": float("inf"), "retry_offset": -1}


@pytest.mark.parametrize("running", [
    {f"quarantine/replica1/{file_stem('replica1', 'bob')}.json": json.dumps(RECORD)}],
    indirect=True)
def test_a_poisoned_quarantine_record_is_repaired_not_a_crash_loop(running):
    d, tmp, notify, journal, result = running
    entry = journal_entries(journal, "damaged state")
    assert "next_retry inf out of range: retried now" in entry
    recv_until(notify, "READY=1")
    doc = request("status", path=d.socket_path)["result"]
    assert [q["user"] for q in doc["quarantine"]] == ["bob"] and "rc" not in result
    saved = json.loads(next((d.instance.quarantine_dir / "replica1").glob("*.json")).read_text())
    assert saved["attempts"] == 1000 and saved["next_retry"] < 1e10


def test_requests_that_used_to_kill_the_daemon_are_answered(running):
    d, tmp, notify, _, result = running
    recv_until(notify, "READY=1")
    for data in (b"[" * 50000 + b"\n", b'{"cmd": "hold", "link": ["replica1"]}\n',
                 b'{"cmd": "quarantine", "action": "retyr", "user": "bob"}\n'):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(d.socket_path))
            s.sendall(data)
            answer = json.loads(s.makefile("rb").readline())
        assert answer["ok"] is False
    assert answer["error"] == "unknown quarantine action 'retyr' (expected one of list," \
                              " retry, drop)"
    assert request("status", path=d.socket_path)["ok"] and "rc" not in result


def test_the_status_table_lists_damaged_state():
    from supervisor.commands.render import status_table

    text = status_table({"links": [], "problems": ["/x/role.json is unreadable (...)"]}, 0)
    assert text.splitlines()[-1] == "damaged state: /x/role.json is unreadable (...)"


def test_workers_find_what_they_need_where_the_daemon_left_it(running):
    d, tmp, notify, _, _ = running
    assert recv_until(notify, "READY=1") == "READY=1"
    inst = Instance(root=tmp)
    assert not inst.worker_settings("replica1").exists()   # -c: its workers read their own



def test_a_signal_that_lands_in_another_thread_wakes_the_loop(tmp_path):
    """The loop sleeps in select; Python runs handlers in the main thread only, once it
    wakes. The byte is the signal's number, written by the C-level handler in the thread the
    signal landed in (the handler's own wake() writes 0)."""
    d = Daemon(tmp_path / "none.yaml", instance=Instance(root=tmp_path),
               journal=Journal(str(tmp_path / "journal")))
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    selector = selectors.DefaultSelector()
    selector.register(d._wake_r, selectors.EVENT_READ)
    try:
        d.install_signal_handlers()
        other = threading.Thread(
            target=lambda: signal.pthread_kill(threading.get_ident(), signal.SIGHUP))
        other.start()
        other.join()
        ready = selector.select(timeout=30)
        woken_by = d._wake_r.recv(16)
    finally:
        signal.set_wakeup_fd(-1)
        for s, handler in old.items():
            signal.signal(s, handler)
        selector.close()
    assert ready and bytes([signal.SIGHUP]) in woken_by
    assert d.reload_requested                     # and the handler itself ran
