"""Operator commands on links (hold, resume, release, drain, quarantine, role), in one place.

Each command is checked against the link's state and answered with one sentence; a refusal
raises ValueError (or KeyError for an unknown link or user), which the control socket turns
into a one-line error. The commands act through declared collaborators, never on the daemon's
internals: the links the tick maintains, the drains, the holds, the role and the clock.
"""

from __future__ import annotations

from typing import Callable

from ..control_schema import QuarantineAction
from .drain import Drains
from .roles import RoleControl
from .runtime import RESTART_BACKOFF_MIN, LinkRuntime


class Operator:
    def __init__(self, links: Callable[[], dict[str, LinkRuntime]], drains: Drains, holds,
                 role: RoleControl, clock, drain_timeout: Callable[[], float], sync_dir,
                 authorized: Callable[[], bool] = lambda: True):
        self._links = links
        self.drains = drains
        self.holds = holds
        self.role = role
        self.clock = clock
        self._drain_timeout = drain_timeout
        self._sync_dir = sync_dir
        self._authorized = authorized      # holds the pair's master key, with coordination

    def _get(self, name: str) -> LinkRuntime:
        links = self._links()
        if name not in links:
            raise KeyError(f"no link named {name!r} (links: {', '.join(links)})")
        return links[name]

    def hold(self, name: str, held: bool) -> str:
        rt = self._get(name)
        self.holds.set(name, held)
        if not held:
            rt.restart_after = 0.0
        return f"{name}: {'held' if held else 'resumed'}"

    def release(self, name: str) -> str:
        rt = self._get(name)
        if not rt.link.fire("release", "released by operator"):
            raise ValueError(f"{name} is {rt.link.state.value}, not quarantined")
        rt.restart_after, rt.restart_backoff = 0.0, RESTART_BACKOFF_MIN
        return f"{name}: released"

    def drain(self, name: str, hold_after: bool = True, why: str = "requested by operator") -> str:
        rt = self._get(name)
        if name in self.drains:
            return f"{name}: already draining"
        if not self.role.is_master:
            raise ValueError(f"{name}: role is {self.role.role}: this host sends nothing")
        if not self._authorized():
            raise ValueError(f"{name}: this host does not hold its pair's master key (etcd):"
                             " it sends nothing")
        if not rt.link.fire("drain", f"drain {why}"):
            raise ValueError(f"{name} is {rt.link.state.value}: release it first")
        return self.drains.start(rt, self._sync_dir(name), self._drain_timeout(), hold_after, why)

    def change_role(self, new: str, by: str) -> list[str]:
        if self.drains:
            raise ValueError("a drain is running: wait for it, then change the role")
        return self.role.change(new, by, list(self._links()))

    def quarantine(self, action: QuarantineAction | str, user: str, link: str | None) -> str:
        action = QuarantineAction(action)     # ValueError for anything else: never a default
        names = [link] if link else [n for n, rt in self._links().items()
                                     if user in rt.quarantine.quarantined()]
        if not names:
            raise KeyError(f"{user} is not quarantined on any link")
        out = []
        for name in names:
            q = self._get(name).quarantine
            out.append(q.retry_now(user, self.clock.wall()) if action is QuarantineAction.RETRY
                       else q.drop(user))
        return "; ".join(out)


def answer(sup, req: dict):
    """An operator request from the control socket (already validated, control_schema.py)
    to the reconciler ``sup``'s operator, lifecycle or quarantine list."""
    from .lifecycle import command as lifecycle_command

    op, cmd, link = sup.operator, req["cmd"], req.get("link")
    if cmd in ("hold", "resume"):
        return op.hold(str(link), cmd == "hold")
    if cmd == "release":
        return op.release(str(link))
    if cmd in ("promote", "demote"):
        return op.change_role("master" if cmd == "promote" else "replica", f"syncwarden {cmd}")
    if cmd == "quarantine":
        if req.get("action") == "list":
            return sup.quarantine_list()
        return op.quarantine(QuarantineAction(req.get("action")), str(req.get("user")),
                             req.get("link"))
    if cmd == "drain":
        names = list(sup.links) if req.get("all") else [str(link)]
        return "; ".join(op.drain(n) for n in names)
    if cmd in ("seed", "retire", "freeze", "thaw"):
        return lifecycle_command(sup.lifecycle, req)
    raise ValueError(f"unknown command {cmd!r}")
