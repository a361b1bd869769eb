"""When to probe a link's replica, and when to knock on its port between probes.

Pure decisions over one link's runtime and the monotonic clock (the unit tests drive them with
a fake clock); the prober (cyrus/probe.py) carries them out.

A link waits for its replica in ``down``; the probe interval alone would make it learn of the
replica's return half an interval late on average. So a down link whose replica *refused* the
last probe (the host answers, Cyrus does not listen yet: a restart, an upgrade) is knocked on:
a connect every KNOCK_EVERY seconds, which the host refuses at once, and a full probe the
moment the port accepts. Long outages are knocked on less often (KNOCK_SLOW, and only while
that is quicker than the probes). Links with a worker are never knocked on: their failure
detection stays the probes' (LOST_AFTER failures in a row).
"""

from __future__ import annotations

from .states import LinkState

# Live links are probed every LIVE_PROBE_FACTOR intervals, at most every LIVE_PROBE_MAX seconds.
LIVE_PROBE_FACTOR, LIVE_PROBE_MAX = 5, 10.0
KNOCK_EVERY = 0.1        # seconds between knocks while the outage is young
KNOCK_FAST_FOR = 600.0   # how long an outage counts as young
KNOCK_SLOW = 1.0         # seconds between knocks after that


def probe_period(rt, interval: float) -> float:
    """Every interval while a link waits for its replica. A live link's worker talks to the
    replica anyway and exits when it loses it, so it is probed less often, and at the full rate
    again as soon as one probe fails."""
    if rt.link.state is LinkState.LIVE and rt.probe_failures == 0:
        return min(interval * LIVE_PROBE_FACTOR, max(interval, LIVE_PROBE_MAX))
    return interval


def knock_period(rt, mono: float, interval: float) -> float | None:
    """Seconds between knocks on a down link's replica port, or None: no knocking."""
    p = rt.probe
    if (rt.link.state is not LinkState.DOWN or p is None or p.reachable or not p.refused
            or rt.unreachable_since is None):
        return None
    if mono - rt.unreachable_since < KNOCK_FAST_FOR:
        return KNOCK_EVERY
    return KNOCK_SLOW if KNOCK_SLOW < interval else None
