"""Cyrus's session files: which processes serve one user now (user moves, docs/moves.md).

Every Cyrus service that serves a client writes ``{proc_path}/PID`` (default
``{configdirectory}/proc``; procs.proc_dir) for as long as it does, one line
``service\\thost\\tuserid\\tmailbox\\tcommand`` (proc_register: 3.6.1 imap/proc.c, 3.10.2
lib/proc.c); ``PID.new`` while it writes it. cyr_deny finds a user's sessions the same way
(imap/cyr_deny.c kill_existing_services). The files and /proc are read as hostile input
(proctable.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .imapdconf import ImapdConf
from .procs import SERVICES, proc_dir
from .proctable import exe_of, names, read_file


@dataclass(frozen=True)
class Session:
    pid: int
    service: str
    client: str


def user_sessions(imapd: ImapdConf, user: str, proc_root="/proc") -> list[Session]:
    """The processes serving ``user`` now. Only pids that are a Cyrus service: a file left by
    a crashed process names a pid that may belong to anything by now."""
    folder = proc_dir(imapd)
    if folder is None:
        return []
    found = []
    for name in names(folder):
        if not (name.isascii() and name.isdigit()):
            continue                 # PID.new while a process writes its file
        raw = read_file(folder / name, 4096)
        if raw is None:
            continue
        fields = raw.decode("utf-8", "replace").split("\n", 1)[0].split("\t")
        if len(fields) < 3 or fields[2] != user:
            continue
        exe = exe_of(Path(proc_root), int(name))
        if exe and os.path.basename(exe) in SERVICES:
            found.append(Session(int(name), fields[0], fields[1]))
    return found
