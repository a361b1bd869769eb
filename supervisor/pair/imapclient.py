"""The IMAP edge of check and repair: imaplib (stdlib) against Cyrus 3.6, and nothing else.

What Cyrus 3.6.1 makes us do (cyrus-lab.md §3, §8):
- A global admin may LIST every user's mailboxes but not SELECT or STATUS them, so a user's
  mailboxes are read in a session *as that user*: SASL PLAIN with the user as authorization
  identity and the admin as authentication identity. No ACL is changed.
- We never open such a session on a side where the admin LIST did not show the user: Debian sets
  ``autocreate_quota: 0``, so a login would create the user's INBOX there.
- MAILBOXID asked together with other STATUS items comes back as garbage bytes (a pointer into
  a closed mailbox), so it is asked alone.
- The same admin's LIST ... RETURN (STATUS ...) answers STATUS for every listed mailbox (unlike
  STATUS, it checks no read right), so a shallow check reads each side in two commands. Where
  a server leaves STATUS out (RFC 5819 allows it), the check reads those users as themselves.
- EXAMINE (read-only) and BODY.PEEK: reading changes no flag.

What a server may send is bounded (see _Answer): lines of MAX_LINE bytes, literals of
MAX_LITERAL, answers (everything the server sends for one command) of MAX_ANSWER, and a read
deadline per answer: the endpoint's timeout, extended only while data keeps arriving at
MIN_RATE or faster. A silent, slow-dripping or endless server ends in ImapError, as does any
answer that imaplib or imapparse cannot make sense of.

Parsing is in imapparse.py (pure); the password only ever goes to AUTHENTICATE.
"""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from .compare import Mailbox, Message, Status
from .imapparse import (ParseError, by_name, message_from, number, parse_fetch, parse_list,
                        parse_status, quote, userid_of)

# imaplib refuses commands it does not know; GETMETADATA (RFC 5464) is valid once logged in.
imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))
SYNCCRCS = "/shared/vendor/cmu/cyrus-imapd/synccrcs"

MAX_LINE = 1_000_000        # as imaplib's own limit; a LIST or STATUS line is far shorter
MAX_LITERAL = 512 << 20     # one message body; Cyrus's own default (maxmessagesize: 0) is none
MAX_ANSWER = 1 << 30        # everything one command brings back, all held in memory by imaplib
MIN_RATE = 1 << 20          # bytes/s that earn an answer more time than the endpoint's timeout

# What imaplib raises on a server's bytes: its own errors, socket errors, and ValueError for
# what it decodes or converts without checking (capabilities, base64 challenges, literal sizes).
_FAILED = (OSError, imaplib.IMAP4.error, ValueError, ParseError)


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


class _Answer:
    """Reads one connection's answers from its socket, within the bounds above.

    imaplib reads through read() and readline() (its documented overridable methods); these
    read the socket themselves, because a buffered file's readline() waits as long as every
    single recv() keeps within the socket timeout, which a server sending a byte at a time
    does for ever. The clock and byte count restart with each command sent."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.sock = None
        self.buf = bytearray()
        self.eof = False
        self.failed = False         # gave up on an answer: the session is of no more use
        self.sent()

    def sent(self) -> None:
        self.started, self.got = time.monotonic(), 0

    def _fill(self, sock) -> None:
        if sock is not self.sock:       # after STARTTLS: nothing read in plain text is kept
            self.sock, self.buf, self.eof = sock, bytearray(), False
        if self.eof:
            return
        left = self.started + self.timeout + self.got / MIN_RATE - time.monotonic()
        if left <= 0:
            raise self._late()
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except (socket.timeout, ssl.SSLWantReadError):
            raise self._late() from None
        self.got += len(chunk)
        if self.got > MAX_ANSWER:
            self.failed = True
            raise imaplib.IMAP4.abort(f"answer larger than {MAX_ANSWER} bytes")
        if not chunk:
            self.eof = True
        self.buf += chunk

    def _late(self) -> Exception:
        took = time.monotonic() - self.started
        self.failed = True
        return imaplib.IMAP4.abort(f"no complete answer after {took:.1f}s (timeout"
                                   f" {self.timeout:g}s)")

    def readline(self, sock) -> bytes:
        """One line with its CRLF; what is left at end of file (imaplib reports it)."""
        scanned = 0
        while True:
            if sock is self.sock:
                end = self.buf.find(b"\n", scanned)
                if end >= 0:
                    line = bytes(self.buf[:end + 1])
                    del self.buf[:end + 1]
                    return line
                if len(self.buf) > MAX_LINE:
                    self.failed = True
                    raise imaplib.IMAP4.error(f"line longer than {MAX_LINE} bytes")
                if self.eof:
                    line, self.buf = bytes(self.buf), bytearray()
                    return line
                scanned = len(self.buf)
            self._fill(sock)

    def read(self, sock, size: int) -> bytes:
        """A literal of ``size`` bytes (fewer at end of file: imaplib then finds no line)."""
        if size > MAX_LITERAL:
            self.failed = True
            raise imaplib.IMAP4.error(f"literal of {size} bytes (at most {MAX_LITERAL})")
        while sock is not self.sock or (len(self.buf) < size and not self.eof):
            self._fill(sock)
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data


class _Bounded:
    """imaplib's overridable I/O methods, routed through an _Answer."""

    def __init__(self, host, port, timeout, **kw):
        self.answer = _Answer(timeout)
        super().__init__(host, port, timeout=timeout, **kw)

    def read(self, size):
        return self.answer.read(self.sock, size)

    def readline(self):
        return self.answer.readline(self.sock)

    def send(self, data):
        self.answer.sent()
        self.sock.settimeout(self.answer.timeout)
        super().send(data)


