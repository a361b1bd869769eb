"""The ``syncwarden`` command line's grammar: every command, option and its help.

Global options (-i, -c, and --json where a command prints JSON) are accepted before or after
the command; the internal commands (daemon, worker: the units' entry points) are left out of
the command list of --help.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..paths import DEFAULT

# Options that mean the same to every command, accepted before or after it: `syncwarden -i east
# status` and `syncwarden status -i east` are one request. Their default is SUPPRESS in each
# parser, so that a value given at one place is not overwritten by another's default; main()
# fills in the defaults once.
GLOBAL_DEFAULTS = {"instance": DEFAULT, "config": None, "socket": None,
                   "proc_root": Path("/proc"), "json": False}
# Where --json means something (a document instead of a table).
JSON_COMMANDS = {("status", None), ("check", None), ("quarantine", "list"), ("move", None),
                 ("fleet", "status")}


def _global_options(json_option: bool) -> argparse.ArgumentParser:
    g = argparse.ArgumentParser(add_help=False)
    g.add_argument("-i", "--instance", default=argparse.SUPPRESS, metavar="NAME",
                   help="the Cyrus instance (default: default, configured in"
                   " /etc/syncwarden/syncwarden.yaml; NAME: /etc/syncwarden/NAME.yaml)")
    g.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                   help="config file (default: the instance's)")
    g.add_argument("--socket", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    g.add_argument("--proc-root", type=Path, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)
    if json_option:
        g.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print the JSON document (docs/CONTRACT.md) instead of a table")
    return g


def build_parser() -> argparse.ArgumentParser:
    plain, with_json = _global_options(False), _global_options(True)
    p = argparse.ArgumentParser(prog="syncwarden", description="Supervise Cyrus IMAP"
                                " replication.", parents=[with_json])
    p.add_argument("--version", action="version", version=f"syncwarden {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, text, json_output=False, hidden=False, parent=sub):
        kw = {} if hidden else {"help": text}     # no help: left out of the command list
        return parent.add_parser(name, description=text, **kw,
                                 parents=[with_json if json_output else plain])

    def link(parser, text="the link (a Cyrus sync channel named in the config)"):
        parser.add_argument("link", metavar="LINK", help=text)

    def yes(parser, what):
        parser.add_argument("--yes", "-y", action="store_true",
                            help=f"do not ask: {what} (without a terminal, required)")

    s = command("status", "show links, states and backlogs; exit 0 only when every link that"
                " should run is live and nothing is quarantined", json_output=True)
    s.add_argument("link", nargs="?", metavar="LINK", help="only this link")
    s.add_argument("--nagios", action="store_true",
                   help="a Nagios/Icinga plugin: one line with perfdata; exit 0 OK, 1 WARNING,"
                   " 2 CRITICAL, 3 UNKNOWN")
    s.add_argument("--watch", action="store_true",
                   help="show it again every few seconds until interrupted")
    s.add_argument("-n", "--interval", type=float, default=2.0, metavar="SECONDS",
                   help="with --watch: seconds between updates (default: %(default)s)")
    cc = command("check-config", "validate the config, imapd.conf and the Cyrus setup")
    cc.add_argument("file", nargs="?", type=Path, metavar="FILE",
                    help="the config file to check (default: the instance's)")
    for name, text in (("hold", "stop a link's worker and keep it down until resume"),
                       ("resume", "undo hold"),
                       ("release", "let a quarantined link start again")):
        link(command(name, text))
    dr = command("drain", "send everything queued for a link, then hold it")
    which = dr.add_mutually_exclusive_group(required=True)
    which.add_argument("link", nargs="?", metavar="LINK", help="the link to drain")
    which.add_argument("--all", action="store_true", help="every link")
    dr.add_argument("--wait", action="store_true",
                    help="wait until the drain is over (progress on a terminal)")
    q = command("quarantine", "users held out of replication")
    qsub = q.add_subparsers(dest="action", required=True, metavar="ACTION")
    command("list", "quarantined users, their errors and stored entries", json_output=True,
            parent=qsub)
    for name, text in (("retry", "retry a quarantined user now"),
                       ("drop", "give up a user's stored entries and release it")):
        qa = command(name, text, parent=qsub)
        qa.add_argument("user", metavar="USER", help="the Cyrus userid")
        qa.add_argument("--link", metavar="LINK",
                        help="only this link (default: every link holding the user)")
        if name == "drop":
            yes(qa, "the stored entries are discarded")
    ck = command("check", "compare master and replica of a link (read-only)",
                 json_output=True)
    link(ck)
    ck.add_argument("--user", action="append", dest="users", metavar="USER",
                    help="only this user (repeatable)")
    ck.add_argument("--deep", action="store_true",
                    help="compare every message (UID, GUID, flags)")
    rp = command("repair", "copy replica-only mail back to the master, then let replication"
                 " replace what conflicts")
    link(rp)
    rp.add_argument("--user", action="append", dest="users", metavar="USER",
                    help="only this user (repeatable)")
    rp.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    yes(rp, "the plan is carried out without showing it first")
    fo = command("failover", "soft failover: drain every link, verify both sides match, then"
                 " make this host a replica")
    fo.add_argument("--force", action="store_true",
                    help="go on although Cyrus still runs for this instance")
    yes(fo, "the failover goes ahead")
    for name, text, what in (
            ("promote", "make this host the master: workers may start", "workers may start"),
            ("demote", "make this host a replica: never start workers here",
             "the workers stop")):
        yes(command(name, text), what)
    sd = command("seed", "copy everything to a link's replica (a new or a stale one), then let"
                 " the link go live")
    link(sd)
    sd.add_argument("--parallel", type=int, default=None, metavar="N",
                    help="user syncs at a time (1-32; default: the last seed's, else 4 or"
                    " the number of CPUs if fewer)")
    sd.add_argument("--no-wait", action="store_true", help="start it and return")
    rt = command("retire", "drain a link, then remove its worker and backlog for good")
    link(rt)
    rt.add_argument("--force", action="store_true",
                    help="also when no other link is live with a clean deep check")
    rt.add_argument("--no-wait", action="store_true", help="start it and return")
    yes(rt, "the link is retired")
    fz = command("freeze", "drain a link and hold it (for a backup of its replica) until a"
                 " deadline")
    link(fz)
    fz.add_argument("--until", default="1h", metavar="DURATION",
                    help="resume by itself after this long (1s-7d; default 1h)")
    fz.add_argument("--exec", dest="exec_command", metavar="CMD",
                    help="run CMD (with /bin/sh, as an unprivileged user) once frozen")
    fz.add_argument("--exec-user", metavar="USER",
                    help="run CMD as this account (default: a systemd dynamic user)")
    fz.add_argument("--no-wait", action="store_true", help="start it and return")
    link(command("thaw", "end a freeze now"))
    mv = command("move", "move users from this instance to another store (sync, lock, sync,"
                 " verify, switch the routing, unlock there)", json_output=True)
    mv.add_argument("users", nargs="*", metavar="USER", help="the Cyrus userids to move")
    mv.add_argument("--to", required=True, metavar="STORE",
                    help="the store to move them to (named under stores: in the config)")
    mv.add_argument("--parallel", type=int, default=1, metavar="N",
                    help="users moved at a time (1-32; default 1)")
    mv.add_argument("--from-file", metavar="FILE",
                    help="also move the users listed in FILE, one per line (# comments)")
    mv.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    mx = command("move-expire", "end a user's lock past its move's deadline (the guard"
                 " timer's ExecStart)", hidden=True)
    mx.add_argument("user", metavar="USER", help="the Cyrus userid whose move to check")
    fl = command("fleet", "the pairs and hosts coordinated through etcd (coordination:)")
    fsub = fl.add_subparsers(dest="action", required=True, metavar="ACTION")
    command("status", "every pair, its master key's holder and each host's links, from etcd;"
            " stale entries marked", json_output=True, parent=fsub)
    so = command("switchover", "hand this pair's master role to another host through etcd:"
                 " drain, release the key, the other host takes it and promotes")
    so.add_argument("--to", metavar="HOST", help="the new master (default: the pair's other"
                    " registered host)")
    so.add_argument("--stop-cyrus", action="store_true",
                    help="stop the master's cyrus.service first (else refuse while it runs)")
    command("reload", "apply the configuration file now (what systemctl reload runs); exit 1"
            " with every problem when it is rejected")
    # Internal: the units' ExecStart=. Not in the command list.
    command("daemon", "run the supervisor (the service's ExecStart)", hidden=True)
    w = command("worker", "run sync_client for a link (the worker unit's ExecStart)",
                hidden=True)
    w.add_argument("link", metavar="LINK", help="LINK, or INSTANCE:LINK")
    mode = w.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_const", dest="mode", const="once",
                      help="one drain pass (sync_client -R -1)")
    mode.add_argument("--users", action="store_const", dest="mode", const="users",
                      help="full sync of the users listed by the daemon (sync_client -u)")
    return p
