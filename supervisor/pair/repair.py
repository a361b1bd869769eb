"""``syncwarden repair LINK``: bring back to the master what only the replica has, then let
Cyrus's own replication make the replica equal to the master again.

Cyrus 3.6 merges a split brain inside a mailbox both sides share (same MAILBOXID) by itself, so
those are left to ``sync_client -u USER``: copying them too would give the master duplicates.
What Cyrus never copies back is ours to copy (cyrus-replication.md §5):
- a mailbox or user only on the replica: created on the master, every message appended;
- a mailbox with another MAILBOXID on each side: the replica's messages the master lacks (by
  GUID) are appended to the master's mailbox.
Appends keep flags and internal date and get new UIDs on the master. Only then, and only after
re-reading both sides shows every message of the replica's copy in the master's mailbox, is the
replica's copy replaced with ``sync_client -O -m MAILBOX``, which deletes it. Messages Cyrus's
merge might expunge as stale are stashed on disk first and put back if the merge lost them.

Planning is pure (``plan_user``); the Executor does the I/O and journals every action.
"""

from __future__ import annotations

import enum
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..cyrus.commands import SyncClient
from . import compare
from .imapclient import ImapError

SYNC_TIMEOUT = 3600.0


class Kind(str, enum.Enum):
    """What a repair step does (a str, so that journal fields and plans print as before)."""

    CREATE_MAILBOX = "create-mailbox"
    COPY = "copy"
    COPY_SUBSCRIPTIONS = "copy-subscriptions"
    REPLACE = "replace"
    SYNC_USER = "sync-user"
    STASH = "stash"           # only in failure reports: saving replica-only mail first
    RESTORE = "restore"       # only in failure reports: putting it back

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Action:
    kind: Kind
    user: str
    mailbox: str | None = None
    uids: tuple = ()           # replica UIDs to copy
    why: str = ""

    def describe(self) -> str:
        if self.kind == "create-mailbox":
            return f"create {self.mailbox} on the master ({self.why})"
        if self.kind == "copy":
            return (f"copy {len(self.uids)} message(s) of the replica's {self.mailbox} to the"
                    f" master's (replica UIDs {_ranges(self.uids)}; {self.why})")
        if self.kind == "copy-subscriptions":
            return f"copy {self.user}'s subscriptions the master lacks"
        if self.kind == "replace":
            return (f"replace the replica's {self.mailbox} by the master's (sync_client -O -m),"
                    " once every one of its messages is on the master")
        if self.kind == "sync-user":
            return f"sync user {self.user} with sync_client -u ({self.why})"
        return f"{self.kind} {self.user}"


def _ranges(uids) -> str:
    out, run = [], []
    for uid in sorted(uids):
        if run and uid == run[-1] + 1:
            run.append(uid)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [uid]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def plan_user(user: str, master: dict | None, replica: dict | None,
              differences: list[compare.Difference]) -> list[Action]:
    """The actions for one user, from deep views of both sides taken under hold."""
    copies, replaces = [], []
    for name in sorted(replica or {}):
        r = replica[name]
        m = (master or {}).get(name)
        if m is None:
            why = "user only on the replica" if master is None else "mailbox only on the replica"
            copies.append(Action("create-mailbox", user, name, why=why))
            uids = tuple(sorted(r.messages or {}))
        elif m.status.mailboxid != r.status.mailboxid:
            why = "MAILBOXID differs"
            have = m.guids()
            uids = tuple(sorted(u for u, msg in (r.messages or {}).items() if msg.guid not in have))
        else:
            continue               # the same mailbox: Cyrus merges it (sync-user below)
        if uids:
            copies.append(Action("copy", user, name, uids, why=why))
        replaces.append(Action("replace", user, name))
    if any(a.kind == "create-mailbox" for a in copies):
        copies.append(Action("copy-subscriptions", user))
    actions = copies + replaces
    merged = sorted({d.category for d in differences if d.user == user and d.mailbox
                     and d.category in (compare.REPLICA_AHEAD, compare.GUID_MISMATCH)})
    rest = [d for d in differences if d.user == user and d.category not in compare.NORMAL]
    if actions or rest:
        why = (f"Cyrus merges the {' and '.join(merged)} mailboxes, keeping both sides' mail"
               if merged else "sends the master's state, now complete, to the replica")
        actions.append(Action("sync-user", user, why=why))
    return actions


