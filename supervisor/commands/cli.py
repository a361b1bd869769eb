"""The ``syncwarden`` command: thin argparse layer; commands return data, render.py prints it.

Exit codes: 0 fine, 1 problem found or refused, 2 usage or configuration error (for
check-config this includes a sync_client for one of our channels that syncwarden did not start).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .. import __version__

from . import render
from .. import config as configmod
from ..control import ControlError, ControlPermissionError, request, wait_for_drains
from ..paths import DEFAULT, Instance, InstanceError
from ..systemd.units import parse_qualified

from ..exits import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncwarden", description="Supervise Cyrus IMAP replication.")
    p.add_argument("--version", action="version", version=f"syncwarden {__version__}")
    p.add_argument("-i", "--instance", default=DEFAULT,
                   help="the Cyrus instance (default: %(default)s, configured in"
                   " /etc/syncwarden/syncwarden.yaml; NAME: /etc/syncwarden/NAME.yaml)")
    p.add_argument("-c", "--config", type=Path, default=None,
                   help="config file (default: the instance's)")
    p.add_argument("--socket", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--proc-root", type=Path, default=Path("/proc"), help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("daemon", help="run the supervisor (the service's ExecStart)")
    # kept for units written for 0.1: `daemon --instance NAME` is `-i NAME daemon`
    d.add_argument("--instance", dest="daemon_instance", default=None, help=argparse.SUPPRESS)
    s = sub.add_parser("status", help="show links, states and backlogs")
    s.add_argument("link", nargs="?")
    s.add_argument("--json", action="store_true")
    cc = sub.add_parser("check-config", help="validate the config and imapd.conf")
    cc.add_argument("file", nargs="?", type=Path)
    for name, text in (("hold", "stop a link's worker and keep it down until resume"),
                       ("resume", "undo hold"),
                       ("release", "let a quarantined link start again")):
        c = sub.add_parser(name, help=text)
        c.add_argument("link")
    q = sub.add_parser("quarantine", help="users held out of replication")
    qsub = q.add_subparsers(dest="action", required=True, metavar="ACTION")
    ql = qsub.add_parser("list", help="quarantined users, their errors and stored entries")
    ql.add_argument("--json", action="store_true")
    for name, text in (("retry", "retry a quarantined user now"),
                       ("drop", "give up a user's stored entries and release it")):
        qa = qsub.add_parser(name, help=text)
        qa.add_argument("user")
        qa.add_argument("--link", help="only this link (default: every link holding the user)")
        if name == "drop":
            qa.add_argument("--yes", action="store_true",
                            help="confirm: the stored entries are discarded")
    fo = sub.add_parser("failover", help="soft failover: drain every link, verify both sides"
                        " match, then make this host a replica")
    fo.add_argument("--force", action="store_true",
                    help="go on although Cyrus still runs for this instance")
    sub.add_parser("promote", help="make this host the master: workers may start")
    sub.add_parser("demote", help="make this host a replica: never start workers here")
    dr = sub.add_parser("drain", help="send everything queued for a link, then hold it")
    which = dr.add_mutually_exclusive_group(required=True)
    which.add_argument("link", nargs="?")
    which.add_argument("--all", action="store_true", help="every link")
    dr.add_argument("--wait", action="store_true", help="wait until the drain is over")
    w = sub.add_parser("worker", help="run sync_client for a link (the worker unit's ExecStart)")
    w.add_argument("link", help="LINK, or INSTANCE:LINK")
    mode = w.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_const", dest="mode", const="once",
                      help="one drain pass (sync_client -R -1)")
    mode.add_argument("--users", action="store_const", dest="mode", const="users",
                      help="full sync of the users listed by the daemon (sync_client -u)")
    ck = sub.add_parser("check", help="compare master and replica of a link (read-only)")
    ck.add_argument("link")
    ck.add_argument("--user", action="append", dest="users", metavar="U",
                    help="only this user (repeatable)")
    ck.add_argument("--deep", action="store_true", help="compare every message (UID, GUID, flags)")
    ck.add_argument("--json", action="store_true")
    rp = sub.add_parser("repair", help="copy replica-only mail back to the master")
    rp.add_argument("link")
    rp.add_argument("--user", action="append", dest="users", metavar="U",
                    help="only this user (repeatable)")
    rp.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    instance = getattr(args, "daemon_instance", None) or args.instance
    if args.command in ("check", "repair") and ":" in args.link:
        # the check timer's unit runs `check INSTANCE:LINK` (systemd instance strings)
        instance, args.link = parse_qualified(args.link)
    try:
        args.instance = Instance(instance)
    except InstanceError as exc:
        parser.error(str(exc))
    args.explicit_config = args.config is not None
    args.config = args.config or args.instance.config
    args.socket = args.socket or args.instance.socket
    args.state_dir = args.instance.state_dir
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_PROBLEM


def cmd_daemon(args) -> int:
    from ..daemon import main as daemon_main

    return daemon_main(args.config, args.instance)


def cmd_worker(args) -> int:
    from .worker import main as worker_main

    return worker_main(args.link, args.config if args.explicit_config else None,
                       mode=args.mode or "rolling")


def cmd_check_config(args) -> int:
    """The config, imapd.conf, and any sync_client for our channels that syncwarden did not
    start (a cyrus.conf entry or a running process): each is a configuration problem, exit 2,
    since the setup as a whole is not usable until the admin removes it."""
    from ..daemon import ConfigProblem, load_checked

    path = args.file or args.config
    try:
        cfg, imapd = load_checked(path)
    except ConfigProblem as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    rivals = _rival_sync_clients(cfg, imapd, args.proc_root)
    if rivals:
        print(configmod.ConfigError(cfg.source, [r.problem() for r in rivals]).report(),
              file=sys.stderr)
        return EXIT_USAGE
    print(f"{path}: OK: {len(cfg.links)} link(s) ({', '.join(cfg.links)}), role {cfg.role},"
          f" Cyrus sync logs under {imapd.configdirectory}/sync")
    return EXIT_OK


def _rival_sync_clients(cfg, imapd, proc_root):
    from ..cyrus import procs as cyrus_procs

    dirs = cyrus_procs.bin_dirs(cfg.cyrus.sync_client)
    found = [r for path in cyrus_procs.cyrus_conf_paths(imapd.path, dirs, proc_root)
             for r in cyrus_procs.cyrus_conf_sync_clients(path, imapd.path, cfg.links)]
    return found + cyrus_procs.rival_sync_clients(imapd.path, cfg.links, proc_root)


def cmd_status(args) -> int:
    try:
        answer = request("status", path=args.socket)
    except ControlPermissionError as exc:
        print(f"syncwarden status: {exc}", file=sys.stderr)    # it runs; we may not ask
        return EXIT_PROBLEM
    except ControlError as exc:
        return _status_without_daemon(args, str(exc))
    if not answer.get("ok"):
        print(f"syncwarden: {answer.get('error')}", file=sys.stderr)
        return EXIT_PROBLEM
    doc = answer["result"]
    doc["daemon"] = {"running": True}
    return _show_status(args, doc)


def _status_without_daemon(args, why: str) -> int:
    """The daemon is down: say so plainly, and show what the files alone tell."""
    from .offline import offline_status

    doc = offline_status(args.config, why, args.instance)
    if args.json:
        _show_status(args, doc)
    else:
        print(f"syncwarden daemon is not running ({why}); link states are unknown.")
        if doc.get("error"):
            print(doc["error"])
        else:
            _show_status(args, doc)
    return EXIT_PROBLEM


def _show_status(args, doc: dict) -> int:
    if args.link:
        links = [x for x in doc.get("links", []) if x["name"] == args.link]
        if not links:
            print(f"syncwarden: no link named {args.link!r}", file=sys.stderr)
            return EXIT_USAGE
        doc = {**doc, "links": links}
    from .check import add_last_checks, last_check_lines

    add_last_checks(doc, args.state_dir)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join([render.status_table(doc, now=time.time())]
                        + last_check_lines(doc, time.time())))
    return EXIT_OK


_REFUSED = object()


def _ask(args, cmd: str, **fields):
    """The daemon's answer to one command, or _REFUSED after saying why on stderr."""
    try:
        answer = request(cmd, path=args.socket, **fields)
    except ControlPermissionError as exc:
        print(f"syncwarden {args.command}: {exc}", file=sys.stderr)
        return _REFUSED
    except ControlError as exc:
        print(f"syncwarden: daemon not running: {exc}", file=sys.stderr)
        return _REFUSED
    if not answer.get("ok"):
        print(f"syncwarden {args.command}: {answer.get('error')}", file=sys.stderr)
        return _REFUSED
    return answer["result"]


