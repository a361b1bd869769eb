"""``syncwarden seed|retire|freeze|thaw LINK``: ask the daemon, then follow what it does.

The daemon does the work (link/lifecycle.py) and keeps it across its own restarts; these
commands start it and, unless ``--no-wait``, follow it until it is over, from the status the
daemon answers: on a terminal one line that changes in place (progress and ETA), elsewhere a
line when the state changes, and the outcome. Ctrl-C leaves the work running in the daemon.
``retire`` asks first (ask.py).
"""

from __future__ import annotations

import sys
import time

from .. import config as configmod
from ..control import ControlError, request
from ..exits import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from .ask import confirm, on_terminal

POLL = 1.0


def _ask(args, cmd: str, **fields):
    try:
        answer = request(cmd, path=args.socket, **fields)
    except ControlError as exc:
        print(f"syncwarden {cmd}: daemon not running: {exc}", file=sys.stderr)
        return None
    if not answer.get("ok"):
        print(f"syncwarden {cmd}: {answer.get('error')}", file=sys.stderr)
        return None
    return answer["result"]


def _link(args) -> dict | None:
    """The link as the daemon shows it now; None (after saying so) when it went away."""
    try:
        answer = request("status", path=args.socket)
    except ControlError as exc:
        print(f"\nsyncwarden {args.command}: the daemon went away ({exc}); what it was doing"
              " goes on when it starts again", file=sys.stderr)
        return None
    return next((x for x in answer.get("result", {}).get("links", [])
                 if x["name"] == args.link), None)


class Line:
    """Progress on one line of a terminal; elsewhere (a script, a unit's journal) only a line
    when the state changes, and the outcome."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.tty = on_terminal(self.out) is not None
        self.last_state = None

    def show(self, text: str, state, final: bool = False) -> None:
        if self.tty:
            self.out.write("\r\033[K" + text + ("\n" if final else ""))
            self.out.flush()
        elif final or state != self.last_state:
            print(text, file=self.out, flush=True)
        self.last_state = state


def seed_line(link: dict) -> str:
    seed = link.get("seed") or {}
    state = seed.get("state")
    if state == "syncing":
        eta = seed.get("eta_seconds")
        return (f"{link['name']}: seeding {seed['done']}/{seed['total']} users and shared"
                f" mailboxes ({seed['percent']}%), {seed['running']} running"
                + (f", ETA {_duration(eta)}" if eta is not None else "")
                + (f", {len(seed['failed'])} failed" if seed.get("failed") else ""))
    if state in ("waiting-for-writers", "listing"):
        return f"{link['name']}: {state}: {seed.get('detail') or '...'}"
    return f"{link['name']}: seed {state}: {seed.get('detail') or ''}".rstrip(": ")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _follow(args, done, line_of, state_of) -> int:
    """Poll status until ``done(link)`` says True (0) or False (1)."""
    line = Line()
    while True:
        link = _link(args)
        if link is None:
            return EXIT_PROBLEM
        outcome = done(link)
        line.show(line_of(link), state_of(link), final=outcome is not None)
        if outcome is not None:
            return EXIT_OK if outcome else EXIT_PROBLEM
        time.sleep(POLL)


def cmd_seed(args) -> int:
    fields = {"parallel": args.parallel} if args.parallel is not None else {}
    result = _ask(args, "seed", link=args.link, **fields)
    if result is None:
        return EXIT_PROBLEM
    print(result)
    if args.no_wait:
        return EXIT_OK

    def state(link):
        return (link.get("seed") or {}).get("state")

    def done(link):
        return {"done": True, "incomplete": False}.get(state(link))
    return _follow(args, done, seed_line, state)


def cmd_retire(args) -> int:
    plan = [f"drain {args.link}, then stop replicating to its replica for good",
            f"remove {args.link}'s worker and backlog (its sync log files)"]
    if args.force:
        plan.append("go ahead even if no other link is live with a clean deep check")
    refused = confirm("retire", plan, args.yes)
    if refused is not None:
        return refused
    result = _ask(args, "retire", link=args.link, force=args.force)
    if result is None:
        return EXIT_PROBLEM
    print(result)
    if args.no_wait:
        return EXIT_OK

    def done(link):
        retired = link.get("retired")
        if retired is None:
            return False                  # abandoned: the drain did not finish
        return True if retired.get("state") == "retired" else None

    def line_of(link):
        if link.get("retired") and link["retired"].get("state") == "retired":
            return f"{args.link}: {link['reason'].partition('; ')[2] or link['reason']}"
        if link.get("retired") is None:
            drain = link.get("last_drain") or {}
            return f"{args.link}: not retired: {drain.get('message', 'see the journal')}"
        return f"{args.link}: draining, {link['backlog']['entries']} entries queued"
    return _follow(args, done, line_of, lambda link: (link.get("retired") or {}).get("state"))


def cmd_freeze(args) -> int:
    until = configmod.parse_duration(args.until)
    if until is None or not 1 <= until <= 7 * 86400:
        print(f"syncwarden freeze: --until: expected a duration 1s-7d (e.g. 30m), got"
              f" {args.until!r}", file=sys.stderr)
        return EXIT_USAGE
    fields = {k: v for k, v in (("exec", args.exec_command), ("exec_user", args.exec_user)) if v}
    result = _ask(args, "freeze", link=args.link, until=int(round(until)), **fields)
    if result is None:
        return EXIT_PROBLEM
    print(result)
    if args.no_wait:
        return EXIT_OK

    def done(link):
        freeze = link.get("freeze")
        if freeze is None:
            return False                  # ended at once: the drain failed
        return True if freeze.get("state") == "frozen" else None

    def line_of(link):
        freeze = link.get("freeze")
        if freeze is None:
            drain = link.get("last_drain") or {}
            return f"{args.link}: not frozen: {drain.get('message', 'see the journal')}"
        if freeze["state"] == "frozen":
            hook = " running CMD" if freeze.get("hook") else ""
            return f"{args.link}: frozen until {freeze['until']}{hook}"
        return f"{args.link}: draining, {link['backlog']['entries']} entries queued"
    return _follow(args, done, line_of, lambda link: (link.get("freeze") or {}).get("state"))


def cmd_thaw(args) -> int:
    result = _ask(args, "thaw", link=args.link)
    if result is None:
        return EXIT_PROBLEM
    print(result)
    return EXIT_OK


COMMANDS = {"seed": cmd_seed, "retire": cmd_retire, "freeze": cmd_freeze, "thaw": cmd_thaw}
