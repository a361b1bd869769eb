"""What the reconcile tick knows about one link, and the snapshot that status is built from.

``LinkRuntime`` is the tick's working memory for a link (observed unit state, probe results,
back-off); ``LinkView`` is a frozen copy taken at the end of each tick, which is all that the
status JSON, the STATUS= line and the operator commands' answers are built from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..config import LinkSettings
from ..cyrus.backlog import Backlog, BacklogSnapshot
from ..cyrus.probe import ProbeResult
from ..systemd.units import LinkUnits, UnitStatus
from .quarantine import Quarantine
from .states import Link, LinkState
from .worker_run import WorkerRuns

# Back-off between worker restarts when sync_client keeps exiting while the replica answers.
RESTART_BACKOFF_MIN, RESTART_BACKOFF_MAX = 1.0, 300.0


class Blocker(enum.Enum):
    """Why a link must have no worker, whatever its replica does (checked in this order)."""

    STOPPING = "daemon stopping"
    ROLE = "role"
    DISABLED = "disabled in the configuration"
    HELD = "held by operator"
    RETIRED = "retired"
    FROZEN = "frozen for a backup"

    @property
    def trigger(self) -> str:
        """The link machine's trigger that takes a running link down for this reason."""
        return "hold" if self in (Blocker.HELD, Blocker.FROZEN) else "disable"

    def reason(self, role: str) -> str:
        if self is Blocker.ROLE:
            return f"role is {role}: this host never starts workers"
        return self.value

    def short(self, role: str) -> str:
        """The few words shown in the STATUS= line."""
        return f"role is {role}" if self is Blocker.ROLE else self.value


@dataclass
class LinkRuntime:
    settings: LinkSettings
    link: Link
    backlog: Backlog
    units: LinkUnits
    quarantine: Quarantine
    snapshot: BacklogSnapshot = field(default_factory=BacklogSnapshot)
    probe: ProbeResult | None = None
    probe_failures: int = 0
    unreachable_since: float | None = None   # monotonic
    next_probe: float = 0.0
    refused_since: float | None = None       # monotonic: the probes' refusals began
    knocking: bool = False                   # its replica's port is watched (probing.py)
    worker: UnitStatus | None = None
    worker_ours: bool = False                # we started or adopted the unit now running
    restart_after: float = 0.0
    restart_backoff: float = RESTART_BACKOFF_MIN
    worker_started: float = 0.0
    runs: WorkerRuns = field(default_factory=WorkerRuns)   # what the worker's runs showed
    reported_problem: str | None = None      # the worker problem the link's reason names
    last_problem: str | None = None          # why the last run failed, until a run succeeds
    down_cause: str | None = None            # what the reason of a down link reflects

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def reachable(self) -> bool | None:
        if self.probe is None:
            return None
        return self.probe_failures == 0

    @property
    def worker_running(self) -> bool:
        return self.worker is not None and self.worker.running

    def why_down(self, blocker: Blocker | None, role: str, classified: bool,
                 mono: float) -> tuple[str, str]:
        """(what keeps this link down, the reason that says so), for a link in ``down``."""
        if blocker is not None:
            return blocker.name, blocker.reason(role)
        if not classified:
            return "probing", "waiting for the first probe of the replica"
        if self.reachable is False:
            return "unreachable", f"replica unreachable: {self.probe.detail}"
        if mono < self.restart_after:
            after = f" after: {self.last_problem}" if self.last_problem else ""
            return "backoff", (f"waiting {self.restart_after - mono:.0f}s before starting the"
                               f" worker again{after}")
        return "starting", "the replica answers: starting the worker"


@dataclass(frozen=True)
class LinkView:
    """One link as the last tick left it: plain values only."""

    name: str
    state: LinkState
    since: float                     # wall clock
    reason: str
    host: str
    port: int
    enabled: bool
    held: bool
    reachable: bool | None
    probe_detail: str | None
    unreachable_for: float | None    # seconds, while the replica does not answer
    classified: bool                 # probed at least once (or needs no probe)
    blocker: Blocker | None
    backlog: BacklogSnapshot
    worker_unit: str
    worker_active: bool
    worker_state: str
    worker_session: str              # what the current run showed (worker_run.py)
    rival: str | None                # a sync_client syncwarden did not start runs (rivals.py)
    quarantined: int
    last_drain: dict | None
    lifecycle: dict | None = None    # seeded, seed, freeze, retired (lifecycle.py)
