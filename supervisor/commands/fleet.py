"""``syncwarden fleet status`` and ``syncwarden switchover``: the etcd commands' CLI side.

They need only the config's ``coordination:`` section (not imapd.conf, not a daemon here), so
they work from any host of the fleet; coord/commands.py does the work.
"""

from __future__ import annotations

import sys

from .. import config as configmod
from ..exits import EXIT_PROBLEM, EXIT_USAGE


def _config(args):
    try:
        return configmod.load(args.config)
    except configmod.ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return None


def cmd_fleet(args) -> int:
    from ..coord import commands
    from ..coord.etcd import EtcdError

    cfg = _config(args)
    if cfg is None:
        return EXIT_USAGE
    try:
        return commands.fleet_status(cfg, args.json, sys.stdout)
    except commands.Refused as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EtcdError as exc:
        print(f"fleet: etcd unreachable: {exc}", file=sys.stderr)
        return EXIT_PROBLEM


def cmd_switchover(args) -> int:
    from ..coord import commands
    from ..coord.etcd import EtcdError

    cfg = _config(args)
    if cfg is None:
        return EXIT_USAGE
    try:
        return commands.switchover(cfg, args.to, args.stop_cyrus, sys.stdout)
    except commands.Refused as exc:
        print(f"switchover: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except EtcdError as exc:
        print(f"switchover: etcd unreachable: {exc}", file=sys.stderr)
        return EXIT_PROBLEM


COMMANDS = {"fleet": cmd_fleet, "switchover": cmd_switchover}
