"""The systemd edge: worker unit names, and starting, stopping and listing them over D-Bus.

systemd's view of a unit is the truth about a worker: there are no pid files of our own to go
stale, and a daemon restart finds running workers by listing units.
"""

from __future__ import annotations

import enum
import fnmatch
import signal
from dataclasses import dataclass

from ..paths import DEFAULT


class UnitKind(enum.Enum):
    """The template units syncwarden starts for a link; the only place their names are spelt."""

    WORKER = "syncwarden-sync"      # the rolling sync_client -R
    DRAIN = "syncwarden-drain"      # one drain pass, sync_client -R -1
    USER = "syncwarden-user"        # user syncs for bisection, retries and seeding, sync_client -u
    CHECK = "syncwarden-check"      # the daily check (started by its timer, never by the daemon)
    # Transient units (no unit file; the daemon describes them when it starts them):
    LIST = "syncwarden-list"        # a seed's list of mailboxes, ctl_mboxlist -d, as cyrus
    FREEZE = "syncwarden-freeze"    # a freeze's --exec command, as an unprivileged user


# A seed runs its user syncs in parallel "slots", each a syncwarden-user@ unit of its own:
# instance LINK.seedN runs ``sync_client -u`` over users, LINK.sharedN ``-m`` over shared
# mailboxes. Link names have no '.', so the suffix cannot be mistaken for part of one.
SLOT_KINDS = {"seed": "users", "shared": "mailboxes"}


def qualified(link: str, instance: str = DEFAULT) -> str:
    """The systemd instance string: LINK for the default instance, NAME:LINK for others."""
    return link if instance == DEFAULT else f"{instance}:{link}"


def parse_qualified(name: str) -> tuple[str, str]:
    """'replica1' -> ('default', 'replica1'); 'east:replica1' -> ('east', 'replica1')."""
    instance, sep, link = name.rpartition(":")
    return (instance, link) if sep else (DEFAULT, link)


def link_of(unit: str) -> str:
    """The link a unit of ours runs for: syncwarden-sync@east:replica1.service -> replica1."""
    return parse_qualified(unit.partition("@")[2].rpartition(".service")[0])[1]


def daemon_unit(instance: str = DEFAULT) -> str:
    """The daemon's own unit: syncwarden.service, or syncwarden@NAME.service (units/)."""
    return "syncwarden.service" if instance == DEFAULT else f"syncwarden@{instance}.service"


def unit_name(kind: UnitKind, link: str, instance: str = DEFAULT) -> str:
    return f"{kind.value}@{qualified(link, instance)}.service"


def worker_unit(link: str, instance: str = DEFAULT) -> str:
    return unit_name(UnitKind.WORKER, link, instance)


def slot_name(link: str, kind: str, n: int) -> str:
    """The part of a seed slot's unit name after '@' (and after 'NAME:'): LINK.seed3."""
    if kind not in SLOT_KINDS:
        raise ValueError(f"unknown slot kind {kind!r}")
    return f"{link}.{kind}{n}"


def slot_unit(link: str, kind: str, n: int, instance: str = DEFAULT) -> str:
    return unit_name(UnitKind.USER, slot_name(link, kind, n), instance)


def parse_slot(name: str) -> tuple[str, str | None]:
    """'replica1' -> ('replica1', None) (the link's own user unit, a list of users);
    'replica1.seed3' -> ('replica1', 'users'); 'replica1.shared1' -> ('replica1', 'mailboxes')."""
    link, dot, slot = name.partition(".")
    if not dot:
        return link, None
    kind = slot.rstrip("0123456789")
    if kind not in SLOT_KINDS or kind == slot:
        raise ValueError(f"{name!r}: not a seed slot (LINK.seedN or LINK.sharedN)")
    return link, SLOT_KINDS[kind]


