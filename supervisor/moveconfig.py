"""The ``stores:`` and ``move:`` sections of the config (user moves, docs/moves.md).

Kept apart from config.py, which owns the other sections: these readers take the config's
``Reader`` (configread.py) and its endpoint reader, so every problem still lands in the one
report with its path.

A store is another Cyrus master a user can be moved to. syncwarden reaches it three ways:
- sync: a Cyrus channel in *this* instance's imapd.conf (``CHANNEL_sync_host``, ``_sync_port``,
  ``_sync_authname``, ``_sync_password``), used with ``sync_client -n CHANNEL -u USER``;
- admin: the store's own imapd.conf on this host, for ``cyr_deny`` there and for the syncs from
  the store to its own replicas (its ``sync_log_channels``);
- IMAP: an endpoint the deep check reads the moved user from (logins from check.credentials,
  keys ``STORE_user`` / ``STORE_password`` or the shared ``user`` / ``password``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

# A store name is a credentials side and a file name in the moves' state; a channel name is a
# Cyrus channel (the same rule as a link name, config.LINK_NAME).
STORE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class StoreSettings:
    name: str
    channel: str                 # the Cyrus channel in this instance's imapd.conf
    imapd_conf: Path             # the store's own imapd.conf on this host
    imap: object                 # config.ImapEndpoint


@dataclass(frozen=True)
class MoveSettings:
    # Run (as root, with /bin/sh) to switch the user's routing: "$1" user, "$2" source store,
    # "$3" target store. Root because routing changes (postmap, a proxy map, an MTA reload)
    # need it; the command is the admin's own, from a root-owned file. None: `move` refuses.
    switch_hook: str | None = None
    # The longest a user stays locked (cyr_deny on the source) before the switch; a move that
    # has not switched by then rolls back.
    lock_timeout: float = 60.0
    # A cyrus.conf service (an imapd on a loopback port) left out of the lock on both stores:
    # the deep verify reads the locked user through it. imapd ends a denied user's session
    # before every command (imap/imapd.c cmdloop), even one an admin opened as the user, so
    # without it the verify cannot read the user. None: every service is locked.
    verify_service: str | None = None


def read_stores(r, data: Any, endpoint) -> Mapping[str, StoreSettings]:
    """``stores: {NAME: {channel, imapd_conf, imap: {host, port, tls, ca_file}}}``.
    ``endpoint(data, path)`` is config's IMAP endpoint reader."""
    if data is None:
        return MappingProxyType({})
    if not isinstance(data, dict):
        r.problem("stores", "expected a mapping of store names to settings, got a"
                  f" {type(data).__name__}")
        return MappingProxyType({})
    stores = {}
    for name, body in data.items():
        path = f"stores.{name}"
        if not isinstance(name, str) or not STORE_NAME.match(name):
            r.problem(path, "invalid store name: use 1-64 of a-z 0-9 _ - starting with a"
                      " letter or digit")
            continue
        s = r.section(body, path, ("channel", "imapd_conf", "imap"))
        if not isinstance(body, dict):
            continue
        values = r.fill(s, path, {"channel": r.string, "imapd_conf": r.path})
        channel = values.get("channel", name)
        if not STORE_NAME.match(channel):
            r.problem(f"{path}.channel", f"invalid Cyrus channel name {channel!r}: use a-z 0-9"
                      " _ - (imapd.conf lowercases option keys)")
        for key in ("imapd_conf", "imap"):
            if key not in s:
                r.problem(f"{path}.{key}", "required")
        imap = s.get("imap")
        if isinstance(imap, dict) and "host" not in imap:
            r.problem(f"{path}.imap.host", "required")
        stores[name] = StoreSettings(name, channel, values.get("imapd_conf", Path("/")),
                                     endpoint(imap, f"{path}.imap"))
    return MappingProxyType(stores)


SERVICE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def read_move(r, data: Any) -> MoveSettings:
    readers = {"switch_hook": r.string, "lock_timeout": r.duration,
               "verify_service": r.string}
    values = r.fill(r.section(data, "move", tuple(readers)), "move", readers)
    service = values.get("verify_service")
    if service is not None and not SERVICE_NAME.match(service):
        r.problem("move.verify_service", f"expected a cyrus.conf service name such as"
                  f" imapverify (letters, digits, _ -), got {service!r}")
        del values["verify_service"]
    return MoveSettings(**values)
