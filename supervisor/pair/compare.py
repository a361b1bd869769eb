"""Comparing what a master and a replica hold, user by user: pure data in, differences out.

Each difference falls into exactly one category, chosen by what Cyrus 3.6 will do about it
(cyrus-replication.md §5), because that is what the admin needs to know:

- ``replica-behind``: the master is ahead and the user has entries in the link's backlog: normal.
- ``master-only``: the master is ahead (a message, mailbox, user or change the replica lacks)
  with nothing queued for it; the next sync of that user copies it.
- ``replica-only``: a user, a mailbox, or a message in a conflicting mailbox that exists only on
  the replica. Cyrus never copies these back; ``sync_client -O`` would delete them.
- ``replica-ahead``: the same mailbox (same MAILBOXID) is newer on the replica (split brain).
  Cyrus merges it into the master at the next sync of that user.
- ``uniqueid-conflict``: a mailbox of the same name but another MAILBOXID on each side; its
  replication fails on every attempt until the replica's copy is replaced.
- ``guid-mismatch``: the same UID holds a different message on each side.

Nothing here does I/O: the IMAP edge (imapclient.py) builds these views, tests build them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..exits import CHECK_DIFFERENCES, CHECK_IN_SYNC, CHECK_INCOMPLETE

REPLICA_BEHIND = "replica-behind"
MASTER_ONLY = "master-only"
REPLICA_ONLY = "replica-only"
REPLICA_AHEAD = "replica-ahead"
UNIQUEID_CONFLICT = "uniqueid-conflict"
GUID_MISMATCH = "guid-mismatch"
CATEGORIES = (REPLICA_BEHIND, MASTER_ONLY, REPLICA_ONLY, REPLICA_AHEAD, UNIQUEID_CONFLICT,
              GUID_MISMATCH)
# Replication lag is not divergence: a pair with only these is reported "in sync".
NORMAL = frozenset({REPLICA_BEHIND})


@dataclass(frozen=True)
class Status:
    """STATUS of one mailbox; the replica copies all five from the master verbatim."""
    messages: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int
    mailboxid: str
    # "/vendor/cmu/cyrus-imapd/synccrcs": XOR CRCs over every record's UID, modseq, flags,
    # internal date and GUID (and annotations), the very figures replication compares. Equal
    # counters with a different CRC is a split brain with as many changes on each side.
    synccrc: str = ""

    def as_json(self) -> dict:
        return {"messages": self.messages, "uidnext": self.uidnext,
                "uidvalidity": self.uidvalidity, "highestmodseq": self.highestmodseq,
                "mailboxid": self.mailboxid, "synccrc": self.synccrc}


@dataclass(frozen=True)
class Message:
    uid: int
    guid: str                      # DIGEST.SHA1: the GUID replication compares
    flags: frozenset = frozenset()  # without \Recent, which is per session
    modseq: int = 0


@dataclass(frozen=True)
class Mailbox:
    name: str                      # the admin's name: user.bob.Sent (what sync_client -m takes)
    status: Status
    messages: dict | None = None   # uid -> Message, with --deep only

    def guids(self) -> set[str]:
        return {m.guid for m in (self.messages or {}).values()}


# What one side holds of one user: mailbox name -> Mailbox; None when the user does not exist.
UserView = dict


@dataclass(frozen=True)
class Difference:
    category: str
    kind: str                      # user, mailbox or message
    user: str
    mailbox: str | None = None
    uid: int | None = None
    guid: str | None = None
    detail: str = ""
    master: dict | None = None
    replica: dict | None = None

    def as_json(self) -> dict:
        return {"category": self.category, "kind": self.kind, "user": self.user,
                "mailbox": self.mailbox, "uid": self.uid, "guid": self.guid,
                "detail": self.detail, "master": self.master, "replica": self.replica}


def _count(view: UserView) -> tuple[int, int]:
    return len(view), sum(mb.status.messages for mb in view.values())


def compare_user(user: str, master: UserView | None, replica: UserView | None,
                 pending=False) -> list[Difference]:
    """Every difference between the two sides' views of one user.

    ``pending``: the link's backlog names this user, so whatever the master has more is lag;
    or a function of a mailbox name (None: the user itself) telling which are in flight."""
    in_flight = pending if callable(pending) else (lambda name: pending)

    def behind(name: str | None) -> str:
        return REPLICA_BEHIND if in_flight(name) else MASTER_ONLY

    if master is None and replica is None:
        return []
    if master is None:
        n, msgs = _count(replica)
        return [Difference(REPLICA_ONLY, "user", user, detail=f"user only on the replica:"
                           f" {n} mailbox(es), {msgs} message(s)",
                           replica={"mailboxes": n, "messages": msgs})]
    if replica is None:
        n, msgs = _count(master)
        return [Difference(behind(None), "user", user, detail=f"user only on the master:"
                           f" {n} mailbox(es), {msgs} message(s)",
                           master={"mailboxes": n, "messages": msgs})]
    out: list[Difference] = []
    for name in sorted(set(master) | set(replica)):
        m, r = master.get(name), replica.get(name)
        if m is None:
            out.append(Difference(REPLICA_ONLY, "mailbox", user, name,
                                  detail=f"mailbox only on the replica: {r.status.messages}"
                                  " message(s)", replica=r.status.as_json()))
        elif r is None:
            out.append(Difference(behind(name), "mailbox", user, name,
                                  detail=f"mailbox only on the master: {m.status.messages}"
                                  " message(s)", master=m.status.as_json()))
        elif m.status.mailboxid != r.status.mailboxid:
            out += _conflict(user, m, r)
        else:
            out += compare_mailbox(user, m, r, behind(name))
    return out


def _conflict(user: str, m: Mailbox, r: Mailbox) -> list[Difference]:
    out = [Difference(UNIQUEID_CONFLICT, "mailbox", user, m.name,
                      detail=f"same name, different MAILBOXID (master {m.status.mailboxid},"
                      f" replica {r.status.mailboxid}): replication of this user fails until"
                      " the replica's copy is replaced",
                      master=m.status.as_json(), replica=r.status.as_json())]
    if m.messages is not None and r.messages is not None:
        on_master = m.guids()
        for msg in sorted(r.messages.values(), key=lambda x: x.uid):
            if msg.guid not in on_master:
                out.append(Difference(REPLICA_ONLY, "message", user, m.name, msg.uid, msg.guid,
                                      "message only in the replica's copy of a conflicting"
                                      " mailbox", replica=_msg_json(msg)))
    return out


def _status_direction(m: Status, r: Status) -> str | None:
    """'replica' if the replica is ahead anywhere (Cyrus merges that), 'master', 'content' if
    only the sync CRC differs, or None."""
    if r.uidvalidity != m.uidvalidity:
        return "replica" if r.uidvalidity > m.uidvalidity else "master"
    if r.uidnext > m.uidnext or r.highestmodseq > m.highestmodseq:
        return "replica"
    if m.uidnext > r.uidnext or m.highestmodseq > r.highestmodseq:
        return "master"
    if m.messages != r.messages:   # counters equal, counts not: say who has more
        return "replica" if r.messages > m.messages else "master"
    if m.synccrc and r.synccrc and m.synccrc != r.synccrc:
        return "content"
    return None


def compare_mailbox(user: str, m: Mailbox, r: Mailbox, ahead_of_replica: str) -> list[Difference]:
    """The same mailbox (same MAILBOXID) on both sides."""
    direction = _status_direction(m.status, r.status)
    out = []
    if m.messages is not None and r.messages is not None:
        out = _compare_messages(user, m, r, ahead_of_replica)
    if direction == "content" and not out:
        out.append(Difference(GUID_MISMATCH, "mailbox", user, m.name,
                              detail="same counters but a different sync CRC: messages or"
                              " flags differ at the same UIDs (check --deep shows which)",
                              master=m.status.as_json(), replica=r.status.as_json()))
    elif direction is not None and not out:
        # Shallow check, or a difference no message shows (an expunged record, annotations).
        newer = "replica" if direction == "replica" else "master"
        out.append(Difference(REPLICA_AHEAD if direction == "replica" else ahead_of_replica,
                              "mailbox", user, m.name, detail=f"newer on the {newer}"
                              f" ({_status_delta(m.status, r.status)})",
                              master=m.status.as_json(), replica=r.status.as_json()))
    return out


def _status_delta(m: Status, r: Status) -> str:
    parts = []
    for key in ("uidvalidity", "uidnext", "highestmodseq", "messages"):
        a, b = getattr(m, key), getattr(r, key)
        if a != b:
            parts.append(f"{key.upper()} {a} on the master, {b} on the replica")
    return "; ".join(parts)


def _msg_json(msg: Message) -> dict:
    return {"uid": msg.uid, "guid": msg.guid, "flags": sorted(msg.flags), "modseq": msg.modseq}


def _compare_messages(user: str, m: Mailbox, r: Mailbox, ahead_of_replica: str):
    out = []
    mm, rm = m.messages, r.messages
    for uid in sorted(set(mm) | set(rm)):
        a, b = mm.get(uid), rm.get(uid)
        if a is not None and b is not None:
            if a.guid != b.guid:
                out.append(Difference(GUID_MISMATCH, "message", user, m.name, uid, a.guid,
                                      f"UID {uid} is another message on each side (Cyrus keeps"
                                      " both under new UIDs at the next sync)",
                                      master=_msg_json(a), replica=_msg_json(b)))
            elif a.flags != b.flags:
                cat = REPLICA_AHEAD if b.modseq > a.modseq else ahead_of_replica
                out.append(Difference(cat, "message", user, m.name, uid, a.guid,
                                      f"flags differ, newer on the"
                                      f" {'replica' if cat == REPLICA_AHEAD else 'master'}",
                                      master=_msg_json(a), replica=_msg_json(b)))
        elif b is not None:
            # Below the master's UIDNEXT the master once had this UID: it expunged it, unless
            # the replica changed the message after the master's last change (split brain).
            expunged_on_master = uid < m.status.uidnext and b.modseq <= m.status.highestmodseq
            cat = ahead_of_replica if expunged_on_master else REPLICA_AHEAD
            what = ("expunged on the master, not yet on the replica" if expunged_on_master
                    else "only on the replica (Cyrus copies it back at the next sync)")
            out.append(Difference(cat, "message", user, m.name, uid, b.guid, what,
                                  replica=_msg_json(b)))
        else:
            expunged_on_replica = uid < r.status.uidnext and r.status.highestmodseq > a.modseq
            cat = REPLICA_AHEAD if expunged_on_replica else ahead_of_replica
            what = ("expunged on the replica (Cyrus expunges it on the master at the next sync)"
                    if expunged_on_replica else "only on the master")
            out.append(Difference(cat, "message", user, m.name, uid, a.guid, what,
                                  master=_msg_json(a)))
    return out


@dataclass
class Report:
    """The outcome of one check of one link."""
    link: str
    deep: bool
    started: float                 # wall clock
    finished: float = 0.0
    users: int = 0
    mailboxes: int = 0
    messages: int = 0
    differences: list = field(default_factory=list)
    errors: list = field(default_factory=list)   # "user: why" for users that could not be read
    # user -> (master view, replica view) of users that differ, when the caller asks (repair)
    views: dict = field(default_factory=dict, repr=False)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(CATEGORIES, 0)
        for d in self.differences:
            counts[d.category] += 1
        return counts

    @property
    def divergent(self) -> bool:
        return any(d.category not in NORMAL for d in self.differences)

    @property
    def result(self) -> str:
        if self.errors:
            return "error"
        return "differences" if self.divergent else "in-sync"

    @property
    def exit_code(self) -> int:
        """The Nagios convention (exits.py): a divergence is CRITICAL even when some users
        could not be read, since what was found is certain; otherwise unreadable is UNKNOWN."""
        if self.divergent:
            return CHECK_DIFFERENCES
        return CHECK_INCOMPLETE if self.errors else CHECK_IN_SYNC

    def summary(self) -> dict:
        """What status shows and the journal records: no per-message detail."""
        return {"link": self.link, "deep": self.deep, "result": self.result,
                "exit_code": self.exit_code, "started": self.started,
                "finished": self.finished, "duration_seconds": round(self.finished
                                                                     - self.started, 3),
                "users": self.users, "mailboxes": self.mailboxes, "messages": self.messages,
                "counts": self.counts(), "errors": len(self.errors)}

    def as_json(self) -> dict:
        return {**self.summary(), "differences": [d.as_json() for d in self.differences],
                "error_details": list(self.errors)}


def counts_line(counts: dict[str, int]) -> str:
    shown = [f"{c} {n}" for c, n in counts.items() if n]
    return ", ".join(shown) if shown else "none"


def render(report: Report) -> str:
    """The plain-text report: one line per difference, then the counts."""
    lines = []
    width = max((len(d.category) for d in report.differences), default=0)
    for d in report.differences:
        where = d.mailbox or "(user)"
        if d.uid is not None:
            where += f" uid {d.uid}"
        lines.append(f"{d.category:<{width}}  {d.user}  {where}: {d.detail}")
    lines += [f"error: {e}" for e in report.errors]
    took = report.finished - report.started
    what = f"{report.users} user(s), {report.mailboxes} mailbox(es)"
    if report.deep:
        what += f", {report.messages} message(s)"
    verdict = {"in-sync": "in sync", "differences": "DIFFERENT",
               "error": "check incomplete"}[report.result]
    lines.append(f"{report.link}: {verdict}: {what} compared in {took:.1f}s;"
                 f" differences: {counts_line(report.counts())}")
    if report.result == "differences":
        lines.append(f"{report.link}: {what_to_run(report.link)}")
    return "\n".join(lines)


def what_to_run(link: str) -> str:
    """The operator's next step for a pair that differs (check's report, status, journal)."""
    return (f"to make them equal, run: syncwarden repair {link}"
            f" (syncwarden repair {link} --dry-run shows the plan first)")
