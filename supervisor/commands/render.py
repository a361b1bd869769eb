"""Plain-text rendering of command results (JSON output is the data itself)."""

from __future__ import annotations

import datetime

from ..timefmt import human_duration


def _ago(iso: str | None, now: float) -> str:
    if not iso:
        return "-"
    then = datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()
    return f"{human_duration(now - then)} ago"


def status_table(doc: dict, now: float) -> str:
    rows = [("LINK", "STATE", "SINCE", "QUEUED", "OLDEST", "REPLICA", "WORKER")]
    for link in doc.get("links", []):
        r, b, w = link["replica"], link["backlog"], link["worker"]
        reach = {True: "up", False: "unreachable", None: "?"}[r.get("reachable")]
        worker = {True: "running", False: "stopped", None: "?"}[w.get("active")]
        rows.append((link["name"], link["state"] or "?", _ago(link.get("since"), now),
                     str(b["entries"]) + ("+log-run" if b.get("log_run") else ""),
                     human_duration(b["oldest_age_seconds"]) if b["entries"] else "-",
                     f"{r['host']}:{r['port']} {reach}", worker))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(row, widths)).rstrip() for row in rows]
    for link in doc.get("links", []):
        lines.append(f"{link['name']}: {link['reason']}")
        if link.get("quarantined"):
            lines.append(f"{link['name']}: {link['quarantined']} user(s) quarantined"
                         " (syncwarden quarantine list)")
        if link["backlog"].get("malformed"):
            lines.append(f"{link['name']}: {link['backlog']['malformed']} malformed sync log"
                         " line(s) (Cyrus skips them)")
    lines += [f"damaged state: {p}" for p in doc.get("problems", [])]
    for stray in doc.get("unsupervised_channels") or []:
        name = f"channel {stray['channel']}" if stray["channel"] else "the default channel"
        lines.append(f"unsupervised: {name}: {stray['backlog']['entries']} entries in"
                     f" {stray['log']}, read by nothing (it grows without bound; see"
                     " syncwarden check-config)")
    head = f"syncwarden {doc.get('version', '?')}, instance {doc.get('instance')}," \
           f" role {doc.get('role', '?')}"
    return "\n".join([head] + lines)


def quarantine_table(rows: list[dict]) -> str:
    if not rows:
        return "no quarantined users"
    out = [("LINK", "USER", "SINCE", "ATTEMPTS", "ENTRIES", "NEXT RETRY")]
    for q in rows:
        out.append((q["link"], q["user"], q["since"], str(q["attempts"]), str(q["entries"]),
                    q["next_retry"]))
    widths = [max(len(r[i]) for r in out) for i in range(len(out[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in out]
    lines += [f"{q['link']}/{q['user']}: {q['error']}" for q in rows]
    return "\n".join(lines)
