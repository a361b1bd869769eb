"""Prometheus metrics, built from the daemon's status document alone (docs/CONTRACT.md "Metrics").

The main loop hands each tick's status document (made from the tick's LinkViews) to ``Memory``,
which keeps the little that a single document cannot tell (when a link was last live, how many
drains ended) and returns an immutable ``Snapshot``. The HTTP thread and the textfile writer
turn the latest snapshot, plus each link's saved check result, into metric families: nothing
here reads the daemon's internals, and nothing here blocks the loop.

Every series has the label ``syncwarden_instance`` (the instance: ``default`` or NAME), and the
per-link ones ``link``. Not ``instance``: Prometheus sets that label on every target itself.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..link.states import LinkState
from ..pair import compare
from .verdict import should_be_live

INSTANCE = ("syncwarden_instance",)
LINK = INSTANCE + ("link",)
CHECK_RESULTS = ("in-sync", "differences", "error")
DRAIN_RESULTS = ("drained", "incomplete")

# name: (type, labels, help). A counter's series is NAME_total.
METRICS: Mapping[str, tuple[str, tuple[str, ...], str]] = MappingProxyType({
    "syncwarden_build_info": ("gauge", INSTANCE + ("version", "role"),
                              "Always 1: the daemon's version, its role and its instance."),
    "syncwarden_last_tick_timestamp_seconds": (
        "gauge", INSTANCE, "When the daemon last completed a reconcile tick (seconds since the"
        " epoch). It stops advancing when the main loop hangs or, in the textfile, when the"
        " daemon is gone."),
    "syncwarden_state_problems": ("gauge", INSTANCE, "State files found damaged at the daemon's"
                                  " start and read the safe way (status problems)."),
    "syncwarden_link_state_code": ("gauge", LINK, "The link's state code: 0 down,"
                                   " 1 catching-up, 2 live, 3 draining, 4 quarantined."),
    "syncwarden_link_state": ("gauge", LINK + ("state",),
                              "1 for the state the link is in, 0 for the four others."),
    "syncwarden_link_should_be_live": (
        "gauge", LINK, "1 when the link should be live: this host is the master and the link"
        " is enabled, not held, not frozen and not retired (status exits 0 only when all these"
        " are live)."),
    "syncwarden_link_enabled": ("gauge", LINK, "1 when links.NAME.enabled is true."),
    "syncwarden_link_held": ("gauge", LINK, "1 when an operator holds the link."),
    "syncwarden_link_replica_reachable": (
        "gauge", LINK, "1 when the last probe of the replica's sync server succeeded, 0 when it"
        " failed; absent before the first probe and while the link is not probed (disabled,"
        " or this host is a replica)."),
    "syncwarden_link_worker_running": ("gauge", LINK, "1 while the link's rolling worker unit"
                                       " runs."),
    "syncwarden_link_backlog_entries": ("gauge", LINK, "Valid sync log entries pending (log and"
                                        " log-run)."),
    "syncwarden_link_backlog_oldest_age_seconds": (
        "gauge", LINK, "Age of the oldest pending sync log entry; 0 only when nothing is"
        " pending."),
    "syncwarden_link_not_live_seconds": (
        "gauge", LINK, "Seconds since the link was last seen live by a tick: 0 while live;"
        " since the daemon started (or the link was added) when it was not live since."),
    "syncwarden_link_quarantined_users": ("gauge", LINK, "Users of the link held in"
                                          " quarantine."),
    "syncwarden_link_quarantine_retries": ("gauge", LINK, "Failed retries of the link's"
                                           " quarantined users, summed."),
    "syncwarden_link_drains": ("counter", LINK + ("result",), "Drains that ended since the"
                               " daemon started, by result (drained, incomplete)."),
    "syncwarden_link_last_drain_success": ("gauge", LINK, "1 when the link's last drain sent"
                                           " every entry queued at its start, else 0."),
    "syncwarden_link_last_drain_duration_seconds": ("gauge", LINK, "How long the link's last"
                                                    " drain took."),
    "syncwarden_link_last_drain_timestamp_seconds": ("gauge", LINK, "When the link's last drain"
                                                     " ended (seconds since the epoch)."),
    "syncwarden_link_last_drain_entries_left": ("gauge", LINK, "Entries pending when the link's"
                                                " last drain ended."),
    "syncwarden_link_last_check_timestamp_seconds": (
        "gauge", LINK, "When the link's last full `syncwarden check` finished (seconds since"
        " the epoch)."),
    "syncwarden_link_last_check_result": ("gauge", LINK + ("result",), "1 for the last full"
                                          " check's result (in-sync, differences, error)."),
    "syncwarden_link_last_check_differences": ("gauge", LINK + ("category",), "Differences the"
                                               " last full check found, per category."),
    "syncwarden_link_last_check_errors": ("gauge", LINK, "Users or sides the last full check"
                                          " could not read."),
    "syncwarden_link_last_check_duration_seconds": ("gauge", LINK, "How long the last full"
                                                    " check took."),
})


def series_names() -> set[str]:
    """The names rules and dashboards may use (a counter's is NAME_total)."""
    return {n + "_total" if kind == "counter" else n for n, (kind, _, _) in METRICS.items()}


def label_names() -> set[str]:
    return {label for _, labels, _ in METRICS.values() for label in labels}


@dataclass(frozen=True)
class Snapshot:
    """One tick's status document and what the ticks before it told; never changed."""

    doc: dict
    at: float                                         # wall clock of the tick
    live_at: Mapping[str, float] = field(default_factory=dict)   # link -> last seen live
    drains: Mapping[tuple[str, str], int] = field(default_factory=dict)


class Memory:
    """What a metric needs from earlier ticks; fed each tick's document by the main loop."""

    def __init__(self) -> None:
        self._live_at: dict[str, float] = {}
        self._last_drain: dict[str, dict] = {}
        self._drains: dict[tuple[str, str], int] = {}

    def observe(self, doc: dict, wall: float) -> Snapshot:
        names = set()
        for link in doc.get("links", []):
            name = link["name"]
            names.add(name)
            if link["state"] == LinkState.LIVE.value or name not in self._live_at:
                self._live_at[name] = wall
            drain = link.get("last_drain")
            if drain and drain != self._last_drain.get(name):
                self._last_drain[name] = drain
                key = (name, "drained" if drain["drained"] else "incomplete")
                self._drains[key] = self._drains.get(key, 0) + 1
        for gone in set(self._live_at) - names:    # removed by a reload
            del self._live_at[gone]
        return Snapshot(doc, wall, dict(self._live_at),
                        {k: v for k, v in self._drains.items() if k[0] in names})


def families(snap: Snapshot, last_check: Callable[[str], dict | None]) -> Iterator:
    """The metric families of one snapshot; ``last_check(link)`` reads a saved check."""
    doc = snap.doc
    inst = str(doc.get("instance", ""))
    out = {name: _family(name) for name in METRICS}
    out["syncwarden_build_info"].add_metric([inst, str(doc.get("version", "")),
                                             str(doc.get("role", ""))], 1)
    out["syncwarden_last_tick_timestamp_seconds"].add_metric([inst], snap.at)
    out["syncwarden_state_problems"].add_metric([inst], len(doc.get("problems", [])))
    retries: dict[str, int] = {}
    for q in doc.get("quarantine", []):
        retries[q["link"]] = retries.get(q["link"], 0) + int(q.get("attempts", 0))
    for link in doc.get("links", []):
        name = link["name"]
        lv = [inst, name]
        _link(out, lv, link, doc.get("role"))
        not_live = max(0.0, snap.at - snap.live_at.get(name, snap.at))
        out["syncwarden_link_not_live_seconds"].add_metric(lv, not_live)
        out["syncwarden_link_quarantine_retries"].add_metric(lv, retries.get(name, 0))
        for result in DRAIN_RESULTS:
            out["syncwarden_link_drains"].add_metric(lv + [result],
                                                     snap.drains.get((name, result), 0))
        _drain(out, lv, link.get("last_drain"))
        _check(out, lv, last_check(name))
    return iter(out.values())


def _family(name: str):
    kind, labels, text = METRICS[name]
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name, text, labels=list(labels))


