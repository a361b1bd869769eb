"""Probing the links' replicas: taking the prober's results into each link's runtime, and
asking for probes and knocks when probing.py's decisions say they are due.

Composed into the reconciler (reconcile.py); the prober itself (cyrus/probe.py) runs them off
the loop. Between ticks the daemon's wait starts the probes that come due (``start_due``),
without a whole tick for each.
"""

from __future__ import annotations

from .probing import knock_period, probe_period
from .runtime import LinkRuntime


class ProbeSchedule:
    def __init__(self, prober, clock, settings, wanted, blocked):
        self.prober, self.clock = prober, clock
        self.settings = settings       # () -> the config's ``probe:`` section (reloads change it)
        self.wanted = wanted           # rt -> whether this link's replica is probed at all
        self.blocked = blocked         # rt -> whether something keeps the link from a worker

    def take_results(self, links: dict[str, LinkRuntime], mono: float) -> None:
        for name, result in self.prober.results().items():
            rt = links.get(name)
            if rt is None:
                continue
            rt.probe = result
            if not result.refused:
                rt.refused_since = None
            elif rt.refused_since is None:
                rt.refused_since = mono
            if result.reachable:
                rt.probe_failures, rt.unreachable_since = 0, None
            else:
                rt.probe_failures += 1
                rt.next_probe = min(rt.next_probe, mono + self.settings().interval)
                if rt.unreachable_since is None:
                    rt.unreachable_since = mono

    def schedule(self, rt: LinkRuntime, mono: float) -> None:
        s, probe = rt.settings, self.settings()
        wanted = self.wanted(rt)
        # knocks between probes (probing.py); the prober ends a watch whose port accepted
        every = knock_period(rt, mono, probe.interval) if (
            wanted and not self.blocked(rt)) else None
        if every is not None:
            self.prober.watch(s.name, s.host, s.port, every, probe.timeout)
        elif rt.knocking:
            self.prober.unwatch(s.name)
        rt.knocking = every is not None
        if wanted and mono >= rt.next_probe:
            self._request(rt, mono)

    def _request(self, rt: LinkRuntime, mono: float) -> None:
        s, probe = rt.settings, self.settings()
        if self.prober.request(s.name, s.host, s.port, probe.timeout):
            rt.next_probe = mono + probe_period(rt, probe.interval)

    def next_due(self, links, mono: float) -> float:
        """When the next probe is due (monotonic; inf if none is), for the loop's wait."""
        return min((rt.next_probe for rt in links if rt.next_probe > mono and self.wanted(rt)),
                   default=float("inf"))

    def start_due(self, links) -> None:
        """Only the probes that are due, between ticks: with many links one comes due many
        times a second, and a whole tick for each would cost more than the probes."""
        mono = self.clock.monotonic()
        for rt in links:
            if self.wanted(rt) and mono >= rt.next_probe:
                self._request(rt, mono)
