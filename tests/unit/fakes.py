"""Small fakes for the edges of the core (clock, systemd, prober, journal)."""

from __future__ import annotations

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


class FakeSystemd:
    """Units start and stop at once; a test can make a unit exit with ``exit(unit, status)``."""

    def __init__(self):
        self.units: dict[str, UnitStatus] = {}
        self.exits: dict[str, ExitInfo] = {}
        self.calls: list[tuple[str, str]] = []
        # one-shot units (drain passes) run their hook at start and are inactive at once
        self.oneshot: dict[str, object] = {}

    def list(self, *patterns):
        return dict(self.units)

    def start(self, unit):
        self.calls.append(("start", unit))
        if unit in self.oneshot:
            status = self.oneshot[unit]() or 0
            self.exits[unit] = ExitInfo("success" if status == 0 else "exit-code", status)
            self.units[unit] = UnitStatus(unit, "inactive" if status == 0 else "failed", "dead")
            return
        self.units[unit] = UnitStatus(unit, "active", "running")

    def stop(self, unit):
        self.calls.append(("stop", unit))
        self.units[unit] = UnitStatus(unit, "inactive", "dead")

    def exit(self, unit, status=0, result="success"):
        self.units[unit] = UnitStatus(unit, "failed" if status else "inactive", "dead")
        self.exits[unit] = ExitInfo(result, status)

    def exit_info(self, unit):
        return self.exits.get(unit, ExitInfo("success", 0))

    def running(self, unit) -> bool:
        return unit in self.units and self.units[unit].running


class FakeProber:
    """Answers each requested probe from ``reachable[link]`` on the next ``results()``."""

    def __init__(self, clock):
        self.clock = clock
        self.reachable: dict[str, bool] = {}
        self.pending: set[str] = set()
        self.requests: list[str] = []

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
            out[link] = ProbeResult(ok, "lab Cyrus sync server 3.6.1" if ok
                                    else f"{link}: Connection refused", self.clock.monotonic())
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
