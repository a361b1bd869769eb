"""Role authority: the pair's master key in etcd, held under this daemon's lease.

A daemon pushes only while it holds the key and the lease it knows of has not run out (by its
own monotonic clock, counted from before the request that granted or renewed it, so it stops
pushing before etcd could give the key to anyone else, never after). Losing etcd therefore
keeps a master pushing until that moment and not a second longer; a host that cannot reach
etcd never takes the key, so never becomes master.

``Authority.step`` does one round of etcd work (lease, one read of the pair's keys, the
registry entry, at most one switchover action) and publishes what it saw as a frozen ``View``;
``service.py`` runs it in a thread so that a slow or partitioned etcd never holds up the
reconcile tick, which only reads the latest view (``may_push``). Unit tests drive ``step``
with a fake etcd and a fake clock.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from . import etcd as E
from .etcd import EtcdError, LeaseGone
from .keys import Keys, decode, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class View:
    """What the last round saw; replaced whole (the tick reads it from another thread)."""

    held: bool = False
    deadline: float = -math.inf     # monotonic: when our lease may have run out
    holder: str | None = None       # the master key's holder, as last read
    request: dict | None = None     # the switchover request, with "rev"
    handover: dict | None = None    # a released key waiting for its target, with "rev"
    members: dict = field(default_factory=dict)   # registry entries of the pair, by host
    error: str | None = None        # why the last round failed (etcd unreachable ...)

    def may_push(self, mono: float, guard: float) -> bool:
        return self.held and mono < self.deadline - guard


# The lease is renewed this often (or every third of its TTL, if that is sooner). How long etcd
# may be away before the master stops pushing is then at least TTL - guard - RENEW_EVERY:
# with the default TTL (settings.py), more than a minute.
RENEW_EVERY = 5.0


class Authority:
    def __init__(self, etcd, keys: Keys, me: str, instance: str, ttl: float, journal, clock):
        self.etcd, self.keys, self.me, self.instance = etcd, keys, me, instance
        self.ttl, self.journal, self.clock = int(ttl), journal, clock
        self.lease: int | None = None
        self.deadline = -math.inf
        self.renewed = -math.inf
        self.view = View()
        self.action: tuple | None = None        # set by the loop, done by the next round
        self.published: tuple | None = None     # (entry, lease, monotonic) last written
        self._last_holder: str | None = "?"     # "?": nothing read yet

    @property
    def guard(self) -> float:
        """Stop pushing this long before the lease could run out: a tick, a worker's stop."""
        return max(2.0, self.ttl / 5)

    def step(self, want_master: bool, entry: dict | None = None) -> View:
        """One round; never raises for etcd trouble (the view says it)."""
        try:
            self._lease()
            kvs = {kv.key: kv for kv in self.etcd.get_prefix(self.keys.pair_dir)}
            held = self._decide(kvs, want_master)
            action = self.action
            if action is not None:
                done = self._act(action, kvs)     # raises on etcd trouble: asked again
                if self.action is action:
                    self.action = None
                if done:
                    kvs = {kv.key: kv for kv in self.etcd.get_prefix(self.keys.pair_dir)}
                    held = self._decide(kvs, want_master)
            if entry is not None:
                self._publish(entry)
            self.view = self._view(kvs, held, None)
        except LeaseGone as exc:        # etcd says so: nothing is ours any more
            log.warning("etcd lease %x is gone: taking a new one (%s)", self.lease or 0, exc)
            self.lease, self.deadline, self.published = None, -math.inf, None
            self.view = View(False, self.deadline, self.view.holder, self.view.request,
                             self.view.handover, self.view.members, str(exc))
        except (EtcdError, ValueError) as exc:
            # Keep what we knew: the key is ours until the lease we know of runs out.
            self.view = View(self.view.held and self.lease is not None, self.deadline,
                             self.view.holder, self.view.request, self.view.handover,
                             self.view.members, str(exc))
        return self.view

    # -- the lease -----------------------------------------------------------------------
    def _lease(self) -> None:
        mono = self.clock.monotonic()
        if self.lease is None or mono >= self.deadline:
            lease, ttl = self.etcd.grant(self.ttl)
            self.lease, self.deadline, self.renewed = lease, mono + ttl, mono
            self.published = None
        elif mono >= self.renewed + min(self.ttl / 3, RENEW_EVERY):
            left = self.etcd.keepalive(self.lease)
            if left <= 0:
                log.warning("etcd lease %x expired: taking a new one", self.lease)
                self.lease, self.deadline = None, -math.inf
                self.published = None
                self._lease()
                return
            self.deadline, self.renewed = mono + left, mono

    # -- the key ---------------------------------------------------------------------------
    def _decide(self, kvs: dict, want_master: bool) -> bool:
        """Take, keep or let go of the master key; whether we hold it now."""
        k = self.keys
        master = kvs.get(k.master)
        holder = decode(master.value).get("host") if master else None
        if master is None and want_master and k.handover not in kvs:
            mine = self._value()
            if self.etcd.txn([E.absent(k.master), E.absent(k.handover)],
                             [E.put(k.master, mine, self.lease)]):
                self._changed(self.me, "took the master key", made=True)
                return True
            holder = None
        elif master is not None and holder == self.me:
            if not want_master:   # demoted by an operator: the key goes with the role
                if self.etcd.txn([E.unchanged(k.master, master.mod_revision)],
                                 [E.delete(k.master)]):
                    self._changed(None, "released the master key: this host is a replica",
                                  made=True)
                return False
            if master.lease != self.lease:   # our previous lease (a restart, an expiry)
                kept = self.etcd.txn([E.unchanged(k.master, master.mod_revision)],
                                     [E.put(k.master, self._value(), self.lease)])
                if kept:
                    self._changed(self.me, "kept the master key under a new lease", made=True)
                return kept
            self._changed(self.me, "holds the master key")
            return True
        self._changed(holder, "read the master key")
        return False

    def _value(self) -> bytes:
        return encode({"host": self.me, "instance": self.instance,
                       "since": self.clock.wall()})

    def _changed(self, holder: str | None, what: str, made: bool = False) -> bool:
        """One journal entry for every change of the key's holder this daemon sees (or
        ``made`` itself); the first reading after the start is no change, and says nothing."""
        first = self._last_holder == "?"
        if holder != self._last_holder:
            old = None if first else self._last_holder
            self._last_holder = holder
            if first and not made:
                return True
            change = (f"{holder or 'free'}" if first   # a takeover of our own key at start
                      else f"{old or 'free'} -> {holder or 'free'}")
            self.journal.send(
                f"pair {self.keys.pair}: master key {change} ({self.me} {what})", "notice",
                "master-key",
                SYNCWARDEN_PAIR=self.keys.pair, SYNCWARDEN_HOLDER=holder or "",
                SYNCWARDEN_OLD_HOLDER=old or "")
        return True

    # -- switchover actions (asked for by the loop, switchover.py) --------------------------
    def _act(self, action: tuple, kvs: dict) -> bool:
        k, what = self.keys, action[0]
        req = kvs.get(k.switchover)
        if what == "release":           # ("release", request rev, position)
            _, rev, position = action
            master = kvs.get(k.master)
            if req is None or req.mod_revision != rev or master is None \
                    or decode(master.value).get("host") != self.me:
                return False
            doc = decode(req.value)
            at = self.clock.wall()
            hand = {"from": self.me, "to": doc.get("to"), "position": position, "at": at}
            ok = self.etcd.txn([E.unchanged(k.master, master.mod_revision),
                                E.unchanged(k.switchover, rev)],
                               [E.delete(k.master), E.put(k.handover, encode(hand)),
                                E.put(k.switchover, encode({**doc, "phase": "released",
                                                            "released_at": at}))])
            if ok:
                self._changed(None, f"released the master key to {doc.get('to')}", made=True)
            return ok
        if what == "take":              # ("take", handover rev)
            hand = kvs.get(k.handover)
            if hand is None or hand.mod_revision != action[1] or k.master in kvs:
                return False
            ops = [E.put(k.master, self._value(), self.lease), E.delete(k.handover)]
            if req is not None:
                ops.append(E.put(k.switchover, encode({**decode(req.value), "phase": "done",
                                                       "done_at": self.clock.wall()})))
            ok = self.etcd.txn([E.absent(k.master), E.unchanged(k.handover, action[1])], ops)
            if ok:
                self._changed(self.me, "took the master key from a switchover", made=True)
            return ok
        if what == "refuse":            # ("refuse", request rev, why)
            if req is None or req.mod_revision != action[1]:
                return False
            doc = {**decode(req.value), "phase": "refused", "detail": action[2]}
            return self.etcd.txn([E.unchanged(k.switchover, action[1])],
                                 [E.put(k.switchover, encode(doc))])
        raise ValueError(f"unknown switchover action {what!r}")

    # -- the registry ---------------------------------------------------------------------
    def _publish(self, entry: dict) -> None:
        """This host's registry entry, when it changed and at least every third of the TTL
        (``written_at`` then shows it alive; the lease removes it when the host is gone)."""
        mono = self.clock.monotonic()
        last = self.published
        if last and last[0] == entry and last[1] == self.lease and mono < last[2] + self.ttl / 3:
            return
        self.etcd.put(self.keys.member(self.me),
                      encode({**entry, "written_at": self.clock.wall(), "ttl": self.ttl}),
                      self.lease)
        self.published = (entry, self.lease, mono)

    def _view(self, kvs: dict, held: bool, error: str | None) -> View:
        k = self.keys
        master = kvs.get(k.master)

        def doc(key):
            kv = kvs.get(key)
            return {**decode(kv.value), "rev": kv.mod_revision} if kv else None

        members = {key[len(k.member("")):]: decode(kv.value) for key, kv in kvs.items()
                   if key.startswith(k.member(""))}
        holder = self.me if held else decode(master.value).get("host") if master else None
        return View(held, self.deadline, holder, doc(k.switchover), doc(k.handover), members,
                    error)

    def close(self) -> None:
        """The daemon stops: give the key and the registry entry up now, not at expiry."""
        if self.lease is not None:
            try:
                self.etcd.revoke(self.lease)
            except EtcdError as exc:
                log.warning("cannot revoke the etcd lease: %s", exc)
            self.lease = None
