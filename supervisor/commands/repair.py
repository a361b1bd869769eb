"""The repair command from end to end: hold the link, look, plan, act, verify, resume.

The link is held through the daemon's own control socket (``hold``/``resume``, as an operator
would), so no rolling worker runs while mailboxes are copied and replaced; a link that was
already held stays held. If this process dies mid-repair the hold stays on: safe, and visible in
``syncwarden status``.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from ..pair import check
from ..control import ControlError, request
from ..pair.imapclient import ImapError
from ..pair.repair import Executor, RepairError, plan_user, run_sync_client

HOLD_TIMEOUT = 60.0   # seconds for the daemon to stop the link's worker
# A daemon that crashed is restarted by systemd (RestartSec=1s); once the link is held, the
# repair waits this long for it rather than leave the link held for good.
RESTART_WAIT = 60.0


def patiently(ask, clock=time.monotonic, sleep=time.sleep):
    """``ask`` with a retry while no daemon answers, for up to RESTART_WAIT seconds."""
    def retrying(*args, **kw):
        deadline = clock() + RESTART_WAIT
        while True:
            try:
                return ask(*args, **kw)
            except ControlError:
                if clock() > deadline:
                    raise
                sleep(0.5)
    return retrying


def _link_status(link: str, socket_path: Path, ask=request) -> dict:
    try:
        answer = ask("status", path=socket_path)
    except ControlError as exc:
        raise RepairError(f"the syncwarden daemon is not running ({exc}), so it cannot hold"
                          f" {link} while the repair runs: start it (systemctl start"
                          " syncwarden)") from None
    for entry in answer.get("result", {}).get("links", []):
        if entry.get("name") == link:
            return entry
    raise RepairError(f"the daemon supervises no link named {link}")


@contextmanager
def held(link: str, socket_path: Path, out, clock=time.monotonic, sleep=time.sleep):
    """No worker on the link inside the block; resumed afterwards unless it was held before."""
    entry = _link_status(link, socket_path)
    ours = not entry.get("held")
    if ours:
        answer = request("hold", path=socket_path, link=link)
        if not answer.get("ok"):
            raise RepairError(f"the daemon refused to hold {link}: {answer.get('error')}")
        out(f"{link}: held for the repair")
    else:
        out(f"{link}: already held by an operator; it stays held afterwards")
    ask = patiently(request, clock, sleep)
    try:
        deadline = clock() + HOLD_TIMEOUT
        while True:
            entry = _link_status(link, socket_path, ask)
            if not entry["worker"].get("active") and entry.get("state") != "draining":
                break
            if clock() > deadline:
                raise RepairError(f"{link}: its worker still runs {HOLD_TIMEOUT:.0f}s after"
                                  " the hold")
            sleep(0.2)
        yield
    finally:
        if ours:
            try:
                ask("resume", path=socket_path, link=link)
                out(f"{link}: resumed")
            except ControlError as exc:
                out(f"{link}: could not resume ({exc}): run syncwarden resume {link}")


def run(cfg, imapd, link: str, only_users, dry_run: bool, journal, socket_path: Path,
        state_dir: Path, out=print, err=sys.stderr, sides=None,
        sync_client=run_sync_client, approve=lambda steps: True) -> int:
    """``approve(steps)``: asked with the plan before anything is changed (the link is held
    meanwhile); False ends the repair with nothing done (exit 1)."""
    sides = sides or check.sides_for(cfg, link)
    hold = nullcontext() if dry_run else held(link, socket_path, out)
    with hold:
        report = check.run(sides, imapd.sync_dir(link), deep=True, only_users=only_users,
                           parallel=cfg.check.parallel, progress_out=err, confirm=False,
                           keep_views=True)
        for problem in report.errors:
            out(f"not repaired: {problem}")
        plans = {}
        for user in sorted(report.views):
            diffs = [d for d in report.differences if d.user == user]
            master, replica = report.views[user]
            actions = plan_user(user, master, replica, diffs)
            if actions:
                plans[user] = (actions, replica)
        steps = [a for actions, _ in plans.values() for a in actions]
        if dry_run:
            out(f"repair plan for {link} (--dry-run: nothing is changed):"
                if steps else f"{link}: nothing to repair")
            for i, action in enumerate(steps, 1):
                out(f"  {i}. {action.describe()}")
            return 1 if report.errors else 0
        if steps and not approve([a.describe() for a in steps]):
            return 1
        journal.send(f"repair started: {len(steps)} action(s) for"
                     f" {len(plans)} user(s)", "notice", "repair-action",
                     SYNCWARDEN_LINK=link, SYNCWARDEN_ACTION="start")
        executor = Executor(cfg, sides, journal, Path(state_dir) / "repair" / link, out=out,
                            sync_client=sync_client)
        for user, (actions, replica) in plans.items():
            executor.run(actions, replica)
        missing = _verify(sides, plans, out)
    outcome = executor.outcome
    _retry_quarantined(link, set(plans) - outcome.failed_users, socket_path, out)
    ok = not (outcome.failures or missing or report.errors)
    journal.send(f"repair {'finished' if ok else 'INCOMPLETE'}: {outcome.done}"
                 f" action(s) done, {outcome.copied} message(s) copied to the master,"
                 f" {len(outcome.failures)} failed, {missing} message(s) of the replica not on"
                 " the master", "notice" if ok else "err", "repair-finished",
                 SYNCWARDEN_LINK=link, SYNCWARDEN_ACTIONS=outcome.done,
                 SYNCWARDEN_COPIED=outcome.copied, SYNCWARDEN_FAILED=len(outcome.failures),
                 SYNCWARDEN_MISSING=missing)
    out(f"{link}: repair {'done' if ok else 'INCOMPLETE'}: {outcome.done} action(s),"
        f" {outcome.copied} message(s) copied, {len(outcome.failures)} failed")
    for failure in outcome.failures:
        out(f"  failed: {failure}")
    return 0 if ok else 1


def _retry_quarantined(link: str, repaired: set, socket_path: Path, out) -> None:
    """A repaired user the daemon holds in quarantine on this link is retried now: what
    quarantined it (a uniqueid conflict, say) is fixed, and its next scheduled retry may be
    hours away, while its new mail does not replicate."""
    if not repaired:
        return
    ask = patiently(request)
    try:
        rows = ask("quarantine", path=socket_path, action="list").get("result") or []
        for user in sorted({q["user"] for q in rows if q["link"] == link} & repaired):
            answer = ask("quarantine", path=socket_path, action="retry", user=user, link=link)
            out(f"{link}: {user} was quarantined; repaired, so retried now" if answer.get("ok")
                else f"{link}: retry of {user} refused: {answer.get('error')}")
    except ControlError as exc:
        out(f"{link}: could not retry quarantined users ({exc}): see syncwarden quarantine"
            " list, then syncwarden quarantine retry USER")


def _verify(sides, plans: dict, out) -> int:
    """Every message the replica had when we looked is now on the master (by GUID)."""
    if not plans:
        return 0
    masters, _ = sides.listings()
    missing = 0
    for user, (_, replica) in plans.items():
        wanted = set().union(*(mb.guids() for mb in (replica or {}).values()))
        if not wanted:
            continue
        try:
            master, _ = sides.read(user, masters.get(user), None, deep=True)
        except ImapError as exc:
            out(f"verify {user}: {exc}")
            missing += len(wanted)
            continue
        have = set().union(*(mb.guids() for mb in (master or {}).values()))
        lost = wanted - have
        missing += len(lost)
        out(f"verify {user}: {len(wanted) - len(lost)} of {len(wanted)} message(s) of the"
            f" replica are on the master" + (f"; MISSING: {', '.join(sorted(lost))}"
                                             if lost else ""))
    return missing
