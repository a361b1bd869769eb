"""The systemd edge: worker unit names, and starting, stopping and listing them over D-Bus.

systemd's view of a unit is the truth about a worker: there are no pid files of our own to go
stale, and a daemon restart finds running workers by listing units.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

WORKER_TEMPLATE = "syncwarden-sync@"
DEFAULT_INSTANCE = "default"


def worker_unit(link: str, instance: str = DEFAULT_INSTANCE) -> str:
    """Unit name of a link's rolling worker; other Cyrus instances qualify it as NAME:LINK."""
    qualified = link if instance == DEFAULT_INSTANCE else f"{instance}:{link}"
    return f"{WORKER_TEMPLATE}{qualified}.service"


def parse_worker_instance(name: str) -> tuple[str, str]:
    """'replica1' -> ('default', 'replica1'); 'east:replica1' -> ('east', 'replica1')."""
    instance, sep, link = name.rpartition(":")
    return (instance, link) if sep else (DEFAULT_INSTANCE, link)


@dataclass(frozen=True)
class UnitStatus:
    name: str
    active_state: str   # active, activating, deactivating, inactive, failed, ...
    sub_state: str
    job: str = ""       # type of a queued job, e.g. "start" right after StartUnit

    @property
    def running(self) -> bool:
        return self.active_state in ("active", "activating", "reloading") or self.job == "start"


@dataclass(frozen=True)
class ExitInfo:
    result: str          # systemd's Result: success, exit-code, signal, ...
    status: int          # ExecMainStatus: exit code or signal number


class Systemd:
    """pystemd over one long-lived system bus connection."""

    def __init__(self):
        from pystemd.dbuslib import DBus
        from pystemd.systemd1 import Manager

        self._bus = DBus()
        self._bus.open()
        self._manager = Manager(bus=self._bus)
        self._manager.load()

    def list(self, *patterns: str) -> dict[str, UnitStatus]:
        """Loaded units matching globs, by name (units systemd has not loaded are inactive)."""
        rows = self._manager.Manager.ListUnitsByPatterns([], [p.encode() for p in patterns])
        out = {}
        for row in rows:
            name = row[0].decode()
            if any(fnmatch.fnmatch(name, p) for p in patterns):
                out[name] = UnitStatus(name, row[3].decode(), row[4].decode(), row[8].decode())
        return out

    def start(self, unit: str) -> None:
        self._manager.Manager.StartUnit(unit.encode(), b"replace")

    def stop(self, unit: str) -> None:
        self._manager.Manager.StopUnit(unit.encode(), b"replace")

    def reset_failed(self, unit: str) -> None:
        self._manager.Manager.ResetFailedUnit(unit.encode())

    def exit_info(self, unit: str) -> ExitInfo:
        from pystemd.systemd1 import Unit

        u = Unit(unit.encode(), bus=self._bus)
        u.load()
        return ExitInfo(u.Service.Result.decode(), int(u.Service.ExecMainStatus))

    def close(self) -> None:
        self._bus.close()
