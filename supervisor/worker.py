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

from . import config as configmod
from . import imapdconf
from .units import parse_worker_instance

EX_CONFIG = 78


def shutdown_file(sync_dir: Path) -> Path:
    """Where the drain asks the rolling client to finish (sync_client -F)."""
    return sync_dir / "shutdown"


def argv(cfg: configmod.Config, link: str, shutdown: Path, once: bool = False) -> list[str]:
    # -R: rolling without fork (-r forks and the parent exits, which systemd would see as done).
    # -1: one drain pass over one file (log-run if present, else log), then exit.
    base = [str(cfg.cyrus.sync_client), "-C", str(cfg.cyrus.imapd_conf), "-R"]
    if once:
        return base + ["-1", "-n", link]
    return base + ["-n", link, "-F", str(shutdown)]


def config_path_for(instance: str) -> Path:
    if instance == "default":
        return configmod.DEFAULT_PATH
    return configmod.DEFAULT_PATH.with_name(f"{instance}.yaml")


def main(name: str, config_path: Path | None = None, once: bool = False) -> int:
    instance, link = parse_worker_instance(name)
    path = config_path or config_path_for(instance)
    try:
        cfg = configmod.load(path)
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
    stale = shutdown_file(sync_dir)
    try:
        stale.unlink()
        print(f"removed stale shutdown file {stale}", file=sys.stderr)
    except FileNotFoundError:
        pass
    except OSError as exc:
        print(f"cannot remove stale shutdown file {stale}: {exc.strerror}", file=sys.stderr)
        return EX_CONFIG
    args = argv(cfg, link, stale, once)
    sys.stderr.flush()
    os.execv(args[0], args)
    return 127  # not reached
