"""The reconcile tick: compare what should be with what is, and act on the difference.

What should be comes from the config, the role and operator holds; what is comes from probe
results, systemd's unit states and the backlog files. Each tick fires triggers on the link
machines (states.py), has the worker units started or stopped (workers.py), advances drains
(drain.py), the quarantine workflow (quarantine.py) and the replica lifecycle (lifecycle.py),
asks for probes (probe_schedule.py), and returns the one-line summary that becomes
``STATUS=``. Nothing here sleeps or reads the clock by itself: tests drive it with a
fake clock and fake edges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..cyrus.backlog import Backlog
from ..cyrus.failures import session_event
from ..cyrus.imapdconf import ImapdConf
from ..cyrus.probe import LOST_AFTER
from ..paths import DEFAULT
from ..systemd.units import LinkUnits, UnitStatus, belongs_to, daemon_patterns
from .drain import Drains
from .lifecycle import Lifecycle, LifecycleEdges
from .lifecycle_store import LifecycleStore
from .operator import Operator
from .probe_schedule import ProbeSchedule
from .quarantine import Quarantine, no_crash
from .quarantine_store import QuarantineStore
from .report import quarantine_json, status, summary
from .rivals import RivalWatch
from .roles import RoleControl, RoleStore
from .runtime import Blocker, LinkRuntime, LinkView
from .states import Link, LinkState, Transition, WORKER_STATES
from .workers import WorkerControl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Edges:
    """The side effects the tick acts through (fakes in the unit tests)."""

    systemd: object
    prober: object
    journal: object
    clock: object
    # The workers' journal, for an adopted worker's lines from before the daemon started:
    # ``history(unit, invocation)`` -> [(message, journal time µs)], oldest first.
    worker_log: object = None
    # ``rivals(imapd_conf_path, links)``: sync_clients syncwarden did not start (cyrus/procs.py)
    rivals: object = None
    # Makes the executor that runs a link's sync-log rewrites off the loop (a thread; tests
    # give one that runs them at once).
    rewriter: object = None
    # ``state_changed(settings, transition)``: the admin's hook (link/hooks.py)
    hooks: object = None
    # ``old_writers(imapd, changed)``: Cyrus processes with an old channel list (cyrus/writers.py)
    old_writers: object = None
    # ``watch(pid)``: wake the loop when that process exits (systemd/exitwatch.py)
    exits: object = None
    # ``prepare(link)`` / ``discard(link)``: a drain pass's argv for its unit (commands/worker.py)
    passes: object = None
    # With coordination: ``may_push(monotonic)``, whether this daemon holds its pair's master
    # key under a lease that has not run out (coord/service.py); None: no etcd, role decides.
    authority: object = None


@dataclass(frozen=True)
class LocalState:
    """What this instance keeps on disk, and where its per-run files go."""

    holds: object
    roles: RoleStore
    store: QuarantineStore
    users_dir: Path
    instance: str = DEFAULT
    crash: object = no_crash
    lifecycle: LifecycleStore | None = None     # seeded, frozen, retired; seeds' progress
    listing_dir: Path | None = None             # a seed's ctl_mboxlist output
    last_check: object = lambda link: None      # a link's last full check (pair/check.py)


class Reconciler:
    def __init__(self, config: Config, imapd: ImapdConf, edges: Edges, local: LocalState):
        self.edges, self.local = edges, local
        self.systemd, self.prober, self.journal, self.clock = (
            edges.systemd, edges.prober, edges.journal, edges.clock)
        self.config, self.imapd = config, imapd
        self.role = RoleControl(config.role, local.roles, local.holds, imapd, edges.journal,
                                edges.clock)
        self.rivals = RivalWatch(edges.rivals)
        self.drains = Drains(edges.systemd, edges.journal, edges.clock, local.holds,
                             self._rival_now, edges.exits, edges.passes)
        self.operator = Operator(lambda: self.links, self.drains, local.holds, self.role,
                                 edges.clock, lambda: self.config.drain.timeout,
                                 lambda name: self.imapd.sync_dir(name),
                                 authorized=lambda: not self._unauthorized())
        self.links: dict[str, LinkRuntime] = {}
        self.lifecycle = self._lifecycle(local)
        self.probes = ProbeSchedule(edges.prober, edges.clock, lambda: self.config.probe,
                                    self._wants_probe, lambda rt: self.blocker(rt) is not None)
        self.workers = WorkerControl(edges.systemd, edges.journal, edges.worker_log,
                                     lambda: self.config.live, self.lifecycle.may_go_live,
                                     self.classified, lambda: self.stopping)
        self.views: list[LinkView] = []
        self.ready = False
        self.stopping = False
        self.summary = ""
        self.configured = False
        self.reconfigure(config, imapd)

    # -- configuration -----------------------------------------------------------------------
    def reconfigure(self, config: Config, imapd: ImapdConf) -> dict[str, list[str]]:
        """Apply a (re)loaded config: add, drop and restart links whose settings changed.
        Returns the links {"added": [...], "removed": [...], "changed": [...]}."""
        old, first = self.links, not self.configured
        self.configured = True
        self.config, self.imapd = config, imapd
        self.role.configure(config.role, imapd)
        self.links = {}
        changes: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
        for name, settings in config.links.items():
            rt = old.pop(name, None)
            if rt is None:
                changes["added"].append(name)
            elif rt.settings != settings:
                changes["changed"].append(name)
            if rt is not None and rt.settings != settings:
                rt.link.fire("disable", "link settings changed: reconnecting")
                rt.settings, rt.probe, rt.probe_failures, rt.next_probe = settings, None, 0, 0.0
            if rt is None:
                units = LinkUnits.of(name, self.local.instance)
                why = "daemon started" if first else "added by a reload"
                rt = LinkRuntime(settings, Link(name, self.clock.wall, reason=why),
                                 Backlog(imapd.sync_dir(name)), units,
                                 self._quarantine(name, units, imapd, config))
            else:
                # Work in progress (a bisection, a retry, a drain, back-off) is kept: only
                # what the new settings say is replaced.
                rt.quarantine.retry_interval = config.quarantine.retry_interval
                rt.quarantine.sync_dir = imapd.sync_dir(name)
                if rt.backlog.sync_dir != imapd.sync_dir(name):   # configdirectory moved
                    rt.backlog = Backlog(imapd.sync_dir(name))
            self.links[name] = rt
        for name, rt in old.items():  # removed from the config: stop replicating it
            self.prober.unwatch(name)
            rt.quarantine.close()
            if name in self.drains:
                self.drains.drop(name, "the link was removed from the configuration",
                                 rt.snapshot.entries)
            if rt.worker_running:
                self.workers.stop(rt)
            if rt.quarantine.busy or rt.quarantine.retrying:
                try:
                    self.systemd.stop(rt.units.user)
                except Exception as exc:
                    log.error("cannot stop %s: %s", rt.units.user, exc, extra={"link": name})
            log.info("removed from the configuration", extra={"link": name})
            changes["removed"].append(name)
        self.lifecycle.configure(self.links)
        return changes

    def _lifecycle(self, local: LocalState) -> Lifecycle:
        listing = local.listing_dir or local.users_dir.parent / "seed"
        extra = {"old_writers": self.edges.old_writers} if self.edges.old_writers else {}
        return Lifecycle(LifecycleEdges(
            self.systemd, self.journal, self.clock, local.lifecycle or LifecycleStore(),
            lambda: self.links,
            lambda name, why: self.operator.drain(name, hold_after=False, why=why),
            self.drains.last.get, lambda: self.imapd, lambda: self.config.source,
            lambda: str(self.config.cyrus.sync_client), lambda: self.role.is_master,
            local.last_check, lambda link: listing / f"{link}.mailboxes",
            lambda slot: local.users_dir / slot, **extra))

    def _quarantine(self, name, units, imapd, config) -> Quarantine:
        return Quarantine(name, units, imapd.sync_dir(name), self.local.users_dir / name,
                          self.local.store, self.journal, config.quarantine.retry_interval,
                          self.local.crash, self.edges.rewriter)

    # -- the tick ----------------------------------------------------------------------------
    def tick(self) -> str:
        mono, wall = self.clock.monotonic(), self.clock.wall()
        self.probes.take_results(self.links, mono)
        units = self._list_units()
        self.rivals.refresh(self.imapd.path, self.links, mono)
        for rt in self.links.values():
            if units is not None:
                rt.worker = units.get(rt.units.worker)
            rt.snapshot = rt.backlog.read(mono, wall)
            self._reconcile(rt, mono, units)
            self.lifecycle.step(rt, units, mono)
            self.probes.schedule(rt, mono)
            self._journal_history(rt)
        if not self.ready and all(self.classified(rt) for rt in self.links.values()):
            self.ready = True
        self.views = [self._view(rt, mono) for rt in self.links.values()]
        self.summary = summary(self.views, self.role.role)
        return self.summary

    def _list_units(self) -> dict[str, UnitStatus] | None:
        instance = self.local.instance
        try:
            listed = self.systemd.list(*daemon_patterns(instance))
        except Exception as exc:  # D-Bus hiccup: act on units next tick, keep observing files
            log.warning("cannot list worker units over D-Bus: %s", exc)
            return None
        return {name: st for name, st in listed.items() if belongs_to(name, instance)}

    def next_probe_due(self, mono: float) -> float:
        return self.probes.next_due(self.links.values(), mono)

    def start_due_probes(self) -> None:
        self.probes.start_due(self.links.values())

    def _wants_probe(self, rt: LinkRuntime) -> bool:
        return (self.role.is_master and rt.settings.enabled
                and self.lifecycle.blocker(rt.name) is not Blocker.RETIRED)

    def classified(self, rt: LinkRuntime) -> bool:
        return rt.probe is not None or not self._wants_probe(rt)

    # -- deciding ----------------------------------------------------------------------------
    def blocker(self, rt: LinkRuntime) -> Blocker | None:
        """Why this link must have no worker, whatever the replica does."""
        if self.stopping:
            return Blocker.STOPPING
        if not self.role.is_master:
            return Blocker.ROLE
        if self._unauthorized():
            return Blocker.AUTHORITY
        if not rt.settings.enabled:
            return Blocker.DISABLED
        if rt.name in self.local.holds:
            return Blocker.HELD
        return self.lifecycle.blocker(rt.name)

    def _unauthorized(self) -> bool:
        """Coordination is on and this daemon may not push now (no key, or its lease may
        have run out): even a drain must not send."""
        authority = self.edges.authority
        return authority is not None and not authority.may_push(self.clock.monotonic())

    def _reconcile(self, rt: LinkRuntime, mono: float, units: dict | None) -> None:
        state = rt.link.state
        units_known = units is not None
        if state is LinkState.DRAINING:
            if rt.name in self.drains and self._unauthorized():
                self.drains.jobs[rt.name].abort("this host no longer holds the master key")
            if units_known:
                self.drains.step(rt, units)
            return
        blocker = self.blocker(rt)
        if state in WORKER_STATES:
            if blocker is not None:
                rt.link.fire(blocker.trigger, blocker.reason(self.role.role))
            elif rt.probe_failures >= LOST_AFTER:
                rt.link.fire("replica_lost", f"replica unreachable: {rt.probe.detail}")
            elif units_known and not rt.worker_running and rt.worker_ours:
                self.workers.exited(rt, mono)
            else:
                if units_known:
                    self._quarantine_step(rt, mono, units)
                    if self.workers.judge_session(rt, mono):
                        return
                self.workers.judge_backlog(rt)
        elif state is LinkState.DOWN and blocker is None and self.classified(rt):
            if rt.reachable and mono >= rt.restart_after:
                if rt.worker_running:
                    rt.worker_ours = True
                    rt.link.fire("adopt", f"adopted running worker {rt.units.worker}")
                else:
                    again = f"; retrying after: {rt.last_problem}" if rt.last_problem else ""
                    rt.link.fire("replica_up", f"replica answered: {rt.probe.detail}{again}")
        if units_known:
            self.workers.converge(rt, mono)
        self._explain_down(rt, mono)

    def _explain_down(self, rt: LinkRuntime, mono: float) -> None:
        """A down link's reason says why it is down now: when that changes without a
        transition (a held link is resumed while its replica does not answer, a link added
        by a reload finds its replica unreachable), the reason follows. The reason of the
        transition into ``down`` stands while what it names still holds."""
        if rt.link.state is not LinkState.DOWN:
            rt.down_cause = None
            return
        cause, text = rt.why_down(self.blocker(rt), self.role.role, self.classified(rt), mono)
        previous, rt.down_cause = rt.down_cause, cause
        if previous is not None and previous != cause:
            rt.link.explain(text)

    def _quarantine_step(self, rt: LinkRuntime, mono: float, units: dict) -> None:
        q = rt.quarantine
        try:
            stuck = q.step(mono, self.clock.wall(), rt.worker_running, units.get(q.unit),
                           self.systemd, lambda: self.workers.stop(rt),
                           self.rivals.reason(rt.name),
                           worker_alive=rt.worker is not None and rt.worker.alive)
        except OSError as exc:   # the store or a sync log could not be written: hold the link
            stuck = f"quarantine store or sync log: {exc}"
            q.job = None
        if stuck:
            rt.link.fire("quarantine", f"failures cannot be pinned on users: {stuck}")

    def _rival_now(self, link: str) -> str | None:
        """Whether a sync_client syncwarden did not start runs for ``link`` now (a fresh look:
        a drain asks before it claims that everything was sent)."""
        self.rivals.refresh(self.imapd.path, self.links, self.clock.monotonic(), force=True)
        return self.rivals.reason(link)

    def feed_worker_log(self, unit: str, message: str, invocation: str | None = None,
                        at: int | None = None) -> None:
        """A line from a worker's journal (sync_client logs through syslog); ``at`` is its
        journal time in µs (None: newer than anything seen)."""
        for rt in self.links.values():
            if unit == rt.units.drain:
                self.drains.feed(rt.name, message, at)
            elif unit in (rt.units.worker, rt.units.user):
                if unit == rt.units.worker:
                    event = session_event(message)
                    if event is not None:
                        rt.runs.feed(invocation, event, at)
                rt.quarantine.feed(unit, message, invocation)
            else:
                continue
            return

    def watched_units(self) -> list[str]:
        """The units whose journal lines this instance reads."""
        return [u for rt in self.links.values()
                for u in (rt.units.worker, rt.units.user, rt.units.drain)]

    # -- stopping ----------------------------------------------------------------------------
    @property
    def draining(self) -> bool:
        return bool(self.drains)

    def drain_all(self, why: str) -> None:
        """Drain every link this host replicates (used when the daemon stops)."""
        self.stopping = True
        self.lifecycle.stop_all()
        for name, rt in self.links.items():
            if (self.role.is_master and rt.settings.enabled and not self._unauthorized()
                    and rt.link.state is not LinkState.QUARANTINED
                    and not self.lifecycle.keeps_backlog(name)):
                self.operator.drain(name, hold_after=False, why=why)
                self._journal_history(rt)

    def close(self) -> None:
        """The daemon exits: rewrites in progress end at their next chunk, logs whole."""
        for rt in self.links.values():
            rt.quarantine.close()

    # -- reporting ---------------------------------------------------------------------------
    def _view(self, rt: LinkRuntime, mono: float) -> LinkView:
        s, link = rt.settings, rt.link
        rival = self.rivals.reason(s.name)
        notes = "; ".join(n for n in (rival, self.lifecycle.note(s.name)) if n)
        return LinkView(
            name=s.name, state=link.state, since=link.since,
            reason=f"{link.reason}; {notes}" if notes else link.reason, rival=rival,
            host=s.host, port=s.port, enabled=s.enabled, held=s.name in self.local.holds,
            reachable=rt.reachable, probe_detail=rt.probe.detail if rt.probe else None,
            unreachable_for=(mono - rt.unreachable_since
                             if rt.unreachable_since is not None else None),
            classified=self.classified(rt), blocker=self.blocker(rt), backlog=rt.snapshot,
            worker_unit=rt.units.worker, worker_active=rt.worker_running,
            worker_state=rt.worker.active_state if rt.worker else "inactive",
            worker_session=rt.runs.run.describe() if rt.worker_running else "",
            quarantined=len(rt.quarantine.quarantined()),
            last_drain=self.drains.last.get(s.name), lifecycle=self.lifecycle.view(s.name))

    def _journal_history(self, rt: LinkRuntime) -> None:
        for t in rt.link.take_history():
            self._journal_transition(t)

    def _journal_transition(self, t: Transition) -> None:
        prio = "warning" if t.dest in (LinkState.DOWN, LinkState.QUARANTINED) else "notice"
        self.journal.send(
            f"{t.source.value} -> {t.dest.value} ({t.reason})", prio,
            "state-change", SYNCWARDEN_LINK=t.link, SYNCWARDEN_FROM=t.source.value,
            SYNCWARDEN_TO=t.dest.value, SYNCWARDEN_STATE=t.dest.value,
            SYNCWARDEN_STATE_CODE=t.dest.code, SYNCWARDEN_REASON=t.reason,
            SYNCWARDEN_TRIGGER=t.trigger)
        if self.edges.hooks is not None:
            self.edges.hooks.state_changed(self.config.hooks, t)

    def status(self, fresh: bool = True) -> dict:
        """Built afresh, so that an operator command's effect shows before the next tick;
        ``fresh=False``: from the last tick's views (the status file, written after it)."""
        views = self.status_views() if fresh else self.views
        return status(self.local.instance, self.role.role, self.role.source, self.summary,
                      views, self.quarantine_list())

    def status_views(self) -> list[LinkView]:
        mono = self.clock.monotonic()
        return [self._view(rt, mono) for rt in self.links.values()]

    def status_key(self) -> tuple:
        """Equal after two ticks exactly when ``status(fresh=False)`` would be: cheaper to
        compare than the document (with 100 links, building and dumping it every tick was a
        third of the tick)."""
        return (tuple(self.views), self.summary, self.role.role, self.role.source,
                self.quarantine_list())

    def quarantine_list(self) -> list[dict]:
        return quarantine_json(self.local.store, self.links)