@dataclass(frozen=True)
class LinkUnits:
    """The names of one link's units."""

    worker: str
    drain: str
    user: str
    listing: str = ""
    hook: str = ""
    instance: str = DEFAULT
    link: str = ""

    @classmethod
    def of(cls, link: str, instance: str = DEFAULT) -> "LinkUnits":
        return cls(*(unit_name(k, link, instance)
                     for k in (UnitKind.WORKER, UnitKind.DRAIN, UnitKind.USER, UnitKind.LIST,
                               UnitKind.FREEZE)), instance, link)

    def slot(self, kind: str, n: int) -> str:
        return slot_unit(self.link, kind, n, self.instance)


def daemon_patterns(instance: str = DEFAULT) -> tuple[str, ...]:
    """Globs that list every unit a daemon of this instance may run (and only those)."""
    kinds = (UnitKind.WORKER, UnitKind.DRAIN, UnitKind.USER, UnitKind.LIST, UnitKind.FREEZE)
    if instance == DEFAULT:
        # other instances' units have a ':' in the instance string: they are filtered below
        return tuple(f"{k.value}@*.service" for k in kinds)
    return tuple(f"{k.value}@{instance}:*.service" for k in kinds)


def belongs_to(unit: str, instance: str = DEFAULT) -> bool:
    """Whether a listed unit is one of this instance's (the default's have no ':')."""
    inner = unit.partition("@")[2].rpartition(".service")[0]
    return parse_qualified(inner)[0] == instance


@dataclass(frozen=True)
class UnitStatus:
    name: str
    active_state: str   # active, activating, deactivating, inactive, failed, ...
    sub_state: str
    job: str = ""       # type of a queued job, e.g. "start" right after StartUnit

    @property
    def running(self) -> bool:
        return self.active_state in ("active", "activating", "reloading") or self.job == "start"

    @property
    def alive(self) -> bool:
        """Running, or still stopping: its process may still be at work (a sync_client
        finishing after SIGTERM), so its sync log must not be rewritten or passed over yet."""
        return self.running or self.active_state == "deactivating" or self.job == "stop"


@dataclass(frozen=True)
class ExitInfo:
    result: str          # systemd's Result: success, exit-code, signal, ...
    status: int          # ExecMainStatus: exit code or signal number


