"""The `syncwarden` command line and what only it needs (the worker units' ExecStart among them).

``main`` is what the launcher runs. The worker units' own command lines (worker.py) are served
before the rest of the command line (cli.py, which imports most of syncwarden) is loaded: a
worker's start-up lies between a replica's return and the first message on it, and between
``systemctl stop`` and a drain's first pass.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["worker"]:
        from .worker import command

        done = command(argv[1:])          # None: another form, which cli.py parses
        if done is not None:
            return done
    from .cli import main as cli_main

    return cli_main(argv)
