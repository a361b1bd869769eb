"""Asking before a destructive command, and knowing when there is somebody to ask.

``repair`` (it may replace replica mailboxes), ``failover``, ``promote``, ``demote`` and
``quarantine drop`` say what they are about to do and ask on a terminal; ``--yes`` answers for
scripts. Without a terminal and without ``--yes`` they refuse with one line (exit 2): a cron job
or a unit that runs one by mistake must not act.
"""

from __future__ import annotations

import sys

from ..exits import EXIT_PROBLEM, EXIT_USAGE


def interactive(stdin=None, stderr=None) -> bool:
    """A person at a terminal: both the question and the answer go through one."""
    stdin, stderr = stdin or sys.stdin, stderr or sys.stderr
    try:
        return stdin.isatty() and stderr.isatty()
    except (AttributeError, ValueError):    # closed, or not a file
        return False


def on_terminal(stream=None):
    """``stream`` (stderr by default) when a person watches it, else None: progress lines
    are for people, and under a timer or a pipe they would only fill the journal."""
    stream = stream or sys.stderr
    try:
        return stream if stream.isatty() else None
    except (AttributeError, ValueError):
        return None


def confirm(command: str, plan: list[str], yes: bool, stdin=None, stderr=None) -> int | None:
    """None to go on; otherwise the exit code, after saying why not.

    ``plan``: what the command will do, one line each (shown before the question, and in the
    refusal without a terminal, so that the log of a script says what did not happen)."""
    stdin, stderr = stdin or sys.stdin, stderr or sys.stderr
    if yes:
        return None
    if not interactive(stdin, stderr):
        print(f"syncwarden {command}: refused: not asked on a terminal and no --yes given;"
              f" it would: {'; '.join(plan)}", file=stderr)
        return EXIT_USAGE
    print(f"syncwarden {command} will:", file=stderr)
    for line in plan:
        print(f"  - {line}", file=stderr)
    print("Go on? [y/N] ", end="", file=stderr, flush=True)
    try:
        answer = stdin.readline()
    except KeyboardInterrupt:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return None
    print(f"syncwarden {command}: nothing done", file=stderr)
    return EXIT_PROBLEM
