"""Parsing Cyrus's IMAP answers as imaplib hands them over: pure functions, tested with
recorded responses (imaplib leaves responses as bytes, and splits them at each literal)."""

from __future__ import annotations

import re

from .compare import Message


def quote(name: str) -> str:
    """An IMAP quoted string (imaplib passes arguments through as they are)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


_LIST = re.compile(rb'^\((?P<flags>[^)]*)\) (?P<delim>"(?:\\.|[^"])"|NIL) (?P<name>.*)$', re.S)


def _unquote(raw: bytes) -> str:
    raw = raw.strip()
    if raw.startswith(b'"') and raw.endswith(b'"'):
        raw = re.sub(rb"\\(.)", rb"\1", raw[1:-1])
    return raw.decode("utf-8", "surrogateescape")


def parse_list(item) -> tuple[set[str], str | None, str] | None:
    """One LIST response (bytes, or imaplib's (head, literal) tuple) -> (flags, delim, name)."""
    if isinstance(item, tuple):           # name sent as a literal
        head, literal = item
        head = re.sub(rb"\{\d+\}$", b"", head)
        m = _LIST.match(head + b'""')
        name = literal.decode("utf-8", "surrogateescape")
    else:
        m = _LIST.match(item or b"")
        name = _unquote(m.group("name")) if m else ""
    if not m:
        return None
    delim = None if m.group("delim") == b"NIL" else _unquote(m.group("delim"))
    flags = {f.lower() for f in m.group("flags").decode().split()}
    return flags, delim, name


def parse_status(data: list) -> dict[str, int | str]:
    """The items of a STATUS answer: numbers as int, MAILBOXID as its string; and the value of
    a synccrcs METADATA answer as "synccrc"."""
    raw = b"".join(x[-1] if isinstance(x, tuple) else (x or b"") for x in data)
    out: dict[str, int | str] = {}
    crc = re.search(rb'"/shared/vendor/cmu/cyrus-imapd/synccrcs" "(\d+ \d+)"', raw)
    if crc:
        return {"synccrc": crc.group(1).decode()}
    # RFC 8474 objectid characters only: anything else is 3.6.1's garbage, not an id.
    mid = re.search(rb"MAILBOXID \(([A-Za-z0-9_-]{1,255})\)", raw)
    if mid:
        out["mailboxid"] = mid.group(1).decode("ascii")
    raw = re.sub(rb" ?MAILBOXID \([^)]*\)", b"", raw)
    items = raw[raw.rfind(b"("):]
    for key, value in re.findall(rb"\b(MESSAGES|UIDNEXT|UIDVALIDITY|HIGHESTMODSEQ) (\d+)", items):
        out[key.decode().lower()] = int(value)
    return out


def _tokens(buf: bytes, literals: list[bytes]):
    """Atoms, quoted strings, literals and parentheses of one response."""
    i, n = 0, len(buf)
    while i < n:
        c = buf[i:i + 1]
        if c in b" \r\n":
            i += 1
        elif c in b"()":
            yield c
            i += 1
        elif c == b'"':
            j = i + 1
            while buf[j:j + 1] != b'"':
                j += 2 if buf[j:j + 1] == b"\\" else 1
            yield ("str", re.sub(rb"\\(.)", rb"\1", buf[i + 1:j]))
            i = j + 1
        elif c == b"\x00":                  # literal placeholder: \0<index>\0
            j = buf.index(b"\x00", i + 1)
            yield ("literal", literals[int(buf[i + 1:j])])
            i = j + 1
        else:
            j = i
            while j < n and buf[j:j + 1] not in b' ()"\x00\r\n':
                j += 1
            yield ("atom", buf[i:j])
            i = j


def _nest(tokens) -> list:
    out: list = []
    stack = [out]
    for tok in tokens:
        if tok == b"(":
            stack.append([])
        elif tok == b")":
            inner = stack.pop()
            stack[-1].append(inner)
        elif tok[0] == "literal":           # message bodies stay bytes
            stack[-1].append(tok[1])
        else:
            stack[-1].append(tok[1].decode("utf-8", "surrogateescape"))
    return out


class _Balance:
    """Parenthesis depth across the pieces of a response, outside quoted strings."""

    def __init__(self):
        self.depth, self.quoted, self.escaped = 0, False, False

    def feed(self, text: bytes) -> None:
        for ch in text:
            if self.quoted:
                if self.escaped:
                    self.escaped = False
                elif ch == 0x5C:            # backslash
                    self.escaped = True
                elif ch == 0x22:            # closing quote
                    self.quoted = False
            elif ch == 0x22:
                self.quoted = True
            elif ch == 0x28:
                self.depth += 1
            elif ch == 0x29:
                self.depth -= 1

    @property
    def balanced(self) -> bool:
        return self.depth <= 0 and not self.quoted


def parse_fetch(data: list) -> list[dict]:
    """imaplib's FETCH data -> one dict per message: {"UID": 5, "FLAGS": [...], "BODY[]": b...}.

    imaplib splits a response at each literal into a (head, literal) tuple followed by the rest
    of the line, so pieces are joined until the parentheses balance."""
    out, buf, literals, balance = [], bytearray(), [], _Balance()
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            head = re.sub(rb"\{\d+\}$", b"", item[0])
            balance.feed(head)
            buf += head + b"\x00%d\x00" % len(literals)
            literals.append(item[1])
        else:
            balance.feed(item)
            buf += item
        if balance.balanced:
            tree = _nest(_tokens(bytes(buf), literals))
            if len(tree) >= 2 and isinstance(tree[1], list):
                out.append(_fetch_items(int(tree[0]), tree[1]))
            buf, literals, balance = bytearray(), [], _Balance()
    return out


def _fetch_items(seq: int, items: list) -> dict:
    msg: dict = {"SEQ": seq}
    for key, value in zip(items[0::2], items[1::2]):
        key = key.upper()
        if key in ("UID", "RFC822.SIZE"):
            value = int(value)
        elif key == "MODSEQ":
            value = int(value[0])
        msg[key] = value
    return msg


def message_from(fetched: dict) -> Message:
    flags = frozenset(f for f in fetched.get("FLAGS", []) if f.lower() != "\\recent")
    guid = fetched.get("DIGEST.SHA1") or ""
    return Message(fetched["UID"], guid.lower(), flags, fetched.get("MODSEQ", 0))


def userid_of(name: str, delim: str) -> str | None:
    """'user.bob.Sent' -> 'bob'; 'user.bob.Sent@example.com' -> 'bob@example.com'."""
    local, at, domain = name.rpartition("@") if "@" in name else (name, "", "")
    parts = local.split(delim)
    if len(parts) < 2 or parts[0] != "user" or not parts[1]:
        return None
    return parts[1] + (f"@{domain}" if at else "")


def split_name(line: bytes) -> tuple[str, bytes] | None:
    """b'"INBOX.My Box" (MESSAGES 2)' -> ('INBOX.My Box', b'(MESSAGES 2)')."""
    if line.startswith(b'"'):
        m = re.match(rb'"((?:[^"\\]|\\.)*)" (.*)$', line, re.S)
        return (_unquote(b'"' + m.group(1) + b'"'), m.group(2)) if m else None
    name, sep, rest = line.partition(b" ")
    return (name.decode("utf-8", "surrogateescape"), rest) if sep else None


def by_name(lines: list, parse) -> dict[str, dict]:
    """Untagged answers about many mailboxes (LIST-STATUS) -> {mailbox name: parse([rest])}.
    Lines whose name came as a literal are left out: the caller asks for those one by one."""
    out = {}
    for line in lines:
        if not isinstance(line, bytes):
            continue
        split = split_name(line)
        if split:
            out[split[0]] = parse([split[1]])
    return out
