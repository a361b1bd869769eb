"""``syncwarden check LINK``: read both sides of a link, compare, report; changes nothing.

A shallow check reads each side as its admin: the LIST of the "user" hierarchy with every
mailbox's STATUS (imapclient.survey). Users whose mailboxes came without one,
and every user of a deep check, are read as themselves, a few users at a time.

Order matters while replication runs: each user is read on the replica first, then on the
master. In a healthy pair the replica never holds what the master has not had, so a change that
lands between the two reads can only make the master look ahead (lag), never the replica
(which would be a false split brain). Users that differ (or could not be read) are read a second
time after a pause, with a fresh look at the backlog, so changes that were merely in flight
drop out.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..cyrus import synclog
from ..cyrus.channel import Channel
from . import compare, credentials
from .lastcheck import load_last, result_path  # noqa: F401 (the saved result's reader)
from .imapclient import AdminView, ImapError, Survey, read_user, survey, user_session
from ..state import atomic_write

CONFIRM_PAUSE = 2.0          # seconds: a sync_client pass (repeat interval 1 s) lands in this
PROGRESS_EVERY = 2.0         # seconds between progress lines on stderr
JOURNAL_LINES = 40           # differences listed in the journal entry itself

# --- the backlog: which users and mailboxes have entries still to send (the channel's files) ---

@dataclass
class Pending:
    """What a link's backlog names: users, the ones with user-level entries (USER, SEEN, SUB,
    ...: any of their state may be in flight), and mailboxes (as synclog.mailbox_key()s)."""
    users: set = field(default_factory=set)
    whole: set = field(default_factory=set)
    mailboxes: set = field(default_factory=set)

    def of(self, user: str):
        """compare_user's ``pending`` for this user. A mailbox the backlog does not name is not
        lag, even when the user has other entries queued (a mailbox lost on the replica stays
        lost while new mail keeps the user's INBOX in the backlog)."""
        if user in self.whole or user not in self.users:
            return user in self.whole
        return lambda name: (name is None
                             or synclog.mailbox_key(name, internal=False) in self.mailboxes)

    def add(self, entry: synclog.Entry) -> None:
        if entry.kind in synclog.USER_TYPES or entry.kind in synclog.USER_MAILBOX_TYPES:
            user = synclog.userid(entry.args[0])
            self.users.add(user)
            self.whole.add(user)
        elif entry.kind in synclog.MAILBOX_TYPES or entry.kind in synclog.TWO_MAILBOX_TYPES:
            self.users.update(entry.users())
            self.mailboxes.update(synclog.mailbox_key(n, internal=True) for n in entry.args)


def parse_backlog(data: bytes) -> Pending:
    """Sync log lines, read by the one sync-log grammar (cyrus/synclog.py)."""
    out = Pending()
    for entry in filter(None, map(synclog.parse, data.splitlines())):
        out.add(entry)
    return out


def read_backlog(sync_dir: Path) -> Pending:
    out = Pending()
    for entry in Channel(sync_dir).entries_pending():
        out.add(entry)
    return out


# --- reading both sides -------------------------------------------------------------------------

def sides_for(cfg, link: str) -> "Sides":
    """Endpoints from the config, logins from the root-only file (CredentialsError if bad)."""
    logins = credentials.load(cfg.check.credentials, ["master", link])
    return Sides(link, cfg.check.master, cfg.check.replica(cfg.links[link]), logins["master"],
                 logins[link])


@dataclass
class Sides:
    """Where and as whom to read each side of one link."""
    link: str
    master: object             # config.ImapEndpoint
    replica: object
    master_login: object       # imapclient.Login
    replica_login: object

    def listings(self) -> tuple[dict, dict]:
        """({user: [mailboxes]} on the master, same on the replica); the replica first."""
        out = []
        for endpoint, login in ((self.replica, self.replica_login),
                                (self.master, self.master_login)):
            view = AdminView(endpoint, login)
            try:
                out.append(view.users())
            finally:
                view.close()
        return out[1], out[0]

    def survey(self) -> tuple[Survey, Survey]:
        """(master, replica) as their admins see them, with statuses; the replica first."""
        replica = survey(self.replica, self.replica_login)
        return survey(self.master, self.master_login), replica

    def read(self, user: str, m_names, r_names, deep: bool):
        """(master view, replica view) of one user; None for a side the user is not on."""
        r = read_user(self.replica, self.replica_login, user, r_names, deep) if r_names else None
        m = read_user(self.master, self.master_login, user, m_names, deep) if m_names else None
        return m, r

    def _side(self, side: str):
        return (self.master, self.master_login) if side == "master" else (self.replica,
                                                                          self.replica_login)

    def session(self, side: str, user: str):
        """A context manager: an imapclient.UserSession as ``user`` on "master" or "replica"."""
        return user_session(*self._side(side), user)

    @contextmanager
    def admin(self, side: str):
        view = AdminView(*self._side(side))
        try:
            yield view
        finally:
            view.close()


class Progress:
    """A line on stderr every few seconds, for runs long enough to wonder about."""

    def __init__(self, link: str, total: int, out=sys.stderr, clock=time.monotonic):
        self.link, self.total, self.out, self.clock = link, total, out, clock
        self.next = clock() + PROGRESS_EVERY
        self.done = self.mailboxes = self.differences = 0

    def step(self, mailboxes: int, differences: int) -> None:
        self.done += 1
        self.mailboxes += mailboxes
        self.differences += differences
        if self.out is not None and self.clock() >= self.next:
            self.next = self.clock() + PROGRESS_EVERY
            print(f"check {self.link}: {self.done}/{self.total} users, {self.mailboxes}"
                  f" mailboxes, {self.differences} differences so far", file=self.out,
                  flush=True)


def run(sides: Sides, sync_dir: Path, deep: bool, only_users: list[str] | None = None,
        parallel: int = 4, progress_out=sys.stderr, clock=time.time, pause=time.sleep,
        confirm: bool = True, keep_views: bool = False) -> compare.Report:
    """Compare every user (or only_users) of one link; per-user read errors go into the report."""
    report = compare.Report(sides.link, deep, started=clock())
    masters, replicas = sides.survey()
    listed = set(masters.users) | set(replicas.users)
    users = sorted(listed) if not only_users else list(only_users)
    for u in users:
        if only_users and u not in listed:
            report.errors.append(f"{u}: no such user on the master or the replica")
    users = [u for u in users if u in listed]
    results = _compare_users(sides, users, masters, replicas, read_backlog(sync_dir), deep,
                             parallel, Progress(sides.link, len(users), progress_out))
    differing = [u for u, outcome in results.items() if outcome[0] or outcome[2]]
    if differing and confirm:
        pause(CONFIRM_PAUSE)
        masters, replicas = sides.survey()
        again = _compare_users(sides, differing, masters, replicas, read_backlog(sync_dir),
                               deep, parallel, Progress(sides.link, len(differing), None))
        results.update(again)
    for user in users:
        diffs, counted, error, views = results[user]
        if error:
            report.errors.append(f"{user}: {error}")
        if diffs and keep_views:
            report.views[user] = views
        report.differences += diffs
        report.mailboxes += counted[0]
        report.messages += counted[1]
    report.users = len(users)
    report.finished = clock()
    return report


def _compare_users(sides, users, masters: Survey, replicas: Survey, pending, deep, parallel,
                   progress):
    """{user: (differences, (mailboxes, messages), error, views)}: from the surveys where they
    hold every Status a shallow comparison needs, else from sessions as the user."""
    def compared(user, m, r):
        diffs = compare.compare_user(user, m, r, pending=pending.of(user))
        return diffs, _size(m, r), None, (m, r) if diffs else None

    def one(user):
        try:
            m, r = sides.read(user, masters.users.get(user), replicas.users.get(user), deep)
        except ImapError as exc:
            return user, ([], (0, 0), str(exc), None)
        return user, compared(user, m, r)

    results, sessions = {}, []
    for user in users:
        m_names, r_names = masters.users.get(user), replicas.users.get(user)
        m = masters.view(m_names) if m_names and not deep else None
        r = replicas.view(r_names) if r_names and not deep else None
        if deep or (m_names and m is None) or (r_names and r is None):
            sessions.append(user)
            continue
        results[user] = outcome = compared(user, m, r)
        progress.step(outcome[1][0], len(outcome[0]))
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for user, outcome in pool.map(one, sessions):
            results[user] = outcome
            progress.step(outcome[1][0], len(outcome[0]))
    return results


def _size(m, r) -> tuple[int, int]:
    """(mailboxes, messages) compared: each mailbox once, at its larger side."""
    names = set(m or {}) | set(r or {})

    def count(view, name):
        return view[name].status.messages if view and name in view else 0

    return len(names), sum(max(count(m, x), count(r, x)) for x in names)


# --- recording the outcome --------------------------------------------------------------------

def save(report: compare.Report, state_dir: Path) -> None:
    """The last full check of a link, for `syncwarden status` (written atomically)."""
    atomic_write(result_path(report.link, state_dir),
                 json.dumps(report.summary()).encode() + b"\n")


def journal_report(journal, report: compare.Report, only_users=None) -> None:
    counts = report.counts()
    fields = {f"SYNCWARDEN_{c.upper().replace('-', '_')}": n for c, n in counts.items()}
    fields.update(SYNCWARDEN_LINK=report.link, SYNCWARDEN_RESULT=report.result,
                  SYNCWARDEN_DEEP=int(report.deep), SYNCWARDEN_USERS=report.users,
                  SYNCWARDEN_MAILBOXES=report.mailboxes, SYNCWARDEN_MESSAGES=report.messages,
                  SYNCWARDEN_ERRORS=len(report.errors),
                  SYNCWARDEN_DURATION=f"{report.finished - report.started:.3f}",
                  SYNCWARDEN_ONLY_USERS=" ".join(only_users) if only_users else None)
    scope = f" for {', '.join(only_users)}" if only_users else ""
    if report.result == "error":
        lines = report.errors[:JOURNAL_LINES]
        journal.send(f"check{scope} incomplete: {len(report.errors)}"
                     " user(s) could not be read:\n" + "\n".join(lines), "err",
                     "check-failed", **fields)
    elif report.divergent:
        lines = compare.render(report).splitlines()
        shown = lines[:JOURNAL_LINES]
        if len(lines) - 1 > JOURNAL_LINES:
            shown.append(f"... and {len(lines) - 1 - JOURNAL_LINES} more"
                         f" (syncwarden check {report.link})")
        journal.send(f"master and replica differ{scope}:"
                     f" {compare.counts_line(counts)}\n" + "\n".join(shown), "warning",
                     "divergence-found", **fields)
    else:
        journal.send(f"master and replica in sync{scope} ({report.users}"
                     f" users, {report.mailboxes} mailboxes; {counts[compare.REPLICA_BEHIND]}"
                     " difference(s) still in the backlog)", "info", "check-finished", **fields)
