"""Parsing Cyrus's IMAP answers as imaplib hands them over: pure functions, tested with
recorded responses (imaplib leaves responses as bytes, and splits them at each literal).

The answers come from a server, so they are input like any other: every function here returns
a result or raises ParseError, whatever the bytes, in time linear in their length (one regular
expression scan per piece, no backtracking that can explode, nesting depth bounded).
"""

from __future__ import annotations

import re

from .compare import Message

MAX_DEPTH = 32              # a FETCH answer nests 3 deep; BODYSTRUCTURE, which we never ask, ~8
MAX_DIGITS = 20             # 2**64 has 20 digits; every IMAP number fits in 64 bits


class ParseError(Exception):
    """An answer that is not what the protocol (or Cyrus) says it is; the message says how."""


def quote(name: str) -> str:
    """An IMAP quoted string (imaplib passes arguments through as they are)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def number(raw, what: str) -> int:
    """An IMAP number (RFC 3501 number / number64), or ParseError naming ``what``."""
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str) or not raw.isascii() or not raw.isdigit() \
            or len(raw) > MAX_DIGITS:
        raise ParseError(f"{what}: expected a number, got {_show(raw)}")
    return int(raw)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.S)
_LIST = re.compile(rb'\((?P<flags>[^)]*)\) (?P<delim>"(?:\\.|[^"\\])"|NIL) (?P<name>.*)', re.S)
_LITERAL_HEAD = re.compile(rb"\{(\d{1,20})\}\Z")


def _unquote(raw: bytes) -> str:
    raw = raw.strip()
    if raw.startswith(b'"'):
        m = _QUOTED.fullmatch(raw)
        if not m:
            raise ParseError(f"bad quoted string {_show(raw)}")
        raw = re.sub(rb"\\(.)", rb"\1", m.group(1), flags=re.S)
    return raw.decode("utf-8", "surrogateescape")


def _literal_piece(item) -> tuple[bytes, bytes]:
    """imaplib's (line up to and including "{N}", the N bytes) -> (line without "{N}", bytes)."""
    if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes)
            and isinstance(item[1], bytes)):
        raise ParseError(f"expected imaplib's (line, literal) pair, got {_show(item)}")
    head, literal = item
    m = _LITERAL_HEAD.search(head)
    if not m:
        raise ParseError(f"literal without a {{size}} before it: {_show(head)}")
    if int(m.group(1)) != len(literal):
        raise ParseError(f"literal of {len(literal)} bytes announced as {m.group(0)!r}")
    return head[:m.start()], literal


def parse_list(item) -> tuple[set[str], str | None, str] | None:
    """One LIST response (bytes, or imaplib's (head, literal) tuple) -> (flags, delim, name);
    None for a line that is not a LIST answer at all."""
    if item is None:
        return None
    if isinstance(item, tuple):           # name sent as a literal
        head, literal = _literal_piece(item)
        m = _LIST.fullmatch(head + b'""')
        name = literal.decode("utf-8", "surrogateescape")
    elif isinstance(item, bytes):
        m = _LIST.fullmatch(item)
        name = _unquote(m.group("name")) if m else ""
    else:
        raise ParseError(f"LIST: expected bytes, got {_show(item)}")
    if not m:
        return None
    delim = None if m.group("delim") == b"NIL" else _unquote(m.group("delim"))
    flags = {f.lower() for f in m.group("flags").decode("utf-8", "surrogateescape").split()}
    return flags, delim, name


def _joined(data) -> bytes:
    if not isinstance(data, (list, tuple)):
        raise ParseError(f"expected a list of answers, got {_show(data)}")
    out = []
    for x in data:
        if isinstance(x, tuple):
            out.append(_literal_piece(x)[1])
        elif isinstance(x, bytes):
            out.append(x)
        elif x is not None:
            raise ParseError(f"expected bytes, got {_show(x)}")
    return b"".join(out)


