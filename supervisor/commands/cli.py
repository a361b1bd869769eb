"""The ``syncwarden`` command: thin argparse layer; commands return data, render.py prints it.

Exit codes (exits.py): 0 fine, 1 problem found or refused, 2 usage or configuration error (for
check-config this includes a sync_client for one of our channels that syncwarden did not start);
``status``, ``status --nagios`` and ``check`` follow the Nagios convention for monitoring.
"""

from __future__ import annotations

import json
import sys
import time

from . import fleet, lifecycle, render
from .ask import confirm, on_terminal
from .parser import GLOBAL_DEFAULTS, JSON_COMMANDS, build_parser  # noqa: F401 (tests use it)
from .. import config as configmod
from ..control import ControlError, ControlPermissionError, request, wait_for_drains
from ..paths import Instance, InstanceError
from ..systemd.units import parse_qualified

from ..exits import (EXIT_OK, EXIT_PROBLEM, EXIT_UNREACHABLE, EXIT_USAGE, NAGIOS_OK,
                     NAGIOS_UNKNOWN)
from ..monitor import verdict


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:
        if exc.code == EXIT_USAGE and _nagios_style(argv):
            raise SystemExit(NAGIOS_UNKNOWN) from None   # 2 would read as CRITICAL
        raise
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


def _parse(parser, argv: list[str]):
    """The arguments, checked; every usage error through parser.error (SystemExit 2)."""
    args = parser.parse_args(argv)
    for key, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, default)
    if args.json and (args.command, getattr(args, "action", None)) not in JSON_COMMANDS \
            and args.command != "quarantine":
        parser.error(f"--json: {args.command} has no JSON output")
    if args.json and args.command == "quarantine" and args.action != "list":
        parser.error(f"--json: quarantine {args.action} has no JSON output")
    if args.command == "status" and args.nagios and (args.json or args.watch):
        parser.error("--nagios: not with --json or --watch")
    instance = args.instance
    if args.command in ("check", "repair") and ":" in args.link:
        # the check timer's unit runs `check INSTANCE:LINK` (systemd instance strings)
        instance, args.link = parse_qualified(args.link)
    try:
        args.instance = Instance(instance)
    except InstanceError as exc:
        parser.error(str(exc))
    return args


def _nagios_style(argv: list[str]) -> bool:
    """Whether this command line exits by the Nagios convention (check, status --nagios)."""
    command = next((a for a in argv if a in COMMANDS), None)
    return command == "check" or (command == "status" and "--nagios" in argv)


def cmd_daemon(args) -> int:
    from ..daemon import main as daemon_main

    return daemon_main(args.config, args.instance)


def cmd_worker(args) -> int:
    from .worker import main as worker_main

    return worker_main(args.link, args.config if args.explicit_config else None,
                       mode=args.mode or "rolling")


def cmd_status(args) -> int:
    if args.watch:
        return _watch(args)
    return _status_once(args)


def _status_once(args) -> int:
    """Exit 0 only when every link that should run is live and nothing is quarantined
    (monitor/verdict.py), 1 otherwise, 2 no such link, 3 no daemon answered."""
    try:
        answer = request("status", path=args.socket)
    except ControlPermissionError as exc:
        return _status_unknown(args, str(exc))     # it runs; we may not ask
    except ControlError as exc:
        return _status_without_daemon(args, str(exc))
    if not answer.get("ok"):
        return _status_unknown(args, str(answer.get("error")))
    doc = answer["result"]
    doc["daemon"] = {"running": True}
    return _show_status(args, doc)


def _watch(args, sleep=time.sleep, clock=time.time) -> int:
    """status again every --interval seconds (the screen cleared on a terminal), until
    interrupted, which is the normal way out: exit 0."""
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    try:
        while True:
            print(f"{clear}every {args.interval:g}s: syncwarden status"
                  f"{' ' + args.link if args.link else ''}   "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(clock()))}")
            rc = _status_once(args)
            sys.stdout.flush()
            if rc == EXIT_USAGE:
                return rc
            sleep(max(0.1, args.interval))
    except KeyboardInterrupt:
        return EXIT_OK


def _status_unknown(args, why: str) -> int:
    if args.nagios:
        code, text = verdict.unknown(f"syncwarden daemon: {why}")
        print(text)
        return code
    print(f"syncwarden status: {why}", file=sys.stderr)
    return EXIT_UNREACHABLE


def _status_without_daemon(args, why: str) -> int:
    """The daemon is down: say so plainly, and show what the files alone tell."""
    from .offline import offline_status

    if args.nagios:
        return _status_unknown(args, f"not running ({why})")
    doc = offline_status(args.config, why, args.instance)
    if args.json:
        shown = _show_status(args, doc)
    else:
        print(f"syncwarden daemon is not running ({why}); link states are unknown.")
        if doc.get("error"):
            print(doc["error"])
            shown = None
        else:
            shown = _show_status(args, doc)
    return EXIT_USAGE if shown == EXIT_USAGE else EXIT_UNREACHABLE   # 2: no such link


def _show_status(args, doc: dict) -> int:
    if args.link:
        links = [x for x in doc.get("links", []) if x["name"] == args.link]
        if not links:
            if args.nagios:
                code, text = verdict.unknown(f"no link named {args.link!r}")
                print(text)
                return code
            print(f"syncwarden: no link named {args.link!r}", file=sys.stderr)
            return EXIT_USAGE
        doc = {**doc, "links": links}
    if args.nagios:
        code, text = verdict.nagios(doc)
        print(text)
        return code
    from .check import add_last_checks, last_check_lines
    from ..move.report import add_moves, move_lines

    add_last_checks(doc, args.state_dir)
    add_moves(doc, args.state_dir)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join([render.status_table(doc, now=time.time())]
                        + last_check_lines(doc, time.time()) + move_lines(doc)))
    return EXIT_OK if verdict.level(doc) == NAGIOS_OK else EXIT_PROBLEM


