"""The state-change hook: an admin's command, run on every transition of every link.

It runs as a transient systemd unit (``syncwarden-hook-...service``), started over D-Bus like
the workers: as ``hooks.user`` (``nobody`` by default, never root: the daemon is root and the
command is the admin's), with ``NoNewPrivileges=``, killed after ``hooks.timeout``, its output in
the journal under SYSLOG_IDENTIFIER=syncwarden-hook. Starting it only queues a job, so a slow or
hanging hook never holds up the reconcile loop, and a failing one never changes a link.

The environment is the contract (docs/CONTRACT.md): SYNCWARDEN_LINK, SYNCWARDEN_FROM,
SYNCWARDEN_TO, SYNCWARDEN_REASON, SYNCWARDEN_TRIGGER, SYNCWARDEN_STATE_CODE,
SYNCWARDEN_INSTANCE.
"""

from __future__ import annotations

import itertools
import logging
import pwd
import re

from ..config import HookSettings
from .states import Transition

log = logging.getLogger(__name__)

IDENTIFIER = "syncwarden-hook"
SHELL = "/bin/sh"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def environment(t: Transition, instance: str) -> dict[str, str]:
    """The hook's environment for one transition (one line each: no control characters)."""
    env = {"SYNCWARDEN_LINK": t.link, "SYNCWARDEN_FROM": t.source.value,
           "SYNCWARDEN_TO": t.dest.value, "SYNCWARDEN_REASON": t.reason,
           "SYNCWARDEN_TRIGGER": t.trigger, "SYNCWARDEN_STATE_CODE": str(t.dest.code),
           "SYNCWARDEN_INSTANCE": instance}
    return {k: _CONTROL.sub(" ", v) for k, v in env.items()}


class Hooks:
    def __init__(self, systemd, instance: str, clock):
        self.systemd = systemd
        self.instance = instance
        self.clock = clock
        self._seq = itertools.count(1)

    def unit_name(self, link: str) -> str:
        """Unique per start, also across daemon restarts (the wall clock in ms)."""
        return (f"{IDENTIFIER}-{self.instance}-{link}-{int(self.clock.wall() * 1000):x}"
                f"-{next(self._seq)}.service")

    def state_changed(self, settings: HookSettings, t: Transition) -> str | None:
        """Start the hook for a transition; the unit's name, or None (no hook, or systemd
        refused: said in the journal, the link carries on)."""
        if not settings.on_state_change:
            return None
        if _uid(settings.user) == 0:       # config.py refuses "root"; not another name for it
            log.warning("not running the on_state_change hook as %s: uid 0", settings.user,
                        extra={"link": t.link})
            return None
        name = self.unit_name(t.link)
        try:
            self.systemd.start_transient(
                name, [SHELL, "-c", settings.on_state_change], environment(t, self.instance),
                settings.user, settings.timeout,
                description=f"syncwarden hook: link {t.link} {t.source.value} ->"
                            f" {t.dest.value}")
        except Exception as exc:     # D-Bus refused (no such user, ...): the link goes on
            log.warning("cannot start the on_state_change hook for %s: %s", t.link, exc,
                        extra={"link": t.link})
            return None
        return name


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None          # systemd says so when it starts the unit
