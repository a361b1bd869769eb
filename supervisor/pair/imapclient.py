"""The IMAP edge of check and repair: imaplib (stdlib) against Cyrus 3.6, and nothing else.

What Cyrus 3.6.1 makes us do (cyrus-lab.md §3, §8):
- A global admin may LIST every user's mailboxes but not SELECT or STATUS them, so a user's
  mailboxes are read in a session *as that user*: SASL PLAIN with the user as authorization
  identity and the admin as authentication identity. No ACL is changed.
- We never open such a session on a side where the admin LIST did not show the user: Debian sets
  ``autocreate_quota: 0``, so a login would create the user's INBOX there.
- MAILBOXID asked together with other STATUS items comes back as garbage bytes (a pointer into
  a closed mailbox), so it is asked alone.
- EXAMINE (read-only) and BODY.PEEK: reading changes no flag.

Parsing is in imapparse.py (pure); the password only ever goes to AUTHENTICATE.
"""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
from contextlib import contextmanager
from dataclasses import dataclass

from .compare import Mailbox, Message, Status
from .imapparse import (by_name, message_from, parse_fetch, parse_list, parse_status, quote,
                        userid_of)

# imaplib refuses commands it does not know; GETMETADATA (RFC 5464) is valid once logged in.
imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))
SYNCCRCS = "/shared/vendor/cmu/cyrus-imapd/synccrcs"


class ImapError(Exception):
    """A side could not be reached or refused a command; the message names side and command."""


class MailboxGone(ImapError):
    """The mailbox was listed a moment ago and is gone now (deleted or renamed meanwhile)."""


@dataclass(frozen=True)
class Login:
    user: str
    password: str = ""

    def __repr__(self) -> str:      # never print a password, even in a traceback
        return f"Login(user={self.user!r}, password=<hidden>)"


def connect(endpoint, login: Login, authzid: str = "") -> imaplib.IMAP4:
    """Log in with SASL PLAIN, as ``authzid`` when given (the admin acting as that user)."""
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        if endpoint.tls == "imaps":
            conn = imaplib.IMAP4_SSL(endpoint.host, endpoint.port, ssl_context=_tls(endpoint),
                                     timeout=endpoint.timeout)
        else:
            conn = imaplib.IMAP4(endpoint.host, endpoint.port, timeout=endpoint.timeout)
            if endpoint.tls == "starttls":
                conn.starttls(_tls(endpoint))
    except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
        raise ImapError(f"{where}: cannot connect: {exc}") from None
    # imaplib sends a literal and its closing CRLF in two writes (AUTHENTICATE, APPEND); with
    # Nagle on, the CRLF waits for the server's delayed ACK: 40 ms per login and per message.
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    secret = f"{authzid}\0{login.user}\0{login.password}".encode()
    try:
        conn.authenticate("PLAIN", lambda _: secret)
    except (OSError, imaplib.IMAP4.error) as exc:
        _close(conn)
        who = f"{login.user} as {authzid}" if authzid else login.user
        raise ImapError(f"{where}: login of {who} refused: {exc}") from None
    return conn


def _tls(endpoint) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(endpoint.ca_file) if endpoint.ca_file else None)


def _close(conn) -> None:
    try:
        conn.logout()
    except (OSError, imaplib.IMAP4.error):
        pass


def _ok(where: str, what: str, answer) -> list:
    typ, data = answer
    if typ != "OK":
        text = b" ".join(x for x in data if isinstance(x, bytes)).decode("utf-8", "replace")
        gone = "NONEXISTENT" in text or "does not exist" in text
        raise (MailboxGone if gone else ImapError)(f"{where}: {what}: {typ} {text}")
    return data


