"""What monitoring is told about a status document: ``status``'s exit code and ``--nagios``.

Both judge the document the daemon answered with (docs/CONTRACT.md "Status JSON"), link by
link, the same way, so that ``status --nagios`` is OK exactly when ``status`` exits 0:

- a link *should be live* when the host is the master and the link is enabled, not held, not
  frozen for a backup and not retired (those, and every link of a replica, are down on
  purpose; a freeze ends by itself at its deadline);
- CRITICAL: a link that should be live is ``down``, or any link is ``quarantined`` (it waits
  for an operator);
- WARNING: a link that should be live is ``catching-up`` or ``draining`` (replication runs but
  is not current), or users are quarantined (held out of the stream; the link flows);
- OK: neither. ``status`` exits 0 for OK and 1 otherwise.

UNKNOWN (no daemon answered, no such link, usage) is decided by the command, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..exits import (NAGIOS_CRITICAL, NAGIOS_NAMES, NAGIOS_OK, NAGIOS_UNKNOWN,
                     NAGIOS_WARNING)


def should_be_live(link: dict, role: str | None) -> bool:
    return (role == "master" and link.get("enabled", True) and not link.get("held", False)
            and not link.get("freeze") and not link.get("retired"))


@dataclass(frozen=True)
class Finding:
    link: str
    level: int          # NAGIOS_WARNING or NAGIOS_CRITICAL
    what: str


def findings(doc: dict) -> list[Finding]:
    """Every reason the document is not OK, link by link (in the document's order)."""
    out = []
    role = doc.get("role")
    for link in doc.get("links", []):
        name, state = link["name"], link.get("state")
        expected = should_be_live(link, role)
        if state == "quarantined":
            out.append(Finding(name, NAGIOS_CRITICAL, f"{name} quarantined: {link['reason']}"))
        elif expected and state == "down":
            out.append(Finding(name, NAGIOS_CRITICAL, f"{name} down: {link['reason']}"))
        elif expected and state in ("catching-up", "draining"):
            b = link["backlog"]
            out.append(Finding(name, NAGIOS_WARNING, f"{name} {state}: {b['entries']} queued,"
                               f" oldest {b['oldest_age_seconds']:.0f}s"))
        if link.get("quarantined"):
            out.append(Finding(name, NAGIOS_WARNING,
                               f"{name}: {link['quarantined']} user(s) quarantined"))
    return out


def level(doc: dict) -> int:
    return max((f.level for f in findings(doc)), default=NAGIOS_OK)


def perfdata(doc: dict) -> str:
    """Per link: state code, backlog entries, oldest pending age, quarantined users."""
    parts = []
    for link in doc.get("links", []):
        n, b = link["name"], link["backlog"]
        code = link.get("state_code")
        if code is not None:
            parts.append(f"{n}_state={code};;;0;4")
        parts.append(f"{n}_backlog={b['entries']};;;0")
        parts.append(f"{n}_oldest_age={_num(b['oldest_age_seconds'])}s;;;0")
        parts.append(f"{n}_quarantined={link.get('quarantined', 0)};;;0")
    return " ".join(parts)


def nagios(doc: dict) -> tuple[int, str]:
    """(exit code, plugin output): one status line with perfdata, then one line per link."""
    found = findings(doc)
    code = max((f.level for f in found), default=NAGIOS_OK)
    links = doc.get("links", [])
    if found:
        head = "; ".join(f.what for f in sorted(found, key=lambda f: -f.level))
    else:
        head = (f"{len(links)} link(s): " + ", ".join(
            f"{x['name']} {x['state']}" for x in links)) if links else "no links"
    lines = [f"SYNCWARDEN {NAGIOS_NAMES[code]} - {_one_line(head)} | {perfdata(doc)}".rstrip(" |")]
    for link in links:
        held = ", held" if link.get("held") else ""
        off = "" if link.get("enabled", True) else ", disabled"
        lines.append(f"{link['name']}: {link['state']}{held}{off}"
                     f" ({_one_line(link['reason'])})")
    lines += [f"damaged state: {_one_line(p)}" for p in doc.get("problems", [])]
    return code, "\n".join(lines)


def unknown(why: str) -> tuple[int, str]:
    return NAGIOS_UNKNOWN, f"SYNCWARDEN UNKNOWN - {_one_line(why)}"


def _num(value: float) -> str:
    """Plain decimal notation (perfdata parsers do not all read 1e+07)."""
    return f"{float(value):.3f}".rstrip("0").rstrip(".")


def _one_line(text: str) -> str:
    # The first line is the plugin's status; '|' would start the perfdata.
    return " ".join(str(text).split()).replace("|", "/")
