"""Where syncwarden keeps things in etcd, and what each value holds: the one place that knows.

    PREFIX/pairs/PAIR/master          {"host", "instance", "since"}   under the holder's lease
    PREFIX/pairs/PAIR/handover        {"from", "to", "position", "at"} no lease: outlives both
    PREFIX/pairs/PAIR/switchover      {"id", "from", "to", "stop_cyrus", "phase", "detail", ...}
    PREFIX/pairs/PAIR/members/HOST    the registry entry (registry.py)  under HOST's lease

The master key is the role authority: only its holder pushes. A switchover releases it by
deleting it and writing the handover in one transaction; only the handover's target (or, after
``switchover --to`` names another, that one) may take it while the handover exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

PHASES = ("requested", "released", "done", "refused")


@dataclass(frozen=True)
class Keys:
    prefix: str
    pair: str

    @property
    def pair_dir(self) -> str:
        return f"{self.prefix.rstrip('/')}/pairs/{self.pair}/"

    @property
    def master(self) -> str:
        return self.pair_dir + "master"

    @property
    def handover(self) -> str:
        return self.pair_dir + "handover"

    @property
    def switchover(self) -> str:
        return self.pair_dir + "switchover"

    def member(self, name: str) -> str:
        return self.pair_dir + "members/" + name


def fleet_dir(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/pairs/"


def split(prefix: str, key: str) -> tuple[str, str] | None:
    """(pair, the rest) of a key under fleet_dir(prefix)."""
    rest = key[len(fleet_dir(prefix)):]
    pair, sep, tail = rest.partition("/")
    return (pair, tail) if sep and pair else None


def encode(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True).encode()


def decode(raw: bytes) -> dict:
    """A value as a dict; {} when it is not one (written by hand, damaged): read as nothing."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}