class AdminView:
    """The admin's session on one side: which users exist, and their mailboxes."""

    def __init__(self, endpoint, login: Login):
        self.where = f"{endpoint.host}:{endpoint.port}"
        self.conn = connect(endpoint, login)

    def close(self) -> None:
        _close(self.conn)

    def users(self) -> dict[str, list[str]]:
        """{userid: [admin mailbox names]}, from one LIST of the "user" hierarchy."""
        try:
            root = _ok(self.where, "LIST", self.conn.list('""', '""'))
            delim = (parse_list(root[0]) or (set(), ".", ""))[1] or "."
            data = _ok(self.where, "LIST", self.conn.list('""', quote(f"user{delim}*")))
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ImapError(f"{self.where}: LIST: {exc}") from None
        users: dict[str, list[str]] = {}
        for item in data:
            parsed = parse_list(item)
            if parsed is None:
                continue
            flags, d, name = parsed
            if flags & {"\\noselect", "\\nonexistent"}:
                continue
            user = userid_of(name, d or delim)
            if user:
                users.setdefault(user, []).append(name)
        return users

    def create(self, name: str) -> None:
        try:
            _ok(self.where, f"CREATE {name}", self.conn.create(quote(name)))
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ImapError(f"{self.where}: CREATE {name}: {exc}") from None


