"""Small fakes for the edges of the core (clock, systemd, prober, journal)."""

from __future__ import annotations

import itertools
import os

from supervisor.cyrus.probe import ProbeResult
from supervisor.systemd.units import ExitInfo, UnitStatus


class FakeClock:
    def __init__(self, mono: float = 1000.0, wall: float = 1_800_000_000.0):
        self.mono, self.wall_time = mono, wall

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_time

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_time += seconds


# What a rolling sync_client logs right after logging in to a 3.6+ replica.
LOGIN = "Destination supports #sieve mailbox"
REFUSED = "couldn't authenticate to backend server: authentication failure"


class FakeWorkerLog:
    """The workers' journal, by invocation: (message, journal time) lines."""

    def __init__(self):
        self.lines: dict[str, list[tuple[str, int]]] = {}
        self._at = itertools.count(1)

    def add(self, invocation: str, message: str) -> None:
        self.lines.setdefault(invocation, []).append((message, next(self._at)))

    def history(self, unit, invocation):
        return list(self.lines.get(invocation, []))


class FakeSystemd:
    """Units start and stop at once; a test can make a unit exit with ``exit(unit, status)``.

    Each start of a unit is a new invocation; a rolling worker logs ``says[unit]`` (by default
    the login line) into ``log`` as it starts, and a unit found running has logged it before."""

    def __init__(self):
        self.units: dict[str, UnitStatus] = {}
        self.exits: dict[str, ExitInfo] = {}
        self.calls: list[tuple[str, str]] = []
        # one-shot units (drain passes) run their hook at start and are inactive at once
        self.oneshot: dict[str, object] = {}
        self.invocations: dict[str, str] = {}
        self.log = FakeWorkerLog()
        self.says: dict[str, list[str]] = {}
        self.runs: dict[str, dict] = {}       # run calls (seed listing, freeze hook), by unit
        self._runs = itertools.count(1)
        # the job systemd runs on the daemon's own unit while it stops ("restart", "stop")
        self.own_job: str | Exception = ""
        self.transient: list[dict] = []      # start_transient calls

    def job_of_pid(self, pid):
        if isinstance(self.own_job, Exception):
            raise self.own_job
        return self.own_job

    def start_transient(self, name, argv, env, user, timeout, description=""):
        self.transient.append({"name": name, "argv": list(argv), "env": dict(env),
                               "user": user, "timeout": timeout})

    def _new_run(self, unit):
        inv = self.invocations[unit] = f"{unit}#{next(self._runs)}"
        if unit.startswith("syncwarden-sync@"):
            for line in self.says.get(unit, [LOGIN]):
                self.log.add(inv, line)
        return inv

    def invocation(self, unit):
        if unit not in self.invocations and self.running(unit):
            self._new_run(unit)            # found running: started before we looked
        return self.invocations.get(unit, "") if self.running(unit) else ""

    def list(self, *patterns):
        return dict(self.units)

    def start(self, unit):
        self.calls.append(("start", unit))
        if unit in self.oneshot:
            status = self.oneshot[unit]() or 0
            self.exits[unit] = ExitInfo("success" if status == 0 else "exit-code", status)
            self.units[unit] = UnitStatus(unit, "inactive" if status == 0 else "failed", "dead")
            return
        self._new_run(unit)
        self.units[unit] = UnitStatus(unit, "active", "running")

    def stop(self, unit):
        """SIGTERM: sync_client exits 75 at once (SuccessExitStatus): inactive."""
        self.calls.append(("stop", unit))
        if self.running(unit):
            self.exits[unit] = ExitInfo("success", 75)
        self.units[unit] = UnitStatus(unit, "inactive", "dead")

    def kill(self, unit, signum=15):
        """SIGTERM: sync_client exits 75 at once (SuccessExitStatus): inactive."""
        self.calls.append(("kill", unit))
        if self.running(unit):
            self.units[unit] = UnitStatus(unit, "inactive", "dead")
            self.exits[unit] = ExitInfo("success", 75)

    def run(self, unit, argv, **props):
        """A transient unit (systemd.units.Systemd.run): like start, remembering how."""
        self.runs[unit] = {"argv": list(argv), **props}
        self.start(unit)

    def reset_failed(self, unit):
        self.calls.append(("reset-failed", unit))

    def exit(self, unit, status=0, result="success"):
        self.units[unit] = UnitStatus(unit, "failed" if status else "inactive", "dead")
        self.exits[unit] = ExitInfo(result, status)

    def exit_info(self, unit):
        return self.exits.get(unit, ExitInfo("success", 0))

    def main_pid(self, unit):
        """A pid per invocation of a running unit; 0 when it is not running."""
        if not self.running(unit):
            return 0
        return 1000 + int(self.invocation(unit).rpartition("#")[2])

    def running(self, unit) -> bool:
        return unit in self.units and self.units[unit].running


class FakeExits:
    """The exit watch: records the pids the loop would be woken for."""

    def __init__(self):
        self.watched: list[int] = []
        self.ended: set[int] = set()     # pids whose end has woken the loop

    def watch(self, pid):
        self.watched.append(pid)
        return True

    def watching(self, pid):
        return pid in self.watched and pid not in self.ended


