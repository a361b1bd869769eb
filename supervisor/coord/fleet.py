"""``syncwarden fleet status``: every pair and host of the fleet, read from etcd directly.

It needs no daemon on the host it runs on, only the ``coordination:`` section of a config.
Each daemon's entry lives under its lease (it vanishes when the host has been gone a TTL) and
carries ``written_at``: an entry not rewritten for longer than its TTL is marked stale (a
daemon that stopped renewing it, or a host whose clock is off).
"""

from __future__ import annotations

from .keys import decode, fleet_dir, split


def read(etcd, prefix: str, now: float) -> dict:
    pairs: dict[str, dict] = {}
    for kv in etcd.get_prefix(fleet_dir(prefix)):
        where = split(prefix, kv.key)
        if where is None:
            continue
        name, rest = where
        pair = pairs.setdefault(name, {"master": None, "switchover": None, "handover": None,
                                       "members": {}})
        doc = decode(kv.value)
        if rest == "master":
            pair["master"] = doc.get("host")
        elif rest in ("switchover", "handover"):
            pair[rest] = doc
        elif rest.startswith("members/"):
            written = doc.get("written_at")
            age = now - written if isinstance(written, (int, float)) else None
            ttl = doc.get("ttl") if isinstance(doc.get("ttl"), (int, float)) else 0
            pair["members"][rest[len("members/"):]] = {
                **doc, "age_seconds": None if age is None else round(age, 1),
                "stale": age is None or age > ttl}
    for pair in pairs.values():
        master = pair["master"]
        pair["master_registered"] = master is None or master in pair["members"]
    return {"prefix": prefix, "pairs": dict(sorted(pairs.items()))}


def render(doc: dict) -> str:
    rows = [("PAIR", "HOST", "ROLE", "KEY", "AGE", "LINKS")]
    for name, pair in doc["pairs"].items():
        master = pair["master"]
        for host, m in sorted(pair["members"].items()):
            links = ", ".join(f"{n} {l.get('state')}" for n, l in (m.get("links") or {}).items())
            age = "?" if m["age_seconds"] is None else f"{m['age_seconds']:.0f}s"
            rows.append((name, host, str(m.get("role", "?")), "master" if host == master
                         else "-", age + (" stale" if m["stale"] else ""), links or "-"))
        if not pair["master_registered"]:
            rows.append((name, master, "?", "master", "gone", "holds the key, no entry"))
        if not pair["members"] and master is None:
            rows.append((name, "-", "-", "-", "-", "no daemon registered"))
        if pair["handover"]:
            h = pair["handover"]
            rows.append((name, str(h.get("to")), "-", "handover", "-",
                         f"released by {h.get('from')}, not taken yet"))
        elif master is None and pair["members"]:
            rows.append((name, "-", "-", "none", "-", "no host holds the master key"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + r[5]
                     for r in rows)
