"""What monitoring reads, against real Cyrus, real systemd and a real Prometheus: the metrics
endpoint scraped and the shipped "replica down" rule firing; the textfile; the exit codes of
`status` and of `status --nagios` for live, quarantined users, a replica down and no daemon."""

from __future__ import annotations

import time

import pytest

from .promlab import SHIPPED_RULES, Prometheus, rules_for_test
from .swlab import Syncwarden
from .test_quarantine import BROKEN, break_user

pytestmark = pytest.mark.system

METRICS_PORT = 9747
TEXTFILE = "/var/lib/syncwarden-textfile/syncwarden.prom"


@pytest.fixture
def sw(sandbox, cyrus):
    return Syncwarden(sandbox, cyrus)


def firing(prom: Prometheus, alert: str) -> dict[str, dict]:
    """Firing alerts of one name, by link."""
    return {a["labels"].get("link"): a for a in prom.alerts()
            if a["labels"]["alertname"] == alert and a["state"] == "firing"}


def value(prom: Prometheus, promql: str) -> float | None:
    found = prom.query(promql)
    return float(found[0]["value"][1]) if found else None


def test_prometheus_scrapes_and_the_shipped_replica_down_rule_fires(sandbox, cyrus, sw):
    # the shipped file as installed, checked by promtool inside the container too
    sandbox.write_file("/usr/share/syncwarden/prometheus/syncwarden-rules.yml",
                       SHIPPED_RULES.read_text())
    r = sandbox.run("promtool", "check", "rules",
                    "/usr/share/syncwarden/prometheus/syncwarden-rules.yml")
    assert "SUCCESS: 13 rules found" in r.stdout, r.stdout
    sandbox.run("install", "-d", "-m", "0755", TEXTFILE.rsplit("/", 1)[0])
    # a port alone: bound to 127.0.0.1
    sw.setup(extra=f"metrics: {{listen: {METRICS_PORT}, textfile: {TEXTFILE}}}\n")
    assert sw.wait_state("replica1", "live") and sw.wait_state("replica2", "live")
    listening = sandbox.run("ss", "-Hltn", f"sport = :{METRICS_PORT}").stdout.split()
    assert listening[3] == f"127.0.0.1:{METRICS_PORT}", listening

    prom = Prometheus(sandbox)
    prom.start(f"127.0.0.1:{METRICS_PORT}", rules_for_test({"SyncwardenReplicaDown": "5s"}))
    prom.wait(lambda: value(prom, 'up{job="syncwarden"}') == 1, 30, "the target is up")
    prom.wait(lambda: value(prom, 'syncwarden_link_state_code{link="replica1"}') == 2, 30,
              "replica1 live in Prometheus")
    assert value(prom, 'syncwarden_build_info{role="master",syncwarden_instance="default"}') == 1
    assert value(prom, 'syncwarden_link_replica_reachable{link="replica1"}') == 1
    assert not firing(prom, "SyncwardenReplicaDown")

    cyrus.stop("replica1")
    cyrus.deliver("bob", 3, "while-replica1-is-down")
    t0 = time.monotonic()
    alerts = prom.wait(lambda: firing(prom, "SyncwardenReplicaDown"), 60,
                       "SyncwardenReplicaDown firing")
    took = time.monotonic() - t0
    assert set(alerts) == {"replica1"}                   # replica2 still answers
    alert = alerts["replica1"]
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["syncwarden_instance"] == "default"
    assert alert["annotations"]["summary"] == "syncwarden: replica of link replica1 unreachable"
    print(f"SyncwardenReplicaDown fired {took:.1f}s after the replica stopped")
    # what piled up meanwhile: queued, with an age, on the master
    prom.wait(lambda: (value(prom, 'syncwarden_link_backlog_entries{link="replica1"}') or 0)
              >= 6, 30, "the backlog counted")
    assert value(prom, 'syncwarden_link_backlog_oldest_age_seconds{link="replica1"}') > 0
    assert value(prom, 'syncwarden_link_state{link="replica1",state="down"}') == 1
    assert value(prom, 'syncwarden_link_should_be_live{link="replica1"}') == 1
    assert value(prom, 'syncwarden_link_not_live_seconds{link="replica1"}') > 0
    assert value(prom, 'syncwarden_link_backlog_entries{link="replica2"}') == 0

    # the same figures for node_exporter: a file promtool accepts
    text = sandbox.read_file(TEXTFILE)
    sandbox.run("promtool", "check", "metrics", input=text)
    assert ('syncwarden_link_replica_reachable{link="replica1",syncwarden_instance="default"}'
            ' 0.0') in text.splitlines()

    cyrus.start("replica1")
    assert sw.wait_state("replica1", "live", timeout=30)
    prom.wait(lambda: not firing(prom, "SyncwardenReplicaDown"), 30, "the alert resolved")
    sandbox.systemctl("stop", "lab-prometheus")


@pytest.mark.cyrus(users=tuple(f"u{i:02d}" for i in range(1, 11)), replicas=("replica1",))
def test_status_and_nagios_exit_codes(sandbox, cyrus, sw):
    def nagios():
        r = sw.cli("status", "--nagios", check=False)
        return r.returncode, r.stdout

    sw.setup()
    assert sw.wait_state("replica1", "live")
    code, out = nagios()
    assert code == 0 and out.startswith("SYNCWARDEN OK - 1 link(s): replica1 live | "), out
    assert "replica1_state=2;;;0;4 replica1_backlog=" in out
    assert sw.cli("status", check=False).returncode == 0

    # a user that cannot be replicated: quarantined, the link flows on: WARNING
    break_user(sandbox, cyrus, sw, "unreadable")
    cyrus.deliver(BROKEN, 1, "breaks")
    cyrus.deliver("u01", 1, "flows")
    deadline = time.monotonic() + 60
    while sw.link("replica1")["quarantined"] == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sw.wait_state("replica1", "live", timeout=30)
    code, out = nagios()
    assert code == 1, out
    assert out.startswith("SYNCWARDEN WARNING - replica1: 1 user(s) quarantined | "), out
    assert "replica1_quarantined=1;;;0" in out
    assert sw.cli("status", check=False).returncode == 1

    # the replica gone: CRITICAL
    cyrus.stop("replica1")
    assert sw.wait_state("replica1", "down", timeout=30)
    code, out = nagios()
    assert code == 2, out
    assert out.startswith("SYNCWARDEN CRITICAL - replica1 down: "), out
    assert sw.cli("status", check=False).returncode == 1

    # held on purpose: no longer a problem of the link, the user still is
    sw.cli("hold", "replica1")
    assert nagios()[0] == 1

    # no daemon: UNKNOWN, and status 3
    sandbox.systemctl("stop", "syncwarden")
    code, out = nagios()
    assert code == 3, out
    assert out.startswith("SYNCWARDEN UNKNOWN - syncwarden daemon: not running"), out
    assert sw.cli("status", check=False).returncode == 3
