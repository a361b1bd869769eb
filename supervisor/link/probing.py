"""When to probe a link's replica, and when to knock on its port between probes.

Pure decisions over one link's runtime and the monotonic clock (the unit tests drive them with
a fake clock); the prober (cyrus/probe.py) carries them out.

A link waits for its replica in ``down``; the probe interval alone would make it learn of the
replica's return half an interval late on average. So a down link whose replica *refuses*
connections (the host answers, Cyrus does not listen: a restart, an upgrade, a reboot's last
seconds) is knocked on: a connect every KNOCK_EVERY seconds, which the host refuses at once,
and a full probe the moment the port accepts. A round of knocks costs about 0.3 ms of CPU on
a small VM (mostly the wake-up; replicas knocked on together share it, each adds a TCP
connect), 0.3 % of a core at this rate, so only the first KNOCK_FOR seconds of refusals are
knocked on: enough for a restart; after that the link is a maintenance matter and the probes
alone find the replica (within one interval). Links with a
worker are never knocked on: their failure detection stays the probes' (LOST_AFTER failures
in a row).
"""

from __future__ import annotations

from .states import LinkState

# Live links are probed every LIVE_PROBE_FACTOR intervals, at most every LIVE_PROBE_MAX seconds.
LIVE_PROBE_FACTOR, LIVE_PROBE_MAX = 5, 10.0
KNOCK_EVERY = 0.1        # seconds between knocks
KNOCK_FOR = 120.0        # seconds of refusals that are knocked on


def probe_period(rt, interval: float) -> float:
    """Every interval while a link waits for its replica. A live link's worker talks to the
    replica anyway and exits when it loses it, so it is probed less often, and at the full rate
    again as soon as one probe fails."""
    if rt.link.state is LinkState.LIVE and rt.probe_failures == 0:
        return min(interval * LIVE_PROBE_FACTOR, max(interval, LIVE_PROBE_MAX))
    return interval


def knock_period(rt, mono: float, interval: float) -> float | None:
    """Seconds between knocks on a down link's replica port, or None: no knocking."""
    if (rt.link.state is not LinkState.DOWN or rt.refused_since is None
            or mono - rt.refused_since >= KNOCK_FOR or KNOCK_EVERY >= interval):
        return None
    return KNOCK_EVERY