def _link(out: dict, lv: list, link: dict, role) -> None:
    state, backlog = link["state"], link["backlog"]
    out["syncwarden_link_state_code"].add_metric(lv, link["state_code"])
    for s in LinkState:
        out["syncwarden_link_state"].add_metric(lv + [s.value], int(s.value == state))
    out["syncwarden_link_should_be_live"].add_metric(lv, int(should_be_live(link, role)))
    out["syncwarden_link_enabled"].add_metric(lv, int(bool(link.get("enabled", True))))
    out["syncwarden_link_held"].add_metric(lv, int(bool(link.get("held", False))))
    reachable = link["replica"].get("reachable")
    if reachable is not None:
        out["syncwarden_link_replica_reachable"].add_metric(lv, int(reachable))
    out["syncwarden_link_worker_running"].add_metric(lv, int(bool(link["worker"]["active"])))
    out["syncwarden_link_backlog_entries"].add_metric(lv, backlog["entries"])
    out["syncwarden_link_backlog_oldest_age_seconds"].add_metric(
        lv, backlog["oldest_age_seconds"])
    out["syncwarden_link_quarantined_users"].add_metric(lv, link.get("quarantined", 0))


def _drain(out: dict, lv: list, drain: dict | None) -> None:
    if not drain:
        return
    out["syncwarden_link_last_drain_success"].add_metric(lv, int(bool(drain["drained"])))
    out["syncwarden_link_last_drain_duration_seconds"].add_metric(lv,
                                                                  drain["duration_seconds"])
    out["syncwarden_link_last_drain_entries_left"].add_metric(lv, drain["entries_left"])
    at = _epoch(drain.get("at"))
    if at is not None:
        out["syncwarden_link_last_drain_timestamp_seconds"].add_metric(lv, at)


def _check(out: dict, lv: list, last: dict | None) -> None:
    """A saved check result is read as found on disk: a field it lacks is left out."""
    if not last:
        return
    _number(out["syncwarden_link_last_check_timestamp_seconds"], lv, last.get("finished"))
    _number(out["syncwarden_link_last_check_duration_seconds"], lv,
            last.get("duration_seconds"))
    _number(out["syncwarden_link_last_check_errors"], lv, last.get("errors"))
    if last.get("result") in CHECK_RESULTS:
        for result in CHECK_RESULTS:
            out["syncwarden_link_last_check_result"].add_metric(
                lv + [result], int(result == last["result"]))
    counts = last.get("counts") if isinstance(last.get("counts"), dict) else {}
    for category in compare.CATEGORIES:
        _number(out["syncwarden_link_last_check_differences"], lv + [category],
                counts.get(category))


def _number(family, labels: list, value) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        family.add_metric(labels, value)


def _epoch(iso: str | None) -> float | None:
    try:
        return datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


def check_reader(state_dir: Path) -> Callable[[str], dict | None]:
    from ..pair.lastcheck import load_last

    return lambda link: load_last(link, state_dir)
