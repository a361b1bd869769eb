"""Metrics from status documents (monitor/metrics.py) and the Nagios view (monitor/verdict.py)."""

from __future__ import annotations

import copy

import pytest

from supervisor.exits import NAGIOS_CRITICAL, NAGIOS_OK, NAGIOS_WARNING
from supervisor.monitor import verdict
from supervisor.monitor.metrics import (METRICS, Memory, check_reader, families, label_names,
                                        series_names)
from supervisor.paths import Instance

from .test_contract import status_documents


def samples(snap, last_check=lambda link: None) -> dict:
    """{(series name, sorted label items): value} of one snapshot."""
    out = {}
    for family in families(snap, last_check):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels):
    labels.setdefault("syncwarden_instance", "default")
    return found.get((name, tuple(sorted(labels.items()))))


def test_every_figure_of_a_real_status_document(tmp_path):
    """replica1 live with alice quarantined and a recorded check; replica2 drained."""
    doc = status_documents(tmp_path)["running"]
    snap = Memory().observe(doc, 5000.0)
    found = samples(snap, check_reader(Instance(root=tmp_path).state_dir))
    one, two = (doc["links"][i] for i in (0, 1))
    assert value(found, "syncwarden_build_info", version=doc["version"], role="master") == 1
    assert value(found, "syncwarden_last_tick_timestamp_seconds") == 5000.0
    assert value(found, "syncwarden_link_state_code", link="replica1") == one["state_code"]
    assert value(found, "syncwarden_link_state", link="replica1", state=one["state"]) == 1
    assert sum(v for (n, lb), v in found.items() if n == "syncwarden_link_state"
               and ("link", "replica1") in lb) == 1
    assert value(found, "syncwarden_link_quarantined_users", link="replica1") == 1
    assert value(found, "syncwarden_link_quarantine_retries", link="replica1") == \
        doc["quarantine"][0]["attempts"]
    assert value(found, "syncwarden_link_backlog_entries", link="replica1") == \
        one["backlog"]["entries"]
    assert value(found, "syncwarden_link_replica_reachable", link="replica1") == 1
    assert value(found, "syncwarden_link_worker_running", link="replica1") == 1
    assert value(found, "syncwarden_link_should_be_live", link="replica2") == 0   # held
    assert value(found, "syncwarden_link_held", link="replica2") == 1
    drain = two["last_drain"]
    assert value(found, "syncwarden_link_drains_total", link="replica2",
                 result="drained" if drain["drained"] else "incomplete") == 1
    assert value(found, "syncwarden_link_last_drain_duration_seconds", link="replica2") == \
        drain["duration_seconds"]
    assert value(found, "syncwarden_link_last_drain_timestamp_seconds", link="replica2") > 0
    assert value(found, "syncwarden_link_last_check_result", link="replica1",
                 result="in-sync") == 1
    assert value(found, "syncwarden_link_last_check_result", link="replica1",
                 result="differences") == 0
    assert value(found, "syncwarden_link_last_check_timestamp_seconds", link="replica1") == 2.0
    assert value(found, "syncwarden_link_last_check_differences", link="replica1",
                 category="replica-only") == 0
    assert not [k for k in found if k[0].startswith("syncwarden_link_last_check")
                and ("link", "replica2") in k[1]]                   # never checked
    # every series is declared, and every declared series is shown by this document
    assert {n for n, _ in found} == series_names()
    assert {k for _, lb in found for k, _ in lb} == label_names()


def test_seconds_not_live_count_from_the_last_live_tick(tmp_path):
    doc = status_documents(tmp_path)["running"]
    mem = Memory()
    down = copy.deepcopy(doc)
    down["links"][0]["state"] = "down"
    first = samples(mem.observe(down, 100.0))
    assert value(first, "syncwarden_link_not_live_seconds", link="replica1") == 0
    assert value(samples(mem.observe(down, 130.0)), "syncwarden_link_not_live_seconds",
                 link="replica1") == 30       # not live since the daemon started
    live = copy.deepcopy(doc)
    live["links"][0]["state"] = "live"
    assert value(samples(mem.observe(live, 140.0)), "syncwarden_link_not_live_seconds",
                 link="replica1") == 0
    assert value(samples(mem.observe(down, 200.0)), "syncwarden_link_not_live_seconds",
                 link="replica1") == 60


def test_each_drain_is_counted_once_and_a_removed_link_forgotten(tmp_path):
    doc = status_documents(tmp_path)["running"]
    mem = Memory()
    for at in (1.0, 2.0, 3.0):                  # the same drain seen by three ticks
        snap = mem.observe(doc, at)
    before = samples(snap)
    assert sum(v for (n, _), v in before.items() if n == "syncwarden_link_drains_total") == 1
    again = copy.deepcopy(doc)
    again["links"][1]["last_drain"] = {**doc["links"][1]["last_drain"], "drained": True,
                                       "at": "2030-01-01T00:00:00Z"}
    found = samples(mem.observe(again, 4.0))
    drained = value(before, "syncwarden_link_drains_total", link="replica2", result="drained")
    assert value(found, "syncwarden_link_drains_total", link="replica2",
                 result="drained") == drained + 1
    assert sum(v for (n, _), v in found.items() if n == "syncwarden_link_drains_total") == 2
    assert value(found, "syncwarden_link_last_drain_success", link="replica2") == 1
    gone = {**doc, "links": doc["links"][:1]}
    snap = mem.observe(gone, 5.0)
    assert set(snap.live_at) == {"replica1"} and not any(k[0] == "replica2" for k in snap.drains)


