"""How the links are shown: the STATUS= line and the status JSON, built from LinkViews only."""

from __future__ import annotations

from .. import __version__
from ..timefmt import human_duration, iso
from .runtime import LinkView
from .states import LinkState, WORKER_STATES


def describe(view: LinkView, role: str) -> str:
    """One link's part of the STATUS= line."""
    name, state, queued = view.name, view.state, view.backlog.entries
    rival = ", rival sync_client running" if view.rival else ""
    life = view.lifecycle or {}
    seed = life.get("seed") or {}
    if seed.get("state") in ("waiting-for-writers", "listing", "syncing"):
        rival += f", seeding {seed.get('percent', 0)}%"
    elif life and not life.get("seeded") and not life.get("retired"):
        rival += ", never seeded"
    if state in WORKER_STATES:
        return f"{name} {state.value}, {queued} queued{rival}"
    if state is LinkState.DOWN:
        if view.blocker is not None:
            why = view.blocker.short(role)
            if life.get("freeze"):
                why = f"frozen until {life['freeze']['until']}"
        elif not view.classified:
            why = "probing"
        elif view.unreachable_for is not None:
            why = f"unreachable {human_duration(view.unreachable_for)}"
        else:
            why = "starting"
        return f"{name} down ({why}), {queued} queued{rival}"
    return f"{name} {state.value}{rival}"


def summary(views: list[LinkView], role: str) -> str:
    return "; ".join(describe(v, role) for v in views)


def status(instance: str, role: str, role_source: str, summary_line: str,
           views: list[LinkView], quarantine: list[dict]) -> dict:
    """The `status --json` document (docs/CONTRACT.md: fields may be added, never renamed)."""
    return {
        "instance": instance, "role": role, "role_source": role_source,
        "version": __version__,
        "summary": summary_line,
        "links": [link_json(v) for v in views],
        "quarantine": quarantine,
    }


def quarantine_json(store, links) -> list[dict]:
    return [q.as_json(store.count(q.link, q.user)) for q in store.records() if q.link in links]


def link_json(v: LinkView) -> dict:
    return {
        "name": v.name, "state": v.state.value, "state_code": v.state.code,
        "since": iso(v.since), "reason": v.reason,
        "replica": {"host": v.host, "port": v.port, "reachable": v.reachable,
                    "detail": v.probe_detail},
        "backlog": v.backlog.as_json(),
        "worker": {"unit": v.worker_unit, "active": v.worker_active, "state": v.worker_state,
                   "session": v.worker_session},
        "held": v.held, "enabled": v.enabled,
        "last_drain": v.last_drain,
        "quarantined": v.quarantined,
        "rival": v.rival,
        **(v.lifecycle or {"seeded": None, "seed": None, "freeze": None, "retired": None}),
    }

