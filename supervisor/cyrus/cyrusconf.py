"""Reading cyrus.conf, the Cyrus master's own configuration, as master/masterconf.c does.

Only the entries are read (name, line, ``key=value`` arguments), from the sections master runs
programs from: START, SERVICES, EVENTS and DAEMON. What the programs are is for the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SECTIONS = ("START", "SERVICES", "EVENTS", "DAEMON")


@dataclass(frozen=True)
class MasterEntry:
    section: str
    name: str
    line: int
    args: dict


def master_entries(text: str) -> list[MasterEntry]:
    """cyrus.conf's START, SERVICES, EVENTS and DAEMON entries, read as master reads them."""
    lines = text.splitlines()
    return [e for section in SECTIONS for e in _section(lines, section)]


def _section(lines: list[str], section: str) -> list[MasterEntry]:
    # masterconf_getsection(): '#' starts a comment anywhere; a section opens at brace level 0
    # with its name (first letter as written, the rest in any case); only the first counts.
    level, i = 0, 0
    while i < len(lines):
        p = lines[i].split("#", 1)[0].lstrip()
        i += 1
        if not p:
            continue
        if level == 0 and p[0] == section[0] and p[:len(section)].upper() == section \
                and not p[len(section):len(section) + 1].isalnum():
            level += p.count("{") - p.count("}")
            if level == 1:
                return _entries(lines, i, section)
            continue
        level += p.count("{") - p.count("}")
    return []


def _entries(lines: list[str], i: int, section: str) -> list[MasterEntry]:
    # process_section(): "name key=value key="quoted value" ..." up to a line starting with '}'.
    out = []
    for lineno in range(i + 1, len(lines) + 1):
        p = lines[lineno - 1].split("#", 1)[0].lstrip()
        if not p:
            continue
        if p[0] == "}":
            break
        m = re.match(r"([A-Za-z0-9]+)(?:\s+(.*))?$", p)
        args = _args(m.group(2) or "") if m else None
        if args is not None:           # master refuses a malformed line; so do we, silently
            out.append(MasterEntry(section, m.group(1), lineno, args))
    return out


def _args(text: str) -> dict | None:
    args = {}
    for m in re.finditer(r'\s*(?:([A-Za-z0-9]+)=(?:"([^"]*)"|(\S*))|(\S+))', text):
        if m.group(4) is not None:
            return None
        args[m.group(1)] = m.group(2) if m.group(2) is not None else m.group(3)
    return args