def test_a_damaged_check_file_shows_what_it_can(tmp_path):
    doc = status_documents(tmp_path)["running"]
    last = {"result": "maybe", "finished": "yesterday", "counts": {"guid-mismatch": 3}}
    found = samples(Memory().observe(doc, 1.0), lambda link: last if link == "replica1" else None)
    assert value(found, "syncwarden_link_last_check_differences", link="replica1",
                 category="guid-mismatch") == 3
    assert not [k for k in found if k[0] in ("syncwarden_link_last_check_result",
                                             "syncwarden_link_last_check_timestamp_seconds")]


def test_the_replica_reachable_series_is_absent_before_a_probe(tmp_path):
    doc = copy.deepcopy(status_documents(tmp_path)["running"])
    doc["links"][0]["replica"]["reachable"] = None
    found = samples(Memory().observe(doc, 1.0))
    assert value(found, "syncwarden_link_replica_reachable", link="replica1") is None
    assert value(found, "syncwarden_link_replica_reachable", link="replica2") is not None


def test_metric_names_follow_prometheus_conventions():
    for name, (kind, labels, text) in METRICS.items():
        assert name.startswith("syncwarden_") and not name.endswith("_total"), name
        assert labels[0] == "syncwarden_instance" and "instance" not in labels, name
        assert text.endswith("."), name
        if kind == "gauge" and ("seconds" in name or "age" in name):
            assert name.endswith("_seconds"), name


# --- the verdict: status's exit code and --nagios ---------------------------------------------

def link(name="replica1", state="live", quarantined=0, **kw):
    return {"name": name, "state": state, "state_code": {"down": 0, "catching-up": 1, "live": 2,
                                                          "draining": 3, "quarantined": 4}[state],
            "reason": kw.pop("reason", "because"), "held": kw.pop("held", False),
            "enabled": kw.pop("enabled", True), "quarantined": quarantined,
            "backlog": {"entries": kw.pop("entries", 0),
                        "oldest_age_seconds": kw.pop("age", 0.0)}}


def doc(*links, role="master", **kw):
    return {"role": role, "links": list(links), **kw}


@pytest.mark.parametrize("links,role,expected", [
    ([link(), link("r2")], "master", NAGIOS_OK),
    ([link(state="down", held=True), link("r2")], "master", NAGIOS_OK),     # held on purpose
    ([link(state="down", enabled=False)], "master", NAGIOS_OK),             # disabled
    ([link(state="down"), link("r2", state="down")], "replica", NAGIOS_OK),  # a replica host
    ([link(state="catching-up", entries=5000, age=90)], "master", NAGIOS_WARNING),
    ([link(state="draining")], "master", NAGIOS_WARNING),
    ([link(quarantined=2)], "master", NAGIOS_WARNING),                      # users, link flows
    ([link(state="down")], "master", NAGIOS_CRITICAL),
    ([link(state="quarantined", held=True)], "master", NAGIOS_CRITICAL),    # needs an operator
    ([link(state="catching-up"), link("r2", state="down")], "master", NAGIOS_CRITICAL),
])
def test_nagios_levels(links, role, expected):
    assert verdict.level(doc(*links, role=role)) == expected
    code, text = verdict.nagios(doc(*links, role=role))
    assert code == expected
    assert text.startswith(f"SYNCWARDEN {['OK', 'WARNING', 'CRITICAL'][expected]} - ")


def test_nagios_output_has_one_status_line_with_perfdata_then_a_line_per_link():
    code, text = verdict.nagios(doc(
        link(state="down", reason="replica unreachable: connection refused\nsecond | line",
             entries=12, age=3.25),
        link("replica2", quarantined=1, entries=12345678, age=0.5),
        problems=["/var/lib/syncwarden/holds.json: bad"]))
    first, *rest = text.splitlines()
    head, perf = first.split(" | ")
    assert code == NAGIOS_CRITICAL
    assert head == ("SYNCWARDEN CRITICAL - replica1 down: replica unreachable: connection refused"
                    " second / line; replica2: 1 user(s) quarantined")
    assert perf.split() == [
        "replica1_state=0;;;0;4", "replica1_backlog=12;;;0", "replica1_oldest_age=3.25s;;;0",
        "replica1_quarantined=0;;;0", "replica2_state=2;;;0;4", "replica2_backlog=12345678;;;0",
        "replica2_oldest_age=0.5s;;;0", "replica2_quarantined=1;;;0"]
    assert rest == ["replica1: down (replica unreachable: connection refused second / line)",
                    "replica2: live (because)",
                    "damaged state: /var/lib/syncwarden/holds.json: bad"]


def test_nagios_ok_names_the_links():
    code, text = verdict.nagios(doc(link(), link("replica2", held=True, state="down")))
    assert (code, text.splitlines()[0].split(" | ")[0]) == (
        NAGIOS_OK, "SYNCWARDEN OK - 2 link(s): replica1 live, replica2 down")
    assert text.splitlines()[2] == "replica2: down, held (because)"
