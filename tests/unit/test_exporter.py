"""The metrics edge in a running daemon (its main loop in a thread, a real HTTP endpoint and
textfile), and the exit codes monitoring reads from `status`, `status --nagios` and `check`."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.commands.cli import main
from supervisor.control import request
from supervisor.daemon import Daemon
from supervisor.monitor import exporter as exportermod
from supervisor.paths import Instance
from supervisor.systemd.journal import Journal
from supervisor.systemd.notify import Notifier

from .fakes import FakeSystemd
from .test_daemon import IMAPD, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path, replica_port: int, metrics: str) -> None:
    (tmp_path / "imapd.conf").write_text(IMAPD.format(d=tmp_path, port=replica_port))
    (tmp_path / "syncwarden.yaml").write_text(
        f"cyrus: {{imapd_conf: {tmp_path}/imapd.conf}}\n"
        f"links: {{replica1: {{host: 127.0.0.1, port: {replica_port}}}}}\n"
        f"probe: {{interval: 100ms, timeout: 100ms}}\n{metrics}")


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    """A daemon whose one replica does not answer; ``start(metrics_yaml)`` runs it."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))          # nothing listens: the replica is down
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(tmp_path / "journal"))
    journal.setblocking(False)
    running = {}

    def start(metrics: str) -> Daemon:
        write_config(tmp_path, closed.getsockname()[1], metrics)
        systemd = FakeSystemd()
        d = Daemon(tmp_path / "syncwarden.yaml", systemd_factory=lambda: systemd,
                   journal=Journal(str(tmp_path / "journal")), notifier=Notifier(),
                   instance=Instance(root=tmp_path))
        t = threading.Thread(target=lambda: running.setdefault("rc", d.run()), daemon=True)
        t.start()
        running.update(daemon=d, thread=t)
        assert wait_for(lambda: d.socket_path.exists())
        return d

    yield start
    if "daemon" in running:
        running["daemon"].request_stop()
        running["thread"].join(5)
    closed.close()
    journal.close()


def scrape(port: int, host: str = "127.0.0.1") -> dict:
    """{(name, sorted labels): value} from the endpoint, parsed by prometheus_client."""
    body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body) for s in f.samples}


def reachable(found: dict):
    return found.get(("syncwarden_link_replica_reachable",
                      (("link", "replica1"), ("syncwarden_instance", "default"))))


def test_endpoint_and_textfile_show_the_tick(daemon, tmp_path):
    port = free_port()
    prom = tmp_path / "textfile" / "syncwarden.prom"
    prom.parent.mkdir()
    d = daemon(f"metrics: {{listen: {port}, textfile: {prom}}}\n")
    assert wait_for(lambda: prom.exists())
    assert wait_for(lambda: reachable(scrape(port)) == 0)
    found = scrape(port)
    key = (("link", "replica1"), ("syncwarden_instance", "default"))
    assert found[("syncwarden_link_state_code", key)] == 0
    assert found[("syncwarden_link_should_be_live", key)] == 1
    assert found[("syncwarden_last_tick_timestamp_seconds",
                  (("syncwarden_instance", "default"),))] > time.time() - 10
    assert found[("process_resident_memory_bytes", ())] > 0      # the daemon's own
    assert wait_for(lambda: reachable(parse_file(prom)) == 0)
    in_file = parse_file(prom)
    assert ("syncwarden_link_state_code", key) in in_file
    assert not [k for k in in_file if k[0].startswith("process_")]   # node_exporter has them
    assert prom.stat().st_mode & 0o777 == 0o644
    assert not [p for p in prom.parent.iterdir() if p != prom]     # no temporary left
    assert d.metrics.address[1] == port


