"""``syncwarden check-config``: the config, imapd.conf, and what makes them fail on this host.

Everything that would make the daemon's start fail or its work silently wrong is a
configuration problem here (exit 2): a sync_client for one of our channels that syncwarden did
not start, a missing sync_client or master, the unit that runs Cyrus and syncwarden's order
against it, a missing control group, a channel nothing reads, a store that cannot be reached.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .. import config as configmod
from ..exits import EXIT_OK, EXIT_USAGE


def cmd_check_config(args) -> int:
    """The config, imapd.conf, and what makes them fail on this host (preflight.py): a
    sync_client for our channels that syncwarden did not start (a cyrus.conf entry or a
    running process), a missing sync_client or master, the unit that runs Cyrus and
    syncwarden's order against it (cyrus/layout.py), a missing control group, a channel nothing
    reads. Each is a configuration problem, exit 2: the setup is not usable as it is."""
    from ..configload import ConfigProblem, load_checked
    from ..cyrus.backlog import Backlog
    from .. import preflight

    path = args.file or args.config
    try:
        cfg, imapd = load_checked(path)
    except ConfigProblem as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE

    def count(channel):
        return Backlog(imapd.sync_dir(channel)).read(time.monotonic(), time.time()).entries
    found, problems = _cyrus_layout(args, configmod.load(path).cyrus, cfg, imapd)
    problems += [r.problem() for r in _rival_sync_clients(cfg, imapd, args.proc_root)]
    problems += preflight.problems(cfg, imapd, args.proc_root, count)
    from .move import store_problems
    problems += store_problems(cfg, imapd)
    if problems:
        print(configmod.ConfigError(cfg.source, problems).report(), file=sys.stderr)
        return EXIT_USAGE
    print(f"{path}: OK: {len(cfg.links)} link(s) ({', '.join(cfg.links)}), role {cfg.role},"
          f" Cyrus sync logs under {imapd.configdirectory}/sync"
          + (f"; stores {', '.join(cfg.stores)}" if cfg.stores else ""))
    print("Cyrus: " + ", ".join(f"{key} {f.value} ({f.how})" for key, f in found.items()))
    return EXIT_OK


def _cyrus_layout(args, configured, cfg, imapd):
    """({setting: layout.Found}, problems): the binaries, and the unit that runs Cyrus with
    syncwarden's daemon ordered before it (asked of systemd when it answers)."""
    from ..cyrus import layout, procs as cyrus_procs
    from ..systemd import units

    root = Path("/")
    found, problems = layout.check_binaries(configured, root)
    running = {p.pid: p.unit for p in cyrus_procs.service_processes(
        imapd, cyrus_procs.bin_dirs(cfg.cyrus.master), args.proc_root)
        if p.program in cyrus_procs.MASTERS}
    found["service"], more = layout.mail_unit(configured.service, running,
                                              layout.installed_mail_unit(root))
    problems += more
    if found["service"].ok:
        daemon = units.daemon_unit(args.instance.name)
        problems += layout.order_problem(daemon, found["service"].value,
                                         _ordered_before(daemon))
    return found, problems


def _ordered_before(unit: str) -> list[str] | None:
    """What systemd says the unit is ordered Before=; None when there is no systemd to ask
    or the unit is not installed (run from a checkout)."""
    from ..systemd.units import Systemd

    try:
        systemd = Systemd()
    except Exception:                 # no system bus (a chroot, a build host): cannot tell
        return None
    try:
        return systemd.ordered_before(unit)
    finally:
        systemd.close()


def _rival_sync_clients(cfg, imapd, proc_root):
    from ..cyrus import procs as cyrus_procs

    dirs = cyrus_procs.bin_dirs(cfg.cyrus.master)
    found = [r for path in cyrus_procs.cyrus_conf_paths(imapd.path, dirs, proc_root)
             for r in cyrus_procs.cyrus_conf_sync_clients(path, imapd.path, cfg.links)]
    return found + cyrus_procs.rival_sync_clients(imapd.path, cfg.links, proc_root)