_REFUSED = object()


def _ask(args, cmd: str, **fields):
    """The daemon's answer to one command, or _REFUSED after saying why on stderr."""
    try:
        answer = request(cmd, path=args.socket, **fields)
    except ControlPermissionError as exc:
        print(f"syncwarden {args.command}: {exc}", file=sys.stderr)
        return _REFUSED
    except ControlError as exc:
        print(f"syncwarden {args.command}: the daemon is not running: {exc}", file=sys.stderr)
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


def cmd_reload(args) -> int:
    """What the units' ExecReload= runs: the daemon reads the file again and answers whether
    it took it, so that `systemctl reload` fails, with the reason in its log, on a bad file."""
    result = _ask(args, "reload")
    if result is _REFUSED:
        return EXIT_PROBLEM
    print(result)
    return EXIT_OK


def cmd_role(args) -> int:
    """promote/demote through the daemon when it runs (it owns holds and the role)."""
    plan = ([f"make this host the master of instance {args.instance.name}: workers start for"
             " every link that is not held (a backlog from before the promotion is held"
             " until `syncwarden resume LINK`)"] if args.command == "promote" else
            [f"make this host a replica for instance {args.instance.name}: every worker"
             " stops and none starts here until a promote; what is queued stays on disk"])
    refused = confirm(args.command, plan, args.yes)
    if refused is not None:
        return refused
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
    if args.action == "drop":
        refused = confirm("quarantine drop", _drop_plan(args), args.yes)
        if refused is not None:
            return refused
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


def _drop_plan(args) -> list[str]:
    """What `quarantine drop` would discard, from the daemon's list when it answers."""
    try:
        listed = request("quarantine", path=args.socket, action="list").get("result") or []
    except ControlError:
        listed = []
    found = [q for q in listed if q.get("user") == args.user
             and (args.link is None or q.get("link") == args.link)]
    if not found:
        where = f" on {args.link}" if args.link else ""
        return [f"discard the stored entries of {args.user}{where}, which were never"
                " replicated, and release the user"]
    return [f"discard {q.get('entries')} stored entries of {args.user} on {q.get('link')},"
            " which were never replicated, and release the user" for q in found]


def cmd_drain(args) -> int:
    started = time.time()
    result = _ask(args, "drain", link=args.link, all=args.all)
    if result is _REFUSED:
        return EXIT_PROBLEM
    print(result, flush=True)
    if not args.wait:
        return EXIT_OK
    return _wait_for_drains(args, started)


def _wait_for_drains(args, started: float) -> int:
    """Until every drain asked for is over: progress on a terminal, and one line (not a
    traceback) if the daemon goes away meanwhile."""
    show = progress_printer(sys.stderr) if on_terminal(sys.stderr) else None
    try:
        done = wait_for_drains(args.socket, started, None if args.all else args.link,
                               progress=show)
    except ControlError as exc:
        print(f"\nsyncwarden drain: the daemon went away while waiting ({exc}); the drain's"
              " outcome is in `journalctl -u syncwarden`", file=sys.stderr)
        return EXIT_PROBLEM
    ok = True
    for name, d in done.items():
        ok &= d["drained"]
        print(f"{name}: {'drained' if d['drained'] else 'drain incomplete'}"
              f" in {d['duration_seconds']}s: {d['message']}; {d['entries_left']} entries"
              " queued now")
    return EXIT_OK if ok else EXIT_PROBLEM


def progress_printer(out, every: float = 2.0, clock=time.monotonic):
    """A ``progress(links)`` for wait_for_drains: one line per draining link, every few
    seconds, rewritten in place."""
    state = {"next": clock()}

    def show(links: list[dict]) -> None:
        if clock() < state["next"]:
            return
        state["next"] = clock() + every
        parts = [f"{x['name']}: {x['backlog']['entries']} queued" for x in links
                 if x.get("state") == "draining"]
        if parts:
            print("\r\033[K" + "; ".join(parts) + " ...", end="", file=out, flush=True)
    return show


def _load(args):
    """(config, imapd), or None after printing every problem."""
    from ..configload import ConfigProblem, load_checked

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
    cfg, imapd = loaded
    refused = confirm("failover", [
        f"refuse if Cyrus still runs for {imapd.path}" + (" (--force: go on anyway)"
                                                          if args.force else ""),
        f"drain every link ({', '.join(cfg.links)}) and hold them",
        "verify that every mailbox of every user matches on both sides",
        "then make this host a replica: it starts no worker from then on"], args.yes)
    if refused is not None:
        return refused
    return failover.run(args, cfg, imapd, proc_root=args.proc_root)


def cmd_move(args) -> int:
    from .move import cmd_move as move

    return move(args)


def cmd_move_expire(args) -> int:
    from .move import cmd_move_expire as expire

    return expire(args)


def cmd_check_config(args) -> int:
    from .checkconfig import cmd_check_config as check_config

    return check_config(args)


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
    "check": cmd_check, "repair": cmd_repair, "move": cmd_move,
    "move-expire": cmd_move_expire, "failover": cmd_failover, "reload": cmd_reload,
    **lifecycle.COMMANDS, **fleet.COMMANDS,
}