def _link_command(args) -> int:
    result = _ask(args, args.command, link=args.link)
    if result is _REFUSED:
        return EXIT_PROBLEM
    print(result)
    return EXIT_OK


def cmd_role(args) -> int:
    """promote/demote through the daemon when it runs (it owns holds and the role)."""
    try:
        answer = request(args.command, path=args.socket)
    except ControlPermissionError as exc:
        print(f"syncwarden {args.command}: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except ControlError:
        return _role_offline(args)
    if not answer.get("ok"):
        print(f"syncwarden {args.command}: {answer.get('error')}", file=sys.stderr)
        return EXIT_PROBLEM
    print("\n".join(answer["result"]))
    return EXIT_OK


def _role_offline(args) -> int:
    """promote/demote while no daemon runs: the role files alone, no supervisor."""
    from ..daemon import SystemClock
    from ..link.roles import RoleControl, RoleStore
    from ..state import Holds
    from ..systemd.journal import Journal

    loaded = _load(args)
    if loaded is None:
        return EXIT_USAGE
    cfg, imapd = loaded
    inst = args.instance
    role = RoleControl(cfg.role, RoleStore(inst.role_file), Holds(inst.holds_file), imapd,
                       Journal(), SystemClock())
    new = "master" if args.command == "promote" else "replica"
    try:
        done = role.change(new, f"syncwarden {args.command} (daemon not running)", list(cfg.links))
    except ValueError as exc:
        print(f"syncwarden {args.command}: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    print("\n".join(done))
    return EXIT_OK


def cmd_quarantine(args) -> int:
    if args.action == "drop" and not args.yes:
        print(f"syncwarden quarantine drop: this discards {args.user}'s stored entries, which"
              " were never replicated; add --yes to confirm", file=sys.stderr)
        return EXIT_USAGE
    extra = {} if args.action == "list" else {"user": args.user, "link": args.link}
    result = _ask(args, "quarantine", action=args.action, **extra)
    if result is _REFUSED:
        return EXIT_PROBLEM
    if args.action != "list":
        print(result)
    elif args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render.quarantine_table(result))
    return EXIT_OK


def cmd_drain(args) -> int:
    started = time.time()
    result = _ask(args, "drain", link=args.link, all=args.all)
    if result is _REFUSED:
        return EXIT_PROBLEM
    print(result)
    if not args.wait:
        return EXIT_OK
    return _wait_for_drains(args, started)


def _wait_for_drains(args, started: float) -> int:
    ok = True
    for name, d in wait_for_drains(args.socket, started, None if args.all else args.link).items():
        ok &= d["drained"]
        print(f"{name}: {'drained' if d['drained'] else 'drain incomplete'}"
              f" in {d['duration_seconds']}s: {d['message']}; {d['entries_left']} entries"
              " queued now")
    return EXIT_OK if ok else EXIT_PROBLEM


def _load(args):
    """(config, imapd), or None after printing every problem."""
    from ..daemon import ConfigProblem, load_checked

    try:
        return load_checked(args.config)
    except ConfigProblem as exc:
        print(exc, file=sys.stderr)
        return None


def cmd_failover(args) -> int:
    from ..pair import failover

    loaded = _load(args)
    if loaded is None:
        return EXIT_USAGE
    return failover.run(args, *loaded, proc_root=args.proc_root)


def cmd_check(args) -> int:
    from .check import cmd_check as check

    return check(args)


def cmd_repair(args) -> int:
    from .check import cmd_repair as repair

    return repair(args)


COMMANDS = {
    "drain": cmd_drain, "promote": cmd_role, "quarantine": cmd_quarantine, "demote": cmd_role,
    "daemon": cmd_daemon, "worker": cmd_worker, "check-config": cmd_check_config,
    "status": cmd_status, "hold": _link_command, "resume": _link_command,
    "release": _link_command,
    "check": cmd_check, "repair": cmd_repair, "failover": cmd_failover,
}
