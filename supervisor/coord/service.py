"""The daemon's coordination: ``Authority`` rounds in a thread, the loop reading their view.

The thread does all etcd I/O (a partitioned etcd can take a request timeout per endpoint) and
pokes the loop when the view changes; the loop never waits on etcd. What the loop tells the
thread (whether the local role wants the key, the registry entry, a switchover action) is
plain attributes it replaces whole.
"""

from __future__ import annotations

import logging
import threading

from .authority import Authority, View
from .etcd import Etcd
from .keys import Keys
from .settings import CoordinationSettings

log = logging.getLogger(__name__)

ROUND = 1.0   # seconds between rounds: how soon a key change or a switchover is noticed
FAST = 0.1    # while a switchover is under way: each of its steps waits for a round


class Coordination:
    def __init__(self, settings: CoordinationSettings, instance: str, journal, clock, wake,
                 etcd=None):
        self.settings = settings
        self.authority = Authority(etcd or Etcd(settings.etcd),
                                   Keys(settings.etcd.prefix, settings.pair), settings.name,
                                   instance, settings.ttl, journal, clock)
        self.wake = wake
        # Whether the local role wants the key, read afresh at each round (the daemon gives
        # ``lambda: sup.role.is_master``): a role changed by a switchover or an operator
        # between two ticks must not meet a round that still acts on the old one.
        self.wants_master = lambda: False
        self.entry: dict | None = None
        self.entry_at = 0.0          # monotonic: the loop's last tick (set with entry)
        self.switchover = None       # switchover.py's driver, made at the first tick
        self.quiet = False           # a switchover asked for the release: push no more
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._run, name="syncwarden-etcd", daemon=True)

    @property
    def view(self) -> View:
        return self.authority.view

    def start(self) -> None:
        """Start the rounds; returns after the first (or, etcd not answering, after the time
        it may take), so that the first tick knows whether this daemon holds the key."""
        self._thread.start()
        self._first.wait(self.settings.etcd.timeout * (2 * len(self.settings.etcd.endpoints)
                                                        + 2))

    @property
    def busy(self) -> bool:
        """A switchover is under way in this pair (the loop and the rounds go faster)."""
        v = self.view
        return v.handover is not None or bool(v.request
                                              and v.request.get("phase") == "requested")

    def may_push(self, mono: float) -> bool:
        return not self.quiet and self.view.may_push(mono, self.authority.guard)

    def ask(self, action: tuple) -> None:
        """A switchover action for the next round (switchover.py), done at once."""
        self.authority.action = action
        self._poke.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            before = self.authority.view
            try:
                after = self.authority.step(self.wants_master(), self._fresh_entry())
            except Exception:    # a bug must not end the thread silently: the loop would
                log.exception("coordination round failed")    # keep a stale view
                after = before
            self._first.set()
            if after != before:
                self.wake()
            self._poke.wait(FAST if self.busy else ROUND)
            self._poke.clear()

    def before_tick(self, sup, systemd, proc_root) -> None:
        """Carry a switchover one step further (switchover.py); not while the daemon stops."""
        if self.switchover is None:
            from .switchover import SwitchoverDriver, cyrus_edges

            self.switchover = SwitchoverDriver(self.settings.name, self,
                                               *cyrus_edges(sup, systemd, proc_root))
        self.switchover.step(sup)

    def after_tick(self, sup, mono: float) -> None:
        """What this daemon publishes about itself for `syncwarden fleet status`."""
        self.publish({"instance": sup.local.instance, "role": sup.role.role,
                      "links": {v.name: {"state": v.state.value, "host": v.host,
                                         "entries": v.backlog.entries} for v in sup.views}},
                     mono)

    def publish(self, entry: dict, mono: float) -> None:
        """The loop's registry entry after a tick."""
        self.entry, self.entry_at = entry, mono

    def _fresh_entry(self) -> dict | None:
        """The entry while the loop ticks; a hung loop's is not rewritten, so that fleet
        status shows it stale (written_at ages) before the watchdog ends the daemon."""
        mono = self.authority.clock.monotonic()
        return self.entry if mono - self.entry_at < self.settings.ttl / 3 else None

    def close(self, release: bool) -> None:
        """Stop the thread; ``release``: give the key and the registry entry up now (a stop
        that drained), else leave them to the lease (a restart whose workers keep running:
        the next daemon takes its own key over)."""
        self._stop.set()
        self._poke.set()
        self._thread.join(timeout=self.settings.etcd.timeout * 2 + 1)
        if release:
            self.authority.close()

    def status_key(self) -> tuple:
        """What the status document says of coordination, but the seconds left (the status
        file is rewritten when this changes, and every STATUS_REFRESH anyway)."""
        v = self.view
        return (v.holder, v.held, self.quiet, v.error, v.request and v.request.get("phase"))

    def status(self, mono: float) -> dict:
        """The ``coordination`` part of the status document."""
        v = self.view
        return {"pair": self.settings.pair, "name": self.settings.name,
                "holder": v.holder, "holds_key": v.held,
                "may_push": self.may_push(mono),
                "lease_left_seconds": (round(v.deadline - mono, 1) if v.held else None),
                "error": v.error,
                "switchover": ({k: v.request.get(k) for k in ("from", "to", "phase", "detail")}
                               if v.request else None)}
