"""A replica's life around rolling replication: seeded, frozen for a backup, retired.

Goal g: replace a replica with no moment where only one live copy of the mail exists. A new
link's replica is seeded (seed.py) while the other links stay live, and claims ``live`` only
once seeded; a link is retired only while another one is live and its last deep check (made
after it was seeded) is clean, or with ``--force``, which says what redundancy goes; a link is
frozen for a backup (freeze.py).

The reconcile tick asks this module three things about a link: whether it must have no worker
(``blocker``: frozen, retired), whether it may be ``live`` (``may_go_live``: seeded), and what
to add to its reason (``note``); and it lets each link's seed, freeze and retirement take one
step per tick. The operator commands (seed, retire, freeze, thaw) answer one sentence, or
raise ValueError/KeyError with the refusal.
"""

from __future__ import annotations

import logging
import pwd
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..cyrus import writers
from ..cyrus.channel import Channel
from .freeze import DEFAULT_UNTIL, MAX_UNTIL, Freeze, FreezeEdges
from ..timefmt import iso
from .runtime import Blocker, LinkRuntime
from .seed import MAX_PARALLEL, Seed, SeedEdges, default_parallel
from .seed_plan import Phase, Progress
from .states import LinkState, WORKER_STATES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LifecycleEdges:
    systemd: object
    journal: object
    clock: object
    store: object                                     # LifecycleStore
    links: Callable[[], dict[str, LinkRuntime]]
    drain: Callable[[str, str], str]                  # (link, why); hold_after=False
    last_drain: Callable[[str], dict | None]
    imapd: Callable[[], object]
    config_source: Callable[[], str]
    sync_client: Callable[[], str]
    is_master: Callable[[], bool]
    last_check: Callable[[str], dict | None]          # a link's last full check (pair/check)
    listing_file: Callable[[str], Path]
    users_file: Callable[[str], Path]
    old_writers: Callable = writers.old_writers
    conf_changed: Callable = writers.conf_changed


