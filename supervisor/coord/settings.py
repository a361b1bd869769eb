"""The ``coordination:`` section of the config: where etcd is, which pair this host is in.

Pure data and its strict reader; nothing here talks to etcd, so parsing a config never loads
the client (the idle daemon without coordination stays as light as before).
"""

from __future__ import annotations

import re
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..configread import parse_duration, show_duration

# A pair name is part of etcd keys and of journal fields: the same alphabet as a link name.
PAIR_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# A host's name in the fleet: what `switchover --to` takes and `fleet status` shows.
MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PREFIX = re.compile(r"^/[A-Za-z0-9_./-]{0,200}$")
TTL_RANGE = (5.0, 600.0)          # seconds; an etcd lease TTL is whole seconds
TIMEOUT_RANGE = (0.1, 30.0)


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: tuple[str, ...] = ()
    prefix: str = "/syncwarden"
    ca: Path | None = None          # None: the system's CAs (https endpoints only)
    cert: Path | None = None        # client certificate and key, both or neither
    key: Path | None = None
    timeout: float = 2.0            # one request; the coordinator runs in its own thread


@dataclass(frozen=True)
class CoordinationSettings:
    etcd: EtcdSettings
    pair: str
    name: str                       # this host's name in the pair (default: the host name)
    # The lease of the master key and the registry entry: how long a dead master's key stays
    # taken, and what bounds an etcd outage the master rides out (authority.py: 90 s - 18 s
    # of guard - 5 s between renewals = 67 s, "etcd down for a minute" with room to spare).
    ttl: float = 90.0


def _endpoint(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    url = urllib.parse.urlsplit(value.strip())
    try:
        port = url.port
    except ValueError:
        return None
    if url.scheme not in ("http", "https") or not url.hostname or port is None \
            or url.path not in ("", "/") or url.query or url.fragment:
        return None
    return f"{url.scheme}://{url.netloc}"


def read(r, data: Any, path: str = "coordination") -> CoordinationSettings | None:
    """The settings, or None when absent; problems go to ``r`` (config._Reader) with paths."""
    if data is None:
        return None
    c = r.section(data, path, ("etcd", "pair", "name", "ttl"))
    if not isinstance(data, dict):
        return None
    e = r.section(c.get("etcd"), f"{path}.etcd",
                  ("endpoints", "prefix", "ca", "cert", "key", "timeout"))
    values: dict[str, Any] = {}
    raw = e.get("endpoints")
    if "etcd" not in c or raw is None:
        r.problem(f"{path}.etcd.endpoints", "required: a list of etcd client URLs such as"
                  " http://10.0.0.5:2379")
    elif not isinstance(raw, list) or not raw:
        r.problem(f"{path}.etcd.endpoints", "expected a non-empty list of URLs, got"
                  f" {_show(raw)}")
    else:
        urls = []
        for i, item in enumerate(raw):
            url = _endpoint(item)
            if url is None:
                r.problem(f"{path}.etcd.endpoints[{i}]", "expected http://HOST:PORT or"
                          f" https://HOST:PORT, got {_show(item)}")
            else:
                urls.append(url)
        values["endpoints"] = tuple(urls)
    if "prefix" in e:
        p = e["prefix"]
        if not isinstance(p, str) or not PREFIX.match(p) or "//" in p:
            r.problem(f"{path}.etcd.prefix", "expected a key prefix such as /syncwarden"
                      f" (starting with /, letters, digits, _ . - /), got {_show(p)}")
        else:
            values["prefix"] = p.rstrip("/") or "/"
    for key in ("ca", "cert", "key"):
        if key in e:
            got = r.path(f"{path}.etcd.{key}", e[key])
            if isinstance(got, Path):
                values[key] = got
    if ("cert" in values) != ("key" in values):
        r.problem(f"{path}.etcd.{'key' if 'cert' in values else 'cert'}",
                  "required with the other: a client certificate and its key go together")
    if values.get("endpoints") and any(u.startswith("http:") for u in values["endpoints"]) \
            and any(k in values for k in ("ca", "cert")):
        r.problem(f"{path}.etcd.endpoints", "TLS files are given but an endpoint is http://:"
                  " use https:// for every endpoint")
    if "timeout" in e:
        t = _duration(r, f"{path}.etcd.timeout", e["timeout"], TIMEOUT_RANGE)
        if isinstance(t, float):
            values["timeout"] = t
    settings: dict[str, Any] = {}
    if "pair" not in c:
        r.problem(f"{path}.pair", "required: the name of the pair this host belongs to")
    elif not isinstance(c["pair"], str) or not PAIR_NAME.match(c["pair"]):
        r.problem(f"{path}.pair", "expected 1-64 of a-z 0-9 _ - starting with a letter or"
                  f" digit, got {_show(c['pair'])}")
    else:
        settings["pair"] = c["pair"]
    name = c.get("name", socket.gethostname().split(".")[0])
    if not isinstance(name, str) or not MEMBER_NAME.match(name):
        r.problem(f"{path}.name", "expected a host name (1-64 of A-Z a-z 0-9 _ . -), got"
                  f" {_show(name)}")
    else:
        settings["name"] = name
    if "ttl" in c:
        t = _duration(r, f"{path}.ttl", c["ttl"], TTL_RANGE)
        if isinstance(t, float):
            settings["ttl"] = t
    if len(settings) < 2 or "endpoints" not in values:
        return None
    return CoordinationSettings(etcd=EtcdSettings(**values), **settings)


def file_problems(c: CoordinationSettings, path: str = "coordination.etcd") -> list[str]:
    """The TLS files as the daemon will load them: missing, unreadable or not PEM. Checked at
    start (a problem refuses the start, as a config error does) and by check-config."""
    import ssl

    out = []
    e = c.etcd
    for key in ("ca", "cert", "key"):
        f = getattr(e, key)
        if f is not None and not (f.is_file() and _readable(f)):
            out.append(f"{path}.{key}: {f} is not a readable file")
    if out or not any(u.startswith("https:") for u in e.endpoints):
        return out
    try:
        ctx = ssl.create_default_context(cafile=str(e.ca) if e.ca else None)
        if e.cert:
            ctx.load_cert_chain(str(e.cert), str(e.key))
    except (ssl.SSLError, OSError, ValueError) as exc:
        out.append(f"{path}: the TLS files do not load: {exc}")
    return out


def _readable(f: Path) -> bool:
    try:
        with open(f, "rb"):
            return True
    except OSError:
        return False


def _duration(r, path: str, value: Any, bounds: tuple[float, float]):
    seconds = parse_duration(value)
    lo, hi = bounds
    if seconds is None or not lo <= seconds <= hi:
        r.problem(path, f"expected a duration from {show_duration(lo)} to {show_duration(hi)},"
                  f" got {_show(value)}")
        return None
    return float(seconds)


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
