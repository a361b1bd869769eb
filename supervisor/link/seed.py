"""Seeding a link's replica: from empty (or stale) to a full copy, while every link keeps going.

Rolling replication only sends what changes after a channel was added, so a new replica must
get everything else once. A seed:

1. **waits for the writers**: a Cyrus process reads ``sync_log_channels`` when it starts, so
   one that started before the channel was added never logs to it (cyrus/writers.py). Until
   none is left, a change it makes after its user was copied would never reach the replica.
   Status names them and what ends them;
2. **lists the mailboxes** with ``ctl_mboxlist -d`` in a one-shot unit as cyrus
   (cyrus/mailboxes.py): every user, and every shared mailbox, which ``-u`` does not cover;
3. **syncs them** in batches, ``parallel`` at a time, each batch a ``syncwarden-user@`` unit of
   its own (the quarantine's mechanism: a list file and ``sync_client -u -f``, or ``-m -f``
   for shared mailboxes); Cyrus's per-user sync lock keeps a batch and the rolling worker,
   which runs all along and sends what changes meanwhile, from syncing one user at once.
   A batch is a range of the plan sized by the rate so far (BATCH_SECONDS); a failed one is
   halved until the failing user is alone, and that user is tried ITEM_ATTEMPTS times.

Batches run only while the link's rolling worker does (the replica answers, the link is not
held, frozen, draining or quarantined); a batch stopped for that is run again later. The plan
(seed_plan.py: what to sync next, what is done) is written once and the progress whenever a
batch ends (lifecycle_store.py), so a seed resumes after a daemon restart: a batch found
running is adopted, one that ended unwatched is run again. The link does not go ``live``
before the seed finished.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..cyrus import CYRUS_USER, mailboxes, writers
from ..state import atomic_write, cyrus_gid, ensure_dir
from ..systemd.units import LinkUnits, UnitStatus
from ..timefmt import human_duration, iso
from .seed_plan import Phase, Progress, work

log = logging.getLogger(__name__)

MAX_PARALLEL = 32


def default_parallel() -> int:
    """User syncs at a time unless told: 4, or one per CPU where there are fewer (a batch's
    sync_client and the replica's sync_server keep about one CPU busy between them; more
    batches than CPUs only take turns, each paying its start: bench/seed_bench.py)."""
    return max(1, min(4, os.cpu_count() or 1))


WRITER_CHECK = 5.0          # seconds between looks for processes with the old channel list
LIST_ATTEMPTS = 3
PROGRESS_STEP = 10          # a seed-progress journal entry every 10 %


@dataclass(frozen=True)
class SeedEdges:
    systemd: object
    journal: object
    clock: object
    store: object                                   # LifecycleStore
    imapd: Callable[[], object]                     # the current ImapdConf
    sync_client: Callable[[], str]
    listing_file: Callable[[str], Path]             # link -> ctl_mboxlist's output
    users_file: Callable[[str], Path]               # slot (LINK.seedN) -> its list
    old_writers: Callable = writers.old_writers     # (imapd, changed) -> [OldWriter]
    conf_changed: Callable = writers.conf_changed   # imapd -> mtime


_IDLE = UnitStatus("", "inactive", "dead")


def _split(slot: str) -> tuple[str, int]:
    """'seed3' -> ('seed', 3): the slot kind (units.SLOT_KINDS) and its number."""
    kind = slot.rstrip("0123456789")
    return kind, int(slot[len(kind):])


class Seed:
    def __init__(self, units: LinkUnits, edges: SeedEdges, progress: Progress,
                 plan: dict | None = None):
        self.units, self.e, self.p = units, edges, progress
        self.link = progress.link
        self.plan = plan or {}
        # slot -> when this daemon started it (None: found running after a restart)
        self.launched: dict[str, float | None] = {}
        self.next_check = 0.0
        self.last_mono: float | None = None
        self.next_list = 0.0

    # -- state -------------------------------------------------------------------------------
    @property
    def phase(self) -> Phase:
        return Phase(self.p.phase)

    @property
    def active(self) -> bool:
        return self.phase in (Phase.WRITERS, Phase.LISTING, Phase.SYNCING)

    def _save(self, plan: bool = False) -> None:
        self.e.store.save_seed(self.link, asdict(self.p), self.plan if plan else None)

    def _journal(self, message: str, mid: str, priority: str = "info", **fields) -> None:
        self.e.journal.send(message, priority, mid,
                            SYNCWARDEN_LINK=self.link, **fields)

    # -- one tick ----------------------------------------------------------------------------
    def step(self, mono: float, can_sync: bool, units: dict[str, UnitStatus]) -> None:
        """``can_sync``: the link's rolling worker runs (batches run only then)."""
        if self.phase is Phase.WRITERS and mono >= self.next_check:
            self.next_check = mono + WRITER_CHECK
            self._check_writers()
        if self.phase is Phase.LISTING:
            self._listing(mono, units)
        if self.phase is Phase.SYNCING:
            self._syncing(mono, can_sync, units)

    def _check_writers(self) -> None:
        imapd = self.e.imapd()
        old = self.e.old_writers(imapd, self.e.conf_changed(imapd))
        if old:
            detail = writers.advice(old, imapd, self.link)
            if [w.pid for w in old] != getattr(self, "_reported_writers", None):
                self._reported_writers = [w.pid for w in old]
                self._journal(f"seed waits: {detail}", "seed-progress", "notice",
                              SYNCWARDEN_PHASE=self.p.phase)
            self.p.detail = detail
            return
        self.p.phase, self.p.detail = Phase.LISTING.value, ""
        self._save()
        self._journal("seed: every Cyrus process logs to this channel now; listing mailboxes",
                      "seed-progress", SYNCWARDEN_PHASE=self.p.phase)

    def _listing(self, mono: float, units: dict) -> None:
        unit = self.units.listing
        status = units.get(unit)
        if (status is not None and status.running) or mono < self.next_list:
            return
        path = self.e.listing_file(self.link)
        if unit in self.launched:
            del self.launched[unit]
            try:
                inventory = mailboxes.parse(path.read_bytes(), self.e.imapd())
            except (OSError, mailboxes.MailboxListError) as exc:
                info = self.e.systemd.exit_info(unit)
                self._list_failed(f"{exc} (ctl_mboxlist: {info.result}, exit status"
                                  f" {info.status}; journalctl -u {unit})", mono)
                return
            self._planned(inventory)
            path.unlink(missing_ok=True)
            return
        ensure_dir(path.parent, 0o700)
        path.unlink(missing_ok=True)        # the unit's output file is opened without O_TRUNC
        try:
            self.e.systemd.run(unit, mailboxes.list_argv(self.e.sync_client(),
                                                          self.e.imapd().path),
                               user=CYRUS_USER, stdout_file=str(path),
                               description=f"syncwarden: mailboxes to seed {self.link}")
        except Exception as exc:
            self._list_failed(f"cannot start {unit}: {exc}", mono)
            return
        self.launched[unit] = mono

    def _list_failed(self, why: str, mono: float) -> None:
        self.p.list_attempts += 1
        self.p.detail = f"listing the mailboxes failed: {why}"
        if self.p.list_attempts >= LIST_ATTEMPTS:
            self._finish(f"the mailboxes could not be listed ({why})")
        else:
            self.next_list = mono + 5.0 * self.p.list_attempts
            self._save()

    def _planned(self, inventory: mailboxes.Inventory) -> None:
        self.plan = {"users": inventory.users, "shared": inventory.shared}
        p = self.p
        p.users, p.shared = len(inventory.users), len(inventory.shared)
        p.phase, p.detail, p.cursor, p.done_items = Phase.SYNCING.value, "", 0, 0
        self._save(plan=True)
        self._journal(f"seed: {p.users} users and {p.shared} shared mailboxes to sync,"
                      f" {p.parallel} at a time", "seed-progress",
                      SYNCWARDEN_PHASE=p.phase, SYNCWARDEN_USERS=p.users,
                      SYNCWARDEN_MAILBOXES=p.shared, SYNCWARDEN_TOTAL=p.items)

    # -- syncing -----------------------------------------------------------------------------
    def _slot_unit(self, slot: str) -> str:
        return self.units.slot(*_split(slot))

    def _syncing(self, mono: float, can_sync: bool, units: dict) -> None:
        p, changed = self.p, False
        if p.running and self.last_mono is not None:
            p.sync_seconds += max(0.0, mono - self.last_mono)
        self.last_mono = mono
        for slot, ref in list(p.running.items()):
            unit = self._slot_unit(slot)
            status = units.get(unit)
            if status is not None and status.running:
                if slot not in self.launched and slot not in p.stopping:
                    self.launched[slot] = None      # started before a daemon restart: ours
                if not can_sync and slot not in p.stopping:
                    p.stopping.append(slot)         # saved first: its exit is no success
                    self._save()
                    self.e.systemd.stop(unit)       # the replica left, a hold, a freeze ...
                continue
            del p.running[slot]
            changed = True
            if slot in self.launched and slot not in p.stopping:
                started = self.launched.pop(slot)
                info = self.e.systemd.exit_info(unit)
                if info.result == "success" and info.status == 0:
                    p.done(ref, None if started is None else mono - started)
                else:
                    self._failed(ref, f"sync_client exited ({info.result}, status"
                                 f" {info.status}): journalctl -u {unit}")
            else:
                # stopped by us, or it ended while no daemon watched: its outcome is unknown
                self.launched.pop(slot, None)
                p.pending.insert(0, ref)
            if slot in p.stopping:
                p.stopping.remove(slot)
        if can_sync:
            changed |= self._launch(units, mono)
        if p.all_handed_out:
            self._finish()
            return
        if changed:
            self._save()
        self._report_progress()

    def _launch(self, units: dict, mono: float) -> bool:
        launched = False
        while len(self.p.running) < self.p.parallel:
            slot = self._free_slot(units)
            if slot is None:
                return launched
            ref = self.p.next_range()
            if ref is None:
                return launched
            kind, names = work(self.plan, ref)
            slot = ("seed" if kind == "users" else "shared") + slot
            self.p.running[slot] = ref
            self._save()               # recorded before it starts: a restart finds it
            path = self.e.users_file(f"{self.link}.{slot}")
            gid = cyrus_gid()
            ensure_dir(path.parent, 0o750, gid)
            atomic_write(path, "".join(f"{n}\n" for n in names).encode(), 0o640, gid)
            try:
                self.e.systemd.start(self._slot_unit(slot))
            except Exception as exc:
                log.error("cannot start %s: %s", self._slot_unit(slot), exc,
                          extra={"link": self.link})
                del self.p.running[slot]
                self.p.pending.insert(0, ref)
                return launched
            self.launched[slot] = mono
            launched = True
        return launched

    def _free_slot(self, units: dict) -> str | None:
        """A slot number no batch of either kind runs in (as far as we or systemd know)."""
        taken = {_split(s)[1] for s in (*self.p.running, *self.p.stopping)}
        for n in range(1, self.p.parallel + 1):
            busy = any((units.get(self.units.slot(kind, n)) or _IDLE).running
                       for kind in ("seed", "shared"))
            if n not in taken and not busy:
                return str(n)
        return None

    def _failed(self, ref: list, why: str) -> None:
        kind, names = work(self.plan, ref)
        if self.p.failed_range(ref, kind, names[0] if len(names) == 1 else None, why):
            log.warning("seed: %s %s failed %d times: %s", kind, names[0],
                        self.p.attempts[str(ref[0])], why, extra={"link": self.link})

    def percent(self) -> int:
        return self.p.percent()

    def eta(self) -> float | None:
        return self.p.eta()

    # -- progress and the end ----------------------------------------------------------------
    def _report_progress(self) -> None:
        step = self.percent() // PROGRESS_STEP * PROGRESS_STEP
        if step > self.p.reported and step < 100:
            self.p.reported = step
            eta = self.eta()
            self._journal(f"seed {step}%: {self.p.done_items} of {self.p.items} users and shared"
                          f" mailboxes synced" + (f", about {human_duration(eta)} left"
                                                  if eta is not None else ""),
                          "seed-progress", SYNCWARDEN_PHASE=self.p.phase,
                          SYNCWARDEN_DONE=self.p.done_items, SYNCWARDEN_TOTAL=self.p.items,
                          SYNCWARDEN_ETA=None if eta is None else round(eta))
            self._save()

    def _finish(self, broken: str | None = None) -> None:
        p = self.p
        p.finished = self.e.clock.wall()
        took = p.finished - p.started
        failed = sorted(p.failed)
        complete = broken is None and not failed
        p.phase = Phase.DONE.value if complete else Phase.INCOMPLETE.value
        if broken:
            p.detail = broken
        elif failed:
            p.detail = (f"{len(failed)} failed ({', '.join(failed[:5])}"
                        f"{', ...' if len(failed) > 5 else ''}); run `syncwarden seed"
                        f" {self.link}` again to retry them")
        self.e.store.drop_seed(self.link, keep_progress=True)
        self._save()
        if complete:
            self.e.store.set_seeded(self.link, True, p.finished,
                                    f"syncwarden seed, finished {iso(p.finished)}")
        self._journal(f"seed {'finished' if complete else 'incomplete'} after"
                      f" {human_duration(took)}: {p.done_items} of {p.items} users and shared"
                      f" mailboxes synced" + (f"; {p.detail}" if not complete else ""),
                      "seed-finished", "notice" if complete else "err",
                      SYNCWARDEN_RESULT="complete" if complete else "incomplete",
                      SYNCWARDEN_USERS=p.users, SYNCWARDEN_MAILBOXES=p.shared,
                      SYNCWARDEN_FAILED=len(failed), SYNCWARDEN_DURATION=f"{took:.3f}")

    def stop_all(self, kill=False) -> None:
        """Stop every running batch (daemon stopping, link retired): they run again later."""
        self.p.stopping = sorted(set(self.p.stopping) | set(self.p.running))
        try:
            self._save()
        except OSError as exc:
            log.error("cannot save the seed of %s: %s", self.link, exc, extra={"link": self.link})
        for slot in list(self.p.running):
            unit = self._slot_unit(slot)
            try:
                (self.e.systemd.kill if kill else self.e.systemd.stop)(unit)
            except Exception as exc:
                log.warning("cannot stop %s: %s", unit, exc, extra={"link": self.link})

    # -- how it is shown ---------------------------------------------------------------------
    def view(self) -> dict:
        p = self.p
        eta = self.eta()
        return {"state": p.phase, "started": iso(p.started),
                "finished": iso(p.finished) if p.finished else None,
                "users": p.users, "shared_mailboxes": p.shared, "done": p.done_items,
                "total": p.items, "percent": self.percent(), "running": len(p.running),
                "parallel": p.parallel, "eta_seconds": None if eta is None else round(eta),
                "failed": sorted(p.failed), "detail": p.detail}

    def note(self) -> str:
        """The words added to the link's reason while it seeds."""
        p, phase = self.p, self.phase
        if phase is Phase.WRITERS:
            return f"seed waiting: {p.detail or 'looking for Cyrus processes'}"
        if phase is Phase.LISTING:
            return "seed: listing mailboxes" + (f" ({p.detail})" if p.detail else "")
        if phase is Phase.SYNCING:
            eta = self.eta()
            return (f"seeding: {p.done_items} of {p.items} users and shared mailboxes"
                    f" ({self.percent()}%)" + (f", about {human_duration(eta)} left"
                                               if eta is not None else ""))
        if phase is Phase.INCOMPLETE:
            return f"seed incomplete: {p.detail}"
        return ""