class FakeProber:
    """Answers each requested probe from ``reachable[link]`` on the next ``results()``; an
    unreachable replica refuses the connection unless ``silent[link]``. ``watched`` holds the
    links knocked on now, with their period; ``accept(link)`` is a knock that connected."""

    def __init__(self, clock):
        self.clock = clock
        self.reachable: dict[str, bool] = {}
        self.silent: dict[str, bool] = {}
        self.pending: set[str] = set()
        self.requests: list[str] = []
        self.watched: dict[str, float] = {}

    def watch(self, link, host, port, every, timeout):
        self.watched[link] = every

    def unwatch(self, link):
        self.watched.pop(link, None)

    def accept(self, link):
        """The watched port took a connection: the watch ends, a probe starts."""
        del self.watched[link]
        self.pending.add(link)

    def request(self, link, host, port, timeout):
        if link in self.pending:
            return False
        self.pending.add(link)
        self.requests.append(link)
        return True

    def results(self):
        out = {}
        for link in self.pending:
            ok = self.reachable.get(link, False)
            refused = not ok and not self.silent.get(link, False)
            detail = ("lab Cyrus sync server 3.6.1" if ok else f"{link}: Connection refused"
                      if refused else f"{link} did not answer within 1s")
            out[link] = ProbeResult(ok, detail, self.clock.monotonic(), refused)
        self.pending = set()
        return out


class FakeJournal:
    def __init__(self):
        self.entries: list[dict] = []

    def send(self, message, priority="info", message_id=None, **fields):
        self.entries.append({"MESSAGE": message, "PRIORITY": priority, "ID": message_id, **fields})

    def transitions(self, link=None):
        return [(e["SYNCWARDEN_FROM"], e["SYNCWARDEN_TO"]) for e in self.entries
                if e["ID"] == "state-change" and (link is None or e["SYNCWARDEN_LINK"] == link)]


class FakeJournalFiles:
    """journald's files, shared by every FakeReader opened on them: entries appended in order,
    each a dict of fields with a __CURSOR and a __REALTIME_TIMESTAMP (µs)."""

    def __init__(self):
        self.entries: list[dict] = []
        self._n = itertools.count(1)
        self.readers: list["FakeReader"] = []

    def log(self, unit: str, message: str, invocation: str = "inv-1") -> dict:
        n = next(self._n)
        entry = {"__CURSOR": f"s=fake;i={n:x}", "__REALTIME_TIMESTAMP": 1_000_000 + n,
                 "_SYSTEMD_UNIT": unit, "MESSAGE": message,
                 "_SYSTEMD_INVOCATION_ID": invocation}
        self.entries.append(entry)
        return entry

    def reader(self):
        r = FakeReader(self)
        self.readers.append(r)
        return r


class FakeReader:
    """The part of python3-systemd's journal.Reader the follower uses, with sd-journal's
    positioning: after seek_tail/seek_cursor there is no current entry, only a place between
    two; get_next/get_previous move to the next/previous matching entry (skip of them)."""

    def __init__(self, files: FakeJournalFiles):
        self.files = files
        self.matches: dict[str, set[str]] = {}
        self.current: int | None = None
        self.gap = 0
        self.closed = False
        self._fds = os.pipe()            # a descriptor a selector accepts, never readable

    def add_match(self, **fields):
        for k, v in fields.items():
            self.matches.setdefault(k, set()).add(v)

    def flush_matches(self):
        self.matches = {}

    def _ok(self, e):
        return all(e.get(k) in vs for k, vs in self.matches.items())

    def seek_tail(self):
        self.current, self.gap = None, len(self.files.entries)

    def seek_cursor(self, cursor):
        if not cursor.startswith("s="):
            raise OSError(22, "Invalid argument")    # what sd_journal_seek_cursor says
        idx = [e["__CURSOR"] for e in self.files.entries]
        self.current = None
        self.gap = idx.index(cursor) if cursor in idx else len(idx)

    def get_next(self, skip=1):
        if skip < 0:
            return self.get_previous(-skip)
        start = self.current + 1 if self.current is not None else self.gap
        entries = self.files.entries
        found = [i for i in range(start, len(entries)) if self._ok(entries[i])]
        if not found:
            return {}
        self.current = found[min(skip, len(found)) - 1]
        return dict(self.files.entries[self.current])

    def get_previous(self, skip=1):
        start = self.current - 1 if self.current is not None else self.gap - 1
        found = [i for i in range(start, -1, -1) if self._ok(self.files.entries[i])]
        if not found:
            return {}
        self.current = found[min(skip, len(found)) - 1]
        return dict(self.files.entries[self.current])

    def fileno(self):
        return self._fds[0]

    def process(self):
        return 0

    def close(self):
        self.closed = True
        for fd in self._fds:
            os.close(fd)


class SyncExecutor:
    """Runs a submitted sync-log rewrite at once, in the caller's thread (a thread pool's
    interface: the quarantine's tick sees the rewrite done in the tick that started it)."""

    def submit(self, fn):
        from concurrent.futures import Future

        future = Future()
        try:
            future.set_result(fn())
        except BaseException as exc:   # delivered through result(), as a pool would
            future.set_exception(exc)
        return future

    def shutdown(self, wait=True):
        pass
