"""The reconcile core: each tick compares what should be with what is, and acts on the difference.

What should be comes from the config, the role and operator holds; what is comes from probe
results, systemd's unit states and the backlog files. Link machines decide; this module then
starts or stops worker units through the injected systemd edge. Nothing here sleeps or reads
the clock by itself, so tests drive it with a fake clock and fake edges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..link import report
from ..cyrus.backlog import Backlog, BacklogSnapshot
from ..config import Config, LinkSettings
from ..link.drain_control import DrainControl
from ..cyrus.imapdconf import ImapdConf
from ..link.quarantine import Isolation
from ..link.quarantine_store import QuarantineStore
from ..link.roles import RoleRecord, RoleStore, clear_sync_caches, effective_role, leftover_backlogs
from ..cyrus.probe import LOST_AFTER, ProbeResult
from ..link.states import Link, LinkState, Transition, WORKER_STATES
from ..systemd.units import UnitStatus, worker_unit

log = logging.getLogger(__name__)

# Back-off between worker restarts when sync_client keeps exiting while the replica answers.
RESTART_BACKOFF_MIN, RESTART_BACKOFF_MAX = 1.0, 300.0
# sync_client exit codes that mean "fix the configuration" (sysexits USAGE, SOFTWARE, CONFIG):
# restarting cannot help, so the link waits for an operator.
OPERATOR_EXITS = {64, 70, 78}
# Live links are probed every LIVE_PROBE_FACTOR intervals, at most every LIVE_PROBE_MAX seconds.
LIVE_PROBE_FACTOR, LIVE_PROBE_MAX = 5, 10.0


@dataclass
class LinkRuntime:
    settings: LinkSettings
    link: Link
    backlog: Backlog
    unit: str
    snapshot: BacklogSnapshot = field(default_factory=BacklogSnapshot)
    probe: ProbeResult | None = None
    probe_failures: int = 0
    unreachable_since: float | None = None   # monotonic
    next_probe: float = 0.0
    worker: UnitStatus | None = None
    worker_ours: bool = False                # we started or adopted the unit now running
    restart_after: float = 0.0
    restart_backoff: float = RESTART_BACKOFF_MIN
    worker_started: float = 0.0
    isolation: Isolation | None = None

    @property
    def reachable(self) -> bool | None:
        if self.probe is None:
            return None
        return self.probe_failures == 0

    @property
    def worker_running(self) -> bool:
        return self.worker is not None and self.worker.running


class Supervisor(DrainControl):
    def __init__(self, config: Config, imapd: ImapdConf, systemd, prober, journal, clock,
                 holds, instance: str = "default", roles: RoleStore | None = None,
                 store: QuarantineStore | None = None, users_dir=None):
        self.systemd = systemd
        self.prober = prober
        self.journal = journal
        self.clock = clock
        self.holds = holds
        self.instance = instance
        self.roles = roles
        self.store = store
        self.users_dir = users_dir
        self.role, self.role_source = config.role, "config"
        self.links: dict[str, LinkRuntime] = {}
        self.config = config
        self.imapd = imapd
        self.ready = False
        self.summary = ""
        self.drains: dict = {}           # link -> drain.DrainJob
        self.stopping = False
        self.last_drain: dict[str, dict] = {}
        self.reconfigure(config, imapd)

    # -- configuration -----------------------------------------------------------------------
    def reconfigure(self, config: Config, imapd: ImapdConf) -> None:
        """Apply a (re)loaded config: add, drop and restart links whose settings changed."""
        old = self.links
        self.config, self.imapd = config, imapd
        if self.roles is not None:
            self.role, self.role_source = effective_role(config.role, self.roles)
        else:
            self.role, self.role_source = config.role, "config"
        self.links = {}
        for name, settings in config.links.items():
            rt = old.pop(name, None)
            if rt is not None and rt.settings != settings:
                self._fire(rt, "disable", "link settings changed: reconnecting")
                rt.settings, rt.probe, rt.probe_failures, rt.next_probe = settings, None, 0, 0.0
            if rt is None:
                rt = LinkRuntime(settings, Link(name, self.clock.wall),
                                 Backlog(imapd.sync_dir(name)), worker_unit(name, self.instance))
            if self.store is not None:
                rt.isolation = Isolation(name, rt.unit, imapd.sync_dir(name),
                                         self.users_dir / name, self.store, self.journal,
                                         config.quarantine.retry_interval)
            self.links[name] = rt
        for name, rt in old.items():  # removed from the config: stop replicating it
            if rt.worker_running:
                self._stop_worker(rt)
            log.info("link %s removed from the configuration", name)

    # -- the tick ----------------------------------------------------------------------------
    def tick(self) -> str:
        mono, wall = self.clock.monotonic(), self.clock.wall()
        self._take_probe_results(mono)
        units = self._list_workers()
        for rt in self.links.values():
            if units is not None:
                rt.worker = units.get(rt.unit)
            rt.snapshot = rt.backlog.read(mono, wall)
            self._reconcile(rt, mono, units)
            self._schedule_probe(rt, mono)
            self._journal_history(rt)
        if not self.ready and all(self.classified(rt) for rt in self.links.values()):
            self.ready = True
        self.summary = "; ".join(report.describe(self, rt, mono) for rt in self.links.values())
        return self.summary

    def _take_probe_results(self, mono: float) -> None:
        for name, result in self.prober.results().items():
            rt = self.links.get(name)
            if rt is None:
                continue
            rt.probe = result
            if result.reachable:
                rt.probe_failures, rt.unreachable_since = 0, None
            else:
                rt.probe_failures += 1
                rt.next_probe = min(rt.next_probe, mono + self.config.probe.interval)
                if rt.unreachable_since is None:
                    rt.unreachable_since = mono

    def _list_workers(self) -> dict[str, UnitStatus] | None:
        try:
            return self.systemd.list("syncwarden-sync@*.service", "syncwarden-drain@*.service",
                                     "syncwarden-user@*.service")
        except Exception as exc:  # D-Bus hiccup: act on units next tick, keep observing files
            log.warning("cannot list worker units over D-Bus: %s", exc)
            return None

    def _schedule_probe(self, rt: LinkRuntime, mono: float) -> None:
        if not self._wants_probe(rt) or mono < rt.next_probe:
            return
        s = rt.settings
        if self.prober.request(s.name, s.host, s.port, self.config.probe.timeout):
            rt.next_probe = mono + self._probe_period(rt)

    def _probe_period(self, rt: LinkRuntime) -> float:
        """Every interval while a link waits for its replica. A live link's worker talks to
        the replica anyway and exits when it loses it, so it is probed less often, and at
        the full rate again as soon as one probe fails."""
        interval = self.config.probe.interval
        if rt.link.state is LinkState.LIVE and rt.probe_failures == 0:
            return min(interval * LIVE_PROBE_FACTOR, max(interval, LIVE_PROBE_MAX))
        return interval

    def _wants_probe(self, rt: LinkRuntime) -> bool:
        return self.role == "master" and rt.settings.enabled

    def classified(self, rt: LinkRuntime) -> bool:
        return rt.probe is not None or not self._wants_probe(rt)

    # -- deciding ----------------------------------------------------------------------------
    def blocker(self, rt: LinkRuntime) -> str | None:
        """Why this link must have no worker, whatever the replica does."""
        if self.stopping:
            return "daemon stopping"
        if self.role != "master":
            return f"role is {self.role}: this host never starts workers"
        if not rt.settings.enabled:
            return "disabled in the configuration"
        if rt.settings.name in self.holds:
            return "held by operator"
        return None

    def _reconcile(self, rt: LinkRuntime, mono: float, units: dict | None) -> None:
        state = rt.link.state
        units_known = units is not None
        if state is LinkState.DRAINING:
            if units_known:
                self._step_drain(rt, mono, units)
            return
        blocker = self.blocker(rt)
        if state in WORKER_STATES:
            if blocker is not None:
                self._fire(rt, "hold" if "held" in blocker else "disable", blocker)
            elif rt.probe_failures >= LOST_AFTER:
                self._fire(rt, "replica_lost", f"replica unreachable: {rt.probe.detail}")
            elif units_known and not rt.worker_running and rt.worker_ours:
                self._worker_exited(rt, mono)
            else:
                if units_known and rt.isolation is not None:
                    self._isolate(rt, mono, units)
                self._judge_backlog(rt)
        elif state is LinkState.DOWN and blocker is None and self.classified(rt):
            if rt.reachable and mono >= rt.restart_after:
                if rt.worker_running:
                    rt.worker_ours = True
                    self._fire(rt, "adopt", f"adopted running worker {rt.unit}")
                else:
                    self._fire(rt, "replica_up", f"replica answered: {rt.probe.detail}")
        if units_known:
            self._converge_worker(rt, mono)

    def _isolate(self, rt: LinkRuntime, mono: float, units: dict) -> None:
        iso = rt.isolation
        try:
            stuck = iso.step(mono, self.clock.wall(), rt.worker_running, units.get(iso.unit),
                             self.systemd, lambda: self._stop_worker(rt))
        except OSError as exc:   # the store or a sync log could not be written: hold the link
            stuck = f"quarantine store or sync log: {exc}"
            iso.job = None
        if stuck:
            self._fire(rt, "quarantine", f"failures cannot be pinned on users: {stuck}")

    def feed_worker_log(self, unit: str, message: str, invocation: str | None = None) -> None:
        """A line from a worker's journal (sync_client logs through syslog)."""
        for rt in self.links.values():
            if rt.isolation is not None and unit in (rt.unit, rt.isolation.unit):
                rt.isolation.feed(unit, message, invocation)
                return

    def _judge_backlog(self, rt: LinkRuntime) -> None:
        if not rt.worker_running:
            return  # starting: judge once it runs
        snap, live = rt.snapshot, self.config.live
        within = (snap.error is None and snap.entries <= live.max_backlog
                  and snap.oldest_age <= live.max_lag)
        if rt.link.state is LinkState.CATCHING_UP and within:
            self._fire(rt, "caught_up", "backlog within live thresholds")
        elif rt.link.state is LinkState.LIVE and not within:
            why = snap.error or f"{snap.entries} entries queued, oldest {snap.oldest_age:.0f}s"
            self._fire(rt, "fell_behind", f"backlog above live thresholds: {why}")

    def _worker_exited(self, rt: LinkRuntime, mono: float) -> None:
        rt.worker_ours = False
        try:
            info = self.systemd.exit_info(rt.unit)
            how = f"{info.result}, exit status {info.status}"
        except Exception as exc:
            info, how = None, f"exit status unknown: {exc}"
        self.journal.send(f"{rt.unit} exited ({how})", "warning", "worker-exited",
                          SYNCWARDEN_LINK=rt.settings.name, UNIT_NAME=rt.unit)
        if info is not None and info.result == "exit-code" and info.status in OPERATOR_EXITS:
            self._fire(rt, "quarantine", f"sync_client exited with status {info.status}, which"
                       f" means a configuration problem: see journalctl -u {rt.unit}")
            return
        if mono - rt.worker_started > RESTART_BACKOFF_MAX:
            rt.restart_backoff = RESTART_BACKOFF_MIN  # it had been running well: start afresh
        rt.restart_after = mono + rt.restart_backoff
        self._fire(rt, "worker_exited", f"worker exited ({how}); restarting in"
                   f" {rt.restart_backoff:g}s if the replica answers")
        rt.restart_backoff = min(rt.restart_backoff * 2, RESTART_BACKOFF_MAX)

    def _converge_worker(self, rt: LinkRuntime, mono: float) -> None:
        if not self.classified(rt):
            return  # a worker found at daemon start keeps running until the first probe
        want = rt.link.state in WORKER_STATES and not (rt.isolation and rt.isolation.busy)
        if want and not rt.worker_running and not rt.worker_ours:
            try:
                self.systemd.start(rt.unit)
                rt.worker_ours, rt.worker_started = True, mono
            except Exception as exc:
                log.error("cannot start %s: %s", rt.unit, exc)
        elif not want and rt.worker_running:
            self._stop_worker(rt)

    def _stop_worker(self, rt: LinkRuntime) -> None:
        # SIGTERM: sync_client exits 75 at once and keeps log-run whole for the next start.
        try:
            self.systemd.stop(rt.unit)
            rt.worker_ours = False
        except Exception as exc:
            log.error("cannot stop %s: %s", rt.unit, exc)

    def _fire(self, rt: LinkRuntime, trigger: str, reason: str) -> bool:
        return rt.link.fire(trigger, reason)

    # -- operator commands -------------------------------------------------------------------
    def hold(self, name: str, held: bool) -> str:
        rt = self._get(name)
        self.holds.set(name, held)
        if not held:
            rt.restart_after = 0.0
        return f"{name}: {'held' if held else 'resumed'}"

    def release(self, name: str) -> str:
        rt = self._get(name)
        if not rt.link.fire("release", "released by operator"):
            raise ValueError(f"{name} is {rt.link.state.value}, not quarantined")
        rt.restart_after, rt.restart_backoff = 0.0, RESTART_BACKOFF_MIN
        self._journal_history(rt)
        return f"{name}: released"

    def change_role(self, new: str, by: str) -> list[str]:
        """promote/demote: persist the role; clear what described the old peer."""
        if self.roles is None:
            raise ValueError("this daemon has no role store")
        if new == self.role:
            return [f"already {new}"]
        if self.drains:
            raise ValueError("a drain is running: wait for it, then change the role")
        old = self.role
        self.roles.save(RoleRecord(new, self.clock.wall(), by))
        self.role, self.role_source = new, f"{self.roles.path} ({by})"
        done = [f"role {old} -> {new}"] + clear_sync_caches(self.imapd, self.links)
        if new == "master":
            # A backlog from before the change was meant for the former peer: replaying it
            # needs the operator's explicit word, which is `syncwarden resume LINK`.
            for link, files in leftover_backlogs(self.imapd, self.links).items():
                self.holds.set(link, True)
                done.append(f"{link}: held, because {' and '.join(files)} predate this"
                            f" promotion; check them, then `syncwarden resume {link}`")
        self.journal.send(f"role changed from {old} to {new} ({by}): " + "; ".join(done[1:]),
                          "notice", "role-changed", SYNCWARDEN_ROLE=new,
                          SYNCWARDEN_OLD_ROLE=old)
        return done

    def quarantine_command(self, action: str, user: str, link: str | None) -> str:
        names = [link] if link else [n for n, rt in self.links.items()
                                     if rt.isolation and user in rt.isolation.quarantined()]
        if not names:
            raise KeyError(f"{user} is not quarantined on any link")
        out = []
        for name in names:
            iso = self._get(name).isolation
            if iso is None:
                raise ValueError("this daemon keeps no quarantine")
            out.append(iso.retry_now(user, self.clock.wall()) if action == "retry"
                       else iso.drop(user))
        return "; ".join(out)

    def _get(self, name: str) -> LinkRuntime:
        if name not in self.links:
            raise KeyError(f"no link named {name!r} (links: {', '.join(self.links)})")
        return self.links[name]

    # -- reporting ---------------------------------------------------------------------------
    def _journal_history(self, rt: LinkRuntime) -> None:
        for t in rt.link.take_history():
            self._journal_transition(t)

    def _journal_transition(self, t: Transition) -> None:
        prio = "warning" if t.dest in (LinkState.DOWN, LinkState.QUARANTINED) else "notice"
        self.journal.send(
            f"link {t.link}: {t.source.value} -> {t.dest.value} ({t.reason})", prio,
            "state-change", SYNCWARDEN_LINK=t.link, SYNCWARDEN_FROM=t.source.value,
            SYNCWARDEN_TO=t.dest.value, SYNCWARDEN_STATE=t.dest.value,
            SYNCWARDEN_STATE_CODE=t.dest.code, SYNCWARDEN_REASON=t.reason,
            SYNCWARDEN_TRIGGER=t.trigger)

    def status(self) -> dict:
        return report.status(self)
