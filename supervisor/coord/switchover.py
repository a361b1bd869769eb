"""A switchover as the two daemons carry it out, one reconcile tick at a time.

``syncwarden switchover`` only writes a request into etcd (keys.py) and watches it. Then:

1. the master (the key's holder, the request's ``from``) refuses while its Cyrus accepts mail,
   unless the request says to stop it through ``cyrus.service``; it drains every link, and
   once all drained with nothing left, asks for the release: one etcd transaction deletes the
   master key and writes the handover with the drained position. Then it records ``replica``.
2. the target (the handover's ``to``) records ``master`` (still pushing nothing: no key), then
   takes the key in one transaction that deletes the handover; from then on it holds the key
   and its workers start, replicating back to the old master.

Each step is re-derived every tick from what etcd says, so a daemon killed at any point picks
up where it was; a transaction that compares revisions makes every hand-over happen at most
once. Between the release and the take there is no master, never two.
"""

from __future__ import annotations

import logging

from ..cyrus import procs as cyrus_procs

log = logging.getLogger(__name__)


def cyrus_edges(sup, systemd, proc_root="/proc") -> tuple:
    """(mail_running, stop_mail) for this instance: its Cyrus processes as one line ("" when
    none), found from the instance itself as failover finds them (cyrus/procs.py); and a stop
    of the configured ``cyrus.service``."""
    def mail_running() -> str:
        found = cyrus_procs.service_processes(
            sup.imapd, cyrus_procs.bin_dirs(sup.config.cyrus.master), proc_root)
        return "; ".join(p.describe() for p in found)

    def stop_mail() -> None:
        unit = sup.config.cyrus.service
        if not unit:
            raise ValueError("no cyrus.service in the configuration")
        systemd.stop(unit)

    return mail_running, stop_mail


class SwitchoverDriver:
    def __init__(self, me: str, coordination, mail_running, stop_mail):
        """``mail_running()``: this instance's running Cyrus processes as one line, "" when
        none; ``stop_mail()``: stop the configured Cyrus unit (raises when there is none)."""
        self.me, self.coord = me, coordination
        self.mail_running, self.stop_mail = mail_running, stop_mail
        self.working: dict[int, str] = {}       # request revision -> stage
        self.asked: tuple | None = None
        self.release: tuple | None = None       # the release asked for, until it is done

    def _ask(self, action: tuple) -> None:
        if action != self.asked:                # once per action; a new view may ask again
            self.asked = action
            self.coord.ask(action)

    def _refuse(self, rev: int, why: str) -> None:
        log.warning("switchover refused: %s", why)
        self.working.pop(rev, None)
        self._ask(("refuse", rev, why))

    def step(self, sup) -> None:
        v = self.coord.view
        req, hand, role = v.request, v.handover, sup.role
        # Drained and asking for the release: no worker starts again (it would find nothing
        # to send, but would still be running when the target takes the key).
        self.coord.quiet = bool(req and self.working.get(req.get("rev")) == "releasing"
                                and req.get("phase") == "requested")
        if self.coord.quiet and self.release is not None:
            self.coord.ask(self.release)      # again each tick until etcd shows it done
        if hand is not None and hand.get("to") == self.me:
            if not role.is_master:
                self._change(sup, "master", f"syncwarden switchover from {hand.get('from')}")
            if role.is_master:
                self._ask(("take", hand["rev"]))
            return
        if req is None:
            return
        if req.get("from") == self.me and v.holder != self.me and role.is_master \
                and req.get("phase") in ("released", "done") and self._before(role, req):
            # released, but not yet recorded here (killed in between): a replica now
            self._change(sup, "replica", f"syncwarden switchover to {req.get('to')}")
            return
        if req.get("phase") == "requested" and req.get("from") == self.me and v.held:
            self._master_side(sup, req)

    @staticmethod
    def _before(role, req: dict) -> bool:
        """Whether this host's role was recorded before the key was released: a later record
        (an operator's promote since) is not undone by an old switchover."""
        record = role.store.load()
        released = req.get("released_at")
        return record is None or not isinstance(released, (int, float)) \
            or record.since < released

    def _change(self, sup, role: str, by: str) -> None:
        try:
            sup.operator.change_role(role, by)
        except ValueError as exc:     # a drain still running: the next tick tries again
            log.info("switchover: role change to %s waits: %s", role, exc)

    def _master_side(self, sup, req: dict) -> None:
        rev, to = req["rev"], req.get("to")
        stage = self.working.get(rev)
        if stage is None:
            mail = self.mail_running()
            if mail and not req.get("stop_cyrus"):
                return self._refuse(rev, f"Cyrus accepts mail on {self.me} ({mail}): stop it"
                                    " first, or run switchover --stop-cyrus")
            if mail:
                try:
                    self.stop_mail()
                except Exception as exc:
                    return self._refuse(rev, f"cannot stop Cyrus on {self.me}: {exc}")
            stage = self.working[rev] = "stopping"
        if stage == "stopping":
            if self.mail_running():
                return                  # the unit is still stopping
            for name in sup.links:
                try:
                    sup.operator.drain(name, hold_after=False, why=f"for a switchover to {to}")
                except (ValueError, KeyError) as exc:
                    sup.drains.abort_all("switchover refused")
                    return self._refuse(rev, f"cannot drain: {exc}")
            self.working[rev] = "draining"
            return
        if stage == "draining" and not sup.draining:
            last = {name: sup.drains.last.get(name) or {} for name in sup.links}
            bad = [f"{n}: {d.get('message', 'not drained')}" for n, d in last.items()
                   if not d.get("drained") or d.get("entries_left")]
            if bad:
                return self._refuse(rev, "drain incomplete: " + "; ".join(bad))
            mail = self.mail_running()
            if mail:
                return self._refuse(rev, f"Cyrus started again on {self.me} ({mail})")
            position = {n: {"at": d.get("at"), "entries_left": d.get("entries_left", 0)}
                        for n, d in last.items()}
            self.working[rev] = "releasing"
            self.coord.quiet = True
            self.release = ("release", rev, position)
            self.coord.ask(self.release)
