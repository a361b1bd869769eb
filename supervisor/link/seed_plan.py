"""A seed's plan and progress: what to sync next, what is done, what failed (pure data).

The plan is the list of the instance's users, then its shared mailboxes (cyrus/mailboxes.py),
written once. The progress (``Progress``, kept in seed/LINK.json by lifecycle_store.py) refers
to it by position: the items before ``cursor`` were handed out at least once, ``pending``
holds ranges handed out and to be run again (stopped, or halved after a failure), ``running``
the range each slot runs. Nothing here acts: seed.py starts the batches and saves this.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

ITEM_ATTEMPTS = 3
# A batch (one sync_client run) is sized to take about BATCH_SECONDS at the rate seen so far:
# long enough that starting a unit and sync_client's login cost little, short enough that a
# restart redoes little. Before there is a rate, a quarter of each slot's share. Near the end
# the batches shrink to an even share of what is left, so that the slots end together; never
# below BATCH_SECONDS_MIN, since each costs about 0.2 s to start (bench/seed_bench.py prints
# where the time went).
BATCH_SECONDS = 10.0
BATCH_SECONDS_MIN = 2.0
FIRST_SHARE = 4
FIRST_BATCH = 20
BATCH_MAX = 5000


class Phase(enum.Enum):
    WRITERS = "waiting-for-writers"
    LISTING = "listing"
    SYNCING = "syncing"
    DONE = "done"
    INCOMPLETE = "incomplete"


@dataclass
class Progress:
    """What lifecycle_store keeps in seed/LINK.json."""
    link: str
    started: float                       # wall clock
    parallel: int = 4
    phase: str = Phase.WRITERS.value
    users: int = 0                       # the plan: its users, then its shared mailboxes
    shared: int = 0
    cursor: int = 0                      # items before it were handed out at least once
    done_items: int = 0
    pending: list[list] = field(default_factory=list)        # [a, b) ranges to run (again)
    running: dict[str, list] = field(default_factory=dict)   # slot -> [a, b)
    stopping: list[str] = field(default_factory=list)        # slots we stopped: run again
    attempts: dict[str, int] = field(default_factory=dict)   # item -> failed runs alone
    failed: dict[str, list] = field(default_factory=dict)    # name -> [kind, why]
    seconds_per_item: float | None = None                    # sizes the next range
    sync_seconds: float = 0.0
    finished: float | None = None
    reported: int = 0                    # the last tenth journaled
    detail: str = ""                     # what the seed waits for, or why it stopped
    list_attempts: int = 0

    @classmethod
    def load(cls, doc: dict) -> "Progress":
        p = cls(**doc)
        Phase(p.phase)
        ranges = [*p.pending, *p.running.values()]
        if not (isinstance(p.running, dict) and isinstance(p.pending, list)
                and isinstance(p.failed, dict) and isinstance(p.attempts, dict)
                and all(isinstance(r, list) and len(r) == 2 and 0 <= r[0] < r[1] <= p.items
                        for r in ranges) and 0 <= p.cursor <= p.items):
            raise ValueError("malformed progress")
        return p

    @property
    def items(self) -> int:
        return self.users + self.shared

    @property
    def all_handed_out(self) -> bool:
        return not self.running and not self.pending and self.cursor >= self.items

    def next_range(self) -> list | None:
        """The next range of the plan to sync: one handed out before and not done, else the
        next one, sized to take about BATCH_SECONDS by the rate so far (before there is one,
        a quarter of each slot's share, FIRST_BATCH at least), and no larger than an even
        share of what is left (but BATCH_SECONDS_MIN at least), so that the last ones end
        together. A range never mixes users with shared mailboxes."""
        if self.pending:
            return self.pending.pop(0)
        if self.cursor >= self.items:
            return None
        left, spi = self.items - self.cursor, self.seconds_per_item
        first = max(FIRST_BATCH, math.ceil(left / (self.parallel * FIRST_SHARE)))
        size = round(BATCH_SECONDS / spi) if spi else first
        floor = math.ceil(BATCH_SECONDS_MIN / spi) if spi else first
        size = max(1, min(size, BATCH_MAX, max(floor, math.ceil(left / self.parallel))))
        end = min(self.cursor + size, self.users if self.cursor < self.users else self.items)
        ref, self.cursor = [self.cursor, end], end
        return ref

    def done(self, ref: list, took: float | None) -> None:
        """A range synced; ``took`` (seconds, None if unknown) refines the rate."""
        n = ref[1] - ref[0]
        self.done_items += n
        if took:
            rate, old = took / n, self.seconds_per_item
            self.seconds_per_item = rate if not old else (old + rate) / 2

    def failed_range(self, ref: list, kind: str, name: str | None, why: str) -> bool:
        """A range with a failure is halved until the failing item is alone; alone (``name``),
        it is tried ITEM_ATTEMPTS times. True when it was given up just now."""
        a, b = ref
        if b - a > 1:
            mid = (a + b) // 2
            self.pending[:0] = [[a, mid], [mid, b]]
            return False
        attempts = self.attempts.get(str(a), 0) + 1
        self.attempts[str(a)] = attempts
        if attempts >= ITEM_ATTEMPTS:
            self.failed[name] = [kind, why]
            return True
        self.pending.append(ref)
        return False

    def percent(self) -> int:
        if self.phase == Phase.DONE.value:
            return 100
        return int(100 * self.done_items / self.items) if self.items else 0

    def eta(self) -> float | None:
        """Seconds left at the rate so far, while syncing."""
        left = self.items - self.done_items - len(self.failed)
        if self.phase != Phase.SYNCING.value or self.done_items == 0 or self.sync_seconds <= 0:
            return None
        return left * self.sync_seconds / self.done_items


def work(plan: dict, ref: list) -> tuple[str, list[str]]:
    """The kind ("users" or "mailboxes") and the names of a range of the plan."""
    a, b = ref
    users, shared = plan.get("users", []), plan.get("shared", [])
    if a < len(users):
        return "users", users[a:b]
    return "mailboxes", shared[a - len(users):b - len(users)]