class RepairError(Exception):
    pass


def _private_write(folder: Path, name: str, data: bytes) -> Path:
    """Someone's mail: readable by root only, like the spool it came from."""
    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.mkdir(exist_ok=True, mode=0o700)
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def run_sync_client(argv: list[str]) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=SYNC_TIMEOUT)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {SYNC_TIMEOUT:.0f}s"
    except OSError as exc:
        return 127, str(exc)
    return p.returncode, (p.stdout + p.stderr).strip()


@dataclass
class Outcome:
    done: int = 0
    copied: int = 0
    failures: list = field(default_factory=list)
    failed_users: set = field(default_factory=set)


class Executor:
    """Carries out one user's plan. Every action is a journal entry (MESSAGE_ID repair-action)."""

    def __init__(self, cfg, sides, journal, stash_dir: Path, out=print,
                 sync_client=run_sync_client):
        self.cfg, self.sides, self.journal = cfg, sides, journal
        self.stash_dir = Path(stash_dir)
        self.out, self.sync_client = out, sync_client
        self.outcome = Outcome()

    def _log(self, action: Action, message: str, priority: str = "notice", **fields) -> None:
        self.out(message)
        self.journal.send(f"repair of link {self.sides.link}: {message}", priority,
                          "repair-action", SYNCWARDEN_LINK=self.sides.link,
                          SYNCWARDEN_ACTION=action.kind, SYNCWARDEN_USER=action.user,
                          SYNCWARDEN_MAILBOX=action.mailbox, **fields)

    def _fail(self, action: Action, why: str) -> None:
        self.outcome.failures.append(f"{action.user}: {action.describe()}: {why}")
        self.outcome.failed_users.add(action.user)
        self._log(action, f"FAILED: {action.describe()}: {why}", "err")

    def run(self, actions: list[Action], replica_view: dict | None) -> None:
        if not actions:
            return
        user, failed_boxes = actions[0].user, set()
        try:
            stash = self._stash(user, actions, replica_view)
        except (ImapError, OSError) as exc:
            self._fail(Action(Kind.STASH, user), f"{exc}: {user} is not merged without a copy of"
                       " the mail only its replica has")
            actions, stash = [a for a in actions if a.kind != "sync-user"], {}
        for action in actions:
            if action.kind == "replace" and action.mailbox in failed_boxes:
                self._fail(action, "skipped: copying its messages to the master failed")
                continue
            try:
                self._handlers[Kind(action.kind)](action)
                self.outcome.done += 1
            except (ImapError, RepairError) as exc:
                failed_boxes.add(action.mailbox)
                self._fail(action, str(exc))
        if stash:
            try:
                self._restore(user, stash)
            except ImapError as exc:
                self._fail(Action(Kind.RESTORE, user), f"{exc}; the stashed messages stay in"
                           f" {self.stash_dir / user}")

    # -- the actions -----------------------------------------------------------------------------
    @property
    def _handlers(self):
        return {Kind.CREATE_MAILBOX: self._create_mailbox, Kind.COPY: self._copy,
                Kind.COPY_SUBSCRIPTIONS: self._copy_subscriptions, Kind.REPLACE: self._replace,
                Kind.SYNC_USER: self._sync_user}

    def _create_mailbox(self, action: Action) -> None:
        with self.sides.admin("master") as admin:
            admin.create(action.mailbox)
        self._log(action, f"created {action.mailbox} on the master ({action.why})")

    def _copy(self, action: Action) -> None:
        with self.sides.session("replica", action.user) as src, \
                self.sides.session("master", action.user) as dst:
            for uid in action.uids:
                msg = src.fetch_full(action.mailbox, uid)
                if msg is None:
                    self._log(action, f"{action.mailbox} uid {uid} is gone from the replica:"
                              " not copied", "warning", SYNCWARDEN_REPLICA_UID=uid)
                    continue
                new = dst.append(action.mailbox, msg.get("FLAGS", []),
                                 msg["INTERNALDATE"], msg["BODY[]"])
                self.outcome.copied += 1
                self._log(action, f"copied {action.mailbox} uid {uid} of the replica to the"
                          f" master (uid {new})", "info", SYNCWARDEN_REPLICA_UID=uid,
                          SYNCWARDEN_MASTER_UID=new)

    def _copy_subscriptions(self, action: Action) -> None:
        with self.sides.session("replica", action.user) as src, \
                self.sides.session("master", action.user) as dst:
            missing = sorted(src.subscriptions() - dst.subscriptions())
            for name in missing:
                dst.subscribe(name)
        self._log(action, f"subscribed {action.user} on the master to {len(missing)}"
                  f" folder(s) subscribed on the replica: {', '.join(missing) or '-'}")

    def _replace(self, action: Action) -> None:
        # Read both copies again right before: the replica's copy is deleted by -O.
        with self.sides.session("replica", action.user) as r, \
                self.sides.session("master", action.user) as m:
            theirs = r.mailbox(action.mailbox, deep=True)
            ours = m.mailbox(action.mailbox, deep=True)
        if theirs.status.mailboxid == ours.status.mailboxid:
            self._log(action, f"{action.mailbox}: already the same mailbox on both sides")
            return
        lacking = theirs.guids() - ours.guids()
        if lacking:
            raise RepairError(f"{len(lacking)} message(s) of the replica's copy are not in the"
                              " master's: not replaced (nothing was deleted)")
        self._sync(action, "-O", "-m", action.mailbox)
        self._log(action, f"replaced the replica's {action.mailbox} (MAILBOXID"
                  f" {theirs.status.mailboxid}, {theirs.status.messages} message(s), all on the"
                  f" master) by the master's ({ours.status.mailboxid})")

    def _sync_user(self, action: Action) -> None:
        self._sync(action, "-u", action.user)
        self._log(action, f"synced user {action.user}: {action.why}")

    def _sync(self, action: Action, *args: str) -> None:
        argv = SyncClient.from_config(self.cfg).as_cyrus(self.sides.link, *args)
        rc, output = self.sync_client(argv)
        if rc != 0:
            tail = " | ".join(output.splitlines()[-5:])
            raise RepairError(f"{' '.join(argv[4:])} exited {rc}: {tail or 'no output'}")

    # -- the safety net around Cyrus's merge ---------------------------------------------------
    def _stash(self, user: str, actions: list[Action], replica_view: dict | None) -> dict:
        """Save messages only the replica has in mailboxes Cyrus will merge (it may expunge a
        message it judges stale), so they can be put back.
        {guid: (mailbox, file, flags, internal date)}."""
        if not replica_view or not any(a.kind == "sync-user" for a in actions):
            return {}
        touched = {a.mailbox for a in actions if a.kind in ("copy", "create-mailbox", "replace")}
        with self.sides.session("master", user) as m:
            on_master = set()
            for name, mb in replica_view.items():
                if name not in touched:
                    try:
                        on_master |= m.mailbox(name, deep=True).guids()
                    except ImapError:
                        pass
        saved = {}
        folder = self.stash_dir / user
        with self.sides.session("replica", user) as r:
            for name, mb in replica_view.items():
                if name in touched:
                    continue
                for uid, msg in (mb.messages or {}).items():
                    if msg.guid in on_master or msg.guid in saved:
                        continue
                    full = r.fetch_full(name, uid)
                    if full is None:
                        continue
                    path = _private_write(folder, msg.guid, full["BODY[]"])
                    saved[msg.guid] = (name, path, full.get("FLAGS", []), full["INTERNALDATE"])
        return saved

    def _restore(self, user: str, saved: dict) -> None:
        action = Action(Kind.RESTORE, user)
        with self.sides.session("master", user) as m:
            present = set()
            for name in {v[0] for v in saved.values()}:
                try:
                    present |= m.mailbox(name, deep=True).guids()
                except ImapError:
                    pass
            for guid, (name, path, flags, date) in saved.items():
                if guid not in present:
                    new = m.append(name, flags, date, path.read_bytes())
                    self._log(action, f"Cyrus's merge lost {name} message {guid}: put it back"
                              f" from {path} (master uid {new})", "warning",
                              SYNCWARDEN_GUID=guid, SYNCWARDEN_MASTER_UID=new)
                    self.outcome.copied += 1
                path.unlink()     # it is on the master now: the stash copy is not the last one
        try:
            (self.stash_dir / user).rmdir()
        except OSError:
            pass