class _IMAP4(_Bounded, imaplib.IMAP4):
    pass


class _IMAP4_SSL(_Bounded, imaplib.IMAP4_SSL):
    pass


def connect(endpoint, login: Login, authzid: str = "") -> imaplib.IMAP4:
    """Log in with SASL PLAIN, as ``authzid`` when given (the admin acting as that user)."""
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        if endpoint.tls == "imaps":
            conn = _IMAP4_SSL(endpoint.host, endpoint.port, endpoint.timeout,
                              ssl_context=_tls(endpoint))
        else:
            conn = _IMAP4(endpoint.host, endpoint.port, endpoint.timeout)
            if endpoint.tls == "starttls":
                conn.starttls(_tls(endpoint))
    except _FAILED as exc:
        raise ImapError(f"{where}: cannot connect: {exc}") from None
    # imaplib sends a literal and its closing CRLF in two writes (AUTHENTICATE, APPEND); with
    # Nagle on, the CRLF waits for the server's delayed ACK: 40 ms per login and per message.
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    secret = f"{authzid}\0{login.user}\0{login.password}".encode()
    try:
        conn.authenticate("PLAIN", lambda _: secret)
    except _FAILED as exc:
        _close(conn)
        who = f"{login.user} as {authzid}" if authzid else login.user
        raise ImapError(f"{where}: login of {who} refused: {exc}") from None
    return conn


def _tls(endpoint) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(endpoint.ca_file) if endpoint.ca_file else None)


def _close(conn) -> None:
    """LOGOUT, or just hang up on a server that already failed to answer in time."""
    try:
        if not conn.answer.failed:
            conn.logout()
            return
    except _FAILED:
        pass
    try:
        conn.shutdown()
    except OSError:
        pass


def _ok(where: str, what: str, answer) -> list:
    typ, data = answer
    if typ != "OK":
        text = b" ".join(x for x in data if isinstance(x, bytes)).decode("utf-8", "replace")
        gone = "NONEXISTENT" in text or "does not exist" in text
        raise (MailboxGone if gone else ImapError)(f"{where}: {what}: {typ} {text}")
    return data


# LIST ... RETURN items: the counters and the sync CRC in one command, MAILBOXID alone (above).
_COUNTERS = f"(STATUS (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ) METADATA ({SYNCCRCS}))"
_MAILBOXID = "(STATUS (MAILBOXID))"
# The admin's survey asks for the three in three sessions at once: Cyrus answers each in an
# imapd process of its own, so they take as long as the slowest, not as all three.
_SURVEY = ("(STATUS (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ))", f"(METADATA ({SYNCCRCS}))",
           _MAILBOXID)


def _list_return(conn, where: str, patterns: str, returns: str) -> dict[str, list]:
    """{"LIST": [...], "STATUS": [...], "METADATA": [...]} of one LIST ... RETURN command."""
    try:
        typ, data = conn._simple_command("LIST", '""', patterns, "RETURN", returns)
        _ok(where, "LIST", (typ, data))
        return {k: conn._untagged_response(typ, data, k)[1]
                for k in ("STATUS", "METADATA", "LIST")}
    except _FAILED as exc:
        raise ImapError(f"{where}: LIST: {exc}") from None


def _statuses(where: str, first: dict, second: dict) -> dict[str, Status]:
    """{name: Status} of the mailboxes both answers cover completely (_COUNTERS, _MAILBOXID)."""
    try:
        counters = by_name(first.get("STATUS", []), parse_status)
        crcs = by_name(first.get("METADATA", []), parse_status)
        ids = by_name(second.get("STATUS", []), parse_status)
    except ParseError as exc:
        raise ImapError(f"{where}: LIST-STATUS: {exc}") from None
    out = {}
    for name, c in counters.items():
        i, crc = ids.get(name, {}), crcs.get(name, {})
        if {"messages", "uidnext", "uidvalidity", "highestmodseq"} <= set(c) and "mailboxid" in i:
            out[name] = Status(c["messages"], c["uidnext"], c["uidvalidity"],
                               c["highestmodseq"], i["mailboxid"], crc.get("synccrc", ""))
    return out


