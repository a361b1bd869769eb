"""The host's replication role, persisted under /var/lib/syncwarden, and what a change implies.

A role set by an operator command (promote, demote, failover) outranks ``role:`` in the config:
it records what actually happened to this host, and a demoted master must never start pushing
to its former replica because someone restarted it with an old config (SPEC guarantee 5).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..cyrus.channel import Channel
from ..cyrus.imapdconf import ImapdConf
from ..state import atomic_write

log = logging.getLogger(__name__)

ROLES = ("master", "replica")


@dataclass(frozen=True)
class RoleRecord:
    role: str
    since: float
    by: str
    # Set when the file could not be read: the role is then the safe guess, not a record.
    problem: str | None = None


class RoleStore:
    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> RoleRecord | None:
        """The persisted role; a damaged file reads as ``replica``, the safe side: this host
        then starts no worker (every link held) until an operator sets the role again."""
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or data.get("role") not in ROLES:
                raise ValueError(f"role must be one of {', '.join(ROLES)}")
            since = data.get("since", 0)
            if isinstance(since, bool) or not isinstance(since, (int, float)) \
                    or not -1e12 < since < 1e12:     # false for nan and inf too
                since = 0.0
            return RoleRecord(data["role"], float(since), str(data.get("by", "")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as exc:
            why = getattr(exc, "strerror", None) or exc
            return RoleRecord("replica", 0.0, f"unreadable {self.path} ({why}): assumed replica",
                              problem=f"{self.path} is unreadable ({why}): starting as a replica"
                              " with every link held; `syncwarden promote` or `syncwarden"
                              " demote` records the role again")

    def save(self, record: RoleRecord) -> None:
        doc = {"role": record.role, "since": record.since, "by": record.by}
        atomic_write(self.path, json.dumps(doc).encode() + b"\n")


def effective_role(config_role: str, store: RoleStore) -> tuple[str, str]:
    """(role, where it comes from)."""
    record = store.load()
    if record is None:
        return config_role, "config"
    return record.role, f"{store.path} ({record.by})"


def sync_cache_paths(imapd: ImapdConf, links) -> list[Path]:
    """Cyrus's replica-state caches (sync_cache_db_path, per channel or global), if set."""
    paths = {imapd.get("sync_cache_db_path", link) for link in links}
    return sorted(Path(p) for p in paths if p)


def clear_sync_caches(imapd: ImapdConf, links) -> list[str]:
    """The cache describes the old replica's state; stale, it would make sync_client skip work."""
    done = []
    for path in sync_cache_paths(imapd, links):
        try:
            os.unlink(path)
            done.append(f"removed sync cache {path}")
        except FileNotFoundError:
            pass
    return done


def leftover_backlogs(imapd: ImapdConf, links) -> dict[str, list[str]]:
    """Sync log files written before a role change: they target the host's former peer."""
    found = {}
    for link in links:
        files = Channel(imapd.sync_dir(link)).existing()
        if files:
            found[link] = [str(f) for f in files]
    return found


class RoleControl:
    """This host's role as the daemon (or a command, without a daemon) sees and changes it.

    Usable on its own: ``promote``/``demote`` without a running daemon build one of these from
    the config and the state files, not a whole supervisor.
    """

    def __init__(self, config_role: str, store: RoleStore, holds, imapd: ImapdConf, journal,
                 clock):
        self.store, self.holds, self.imapd = store, holds, imapd
        self.journal, self.clock = journal, clock
        self.role, self.source = config_role, "config"
        self.configure(config_role, imapd)

    def configure(self, config_role: str, imapd: ImapdConf) -> None:
        """(Re)read the role: a persisted one outranks the config's."""
        self.imapd = imapd
        self.role, self.source = effective_role(config_role, self.store)

    @property
    def is_master(self) -> bool:
        return self.role == "master"

    def change(self, new: str, by: str, links) -> list[str]:
        """promote/demote: persist the role; clear what described the old peer. ``links`` are
        the link names whose sync caches and backlogs the change concerns."""
        if new not in ROLES:
            raise ValueError(f"unknown role {new!r} (one of {', '.join(ROLES)})")
        if new == self.role:
            return [f"already {new}"]
        old = self.role
        self.store.save(RoleRecord(new, self.clock.wall(), by))
        self.role, self.source = new, f"{self.store.path} ({by})"
        done = [f"role {old} -> {new}"] + clear_sync_caches(self.imapd, links)
        if new == "master":
            # A backlog from before the change was meant for the former peer: replaying it
            # needs the operator's explicit word, which is `syncwarden resume LINK`.
            for link, files in leftover_backlogs(self.imapd, links).items():
                self.holds.set(link, True)
                done.append(f"{link}: held, because {' and '.join(files)} predate this"
                            f" promotion; check them, then `syncwarden resume {link}`")
        self.journal.send(f"role changed from {old} to {new} ({by}): " + "; ".join(done[1:]),
                          "notice", "role-changed", SYNCWARDEN_ROLE=new,
                          SYNCWARDEN_OLD_ROLE=old)
        return done