class UserSession:
    """One user's mailboxes on one side, read (and on the master written) as that user."""

    def __init__(self, endpoint, login: Login, user: str):
        self.where = f"{endpoint.host}:{endpoint.port} as {user}"
        self.user = user
        self.conn = connect(endpoint, login, authzid=user)
        self.selected: str | None = None
        try:
            ns = _ok(self.where, "NAMESPACE", self.conn.namespace())[0]
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ImapError(f"{self.where}: NAMESPACE: {exc}") from None
        m = re.match(rb'\(\("([^"]*)" "(.)"\)', ns or b"")
        # altnamespace: no -> ("INBOX." "."); altnamespace: yes -> ("" "/") or ("" ".")
        self.prefix, self.delim = ((m.group(1).decode(), m.group(2).decode()) if m
                                   else ("INBOX.", "."))

    def close(self) -> None:
        _close(self.conn)

    def own_name(self, admin_name: str) -> str:
        """The admin's user.bob.Sent as bob sees it: INBOX.Sent (or Sent with altnamespace)."""
        local = admin_name.rpartition("@")[0] if "@" in admin_name else admin_name
        delim = self.delim
        parts = local.split(delim)
        rest = parts[2:]
        return "INBOX" if not rest else self.prefix + delim.join(rest)

    def _call(self, what: str, fn, *args) -> list:
        try:
            return _ok(self.where, what, fn(*args))
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ImapError(f"{self.where}: {what}: {exc}") from None

    def status(self, admin_name: str) -> Status:
        name = quote(self.own_name(admin_name))
        counters = parse_status(self._call(f"STATUS {admin_name}", self.conn.status, name,
                                           "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)"))
        ident = parse_status(self._call(f"STATUS {admin_name}", self.conn.status, name,
                                        "(MAILBOXID)"))
        crc = parse_status(self._call(f"GETMETADATA {admin_name}", self._metadata, name,
                                      SYNCCRCS))
        try:
            return Status(counters["messages"], counters["uidnext"], counters["uidvalidity"],
                          counters["highestmodseq"], str(ident["mailboxid"]),
                          crc.get("synccrc", ""))
        except KeyError as exc:
            raise ImapError(f"{self.where}: STATUS {admin_name}: no {exc.args[0]} in the"
                            " answer") from None

    def statuses(self, admin_names) -> dict[str, Status]:
        """Status of many mailboxes in two LIST-STATUS commands (RFC 5819; Cyrus also returns
        METADATA there), MAILBOXID again in a command of its own. Mailboxes missing from the
        answers are simply not in the result: the caller asks for them one by one."""
        own = {self.own_name(n): n for n in admin_names}
        patterns = f"({quote('INBOX')} {quote(self.prefix + '*')})"
        first = self._list_return(patterns, "(STATUS (MESSAGES UIDNEXT UIDVALIDITY"
                                  f" HIGHESTMODSEQ) METADATA ({SYNCCRCS}))")
        second = self._list_return(patterns, "(STATUS (MAILBOXID))")
        counters = by_name(first.get("STATUS", []), parse_status)
        crcs = by_name(first.get("METADATA", []), parse_status)
        ids = by_name(second.get("STATUS", []), parse_status)
        out = {}
        for name, admin_name in own.items():
            c, i, crc = counters.get(name, {}), ids.get(name, {}), crcs.get(name, {})
            if {"messages", "uidnext", "uidvalidity", "highestmodseq"} <= set(c) and \
                    "mailboxid" in i:
                out[admin_name] = Status(c["messages"], c["uidnext"], c["uidvalidity"],
                                         c["highestmodseq"], i["mailboxid"],
                                         crc.get("synccrc", ""))
        return out

    def _list_return(self, patterns: str, returns: str) -> dict[str, list]:
        try:
            typ, data = self.conn._simple_command("LIST", '""', patterns, "RETURN", returns)
            _ok(self.where, "LIST", (typ, data))
            return {k: self.conn._untagged_response(typ, data, k)[1]
                    for k in ("STATUS", "METADATA", "LIST")}
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ImapError(f"{self.where}: LIST: {exc}") from None

    def _metadata(self, name: str, entry: str):
        typ, data = self.conn._simple_command("GETMETADATA", name, entry)
        return self.conn._untagged_response(typ, data, "METADATA")

    def _examine(self, admin_name: str) -> int:
        if self.selected != admin_name:
            data = self._call(f"EXAMINE {admin_name}", self.conn.select,
                              quote(self.own_name(admin_name)), True)
            self.selected = admin_name
            self.exists = int(data[0] or 0)
        return self.exists

    def messages(self, admin_name: str) -> dict[int, Message]:
        if self._examine(admin_name) == 0:
            return {}
        data = self._call(f"FETCH {admin_name}", self.conn.uid, "FETCH", "1:*",
                          "(UID FLAGS MODSEQ DIGEST.SHA1)")
        return {m.uid: m for m in map(message_from, (f for f in parse_fetch(data) if "UID" in f))}

    def mailbox(self, admin_name: str, deep: bool) -> Mailbox:
        status = self.status(admin_name)
        return Mailbox(admin_name, status, self.messages(admin_name) if deep else None)

    def fetch_full(self, admin_name: str, uid: int) -> dict | None:
        """{"FLAGS", "INTERNALDATE", "BODY[]"} of one message, or None if it is gone."""
        self._examine(admin_name)
        data = self._call(f"FETCH {admin_name} {uid}", self.conn.uid, "FETCH", str(uid),
                          "(UID FLAGS INTERNALDATE BODY.PEEK[])")
        found = [m for m in parse_fetch(data) if m.get("UID") == uid]
        return found[0] if found else None

    def append(self, admin_name: str, flags, internaldate: str, body: bytes) -> int | None:
        """APPEND with flags and internal date; the new UID (UIDPLUS) when the server says."""
        keep = " ".join(f for f in flags if f.lower() != "\\recent")
        data = self._call(f"APPEND {admin_name}", self.conn.append,
                          quote(self.own_name(admin_name)), f"({keep})",
                          quote(internaldate), body)
        m = re.search(rb"APPENDUID \d+ (\d+)", b" ".join(x for x in data if isinstance(x, bytes)))
        return int(m.group(1)) if m else None

    def subscriptions(self) -> set[str]:
        data = self._call("LSUB", self.conn.lsub, '""', '"*"')
        return {p[2] for p in map(parse_list, data) if p}

    def subscribe(self, name: str) -> None:
        self._call(f"SUBSCRIBE {name}", self.conn.subscribe, quote(name))


@contextmanager
def user_session(endpoint, login: Login, user: str):
    s = UserSession(endpoint, login, user)
    try:
        yield s
    finally:
        s.close()


def read_user(endpoint, login: Login, user: str, names: list[str], deep: bool) -> dict:
    """{admin name: Mailbox} of one user on one side, in one session."""
    out = {}
    with user_session(endpoint, login, user) as s:
        known = s.statuses(names)
        for name in names:
            try:
                status = known.get(name) or s.status(name)
                out[name] = Mailbox(name, status, s.messages(name) if deep else None)
            except MailboxGone:
                continue          # deleted since the LIST: it is not there to compare
    return out