@dataclass
class Survey:
    """One side as its admin sees it: {userid: [mailbox names]}, and the Status of each
    mailbox the LIST answered it for (maybe none)."""
    users: dict[str, list[str]]
    statuses: dict[str, Status]

    def view(self, names) -> dict[str, Mailbox] | None:
        """A user's shallow view, if every one of its mailboxes has its Status here."""
        if not all(n in self.statuses for n in names):
            return None
        return {n: Mailbox(n, self.statuses[n]) for n in names}


class AdminView:
    """The admin's session on one side: which users exist, and their mailboxes."""

    def __init__(self, endpoint, login: Login):
        self.where = f"{endpoint.host}:{endpoint.port}"
        self.conn = connect(endpoint, login)

    def close(self) -> None:
        _close(self.conn)

    def _delim(self) -> str:
        try:
            root = _ok(self.where, "LIST", self.conn.list('""', '""'))
        except _FAILED as exc:
            raise ImapError(f"{self.where}: LIST: {exc}") from None
        return (parse_list(root[0] if root else None) or (set(), ".", ""))[1] or "."

    def users(self, only: str | None = None) -> dict[str, list[str]]:
        """{userid: [admin mailbox names]}, from one LIST of the "user" hierarchy; ``only``:
        one user's, from LISTs of its own hierarchy (a user with a domain: the whole
        hierarchy, whose names put the domain last)."""
        delim = self._delim()
        if only is None or "@" in only or "*" in only or "%" in only:
            patterns = [f"user{delim}*"]
        else:
            patterns = [f"user{delim}{only}", f"user{delim}{only}{delim}*"]
        try:
            data = [line for pattern in patterns
                    for line in _ok(self.where, "LIST", self.conn.list('""', quote(pattern)))]
        except _FAILED as exc:
            raise ImapError(f"{self.where}: LIST: {exc}") from None
        return self._users(data, delim)

    def _users(self, data, delim: str) -> dict[str, list[str]]:
        try:
            listed = [p for p in map(parse_list, data) if p is not None]
        except _FAILED as exc:
            raise ImapError(f"{self.where}: LIST: {exc}") from None
        users: dict[str, list[str]] = {}
        for flags, d, name in listed:
            if flags & {"\\noselect", "\\nonexistent"}:
                continue
            user = userid_of(name, d or delim)
            if user:
                users.setdefault(user, []).append(name)
        return users

    def create(self, name: str) -> None:
        try:
            _ok(self.where, f"CREATE {name}", self.conn.create(quote(name)))
        except _FAILED as exc:
            raise ImapError(f"{self.where}: CREATE {name}: {exc}") from None


def survey(endpoint, login: Login) -> Survey:
    """One side's users, their mailboxes and their STATUS, in three admin sessions at once."""
    with ThreadPoolExecutor(len(_SURVEY)) as pool:
        tries = [pool.submit(AdminView, endpoint, login) for _ in _SURVEY]
        views = [f.result() for f in tries if f.exception() is None]
        try:
            if len(views) < len(tries):
                raise next(f.exception() for f in tries if f.exception() is not None)
            first = views[0]
            delim = first._delim()
            pattern = quote(f"user{delim}*")
            asked = [pool.submit(_list_return, v.conn, v.where, pattern, r)
                     for v, r in zip(views, _SURVEY)]
            try:
                counters, crcs, ids = (f.result() for f in asked)
            except ImapError:
                if any(v.conn.answer.failed for v in views):
                    raise
                return Survey(first.users(), {})   # no LIST-STATUS: users read one by one
            return Survey(first._users(counters["LIST"], delim),
                          _statuses(first.where, {**counters, "METADATA": crcs["METADATA"]},
                                    ids))
        finally:
            for v in views:
                v.close()


