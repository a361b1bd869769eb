"""The ``check`` and ``repair`` subcommands, and the last check's line in ``status``.

``check`` exits as a Nagios plugin would (exits.py), so that monitoring can run it: 0 in sync,
2 the sides differ (CRITICAL), 3 the check could not tell (UNKNOWN: a side or user unreadable, or
a usage, configuration or credentials error). ``repair`` exits as most commands: 0 repaired,
1 incomplete or refused, 2 usage, configuration or credentials.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..pair import check, compare
from ..pair.credentials import CredentialsError
from ..pair.imapclient import ImapError
from ..systemd.journal import Journal
from ..pair.repair import RepairError

from ..exits import CHECK_INCOMPLETE, EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from .ask import confirm, interactive, on_terminal


def _setup(args):
    """(config, imapd) for a known link, or an exit code after saying what is wrong."""
    from ..configload import ConfigProblem, load_checked

    try:
        cfg, imapd = load_checked(args.config)
    except ConfigProblem as exc:
        print(exc, file=sys.stderr)
        return None, EXIT_USAGE
    if args.link not in cfg.links:
        print(f"syncwarden {args.command}: no link named {args.link!r} (links:"
              f" {', '.join(cfg.links)})", file=sys.stderr)
        return None, EXIT_USAGE
    return (cfg, imapd), None


def cmd_check(args, journal=None, state_dir=None) -> int:
    state_dir = state_dir or args.state_dir
    loaded, _ = _setup(args)
    if loaded is None:
        return CHECK_INCOMPLETE
    cfg, imapd = loaded
    journal = journal or Journal()
    try:
        sides = check.sides_for(cfg, args.link)
        # progress lines are for a person watching, not for the timer's journal
        report = check.run(sides, imapd.sync_dir(args.link), deep=args.deep,
                           only_users=args.users, parallel=cfg.check.parallel,
                           progress_out=on_terminal(sys.stderr))
    except (CredentialsError, OSError) as exc:    # OSError: the sync logs (not root?)
        print(f"syncwarden check: {exc}", file=sys.stderr)
        return CHECK_INCOMPLETE
    except ImapError as exc:
        # A whole side is unreachable: that is a result too, for status and the journal.
        report = compare.Report(args.link, args.deep, started=time.time())
        report.errors.append(str(exc))
        report.finished = time.time()
        print(f"syncwarden check: {exc}", file=sys.stderr)
    if not args.users:
        try:
            check.save(report, state_dir)
        except OSError as exc:
            print(f"syncwarden check: cannot record the result: {exc}", file=sys.stderr)
    check.journal_report(journal, report, args.users)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(compare.render(report))
    return report.exit_code


def cmd_repair(args, journal=None, state_dir=None) -> int:
    state_dir = state_dir or args.state_dir
    from . import repair as repaircmd

    loaded, code = _setup(args)
    if loaded is None:
        return code
    cfg, imapd = loaded
    what = f"repair {args.link}" + "".join(f" --user {u}" for u in args.users or ())
    if not args.dry_run and not args.yes and not interactive():
        return confirm("repair", [f"{what}: copy replica-only mail to the master, then let"
                                  " replication replace the replica's conflicting mailboxes"],
                       False)

    def approve(steps: list[str]) -> bool:
        return args.yes or confirm("repair", steps, False) is None
    try:
        return repaircmd.run(cfg, imapd, args.link, args.users, args.dry_run,
                             journal or Journal(), args.socket, state_dir,
                             err=on_terminal(sys.stderr), approve=approve)
    except (CredentialsError, OSError) as exc:
        print(f"syncwarden repair: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ImapError, RepairError) as exc:
        print(f"syncwarden repair: {exc}", file=sys.stderr)
        return EXIT_PROBLEM


def add_last_checks(doc: dict, state_dir: Path) -> None:
    """Put each link's last full check into a status document (field ``last_check``)."""
    for link in doc.get("links", []):
        link["last_check"] = check.load_last(link["name"], state_dir)


def last_check_lines(doc: dict, now: float) -> list[str]:
    from ..timefmt import human_duration

    lines = []
    for link in doc.get("links", []):
        last = link.get("last_check")
        if not last:
            continue
        ago = human_duration(now - float(last.get("finished") or 0))
        kind = "deep check" if last.get("deep") else "check"
        if last.get("result") == "error":
            what = f"incomplete ({last.get('errors')} error(s))"
        elif last.get("result") == "differences":
            what = (f"DIFFERENCES: {compare.counts_line(last.get('counts', {}))};"
                    f" {compare.what_to_run(link['name'])}")
        else:
            what = "in sync"
        lines.append(f"{link['name']}: last {kind} {ago} ago: {what}")
    return lines
