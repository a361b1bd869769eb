"""``syncwarden worker [--once|--users] LINK``: the ExecStart of the worker units.

It resolves the link from the config, removes a stale shutdown file (one present at start makes
sync_client exit at once without work), then replaces itself with Cyrus's client in the
foreground, so systemd supervises sync_client itself and its syslog lines land in the unit's
journal.

Its start-up lies between a replica's return and the first message on it, and between
``systemctl stop`` and a drain's first pass, so it is kept short. The units' own command lines
are read here, without argparse (cli.py sets up every command for anything else). And the
daemon leaves what workers need in its runtime directory (``workers.json``, written by
``save_settings`` whenever it loads its config: sync_client as it found it, imapd.conf, each
link's sync directory, and the identity of the config and imapd.conf it read). A worker whose
two files are still those execs sync_client without reading YAML; otherwise it reads both, as
it always did. Nothing heavier than json is imported on that path before the exec.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

EX_CONFIG = 78
MODES = {"--once": "once", "--users": "users"}
SETTINGS = "workers.json"


def argv(client, link: str, channel, mode: str, users: Path) -> list[str]:
    if mode == "once":      # one drain pass over one file (log-run if present, else log)
        return client.one_pass(link)
    if mode == "users":     # full sync of the listed users; exit 1 if any of them failed
        return client.users(link, users)
    return client.rolling(link, channel.shutdown)


def command(args: list[str]) -> int | None:
    """The units' command lines (``[--once|--users] LINK``); None for any other form."""
    if len(args) == 1 and not args[0].startswith("-"):
        return main(args[0])
    if len(args) == 2 and args[0] in MODES and not args[1].startswith("-"):
        return main(args[1], mode=MODES[args[0]])
    return None


# -- what the daemon leaves for its workers ------------------------------------------------------

def _identity(path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def save_settings(runtime_dir: Path, cfg, imapd) -> None:
    """Written by the daemon (root) with the config it loaded (sync_client resolved) and its
    imapd.conf; read by the workers (cyrus), so world-readable: it holds only paths."""
    from ..cyrus.imapdconf import ImapdConfError
    from ..state import atomic_write

    links = {}
    for name in cfg.links:
        try:
            links[name] = str(imapd.sync_dir(name))
        except ImapdConfError:       # no configdirectory: workers read the files themselves
            return
    doc = {"config": [str(cfg.source), _identity(cfg.source)],
           "imapd_conf": [str(cfg.cyrus.imapd_conf), _identity(cfg.cyrus.imapd_conf)],
           "sync_client": str(cfg.cyrus.sync_client), "links": links}
    atomic_write(Path(runtime_dir) / SETTINGS, json.dumps(doc).encode() + b"\n", 0o644)


def _saved(runtime_dir: Path, config_path: Path, link: str):
    """(sync_client, imapd_conf, sync_dir) from workers.json while both files are unchanged."""
    try:
        doc = json.loads((Path(runtime_dir) / SETTINGS).read_bytes())
        (cfg, cfg_id), (imapd, imapd_id) = doc["config"], doc["imapd_conf"]
        sync_client = doc["sync_client"]
        if (cfg != str(config_path) or cfg_id != _identity(cfg) or link not in doc["links"]
                or imapd_id != _identity(imapd) or not os.access(sync_client, os.X_OK)):
            return None
        return Path(sync_client), Path(imapd), Path(doc["links"][link])
    except (OSError, ValueError, KeyError, TypeError):
        return None                  # absent, unreadable or stale: read the config


def _read_config(path: Path, link: str):
    """(sync_client, imapd_conf, sync_dir) from the config and imapd.conf, or an exit status."""
    from .. import config as configmod
    from ..cyrus import imapdconf, layout

    try:
        cfg = configmod.load(path)
        cfg = configmod.replace(cfg, cyrus=layout.resolve(cfg.cyrus))
        if link not in cfg.links:
            raise configmod.ConfigError(str(path), [f"links.{link}: no such link"])
        imapd = imapdconf.load(cfg.cyrus.imapd_conf)
        return cfg.cyrus.sync_client, cfg.cyrus.imapd_conf, imapd.sync_dir(link)
    except configmod.ConfigError as exc:
        print(exc.report().replace("\n", ";"), file=sys.stderr)
    except imapdconf.ImapdConfError as exc:
        print(f"{path}: cyrus.imapd_conf: {exc}", file=sys.stderr)
    return EX_CONFIG


def main(name: str, config_path: Path | None = None, mode: str = "rolling",
         root: Path = Path("/")) -> int:
    from ..cyrus.channel import Channel
    from ..cyrus.commands import SyncClient
    from ..paths import Instance
    from ..systemd.units import parse_qualified

    instance_name, link = parse_qualified(name)
    try:
        instance = Instance(instance_name, root)
    except ValueError as exc:
        print(f"worker {name}: {exc}", file=sys.stderr)
        return EX_CONFIG
    path = Path(config_path or instance.config)
    found = _saved(instance.runtime_dir, path, link) or _read_config(path, link)
    if isinstance(found, int):
        return found
    sync_client, imapd_conf, sync_dir = found
    channel = Channel(sync_dir)
    try:
        if channel.clear_shutdown():
            print(f"removed stale shutdown file {channel.shutdown}", file=sys.stderr)
    except OSError as exc:
        print(f"cannot remove stale shutdown file {channel.shutdown}: {exc.strerror}",
              file=sys.stderr)
        return EX_CONFIG
    args = argv(SyncClient(sync_client, imapd_conf), link, channel, mode,
                instance.users_file(link))
    sys.stderr.flush()
    try:
        os.execv(args[0], args)
    except OSError as exc:       # one line, and EX_CONFIG: the daemon holds the link for it
        print(f"{path}: cyrus.sync_client: cannot run {args[0]}: {exc.strerror}",
              file=sys.stderr)
        return EX_CONFIG
    return 127  # not reached
