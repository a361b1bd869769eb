"""How the supervisor's state is shown: the STATUS= line and the status JSON."""

from __future__ import annotations

import datetime

from .. import __version__
from ..link.states import LinkState, WORKER_STATES


def describe(sup, rt, mono: float) -> str:
    """One link's part of the STATUS= line."""
    name, state = rt.settings.name, rt.link.state
    if state in WORKER_STATES:
        return f"{name} {state.value}, {rt.snapshot.entries} queued"
    if state is LinkState.DOWN:
        blocker = sup.blocker(rt)
        if blocker is not None:
            why = blocker.split(":")[0]
        elif not sup.classified(rt):
            why = "probing"
        elif rt.unreachable_since is not None:
            why = f"unreachable {human_duration(mono - rt.unreachable_since)}"
        else:
            why = "starting"
        return f"{name} down ({why}), {rt.snapshot.entries} queued"
    return f"{name} {state.value}"


def status(sup) -> dict:
    """The `status --json` document (SPEC.md: fields may be added, never renamed)."""
    return {
        "instance": sup.instance, "role": sup.role, "role_source": sup.role_source,
        "version": __version__,
        "summary": sup.summary,
        "links": [link_json(sup, rt) for rt in sup.links.values()],
        "quarantine": quarantine_json(sup),
    }


def quarantine_json(sup) -> list[dict]:
    if sup.store is None:
        return []
    return [q.as_json(sup.store.count(q.link, q.user)) for q in sup.store.records()
            if q.link in sup.links]


def link_json(sup, rt) -> dict:
    s, link = rt.settings, rt.link
    return {
        "name": s.name, "state": link.state.value, "state_code": link.state.code,
        "since": iso(link.since), "reason": link.reason,
        "replica": {"host": s.host, "port": s.port, "reachable": rt.reachable,
                    "detail": rt.probe.detail if rt.probe else None},
        "backlog": rt.snapshot.as_json(),
        "worker": {"unit": rt.unit, "active": rt.worker_running,
                   "state": rt.worker.active_state if rt.worker else "inactive"},
        "held": s.name in sup.holds, "enabled": s.enabled,
        "last_drain": sup.last_drain.get(s.name),
        "quarantined": len(rt.isolation.quarantined()) if rt.isolation else 0,
    }


def human_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600:02d}h"


def iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