class Systemd:
    """pystemd over one long-lived system bus connection."""

    def __init__(self):
        from .bus import Bus

        self._bus = Bus()
        self._call = self._bus.call
        self._start_transient = self._bus.start_transient

    def list(self, *patterns: str) -> dict[str, UnitStatus]:
        """Loaded units matching globs, by name (units systemd has not loaded are inactive)."""
        rows = self._call(b"ListUnitsByPatterns", b"asas", [],
                          [p.encode() for p in patterns])
        out = {}
        for row in rows:
            name = row[0].decode()
            if any(fnmatch.fnmatch(name, p) for p in patterns):
                out[name] = UnitStatus(name, row[3].decode(), row[4].decode(), row[8].decode())
        return out

    def start(self, unit: str) -> None:
        self._call(b"StartUnit", b"ss", unit.encode(), b"replace")

    def stop(self, unit: str) -> None:
        self._call(b"StopUnit", b"ss", unit.encode(), b"replace")

    def kill(self, unit: str, signum: int = signal.SIGTERM) -> None:
        """Signal every process of a unit at once. No job is queued, so nothing can order it
        after another job: during the daemon's own stop a StopUnit job for a worker would wait
        for that stop (the worker units are Before=syncwarden.service)."""
        self._call(b"KillUnit", b"ssi", unit.encode(), b"all", int(signum))

    def invocation(self, unit: str) -> str:
        """The unit's current InvocationID as the journal writes it (hex), "" if none."""
        raw = self._property(unit, b"Unit", b"InvocationID", b"ay")
        return bytes(raw).hex() if raw else ""

    def exit_info(self, unit: str) -> ExitInfo:
        return ExitInfo(self._property(unit, b"Service", b"Result", b"s").decode(),
                        int(self._property(unit, b"Service", b"ExecMainStatus", b"i")))

    def main_pid(self, unit: str) -> int:
        """The unit's main process (0 while it has none), for the exit watch."""
        return int(self._property(unit, b"Service", b"MainPID", b"u"))

    def _property(self, unit: str, interface: bytes, name: bytes, signature: bytes):
        return self._bus.unit_property(unit, interface, name, signature)

    def ordered_before(self, unit: str) -> list[str] | None:
        """The units this one is ordered Before= (its own and its drop-ins' settings); None
        when systemd has no such unit (not installed)."""
        if self._property(unit, b"Unit", b"LoadState", b"s") != b"loaded":
            return None
        return sorted(x.decode() for x in self._property(unit, b"Unit", b"Before", b"as"))

    def run(self, unit: str, argv: list[str], *, user: str | None = None,
            group: str | None = None, dynamic_user: bool = False,
            runtime_max: float | None = None, stdout_file: str | None = None,
            env: dict[str, str] | None = None, description: str = "") -> None:
        """Start ``argv`` as a transient service unit (``systemd-run``), without new
        privileges. Unlike start_transient the unit is left loaded when it fails, so that its
        exit status can be read (exit_info); a failed unit of the same name left from before
        is reset first, so that the name can be used again."""
        self.reset_failed(unit)
        props = {b"Description": (description or unit).encode(), b"Type": b"exec",
                 b"ExecStart": [(argv[0].encode(), [a.encode() for a in argv], False)],
                 b"NoNewPrivileges": True}
        if dynamic_user:
            props[b"DynamicUser"] = True
        if user:
            props[b"User"] = user.encode()
        if group:
            props[b"Group"] = group.encode()
        if runtime_max:
            props[b"RuntimeMaxUSec"] = max(1, int(runtime_max * 1_000_000))
        if stdout_file:
            props[b"StandardOutputFile"] = stdout_file.encode()
        if env:
            props[b"Environment"] = [f"{k}={v}".encode() for k, v in env.items()]
        self._start_transient(unit, b"replace", props)

    def reset_failed(self, unit: str) -> None:
        try:
            self._call(b"ResetFailedUnit", b"s", unit.encode())
        except Exception:      # not loaded, or not failed: nothing to reset
            pass

    def start_transient(self, name: str, argv: list[str], env: dict[str, str], user: str,
                        timeout: float, description: str = "") -> None:
        """Start a command as a transient service (systemd-run over D-Bus): as ``user``,
        without new privileges, stopped after ``timeout`` seconds, unloaded once over. Only
        the job is queued: this returns at once."""
        props = {
            b"Description": description.encode(),
            b"ExecStart": [(argv[0].encode(), [a.encode() for a in argv], False)],
            b"Environment": [f"{k}={v}".encode() for k, v in env.items()],
            b"User": user.encode(),
            b"NoNewPrivileges": True,
            b"RuntimeMaxUSec": int(timeout * 1_000_000),
            b"CollectMode": b"inactive-or-failed",
            b"SyslogIdentifier": b"syncwarden-hook",
        }
        self._start_transient(name, b"fail", props)

    def job_of_pid(self, pid: int) -> str:
        """The type of the job systemd is running on the unit that ``pid`` belongs to, "" when
        none (a signal sent by hand). While ``systemctl restart`` (or a package upgrade's
        try-restart, collapsed into a restart of an active unit) stops the unit, its job is
        of type "restart": systemd runs a restart as a stop and only then patches the job
        into a start (src/core/job.h). A stop, and a system shutdown, have a "stop" job."""
        unit = self._call(b"GetUnitByPID", b"u", pid)
        for row in self._call(b"ListJobs", b""):   # (id, unit, type, state, job, unit path)
            if _text(row[5]) == _text(unit):
                return _text(row[2])
        return ""

    def close(self) -> None:
        self._bus.close()


# The job types under which a stop is the first half of a restart.
RESTART_JOBS = frozenset({"restart", "try-restart"})


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