def parse_file(path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_a_client_that_never_sends_holds_up_neither_the_loop_nor_later_scrapes(daemon, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr(exportermod._Handler, "timeout", 0.5)
    port = free_port()
    d = daemon(f"metrics: {{listen: 127.0.0.1:{port}}}\n")
    assert wait_for(lambda: reachable(scrape(port)) == 0)
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        before = d.metrics.snapshot.at
        assert wait_for(lambda: d.metrics.snapshot.at > before + 1)   # the loop ticks on
        assert reachable(scrape(port)) == 0                           # after the deadline
    finally:
        silent.close()


def test_reload_moves_the_endpoint_and_a_busy_port_is_retried_not_fatal(daemon, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(exportermod, "BIND_RETRY", 0.2)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    d = daemon(f"metrics: {{listen: {port}}}\n")
    time.sleep(0.5)
    assert d.metrics.address is None
    assert request("status", path=d.socket_path)["ok"]             # the daemon runs on
    busy.close()
    assert wait_for(lambda: d.metrics.address is not None)         # bound once it was free
    new = free_port()
    write_config(tmp_path, d.metrics.snapshot.doc["links"][0]["replica"]["port"],
                 f"metrics: {{listen: '[::1]:{new}'}}\n")
    d.request_reload()
    assert wait_for(lambda: d.metrics.address is not None and d.metrics.address[1] == new)
    assert reachable(scrape(new, "[::1]")) == 0
    with pytest.raises(OSError):
        scrape(port)


def test_no_metrics_configured_means_no_exporter(daemon):
    d = daemon("")
    assert wait_for(lambda: d.status_path.exists())
    assert d.metrics is None


# --- exit codes ---------------------------------------------------------------------------------

def test_status_exit_codes_and_nagios_from_a_running_daemon(daemon, tmp_path, capsys):
    d = daemon("")
    assert wait_for(lambda: d.status_path.exists())
    time.sleep(0.5)                                   # probed: replica1 down
    base = ["-c", str(tmp_path / "syncwarden.yaml"), "--socket", str(d.socket_path)]
    assert main(base + ["status"]) == 1               # a link that should run is down
    capsys.readouterr()
    assert main(base + ["status", "--nagios"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("SYNCWARDEN CRITICAL - replica1 down: ")
    assert "| replica1_state=0;;;0;4 replica1_backlog=0;;;0" in out.splitlines()[0]
    assert main(base + ["status", "nosuch"]) == 2
    assert main(base + ["status", "nosuch", "--nagios"]) == 3
    assert capsys.readouterr().out.splitlines()[-1] == \
        "SYNCWARDEN UNKNOWN - no link named 'nosuch'"
    assert main(base + ["hold", "replica1"]) == 0     # held on purpose: nothing wrong
    assert main(base + ["status"]) == 0
    assert main(base + ["status", "--nagios"]) == 0
    assert capsys.readouterr().out.splitlines()[-2].startswith("SYNCWARDEN OK - 1 link(s)")


def test_status_without_a_daemon_is_unknown(tmp_path, capsys):
    write_config(tmp_path, 1, "")
    base = ["-c", str(tmp_path / "syncwarden.yaml"), "--socket", str(tmp_path / "none.sock")]
    assert main(base + ["status", "--nagios"]) == 3
    assert capsys.readouterr().out.startswith("SYNCWARDEN UNKNOWN - syncwarden daemon: not"
                                              " running (no daemon socket at")
    assert main(base + ["status"]) == 3
    assert main(base + ["status", "--json"]) == 3


@pytest.mark.parametrize("argv", [["status", "--nagios", "--bogus"], ["check"],
                                  ["-i", "x", "check", "r1", "--deep", "--bogus"]])
def test_usage_errors_of_monitoring_commands_are_unknown_not_critical(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 3
    with pytest.raises(SystemExit) as exc:
        main(["status", "--bogus"])                   # not a plugin: the usual 2
    assert exc.value.code == 2


def test_check_with_a_bad_config_is_unknown(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("links: {replica1: {host: h}}\n")
    assert main(["-c", str(bad), "check", "replica1"]) == 3
    write_config(tmp_path, 1, "")
    assert main(["-c", str(tmp_path / "syncwarden.yaml"), "check", "nosuch"]) == 3


def test_a_missing_textfile_directory_is_reported_once_then_used(tmp_path, caplog):
    from supervisor.config import MetricsSettings
    from supervisor.monitor.exporter import Exporter

    from .test_contract import status_documents

    doc = status_documents(tmp_path / "state")["running"]
    clock = iter(range(0, 1000, 11)).__next__          # every call: 11 s later
    prom = tmp_path / "textfile" / "syncwarden.prom"
    exporter = Exporter(MetricsSettings(textfile=prom), tmp_path, clock)
    for _ in range(3):
        exporter.publish(doc, 1.0)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"metrics.textfile {prom}: cannot write: {prom.parent}: no such directory"
                      " (is the textfile collector's directory right?)"]
    assert not prom.parent.exists()                     # not made by root behind the admin
    prom.parent.mkdir()
    exporter.publish(doc, 2.0)
    assert parse_file(prom)[("syncwarden_last_tick_timestamp_seconds",
                             (("syncwarden_instance", "default"),))] == 2.0
    exporter.close()