_SYNCCRC = re.compile(rb'"/shared/vendor/cmu/cyrus-imapd/synccrcs" "(\d{1,20} \d{1,20})"')
# RFC 8474 objectid characters only: anything else is 3.6.1's garbage, not an id.
_MAILBOXID = re.compile(rb"MAILBOXID \(([A-Za-z0-9_-]{1,255})\)")
_ANY_MAILBOXID = re.compile(rb" ?MAILBOXID \([^)]*\)")
_COUNTER = re.compile(rb"\b(MESSAGES|UIDNEXT|UIDVALIDITY|HIGHESTMODSEQ) (\d+)")


def parse_status(data: list) -> dict[str, int | str]:
    """The items of a STATUS answer: numbers as int, MAILBOXID as its string; and the value of
    a synccrcs METADATA answer as "synccrc". (Called once per mailbox and answer: a survey of
    1,000 mailboxes parses 3,000 lines, so the patterns are compiled once.)"""
    raw = _joined(data)
    out: dict[str, int | str] = {}
    crc = _SYNCCRC.search(raw)
    if crc:
        return {"synccrc": crc.group(1).decode()}
    mid = _MAILBOXID.search(raw)
    if mid:
        out["mailboxid"] = mid.group(1).decode("ascii")
    if b"MAILBOXID" in raw:
        raw = _ANY_MAILBOXID.sub(b"", raw)
    items = raw[raw.rfind(b"("):]
    for key, value in _COUNTER.findall(items):
        out[key.decode().lower()] = number(value, key.decode())
    return out


# One token at a time: blanks, "(", ")", a quoted string, or an atom (anything else up to the
# next delimiter). A '"' that is not closed within its piece matches nothing: ParseError.
_TOKEN = re.compile(rb'[ \r\n]+|(\()|(\))|"((?:[^"\\]|\\.)*)"|([^ ()"\r\n]+)', re.S)


def _pieces(data):
    """imaplib's FETCH data -> one list of pieces per response: text, literal, text, ...

    imaplib stores a response with literals as one (line, literal) tuple per literal followed
    by the rest of the line as bytes, so a response ends at the first bytes item."""
    if not isinstance(data, (list, tuple)):
        raise ParseError(f"expected a list of answers, got {_show(data)}")
    pieces: list = []
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            head, literal = _literal_piece(item)
            pieces += [head, _Literal(literal)]
        elif isinstance(item, bytes):
            yield pieces + [item]
            pieces = []
        else:
            raise ParseError(f"expected bytes, got {_show(item)}")
    if pieces:
        raise ParseError("answer cut after a literal")


class _Literal(bytes):
    """A literal's bytes, told apart from the text around it."""


def _tree(pieces: list) -> list:
    """Atoms and quoted strings as str, literals as bytes, parentheses as nested lists."""
    out: list = []
    stack = [out]
    for piece in pieces:
        if isinstance(piece, _Literal):
            stack[-1].append(bytes(piece))
            continue
        pos, end = 0, len(piece)
        while pos < end:
            m = _TOKEN.match(piece, pos)
            if m is None:
                raise ParseError(f"unterminated quoted string at {_show(piece[pos:pos + 40])}")
            pos = m.end()
            if m.group(1):
                if len(stack) > MAX_DEPTH:
                    raise ParseError(f"nested deeper than {MAX_DEPTH}")
                stack[-1].append([])
                stack.append(stack[-1][-1])
            elif m.group(2):
                if len(stack) == 1:
                    raise ParseError("')' without '('")
                stack.pop()
            elif m.group(3) is not None:
                text = re.sub(rb"\\(.)", rb"\1", m.group(3), flags=re.S)
                stack[-1].append(text.decode("utf-8", "surrogateescape"))
            elif m.group(4):
                stack[-1].append(m.group(4).decode("utf-8", "surrogateescape"))
    if len(stack) != 1:
        raise ParseError("'(' without ')'")
    return out


