"""``syncwarden worker [--once|--users] LINK``: the ExecStart of the worker units.

It resolves the link from the config, removes a stale shutdown file (one present at start makes
sync_client exit at once without work), then replaces itself with Cyrus's client in the
foreground, so systemd supervises sync_client itself and its syslog lines land in the unit's
journal.

Its start-up lies between a replica's return and the first message on it, and between
``systemctl stop`` and a drain's first pass, so it is kept short. The units' own command lines
are read here, without argparse (cli.py sets up every command for anything else). And the
daemon leaves each link's command lines ready: ``save_settings`` writes, whenever the daemon
loads its config, one file per unit instance (paths.py: ``worker_settings``; the units name it
in $SYNCWARDEN_SETTINGS) with the argv of each mode as cyrus/commands.py builds them, the
shutdown file, and the identity of the config and imapd.conf they came from. A worker whose two
files are still those execs its argv having imported json alone; otherwise it reads both files,
as the daemon would.
"""

from __future__ import annotations

import json
import os
import sys

EX_CONFIG = 78
MODES = {"--once": "once", "--users": "users"}
SETTINGS_ENV = "SYNCWARDEN_SETTINGS"    # set by the units (units/syncwarden-*@.service)


def command(args: list[str]) -> int | None:
    """The units' command lines (``[--once|--users] LINK``); None for any other form."""
    if len(args) == 1 and not args[0].startswith("-"):
        return main(args[0])
    if len(args) == 2 and args[0] in MODES and not args[1].startswith("-"):
        return main(args[1], mode=MODES[args[0]])
    return None


