"""What makes a valid configuration fail on this host: checked by ``check-config``, and
reported by the daemon at start and on reload.

The config and imapd.conf may agree and still not work: the sync_client they name is missing,
the control group does not exist (then only root can use the control socket), or Cyrus writes
a sync log for a channel that nothing reads, which grows until the disk is full.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from . import config as configmod
from .cyrus import imapdconf, procs


def served_channels(imapd, master, proc_root="/proc") -> set:
    """Channels a rolling sync_client or squatter started by this instance's cyrus.conf reads."""
    dirs = procs.bin_dirs(master)
    return {c for path in procs.cyrus_conf_paths(imapd.path, dirs, proc_root)
            for c in procs.cyrus_conf_channel_readers(path, imapd.path)}


def stray_channels(cfg, imapd, proc_root="/proc") -> list:
    """Channels of sync_log_channels that no link supervises and nothing else reads."""
    return imapdconf.unsupervised_channels(
        cfg, imapd, served_channels(imapd, cfg.cyrus.master, proc_root))


def stray_problem(imapd, channel, entries: int | None = None) -> str:
    log = imapd.sync_dir(channel) / "log"
    now = f" ({entries} entries now)" if entries is not None else ""
    return (f"cyrus.imapd_conf: {imapdconf.describe_channel(channel)} is in sync_log_channels"
            f" of {imapd.path}, but no link supervises it and no sync_client or squatter in"
            f" cyrus.conf reads it: {log} grows without bound{now}; add a link for it or"
            " remove it from sync_log_channels")


def problems(cfg, imapd, proc_root="/proc", count=None, strays=None) -> list[str]:
    """One line per problem, with its config path. ``count(channel)``: entries queued;
    ``strays``: stray_channels() when known already."""
    out = []
    client = Path(cfg.cyrus.sync_client)
    if not client.is_file():
        out.append(f"cyrus.sync_client: {client} does not exist (Debian: apt-get install"
                   " cyrus-replication; elsewhere set cyrus.sync_client: cyrus/layout.py"
                   " looked in its distributions' places)")
    elif not os.access(client, os.X_OK):
        out.append(f"cyrus.sync_client: {client} is not executable")
    if configmod.control_gid(cfg) is None:
        out.append(f"control.group: no group {cfg.control.group!r} on this host, so only root"
                   " may use the control socket and read the status file")
    if cfg.hooks.on_state_change:
        try:
            pwd.getpwnam(cfg.hooks.user)
        except KeyError:
            out.append(f"hooks.user: no user {cfg.hooks.user!r} on this host, so the"
                       " on_state_change hook cannot run")
        if _uid(cfg.hooks.user) == 0:
            out.append("hooks.user: the hook must not run as root (the daemon is root; the"
                       " command is yours): use an unprivileged user")
    if strays is None:
        strays = stray_channels(cfg, imapd, proc_root)
    for channel in strays:
        out.append(stray_problem(imapd, channel, count(channel) if count else None))
    return out


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None