def parse_fetch(data: list) -> list[dict]:
    """imaplib's FETCH data -> one dict per message: {"UID": 5, "FLAGS": [...], "BODY[]": b...}."""
    out = []
    for pieces in _pieces(data):
        tree = _tree(pieces)
        if len(tree) != 2 or not isinstance(tree[1], list):
            raise ParseError(f"FETCH: expected 'seq (items)', got {_show(tree)}")
        out.append(_fetch_items(number(tree[0], "FETCH sequence number"), tree[1]))
    return out


def _fetch_items(seq: int, items: list) -> dict:
    if len(items) % 2:
        raise ParseError(f"FETCH {seq}: odd number of items")
    msg: dict = {"SEQ": seq}
    for key, value in zip(items[0::2], items[1::2]):
        if not isinstance(key, str):
            raise ParseError(f"FETCH {seq}: expected an item name, got {_show(key)}")
        key = key.upper()
        if key in ("UID", "RFC822.SIZE"):
            value = number(value, f"FETCH {seq} {key}")
        elif key == "MODSEQ":
            if not (isinstance(value, list) and len(value) == 1):
                raise ParseError(f"FETCH {seq} MODSEQ: expected (number), got {_show(value)}")
            value = number(value[0], f"FETCH {seq} MODSEQ")
        elif key == "FLAGS":
            if not (isinstance(value, list) and all(isinstance(f, str) for f in value)):
                raise ParseError(f"FETCH {seq} FLAGS: expected a list of flags,"
                                 f" got {_show(value)}")
        msg[key] = value
    return msg


def message_from(fetched: dict) -> Message:
    """A parse_fetch() dict with a UID -> the Message the comparison uses."""
    uid = fetched.get("UID")
    if not isinstance(uid, int):
        raise ParseError(f"FETCH: no UID in {_show(fetched)}")
    guid = fetched.get("DIGEST.SHA1", "")
    if not isinstance(guid, str):
        raise ParseError(f"FETCH UID {uid}: DIGEST.SHA1 is not an atom: {_show(guid)}")
    flags = frozenset(f for f in fetched.get("FLAGS", []) if f.lower() != "\\recent")
    return Message(uid, guid.lower(), flags, fetched.get("MODSEQ", 0))


def userid_of(name: str, delim: str) -> str | None:
    """'user.bob.Sent' -> 'bob'; 'user.bob.Sent@example.com' -> 'bob@example.com'."""
    if not delim:
        return None
    local, at, domain = name.rpartition("@") if "@" in name else (name, "", "")
    parts = local.split(delim)
    if len(parts) < 2 or parts[0] != "user" or not parts[1]:
        return None
    return parts[1] + (f"@{domain}" if at else "")


def split_name(line: bytes) -> tuple[str, bytes] | None:
    """b'"INBOX.My Box" (MESSAGES 2)' -> ('INBOX.My Box', b'(MESSAGES 2)')."""
    if not isinstance(line, bytes):
        raise ParseError(f"expected bytes, got {_show(line)}")
    if line.startswith(b'"'):
        m = re.match(rb'"((?:[^"\\]|\\.)*)" (.*)', line, re.S)
        return (_unquote(b'"' + m.group(1) + b'"'), m.group(2)) if m else None
    name, sep, rest = line.partition(b" ")
    return (name.decode("utf-8", "surrogateescape"), rest) if sep else None


def by_name(lines: list, parse) -> dict[str, dict]:
    """Untagged answers about many mailboxes (LIST-STATUS) -> {mailbox name: parse([rest])}.
    Lines whose name came as a literal are left out: the caller asks for those one by one."""
    if not isinstance(lines, (list, tuple)):
        raise ParseError(f"expected a list of answers, got {_show(lines)}")
    out = {}
    for line in lines:
        if not isinstance(line, bytes):
            continue
        split = split_name(line)
        if split:
            out[split[0]] = parse([split[1]])
    return out
