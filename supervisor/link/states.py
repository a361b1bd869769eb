"""The link state machine: five states with fixed codes, and the transition table as data.

State names and codes are an external contract (monitoring depends on them): never rename or
renumber. Callbacks only record what happened; the supervisor turns records into side effects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from transitions import Machine


class LinkState(enum.Enum):
    DOWN = "down"
    CATCHING_UP = "catching-up"
    LIVE = "live"
    DRAINING = "draining"
    QUARANTINED = "quarantined"

    @property
    def code(self) -> int:
        return STATE_CODES[self]


STATE_CODES = {
    LinkState.DOWN: 0,
    LinkState.CATCHING_UP: 1,
    LinkState.LIVE: 2,
    LinkState.DRAINING: 3,
    LinkState.QUARANTINED: 4,
}

# The states in which a rolling worker (sync_client -R) should be running.
WORKER_STATES = frozenset({LinkState.CATCHING_UP, LinkState.LIVE})

S = LinkState
TRANSITIONS = [
    # trigger          source                                     dest
    ["replica_up",     S.DOWN,                                    S.CATCHING_UP],
    ["adopt",          S.DOWN,                                    S.CATCHING_UP],
    ["caught_up",      S.CATCHING_UP,                             S.LIVE],
    ["fell_behind",    S.LIVE,                                    S.CATCHING_UP],
    ["replica_lost",   [S.CATCHING_UP, S.LIVE],                   S.DOWN],
    ["worker_exited",  [S.CATCHING_UP, S.LIVE],                   S.DOWN],
    ["login_refused",  [S.CATCHING_UP, S.LIVE],                   S.DOWN],
    ["worker_failing", [S.CATCHING_UP, S.LIVE],                   S.CATCHING_UP],
    ["hold",           [S.CATCHING_UP, S.LIVE],                   S.DOWN],
    ["disable",        [S.CATCHING_UP, S.LIVE],                   S.DOWN],
    ["drain",          [S.DOWN, S.CATCHING_UP, S.LIVE],           S.DRAINING],
    ["drained",        S.DRAINING,                                S.DOWN],
    ["drain_failed",   S.DRAINING,                                S.DOWN],
    ["quarantine",     [S.DOWN, S.CATCHING_UP, S.LIVE, S.DRAINING], S.QUARANTINED],
    ["release",        S.QUARANTINED,                             S.DOWN],
]


@dataclass(frozen=True)
class Transition:
    """One state change, as written to the journal and shown in status."""

    link: str
    source: LinkState
    dest: LinkState
    trigger: str
    reason: str
    at: float  # wall-clock time


class Link:
    """The model the machine drives. Holds state and what the supervisor must act upon."""

    def __init__(self, name: str, wall_clock, initial: LinkState = LinkState.DOWN,
                 reason: str = "daemon started"):
        self.name = name
        self._wall = wall_clock
        self.since = wall_clock()
        self.reason = reason
        self.history: list[Transition] = []  # drained by the supervisor each tick
        self.machine = Machine(model=self, states=LinkState, transitions=TRANSITIONS,
                               initial=initial, auto_transitions=False, send_event=True,
                               queued=True, after_state_change="_entered")

    def fire(self, trigger: str, reason: str) -> bool:
        """Fire a trigger if the current state allows it; returns whether the state changed."""
        if trigger not in self.machine.get_triggers(self.state):
            return False
        return bool(getattr(self, trigger)(reason=reason))

    def _entered(self, event) -> None:
        self.since = self._wall()
        self.reason = event.kwargs.get("reason", event.event.name)
        self.history.append(Transition(self.name, LinkState[event.transition.source], self.state,
                                       event.event.name, self.reason, self.since))

    def explain(self, reason: str) -> None:
        """A new reason for the state the link is in, without a transition: what keeps it
        there changed (reconcile.py keeps the reason of a down link true)."""
        self.reason = reason

    def take_history(self) -> list[Transition]:
        taken, self.history = self.history, []
        return taken

