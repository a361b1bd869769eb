"""Freezing a link for a backup: drain to a known point, hold, run a hook, resume by itself.

``syncwarden freeze LINK --until D [--exec CMD]``: the link is drained (every entry queued
when the drain began is on the replica), then held: no worker, so the replica does not change
while it is backed up. CMD, if given, runs once the link is frozen, as an unprivileged user
(a systemd dynamic user unless ``--exec-user`` names an account) in a transient unit whose
runtime ends at the deadline. At the deadline, or at ``syncwarden thaw``, the hold ends and
the worker catches up with what Cyrus logged meanwhile: a forgotten freeze never leaves the
pair unprotected for longer than asked.

The freeze is kept in lifecycle.json, so it survives a daemon restart (a deadline that passed
meanwhile thaws at once), and a stop while frozen does not drain the frozen link: its backlog
stays on disk instead of reaching a replica being backed up. A drain that fails (the replica
went away) ends the freeze at once: the replica is at no known point.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from ..timefmt import human_duration, iso

log = logging.getLogger(__name__)

DEFAULT_UNTIL, MAX_UNTIL = 3600.0, 7 * 86400.0


@dataclass(frozen=True)
class FreezeEdges:
    systemd: object
    journal: object
    clock: object
    drain: Callable[[str, str], str]           # (link, why) -> answer; ValueError if refused
    last_drain: Callable[[str], dict | None]   # the link's last drain outcome


class Freeze:
    """One link's freeze, from its record in lifecycle.json (``record`` is saved by the
    caller whenever ``step`` returns True)."""

    def __init__(self, link: str, hook_unit: str, record: dict, edges: FreezeEdges,
                 drain_requested: bool = False):
        self.link, self.hook_unit, self.r, self.e = link, hook_unit, record, edges
        self.drain_requested = drain_requested
        self.hook_launched = False

    @property
    def frozen(self) -> bool:
        return self.r.get("phase") == "frozen"

    def _journal(self, message, priority, mid, **fields) -> None:
        self.e.journal.send(message, priority, mid,
                            SYNCWARDEN_LINK=self.link, **fields)

    def step(self, draining: bool, units: dict) -> tuple[bool, str | None]:
        """(record changed, why the freeze ends now or None)."""
        wall = self.e.clock.wall()
        if self.r.get("phase") == "draining":
            if draining:
                return False, None
            if not self.drain_requested:
                self.drain_requested = True
                try:
                    self.e.drain(self.link, f"to freeze it until {iso(self.r['until'])}")
                except (ValueError, KeyError) as exc:
                    return False, f"cannot drain it: {exc}"
                return False, None
            outcome = self.e.last_drain(self.link)
            if not outcome or not outcome.get("drained"):
                why = outcome.get("message") if outcome else "the drain was interrupted"
                return False, f"the drain did not finish ({why}): the replica is at no known point"
            self.r.update(phase="frozen", frozen_at=wall)
            self._journal(f"frozen until {iso(self.r['until'])}: the replica holds every entry"
                          f" queued before the freeze; {outcome.get('entries_left', 0)} queued"
                          " since wait for the thaw", "notice", "link-frozen",
                          SYNCWARDEN_UNTIL=iso(self.r["until"]),
                          SYNCWARDEN_ENTRIES=outcome.get("entries_left", 0))
            if self.r.get("exec"):
                self._start_hook(wall)
            return True, None
        changed = self._watch_hook(units)
        if wall >= self.r["until"]:
            return changed, f"the deadline {iso(self.r['until'])} was reached"
        return changed, None

    def _start_hook(self, wall: float) -> None:
        user = self.r.get("user")
        hook = {"state": "running", "started": wall, "status": None}
        try:
            self.e.systemd.run(
                self.hook_unit, ["/bin/sh", "-c", self.r["exec"]], user=user,
                dynamic_user=user is None, runtime_max=max(1.0, self.r["until"] - wall),
                env={"SYNCWARDEN_LINK": self.link, "SYNCWARDEN_UNTIL": iso(self.r["until"]),
                     "SYNCWARDEN_FROZEN_SINCE": iso(wall)},
                description=f"syncwarden: --exec of the freeze of {self.link}")
            self.hook_launched = True
        except Exception as exc:
            hook.update(state="failed", error=f"cannot start {self.hook_unit}: {exc}")
            self._journal(f"freeze hook not started: {exc}", "err", "freeze-hook",
                          SYNCWARDEN_RESULT="not-started")
        self.r["hook"] = hook

    def _watch_hook(self, units: dict) -> bool:
        hook = self.r.get("hook")
        if not hook or hook.get("state") != "running":
            return False
        status = units.get(self.hook_unit)
        if status is not None and status.running:
            return False
        info = self.e.systemd.exit_info(self.hook_unit)
        ok = info.result == "success" and info.status == 0
        hook.update(state="exited", status=info.status, result=info.result,
                    ended=self.e.clock.wall())
        took = hook["ended"] - hook["started"]
        self._journal(f"freeze hook {'succeeded' if ok else 'failed'} after"
                      f" {human_duration(took)} ({info.result}, exit status {info.status};"
                      f" journalctl -u {self.hook_unit}); the link stays frozen until"
                      f" {iso(self.r['until'])}", "info" if ok else "warning", "freeze-hook",
                      SYNCWARDEN_RESULT="success" if ok else "failed",
                      SYNCWARDEN_EXIT_STATUS=info.status, SYNCWARDEN_DURATION=f"{took:.3f}")
        return True

    def end(self, why: str, entries: int) -> None:
        """Thaw: stop a hook still running, and say so."""
        hook = self.r.get("hook") or {}
        if hook.get("state") == "running":
            try:
                self.e.systemd.stop(self.hook_unit)
            except Exception as exc:
                log.warning("cannot stop %s: %s", self.hook_unit, exc, extra={"link": self.link})
            self._journal("freeze hook cut short by the thaw", "warning", "freeze-hook",
                          SYNCWARDEN_RESULT="cut-short")
        since = self.r.get("frozen_at") or self.r["since"]
        took = self.e.clock.wall() - since
        self._journal(f"thawed: {why}; catching up with {entries} entries queued while"
                      f" frozen ({human_duration(took)})", "notice", "link-thawed",
                      SYNCWARDEN_REASON=why, SYNCWARDEN_ENTRIES=entries,
                      SYNCWARDEN_DURATION=f"{took:.3f}")

    def view(self) -> dict:
        r, hook = self.r, self.r.get("hook")
        if hook:
            hook = {"state": hook.get("state"), "started": iso(hook["started"]),
                    "ended": iso(hook["ended"]) if hook.get("ended") else None,
                    "exit_status": hook.get("status"), "error": hook.get("error")}
        return {"state": r.get("phase"), "since": iso(r["since"]),
                "frozen_at": iso(r["frozen_at"]) if r.get("frozen_at") else None,
                "until": iso(r["until"]), "exec": r.get("exec"), "user": r.get("user"),
                "hook": hook}

    def note(self) -> str:
        if self.frozen:
            return f"frozen until {iso(self.r['until'])}"
        return f"draining to freeze until {iso(self.r['until'])}"
