"""Cyrus's sync log grammar: what a line says, whether Cyrus acts on it, and whose entry it is.

The one place that knows the format (read in cyrus-imapd 3.6.1 and 3.10.3, which agree):

Writers (imap/sync_log.c, sync_log.h) append ``TYPE SP name [SP name] LF``:
    USER UNUSER META SIEVE                      one userid
    APPEND MAILBOX UNMAILBOX QUOTA ANNOTATION   one mailbox
    DOUBLEMAILBOX RENAME                        two mailboxes
    SEEN SUB UNSUB                              a userid, then a mailbox
(a RENAME is always followed by ``MAILBOX old`` and ``MAILBOX new``). sync_quote_name writes a
name bare unless it holds space, tab or parentheses (then it is quoted) or backslash, double
quote or braces (quoted, each escaped with a backslash); "" is the empty name; a name never
holds CR or LF.

The reader (sync_log_reader_getitem) is more liberal, and decides what counts:
- TYPE is a word (ended by whitespace, parentheses or a quote), upper-cased before use.
- Then one space and one or two IMAP astrings: an atom (no whitespace, parentheses or double
  quote, not starting with ``{``), a quoted string (a backslash takes the next byte as is), or
  a literal (never written; counted as malformed here). LF or CR LF ends the line.
- A line that is empty or a lone word is skipped silently; trailing garbage is logged and
  skipped; a malformed name makes the reader give up on the rest of the file.
- sync_client (sync_do_reader) acts on the 14 types above; any other is "Unknown action type".

So a line is *valid* when it is as a writer writes it: a known type with its number of names,
a name bare only where sync_quote_name leaves it bare (no braces or backslash in an atom, which
the reader would take). Anything else is malformed (the backlog's ``malformed``: lines Cyrus
skips, blank ones included, or acts on though no writer writes them so).

Whose entry a line is, read as the reader reads it: the userid of USER..UNSUB lines (the first
name), else the owner of each mailbox named (a RENAME or DOUBLEMAILBOX may name two users, or a
user and a shared mailbox). ``sync_client -u USER`` covers a line only if every name in it is
USER's (``covered_by``). Lines are bytes: names are decoded as UTF-8 (invalid bytes replaced)
only to read userids out of them.
"""

from __future__ import annotations

import re
from typing import Iterable, NamedTuple

# -- the grammar, as data; backlog.VALID_LINE and the parser below are built from it ----------
USER_TYPES = ("USER", "UNUSER", "META", "SIEVE")             # TYPE userid
MAILBOX_TYPES = ("APPEND", "MAILBOX", "UNMAILBOX", "QUOTA", "ANNOTATION")   # TYPE mailbox
TWO_MAILBOX_TYPES = ("DOUBLEMAILBOX", "RENAME")              # TYPE mailbox mailbox
USER_MAILBOX_TYPES = ("SEEN", "SUB", "UNSUB")                # TYPE userid mailbox
ONE_NAME = MAILBOX_TYPES + USER_TYPES      # the most frequent first: the regex tries in order
TWO_NAMES = TWO_MAILBOX_TYPES + USER_MAILBOX_TYPES
TYPES = frozenset(ONE_NAME + TWO_NAMES)
DELETED_PREFIX = "DELETED"       # imapd.conf deletedprefix (its default)

_ATOM = rb'[^\s"(){][^\s"()]*'                 # what the reader takes as an atom
_WRITER_ATOM = rb'[^\s"(){}\\]+'                # what a writer leaves bare
_QUOTED = rb'"(?:[^"\\\r\n]|\\[^\r\n])*"'
NAME = rb"(?:%s|%s)" % (_ATOM, _QUOTED)
_WRITER_NAME = rb"(?:%s|%s)" % (_WRITER_ATOM, _QUOTED)
_WORD = rb'[^\s"()]+'

# A whole valid line, for counting many lines in C (re.MULTILINE; the type case-insensitive).
VALID_LINE = re.compile(rb"^(?:(?i:%s) %s|(?i:%s) %s %s)\r?$" % (
    b"|".join(t.encode() for t in ONE_NAME), _WRITER_NAME,
    b"|".join(t.encode() for t in TWO_NAMES), _WRITER_NAME, _WRITER_NAME), re.MULTILINE)
# A line the reader takes apart (any type word, one or two names), for reading names out.
_READABLE = re.compile(rb"(%s) (%s)(?: (%s))?\r?\n?" % (_WORD, NAME, NAME))
_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_WRITER_QUOTES = re.compile(rb"[{}\\]")       # in a name, these make a writer quote it


