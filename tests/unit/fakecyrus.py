"""An in-memory master/replica pair with the interface of check.Sides, for check and repair.

Only what the comparison needs is modelled: mailboxes with MAILBOXID, counters and messages
(GUID = sha1 of the body). The fake sync_client copies the master onto the replica the way
Cyrus does in the cases the repair relies on: ``-O -m`` replaces one mailbox, ``-u`` merges
replica-only messages of shared mailboxes back (new UIDs) and then makes the replica equal.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from contextlib import contextmanager

from supervisor.pair.compare import Mailbox, Message, Status
from supervisor.pair.imapclient import ImapError, MailboxGone, Survey

_ids = itertools.count(1)


class Box:
    def __init__(self, mailboxid=None, uidvalidity=1000):
        self.mailboxid = mailboxid or f"mbx{next(_ids)}"
        self.uidvalidity, self.uidnext, self.hms = uidvalidity, 1, 1
        self.msgs: dict[int, dict] = {}

    def add(self, body: bytes, flags=(), date="01-Jan-2026 00:00:00 +0000") -> int:
        uid = self.uidnext
        self.uidnext += 1
        self.hms += 1
        self.msgs[uid] = {"guid": hashlib.sha1(body).hexdigest(), "flags": list(flags),
                          "modseq": self.hms, "date": date, "body": body}
        return uid

    def view(self, name, deep) -> Mailbox:
        crc = hash(tuple(sorted((u, m["guid"], tuple(m["flags"])) for u, m in self.msgs.items())))
        status = Status(len(self.msgs), self.uidnext, self.uidvalidity, self.hms, self.mailboxid,
                        f"{crc & 0xffffffff} 0")
        msgs = {u: Message(u, m["guid"], frozenset(m["flags"]), m["modseq"])
                for u, m in self.msgs.items()} if deep else None
        return Mailbox(name, status, msgs)


class Server:
    def __init__(self):
        self.boxes: dict[str, Box] = {}
        self.subs: dict[str, set] = {}

    def user_boxes(self, user):
        return {n: b for n, b in self.boxes.items() if n == f"user.{user}"
                or n.startswith(f"user.{user}.")}

    def deliver(self, user, folder, text: str, **kw) -> int:
        name = f"user.{user}" + (f".{folder}" if folder else "")
        return self.boxes.setdefault(name, Box()).add(text.encode(), **kw)


class Session:
    def __init__(self, server: Server, user: str, log: list):
        self.server, self.user, self.log = server, user, log

    def _box(self, name) -> Box:
        if name not in self.server.boxes:
            raise MailboxGone(f"{name}: NO Mailbox does not exist")
        return self.server.boxes[name]

    def mailbox(self, name, deep):
        return self._box(name).view(name, deep)

    def fetch_full(self, name, uid):
        m = self._box(name).msgs.get(uid)
        if m is None:
            return None
        return {"UID": uid, "FLAGS": m["flags"], "INTERNALDATE": m["date"], "BODY[]": m["body"]}

    def append(self, name, flags, date, body):
        self.log.append(("append", name))
        return self._box(name).add(body, [f for f in flags if f != "\\Recent"], date)

    def subscriptions(self):
        return set(self.server.subs.get(self.user, set()))

    def subscribe(self, name):
        self.server.subs.setdefault(self.user, set()).add(name)


class Admin:
    def __init__(self, server, log):
        self.server, self.log = server, log

    def users(self):
        out = {}
        for name in self.server.boxes:
            out.setdefault(name.split(".")[1], []).append(name)
        return out

    def create(self, name):
        if name in self.server.boxes:
            raise ImapError(f"CREATE {name}: NO Mailbox already exists")
        self.log.append(("create", name))
        self.server.boxes[name] = Box()


class Pair:
    """Stands in for check.Sides (link "replica1")."""

    link = "replica1"

    def __init__(self):
        self.master, self.replica = Server(), Server()
        self.log: list = []
        self.unreadable: set[str] = set()
        self.no_list_status: set[str] = set()
        self.reads: list[str] = []          # users read in sessions of their own

    def _server(self, side):
        return self.master if side == "master" else self.replica

    def listings(self):
        return Admin(self.master, self.log).users(), Admin(self.replica, self.log).users()

    def survey(self):
        """Both sides with every Status, except the mailboxes of users in ``no_list_status``
        (whose LIST came without STATUS): check reads those as the user."""
        out = []
        for server in (self.master, self.replica):
            statuses = {n: b.view(n, False).status for n, b in server.boxes.items()
                        if n.split(".")[1] not in self.no_list_status}
            out.append(Survey(Admin(server, self.log).users(), statuses))
        return tuple(out)

    def read(self, user, m_names, r_names, deep):
        self.reads.append(user)
        if user in self.unreadable:
            raise ImapError(f"127.0.0.1:143 as {user}: login refused")
        views = []
        for server, names in ((self.master, m_names), (self.replica, r_names)):
            views.append({n: server.boxes[n].view(n, deep) for n in names if n in server.boxes}
                         if names else None)
        return tuple(views)

    @contextmanager
    def session(self, side, user):
        yield Session(self._server(side), user, self.log)

    @contextmanager
    def admin(self, side):
        yield Admin(self._server(side), self.log)

    # -- the fake sync_client ------------------------------------------------------------------
    def sync_client(self, argv):
        args = argv[argv.index("-n") + 2:]
        self.log.append(("sync_client", " ".join(args)))
        if args[:2] == ["-O", "-m"]:
            self.replica.boxes[args[2]] = copy.deepcopy(self.master.boxes[args[2]])
            return 0, ""
        user = args[1]
        for name, mbox in self.master.user_boxes(user).items():
            theirs = self.replica.boxes.get(name)
            if theirs is not None and theirs.mailboxid != mbox.mailboxid:
                return 1, f"do_folders(): update failed: {name} 'Mailbox has been moved'"
            if theirs is not None:    # Cyrus's copyback of what only the replica has
                have = {m["guid"] for m in mbox.msgs.values()}
                for m in theirs.msgs.values():
                    if m["guid"] not in have:
                        mbox.add(m["body"], m["flags"], m["date"])
            self.replica.boxes[name] = copy.deepcopy(mbox)
        return 0, ""