class Lifecycle:
    def __init__(self, edges: LifecycleEdges):
        self.e = edges
        self.store = edges.store
        self.seeds: dict[str, Seed] = {}
        self.freezes: dict[str, Freeze] = {}
        self.retiring: dict[str, bool] = {}        # link -> its drain was asked for
        self.problems: list[str] = [self.store.problem] if self.store.problem else []
        self._seed_edges = SeedEdges(edges.systemd, edges.journal, edges.clock, edges.store,
                                     edges.imapd, edges.sync_client, edges.listing_file,
                                     edges.users_file, edges.old_writers, edges.conf_changed)
        self._freeze_edges = FreezeEdges(
            edges.systemd, edges.journal, edges.clock,
            lambda link, why: edges.drain(link, why), edges.last_drain)

    # -- configuration -----------------------------------------------------------------------
    def configure(self, links: dict[str, LinkRuntime]) -> None:
        wall = self.e.clock.wall()
        for name in list(self.store.retired):
            if name not in links:           # removed from the config: a new replica if re-added
                self.store.set_retired(name, None)
        for name in self.store.adopt(list(links), wall):
            log.warning("added to the configuration: its replica was never seeded and the link"
                        " does not go live until `syncwarden seed %s` finished", name,
                        extra={"link": name})
        for name, rt in links.items():
            if name not in self.seeds:
                self._load_seed(name, rt)
            record = self.store.freezes.get(name)
            if record is not None and name not in self.freezes:
                self.freezes[name] = Freeze(name, rt.units.hook, record, self._freeze_edges)
            retired = self.store.retired.get(name)
            if retired and retired.get("phase") == "draining":
                self.retiring.setdefault(name, False)

    def _load_seed(self, name: str, rt: LinkRuntime) -> None:
        progress, plan, problem = self.store.load_seed(name)
        if problem:
            self.problems.append(problem)
        if progress is None:
            return
        try:
            p = Progress.load(progress)
            if p.phase == Phase.SYNCING.value and p.items and not plan:
                raise ValueError("its plan is missing")
        except (TypeError, ValueError, KeyError) as exc:
            self.problems.append(f"the seed of {name} could not be resumed ({exc}): it"
                                 " starts over")
            parallel = progress.get("parallel")
            p = Progress(name, self.e.clock.wall(), parallel if isinstance(parallel, int)
                         and 1 <= parallel <= MAX_PARALLEL else default_parallel())
            plan = None
        self.seeds[name] = Seed(rt.units, self._seed_edges, p, plan)

    # -- what the tick asks --------------------------------------------------------------------
    def blocker(self, name: str) -> Blocker | None:
        if name in self.store.retired:
            return Blocker.RETIRED
        if name in self.freezes:
            return Blocker.FROZEN
        return None

    def may_go_live(self, name: str) -> bool:
        return self.store.seeded(name)

    def keeps_backlog(self, name: str) -> bool:
        """A stop does not drain a frozen link (its replica is being backed up) nor a
        retired one."""
        return name in self.freezes or name in self.store.retired

    @property
    def busy(self) -> bool:
        """A seed's batches run: the daemon ticks faster, to start the next one promptly."""
        return any(seed.p.running for seed in self.seeds.values() if seed.active)

    def seeding(self, name: str) -> bool:
        seed = self.seeds.get(name)
        return seed is not None and seed.active

    def step(self, rt: LinkRuntime, units: dict | None, mono: float) -> None:
        name = rt.name
        if units is None:
            return
        try:
            seed = self.seeds.get(name)
            if seed is not None and seed.active:
                can_sync = (rt.link.state in WORKER_STATES and rt.worker_running
                            and not rt.quarantine.busy and self.e.is_master())
                seed.step(mono, can_sync, units)
            freeze = self.freezes.get(name)
            if freeze is not None:
                changed, end = freeze.step(rt.link.state is LinkState.DRAINING, units)
                if end:
                    self._thaw(rt, end)
                elif changed:
                    self.store.set_freeze(name, freeze.r)
            if name in self.retiring:
                self._retire_step(rt)
        except OSError as exc:      # a state file could not be written: try again next tick
            log.error("cannot write its lifecycle state: %s", exc,
                      extra={"link": name})
        except Exception as exc:    # D-Bus refused: what was saved stands; again next tick
            log.error("seed, freeze or retirement step failed: %s: %s",
                      type(exc).__name__, exc, extra={"link": name})

    def stop_all(self) -> None:
        """The daemon stops: running seed batches are ended; they run again at the next start."""
        for seed in self.seeds.values():
            if seed.active:
                seed.stop_all(kill=True)

    # -- seed ----------------------------------------------------------------------------------
    def _get(self, name: str) -> LinkRuntime:
        links = self.e.links()
        if name not in links:
            raise KeyError(f"no link named {name!r} (links: {', '.join(links)})")
        return links[name]

    def _usable(self, name: str, what: str) -> LinkRuntime:
        rt = self._get(name)
        if not self.e.is_master():
            raise ValueError(f"{name}: this host is not the master: it replicates nothing")
        if name in self.store.retired:
            raise ValueError(f"{name} is retired: nothing to {what}")
        return rt

    def seed(self, name: str, parallel: int | None = None) -> str:
        rt = self._usable(name, "seed")
        if name in self.freezes:
            raise ValueError(f"{name} is frozen until {iso(self.freezes[name].r['until'])}:"
                             f" `syncwarden thaw {name}` first")
        old = self.seeds.get(name)
        if old is not None and old.active:
            return f"{name}: already seeding: {old.note()}"
        parallel = parallel or (old.p.parallel if old else default_parallel())
        if not 1 <= parallel <= MAX_PARALLEL:
            raise ValueError(f"--parallel must be 1-{MAX_PARALLEL}, got {parallel}")
        wall = self.e.clock.wall()
        p, plan = Progress(name, wall, parallel), {}
        if old is not None and old.phase is Phase.INCOMPLETE and old.p.failed:
            # the others are on the replica, and the rolling worker sends their changes
            failed = sorted(old.p.failed.items())
            plan = {"users": [n for n, (kind, _) in failed if kind == "users"],
                    "shared": [n for n, (kind, _) in failed if kind != "users"]}
            p.phase, p.users, p.shared = Phase.SYNCING.value, len(plan["users"]), \
                len(plan["shared"])
            what = f"retrying the {len(failed)} that failed last time"
        else:
            what = "waiting for every Cyrus process to log to the channel, then listing"
        self.store.set_seeded(name, False, wall, "seed started")
        self.store.save_seed(name, asdict(p), plan)
        self.seeds[name] = Seed(rt.units, self._seed_edges, p, plan)
        self.e.journal.send(f"seed started, {parallel} at a time: {what}",
                            "notice", "seed-started", SYNCWARDEN_LINK=name,
                            SYNCWARDEN_PARALLEL=parallel)
        return f"{name}: seed started ({parallel} at a time): {what}"

    # -- retire --------------------------------------------------------------------------------
    def _redundancy(self, name: str) -> tuple[list[str], list[str]]:
        """(links that keep a live, checked copy, why each other link does not)."""
        good, bad = [], []
        for other, rt in self.e.links().items():
            if other == name or other in self.store.retired:
                continue
            state = rt.link.state
            last = self.e.last_check(other) or {}
            since = (self.store.links.get(other) or {}).get("since", 0)
            if state is not LinkState.LIVE:
                bad.append(f"{other} is {state.value}")
            elif not last.get("deep"):
                bad.append(f"{other} is live but has no deep check (`syncwarden check {other}"
                           " --deep`)")
            elif last.get("result") != "in-sync":
                bad.append(f"{other}'s last deep check found {last.get('result')}")
            elif (last.get("finished") or 0) < since and not self._legacy(other):
                bad.append(f"{other}'s last deep check is older than its seed: check it again")
            else:
                good.append(other)
        return good, bad

    def _legacy(self, name: str) -> bool:
        return "before" in (self.store.links.get(name) or {}).get("how", "")

    def retire(self, name: str, force: bool = False) -> str:
        rt = self._usable(name, "retire")
        if name in self.retiring:
            return f"{name}: already being retired"
        good, bad = self._redundancy(name)
        lost = ""
        if not good:
            why = "; ".join(bad) or "it is the only link"
            if not force:
                raise ValueError(f"refusing to retire {name}: no other link is live with a"
                                 f" clean deep check ({why}); --force retires it anyway")
            lost = (f"{name} was {rt.link.state.value}; no other replica is live with a"
                    f" clean deep check ({why}): mail on this master may have no checked, live"
                    " copy on any replica now")
        if rt.link.state is LinkState.QUARANTINED and not force:
            raise ValueError(f"{name} is quarantined: its backlog cannot be drained;"
                             " --force retires it and drops the backlog")
        seed = self.seeds.pop(name, None)
        if seed is not None and seed.active:
            seed.stop_all()
        self.store.drop_seed(name)
        self.freezes.pop(name, None)
        prior = dict(self.store.links.get(name) or {})
        self.store.set_retired(name, {"phase": "draining", "at": self.e.clock.wall(),
                                      "forced": force, "lost": lost, "prior": prior})
        self.retiring[name] = False
        self._retire_step(rt)
        then = "draining, then removing its worker and backlog"
        return f"{name}: {then}" + (f"; redundancy lost: {lost}" if lost else "")

    def _retire_step(self, rt: LinkRuntime) -> None:
        name = rt.name
        record = self.store.retired[name]
        if rt.link.state is LinkState.DRAINING:
            return
        forced = record.get("forced")
        if not self.retiring[name]:
            self.retiring[name] = True
            try:
                self.e.drain(name, "to retire it")
                return
            except (ValueError, KeyError) as exc:
                outcome = {"drained": False, "message": str(exc)}
        else:
            outcome = self.e.last_drain(name) or {"drained": False,
                                                  "message": "the drain was interrupted"}
        if not outcome.get("drained") and not forced:
            del self.retiring[name]
            self.store.set_retired(name, None)
            prior = record.get("prior") or {}
            self.store.set_seeded(name, bool(prior.get("seeded")),
                                  prior.get("since", self.e.clock.wall()),
                                  prior.get("how", "retire abandoned"))
            msg = (f"not retired: the drain did not finish"
                   f" ({outcome.get('message')}); its entries stay queued")
            log.error(msg, extra={"link": name})
            self.e.journal.send(msg, "err", "link-retired", SYNCWARDEN_LINK=name,
                                SYNCWARDEN_RESULT="abandoned",
                                SYNCWARDEN_REASON=str(outcome.get("message")))
            return
        self._retired(rt, record, outcome)

    def _retired(self, rt: LinkRuntime, record: dict, outcome: dict) -> None:
        name = rt.name
        for unit in (rt.units.worker, rt.units.drain, rt.units.user):
            self.e.systemd.stop(unit)
            if hasattr(self.e.systemd, "reset_failed"):
                self.e.systemd.reset_failed(unit)
        snap = rt.backlog.read(self.e.clock.monotonic(), self.e.clock.wall())
        dropped = snap.entries
        Channel(rt.backlog.sync_dir).remove()
        for user in sorted(rt.quarantine.quarantined()):
            rt.quarantine.drop(user)
        del self.retiring[name]
        record.update(phase="retired", at=self.e.clock.wall(), entries_dropped=dropped)
        self.store.set_retired(name, record)
        todo = self.instructions(name)
        how = "drained" if outcome.get("drained") else \
            f"NOT drained ({outcome.get('message')}; {dropped} entries dropped, --force)"
        self.e.journal.send(
            f"retired ({how}); its worker and backlog are gone. {todo}"
            + (f" Redundancy lost: {record['lost']}" if record.get("lost") else ""),
            "warning" if record.get("forced") else "notice", "link-retired",
            SYNCWARDEN_LINK=name, SYNCWARDEN_RESULT="retired",
            SYNCWARDEN_FORCED=int(bool(record.get("forced"))),
            SYNCWARDEN_ENTRIES_LEFT=dropped)

    def instructions(self, name: str) -> str:
        imapd = self.e.imapd()
        keys = sorted(k for k in imapd.options if k.startswith(f"{name}_"))
        rest = ['""' if c is None else c for c in imapd.channels if c != name]
        channels = (f"'sync_log_channels: {' '.join(rest)}'" if rest
                    else "no sync_log_channels line")
        return (f"To finish: in {imapd.path} set {channels}"
                + (f" and remove {', '.join(keys)}" if keys else "")
                + "; then let Cyrus's services read it again (a SIGHUP to its master, e.g."
                f" `systemctl reload cyrus-imapd`); in {self.e.config_source()} remove"
                f" links.{name}, then `systemctl reload syncwarden`.")

    # -- freeze --------------------------------------------------------------------------------
    def freeze(self, name: str, until: float, command: str | None, user: str | None) -> str:
        rt = self._usable(name, "freeze")
        if name in self.freezes:
            raise ValueError(f"{name} is frozen already, until"
                             f" {iso(self.freezes[name].r['until'])}")
        if self.seeding(name):
            raise ValueError(f"{name} is being seeded: its replica is no consistent copy yet")
        if rt.link.state in (LinkState.QUARANTINED, LinkState.DRAINING):
            raise ValueError(f"{name} is {rt.link.state.value}: it cannot be drained now")
        if not rt.reachable:
            raise ValueError(f"{name}: its replica does not answer, so it cannot be drained"
                             " to a known point")
        if not 1 <= until <= MAX_UNTIL:
            raise ValueError(f"--until must be 1s-{MAX_UNTIL / 86400:g}d, got {until:g}s")
        if user is not None:
            try:
                if pwd.getpwnam(user).pw_uid == 0:
                    raise ValueError(f"--exec-user {user}: the hook never runs as root")
            except KeyError:
                raise ValueError(f"--exec-user {user}: no such user") from None
        wall = self.e.clock.wall()
        record = {"phase": "draining", "since": wall, "until": wall + until,
                  "exec": command, "user": user}
        self.e.drain(name, f"to freeze it until {iso(wall + until)}")
        self.store.set_freeze(name, record)
        self.freezes[name] = Freeze(name, rt.units.hook, record, self._freeze_edges,
                                    drain_requested=True)
        return f"{name}: draining, then frozen until {iso(wall + until)}"

    def thaw(self, name: str) -> str:
        rt = self._get(name)
        if name not in self.freezes:
            raise ValueError(f"{name} is not frozen")
        self._thaw(rt, "thawed by the operator")
        return f"{name}: thawed; catching up with {rt.snapshot.entries} entries"

    def _thaw(self, rt: LinkRuntime, why: str) -> None:
        freeze = self.freezes.pop(rt.name)
        freeze.end(why, rt.snapshot.entries)
        self.store.set_freeze(rt.name, None)
        rt.restart_after = 0.0

    # -- how it is shown -----------------------------------------------------------------------
    def view(self, name: str) -> dict:
        seed, freeze = self.seeds.get(name), self.freezes.get(name)
        retired = self.store.retired.get(name)
        return {"seeded": self.store.seeded(name),
                "seed": seed.view() if seed else None,
                "freeze": freeze.view() if freeze else None,
                "retired": None if not retired else {
                    "state": retired.get("phase"), "at": iso(retired.get("at", 0)),
                    "forced": bool(retired.get("forced")),
                    "entries_dropped": retired.get("entries_dropped")}}

    def note(self, name: str) -> str | None:
        retired = self.store.retired.get(name)
        if retired:
            if retired.get("phase") == "draining":
                return "being retired: draining"
            return f"retired {iso(retired.get('at', 0))}. {self.instructions(name)}"
        if name in self.freezes:
            return self.freezes[name].note()
        seed = self.seeds.get(name)
        if seed is not None and (seed.active or seed.phase is Phase.INCOMPLETE):
            return seed.note()
        if not self.store.seeded(name):
            return f"replica never seeded: run `syncwarden seed {name}`"
        return None


def command(lifecycle: Lifecycle, req: dict) -> str:
    """A control request (control_schema.py validated it) for seed, retire, freeze or thaw."""
    cmd, link = req["cmd"], str(req["link"])
    if cmd == "seed":
        return lifecycle.seed(link, req.get("parallel"))
    if cmd == "retire":
        return lifecycle.retire(link, bool(req.get("force")))
    if cmd == "freeze":
        until = req.get("until")
        return lifecycle.freeze(link, float(DEFAULT_UNTIL if until is None else until),
                                req.get("exec"), req.get("exec_user"))
    return lifecycle.thaw(link)