class Entry(NamedTuple):
    kind: str                   # upper-cased, as sync_client compares it
    args: tuple[str, ...]       # the names, unquoted
    quoted_as_written: bool = True   # no bare name holds what a writer would have quoted

    @property
    def valid(self) -> bool:
        return self.quoted_as_written and (
            (self.kind in ONE_NAME and len(self.args) == 1) or
            (self.kind in TWO_NAMES and len(self.args) == 2))

    def owners(self) -> list[str | None]:
        """Who each name belongs to (None: a shared mailbox); [] for a type Cyrus ignores."""
        if self.kind in USER_TYPES or self.kind in USER_MAILBOX_TYPES:
            return [userid(self.args[0])]
        if self.kind in MAILBOX_TYPES or self.kind in TWO_MAILBOX_TYPES:
            return [mailbox_user(a) for a in self.args]
        return []

    def users(self) -> set[str]:
        return {u for u in self.owners() if u is not None}

    def covered_by(self, user: str) -> bool:
        """Does ``sync_client -u user`` do everything this line asks for?"""
        owners = self.owners()
        return bool(owners) and all(u == user for u in owners)


def parse(line: bytes) -> Entry | None:
    """The entry a line holds, as Cyrus's reader takes it apart; None if the reader skips it
    (blank, a lone word, garbage). ``Entry.valid`` says whether it is as a writer writes it."""
    m = _READABLE.fullmatch(line)
    if m is None:
        return None
    names = [a for a in m.group(2, 3) if a is not None]
    return Entry(m[1].decode("ascii", "replace").upper(), tuple(_unquote(a) for a in names),
                 not any(a[:1] != b'"' and _WRITER_QUOTES.search(a) for a in names))


def _unquote(name: bytes) -> str:
    if name[:1] == b'"':
        name = _ESCAPE.sub(rb"\1", name[1:-1])
    return name.decode("utf-8", "replace")


def line_users(line: bytes) -> set[str]:
    """Userids an entry belongs to (a RENAME or DOUBLEMAILBOX may name two)."""
    entry = parse(line)
    return entry.users() if entry is not None else set()


def users_of(lines: Iterable[bytes]) -> set[str]:
    found: set[str] = set()
    for line in set(lines):          # logs repeat the same lines: parse each once
        found |= line_users(line)
    return found


def count_lines(data: bytes) -> tuple[int, int]:
    """(valid, malformed) among the complete lines of ``data`` (which ends with a newline)."""
    total = data.count(b"\n")
    # subn counts matches in C without building a list: cheap even for a million lines.
    _, valid = VALID_LINE.subn(b"", data)
    return valid, total - valid


def userid(name: str) -> str:
    """A userid as written in USER..UNSUB lines (a "^" stands for a "." in old logs)."""
    return name.replace("^", ".")


def mailbox_user(name: str, deleted_prefix: str = DELETED_PREFIX) -> str | None:
    """The userid owning an internal mailbox name, as mbname_from_intname reads it:
    user.bob.Sent -> bob, example.com!user.bob -> bob@example.com, user.john^doe -> john.doe,
    DELETED.user.bob.Sent.5F3A1B2C -> bob; None for a shared mailbox. (Cyrus also drops a
    domain equal to imapd.conf's defaultdomain; internal names in it carry none anyway.)"""
    domain, sep, rest = name.partition("!")
    if not sep:
        domain, rest = "", name
    boxes = [b for b in rest.split(".") if b]       # strtok: empty parts vanish
    if len(boxes) > 2 and boxes[0] == deleted_prefix:
        boxes = boxes[1:-1]                         # the prefix and the hex time of deletion
    if len(boxes) < 2 or boxes[0] != "user":
        return None
    local = boxes[1].replace("^", ".")
    return f"{local}@{domain}" if domain else local


def mailbox_key(name: str, internal: bool) -> tuple[str, ...]:
    """A mailbox's two spellings made one: Cyrus's internal 'example.com!user.bob.Sent' (a dot
    in a name written '^') and the admin's 'user.bob.Sent@example.com' (or 'user/bob/Sent'
    with unixhierarchysep) both give ('example.com', 'user', 'bob', 'Sent')."""
    if internal:
        domain, sep, rest = name.partition("!")      # the domain ends at the first '!'
        if not sep:
            domain, rest = "", name
        return (domain, *(p.replace("^", ".") for p in rest.split(".")))
    local, _, domain = name.rpartition("@") if "@" in name else (name, "", "")
    delim = local[4:5] if local.startswith("user") and len(local) > 4 else "."
    return (domain, *local.split(delim))


def needle(user: str) -> bytes | None:
    """A byte string that every line naming ``user`` and holding no backslash holds, for
    finding candidate lines at C speed (``parse`` then decides; lines with a backslash must be
    candidates too: a quoted name may escape any byte): the longest piece of its local part
    that no spelling of the name changes (not "." or "^", which swap, nor what quoting escapes,
    nor bytes that were not UTF-8). None when there is no such piece: every line is a
    candidate then."""
    local = user.rsplit("@", 1)[0]
    piece = max(re.split(r'[.^\\"\ufffd]', local), key=len)
    return piece.encode() if piece else None
