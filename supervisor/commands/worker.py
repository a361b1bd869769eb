"""``syncwarden worker LINK``: the ExecStart of syncwarden-sync@.service.

It resolves the link from the config, removes a stale shutdown file (one present at start makes
sync_client exit at once without work), then replaces itself with Cyrus's rolling client in the
foreground, so systemd supervises sync_client itself and its syslog lines land in the unit's
journal.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .. import config as configmod
from ..cyrus import imapdconf, layout
from ..cyrus.channel import Channel
from ..cyrus.commands import SyncClient
from ..paths import Instance
from ..systemd.units import parse_qualified, parse_slot

EX_CONFIG = 78


def argv(client: SyncClient, link: str, channel: Channel, mode: str, users: Path) -> list[str]:
    if mode == "once":      # one drain pass over one file (log-run if present, else log)
        return client.one_pass(link)
    if mode == "users":     # full sync of the listed users; exit 1 if any of them failed
        return client.users(link, users)
    if mode == "mailboxes":  # a seed's shared mailboxes, by admin name; exit 1 if one failed
        return client.mailboxes(link, users)
    return client.rolling(link, channel.shutdown)


def main(name: str, config_path: Path | None = None, mode: str = "rolling") -> int:
    instance_name, slot = parse_qualified(name)
    try:
        instance = Instance(instance_name)
        # a seed slot (LINK.seedN, LINK.sharedN) syncs its own list; only with --users
        link, kind = parse_slot(slot) if mode == "users" else (slot, None)
        mode = kind or mode
    except ValueError as exc:
        print(f"worker {name}: {exc}", file=sys.stderr)
        return EX_CONFIG
    path = config_path or instance.config
    try:
        cfg = configmod.load(path)
        cfg = configmod.replace(cfg, cyrus=layout.resolve(cfg.cyrus))
        if link not in cfg.links:
            raise configmod.ConfigError(str(path), [f"links.{link}: no such link"])
        imapd = imapdconf.load(cfg.cyrus.imapd_conf)
        sync_dir = imapd.sync_dir(link)
    except configmod.ConfigError as exc:
        print(exc.report().replace("\n", ";"), file=sys.stderr)
        return EX_CONFIG
    except imapdconf.ImapdConfError as exc:
        print(f"{path}: cyrus.imapd_conf: {exc}", file=sys.stderr)
        return EX_CONFIG
    channel = Channel(sync_dir)
    # Only rolling clients (-R, -R -1) look at the shutdown file. A user sync must leave it:
    # it may be a drain's request to the rolling worker, made while the user sync started.
    try:
        if mode in ("rolling", "once") and channel.clear_shutdown():
            print(f"removed stale shutdown file {channel.shutdown}", file=sys.stderr)
    except OSError as exc:
        print(f"cannot remove stale shutdown file {channel.shutdown}: {exc.strerror}",
              file=sys.stderr)
        return EX_CONFIG
    args = argv(SyncClient.from_config(cfg), link, channel, mode, instance.users_file(slot))
    sys.stderr.flush()
    try:
        os.execv(args[0], args)
    except OSError as exc:       # one line, and EX_CONFIG: the daemon holds the link for it
        print(f"{path}: cyrus.sync_client: cannot run {args[0]}: {exc.strerror}",
              file=sys.stderr)
        return EX_CONFIG
    return 127  # not reached