def _identity(path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


# -- what the daemon leaves for its workers ------------------------------------------------------

def save_settings(instance, cfg, imapd) -> None:
    """Written by the daemon (root) with the config it loaded (sync_client resolved) and its
    imapd.conf; read by the workers, which run in the cyrus account's group (like the user
    lists). Only for the instance's own config file: a worker started by its unit reads that
    one."""
    from ..cyrus.channel import Channel
    from ..cyrus.commands import SyncClient
    from ..cyrus.imapdconf import ImapdConfError
    from ..state import atomic_write, cyrus_gid, ensure_dir
    from ..systemd.units import qualified

    if os.path.abspath(cfg.source) != str(instance.config):
        return
    gid = cyrus_gid()
    ensure_dir(instance.worker_settings("").parent, 0o750, gid)
    ident = {"config": [str(cfg.source), _identity(cfg.source)],
             "imapd_conf": [str(cfg.cyrus.imapd_conf), _identity(cfg.cyrus.imapd_conf)]}
    client = SyncClient(cfg.cyrus.sync_client, cfg.cyrus.imapd_conf)
    for link in cfg.links:
        try:
            channel = Channel(imapd.sync_dir(link))
        except ImapdConfError:       # no configdirectory: workers read the files themselves
            return
        doc = {**ident, "shutdown": str(channel.shutdown),
               "argv": {m: argv(client, link, channel, m, instance.users_file(link))
                        for m in ("rolling", "once", "users")}}
        settings = instance.worker_settings(qualified(link, instance.name))
        atomic_write(settings, json.dumps(doc).encode() + b"\n", 0o640, gid)
        discard_pass(settings)       # one a drain of an earlier config or daemon left


def _saved(path: str | None, mode: str):
    """(argv, shutdown file, config) from the daemon's settings while its two files are
    unchanged."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
        if any(_identity(p) != ident for p, ident in (doc["config"], doc["imapd_conf"])):
            return None
        args = doc["argv"][mode]
        return (args, doc["shutdown"], doc["config"][0]) if os.access(args[0], os.X_OK) else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None                  # absent, unreadable or stale: read the config


# -- a drain pass without the launcher ----------------------------------------------------------
# A drain pass starts between ``systemctl stop`` and the first entry sent: the drain unit execs
# sync_client through /usr/bin/env from $SYNCWARDEN_PASS, which its EnvironmentFile (written
# here by the daemon as a drain begins, removed as it ends) sets to the argv of the settings
# above. Without that file, $SYNCWARDEN_PASS is the unit's own default, this launcher. The
# shutdown file, which the launcher would remove, the daemon removes before each pass
# (link/drain.py). systemd splits the variable at whitespace, with no quoting: an argv with
# any word it would not keep whole is left to the launcher.

PASS_VAR = "SYNCWARDEN_PASS"          # units/syncwarden-drain@.service
_UNSAFE = set(" \t\n\r\"'\\$%;")


def pass_file(settings) -> str:
    """The drain unit's EnvironmentFile, beside the settings (units: %i.pass)."""
    return os.path.splitext(str(settings))[0] + ".pass"


def prepare_pass(settings) -> bool:
    """Leave the drain unit the argv of a pass if the saved settings are current (what the
    launcher would exec), else remove that file; True if the unit will exec sync_client."""
    from ..state import atomic_write, cyrus_gid

    found = _saved(str(settings), "once")
    if found is None or any(not a or _UNSAFE & set(a) for a in found[0]):
        discard_pass(settings)
        return False
    atomic_write(pass_file(settings), f"{PASS_VAR}={' '.join(found[0])}\n".encode(), 0o640,
                 cyrus_gid())
    return True


def discard_pass(settings) -> None:
    try:
        os.unlink(pass_file(settings))
    except FileNotFoundError:
        pass


class PassFiles:
    """The daemon's edge to its drain units' EnvironmentFile (link/drain.py), by link."""

    def __init__(self, instance):
        self.instance = instance

    def _settings(self, link: str):
        from ..systemd.units import qualified

        return self.instance.worker_settings(qualified(link, self.instance.name))

    def prepare(self, link: str) -> bool:
        return prepare_pass(self._settings(link))

    def discard(self, link: str) -> None:
        discard_pass(self._settings(link))


# -- reading the config --------------------------------------------------------------------------

def argv(client, link: str, channel, mode: str, users) -> list[str]:
    if mode == "once":      # one drain pass over one file (log-run if present, else log)
        return client.one_pass(link)
    if mode == "users":     # full sync of the listed users; exit 1 if any of them failed
        return client.users(link, users)
    if mode == "mailboxes":  # a seed's shared mailboxes, by admin name; exit 1 if one failed
        return client.mailboxes(link, users)
    return client.rolling(link, channel.shutdown)


def _read_config(name: str, config_path, mode: str, root):
    """(argv, shutdown file, config) from the config and imapd.conf, or an exit status."""
    from pathlib import Path

    from .. import config as configmod
    from ..cyrus import imapdconf, layout
    from ..cyrus.channel import Channel
    from ..cyrus.commands import SyncClient
    from ..paths import Instance
    from ..systemd.units import parse_qualified, parse_slot

    instance_name, slot = parse_qualified(name)
    try:
        instance = Instance(instance_name, Path(root))
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
        channel = Channel(imapdconf.load(cfg.cyrus.imapd_conf).sync_dir(link))
    except configmod.ConfigError as exc:
        print(exc.report().replace("\n", ";"), file=sys.stderr)
        return EX_CONFIG
    except imapdconf.ImapdConfError as exc:
        print(f"{path}: cyrus.imapd_conf: {exc}", file=sys.stderr)
        return EX_CONFIG
    args = argv(SyncClient.from_config(cfg), link, channel, mode, instance.users_file(slot))
    return args, str(channel.shutdown), path


def main(name: str, config_path=None, mode: str = "rolling", root="/") -> int:
    found = (None if config_path else _saved(os.environ.get(SETTINGS_ENV), mode)) or \
        _read_config(name, config_path, mode, root)
    if isinstance(found, int):
        return found
    args, shutdown, config = found
    # Only rolling clients (-R, -R -1) look at the shutdown file. A user sync must leave it:
    # it may be a drain's request to the rolling worker, made while the user sync started.
    if mode in ("rolling", "once"):
        try:
            os.unlink(shutdown)          # as cyrus, in cyrus's own channel directory
            print(f"removed stale shutdown file {shutdown}", file=sys.stderr)
        except FileNotFoundError:
            pass
        except OSError as exc:
            print(f"cannot remove stale shutdown file {shutdown}: {exc.strerror}",
                  file=sys.stderr)
            return EX_CONFIG
    sys.stderr.flush()
    try:
        os.execv(args[0], args)
    except OSError as exc:       # one line, and EX_CONFIG: the daemon holds the link for it
        print(f"{config}: cyrus.sync_client: cannot run {args[0]}: {exc.strerror}",
              file=sys.stderr)
        return EX_CONFIG
    return 127  # not reached