class UserSession:
    """One user's mailboxes on one side, read (and on the master written) as that user."""

    def __init__(self, endpoint, login: Login, user: str):
        self.where = f"{endpoint.host}:{endpoint.port} as {user}"
        self.user = user
        self.conn = connect(endpoint, login, authzid=user)
        self.selected: str | None = None
        try:
            ns = _ok(self.where, "NAMESPACE", self.conn.namespace())[0]
        except ImapError:
            _close(self.conn)
            raise
        except _FAILED as exc:
            _close(self.conn)
            raise ImapError(f"{self.where}: NAMESPACE: {exc}") from None
        m = re.match(rb'\(\("([^"]*)" "([!-~])"\)', ns if isinstance(ns, bytes) else b"")
        # altnamespace: no -> ("INBOX." "."); altnamespace: yes -> ("" "/") or ("" ".")
        self.prefix, self.delim = ((m.group(1).decode("utf-8", "surrogateescape"),
                                    m.group(2).decode()) if m else ("INBOX.", "."))

    def close(self) -> None:
        _close(self.conn)

    def own_name(self, admin_name: str) -> str:
        """The admin's user.bob.Sent as bob sees it: INBOX.Sent (or Sent with altnamespace)."""
        local = admin_name.rpartition("@")[0] if "@" in admin_name else admin_name
        delim = self.delim
        parts = local.split(delim)
        rest = parts[2:]
        return "INBOX" if not rest else self.prefix + delim.join(rest)

    def _call(self, what: str, fn, *args, parse=lambda data: data):
        """fn(*args) must answer OK; then parse(data), and any failure names side and command."""
        try:
            return parse(_ok(self.where, what, fn(*args)))
        except _FAILED as exc:
            raise ImapError(f"{self.where}: {what}: {exc}") from None

    def status(self, admin_name: str) -> Status:
        name = quote(self.own_name(admin_name))
        counters = self._call(f"STATUS {admin_name}", self.conn.status, name,
                              "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)", parse=parse_status)
        ident = self._call(f"STATUS {admin_name}", self.conn.status, name, "(MAILBOXID)",
                           parse=parse_status)
        crc = self._call(f"GETMETADATA {admin_name}", self._metadata, name, SYNCCRCS,
                         parse=parse_status)
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
        first = _list_return(self.conn, self.where, patterns, _COUNTERS)
        second = _list_return(self.conn, self.where, patterns, _MAILBOXID)
        found = _statuses(self.where, first, second)
        return {admin_name: found[name] for name, admin_name in own.items() if name in found}

    def _metadata(self, name: str, entry: str):
        typ, data = self.conn._simple_command("GETMETADATA", name, entry)
        return self.conn._untagged_response(typ, data, "METADATA")

    def _examine(self, admin_name: str) -> int:
        if self.selected != admin_name:
            self.exists = self._call(f"EXAMINE {admin_name}", self.conn.select,
                                     quote(self.own_name(admin_name)), True,
                                     parse=lambda data: number(data[0] or b"0", "EXISTS"))
            self.selected = admin_name
        return self.exists

    def messages(self, admin_name: str) -> dict[int, Message]:
        if self._examine(admin_name) == 0:
            return {}
        found = self._call(f"FETCH {admin_name}", self.conn.uid, "FETCH", "1:*",
                           "(UID FLAGS MODSEQ DIGEST.SHA1)",
                           parse=lambda data: [message_from(f) for f in parse_fetch(data)
                                               if "UID" in f])
        return {m.uid: m for m in found}

    def mailbox(self, admin_name: str, deep: bool) -> Mailbox:
        status = self.status(admin_name)
        return Mailbox(admin_name, status, self.messages(admin_name) if deep else None)

    def fetch_full(self, admin_name: str, uid: int) -> dict | None:
        """{"FLAGS", "INTERNALDATE", "BODY[]"} of one message, or None if it is gone."""
        self._examine(admin_name)
        found = self._call(f"FETCH {admin_name} {uid}", self.conn.uid, "FETCH", str(uid),
                           "(UID FLAGS INTERNALDATE BODY.PEEK[])",
                           parse=lambda data: [m for m in parse_fetch(data)
                                               if m.get("UID") == uid])
        if not found:
            return None
        msg = found[0]
        if not (isinstance(msg.get("BODY[]"), bytes) and isinstance(msg.get("INTERNALDATE"), str)):
            raise ImapError(f"{self.where}: FETCH {admin_name} {uid}: no BODY[] literal and"
                            " INTERNALDATE string in the answer")
        return msg

    def append(self, admin_name: str, flags, internaldate: str, body: bytes) -> int | None:
        """APPEND with flags and internal date; the new UID (UIDPLUS) when the server says."""
        keep = " ".join(f for f in flags if f.lower() != "\\recent")
        return self._call(f"APPEND {admin_name}", self.conn.append,
                          quote(self.own_name(admin_name)), f"({keep})",
                          quote(internaldate), body, parse=_appended_uid)

    def subscriptions(self) -> set[str]:
        return self._call("LSUB", self.conn.lsub, '""', '"*"',
                          parse=lambda data: {p[2] for p in map(parse_list, data) if p})

    def subscribe(self, name: str) -> None:
        self._call(f"SUBSCRIBE {name}", self.conn.subscribe, quote(name))


def _appended_uid(data) -> int | None:
    m = re.search(rb"APPENDUID \d+ (\d+)", b" ".join(x for x in data if isinstance(x, bytes)))
    return number(m.group(1), "APPENDUID") if m else None


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
