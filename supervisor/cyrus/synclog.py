"""Rewriting Cyrus sync logs: moving a user's entries out, and putting entries back.

Cyrus writers (imap/sync_log.c) open ``log`` with O_APPEND, take an fcntl lock on it, check
that the path still names the inode they locked (else retry: it was renamed to log-run), write
whole lines, fsync and unlock. Rewriting ``log`` follows the same protocol: with the lock held,
read it, write the kept lines to a new file and rename that over ``log``; a writer waiting for
the lock then finds a new inode and retries on it. The entries moved out are written to their
destination (and synced) before the rewrite, so a crash leaves a duplicate, never a loss:
replaying a sync log entry is idempotent.

``log-run`` is rewritten only while no worker runs: sync_client unlinks it after a pass.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections import defaultdict
from pathlib import Path

from .failures import mailbox_user

_TOKEN = re.compile(rb'"(?:[^"\\\n]|\\.)*"|[^\s"]+')
_USER_TYPES = {b"SEEN", b"SUB", b"UNSUB", b"META", b"SIEVE", b"USER", b"UNUSER"}
_LOCK_TRIES = 64


def _unquote(token: bytes) -> str:
    if token.startswith(b'"') and token.endswith(b'"') and len(token) >= 2:
        token = re.sub(rb"\\(.)", rb"\1", token[1:-1])
    return token.decode("utf-8", "replace")


def line_users(line: bytes) -> set[str]:
    """Userids an entry belongs to (a RENAME or DOUBLEMAILBOX may name two)."""
    parts = _TOKEN.findall(line)
    if len(parts) < 2:
        return set()
    kind, args = parts[0].upper(), [_unquote(p) for p in parts[1:3]]
    if kind in _USER_TYPES:
        return {args[0].replace("^", ".")}
    return {u for u in (mailbox_user(a) for a in args) if u}


def split(data: bytes, users: set[str]) -> tuple[bytes, dict[str, list[bytes]]]:
    """(the lines to keep, {user: lines moved out}); a line naming two quarantined users goes
    to the first, in sorted order, so that it is stored exactly once."""
    kept, moved = [], defaultdict(list)
    for line in data.splitlines(keepends=True):
        hit = sorted(line_users(line) & users)
        if hit:
            moved[hit[0]].append(line if line.endswith(b"\n") else line + b"\n")
        else:
            kept.append(line)
    return b"".join(kept), dict(moved)


def users_in(path: Path) -> set[str]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return set()
    found = set()
    for line in data.splitlines():
        found |= line_users(line)
    return found


class _Locked:
    """``path`` opened and fcntl-locked, the lock taken on the inode the path still names."""

    def __init__(self, path: Path, create: bool = False):
        self.path = Path(path)
        flags = os.O_RDWR | (os.O_CREAT | os.O_APPEND if create else 0)
        for _ in range(_LOCK_TRIES):
            self.fd = os.open(self.path, flags, 0o600)
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            st = os.fstat(self.fd)
            try:
                cur = os.stat(self.path)
                if (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
                    self.st = st
                    return
            except FileNotFoundError:
                if not create:
                    os.close(self.fd)
                    raise
            os.close(self.fd)          # renamed under us: try the file that has the name now
        raise OSError(f"{self.path}: renamed under us {_LOCK_TRIES} times in a row")

    def read(self) -> bytes:
        return os.pread(self.fd, self.st.st_size, 0)

    def close(self) -> None:
        os.close(self.fd)              # releases the lock


def move_out(path: Path, users: set[str], sink) -> int:
    """Move ``users``' lines from ``path`` to ``sink(moved)``; returns how many were moved."""
    try:
        f = _Locked(path)
    except FileNotFoundError:
        return 0
    try:
        kept, moved = split(f.read(), users)
        if not moved:
            return 0
        sink(moved)                    # stored and synced first: a crash now only duplicates
        tmp = f.path.with_name(f".{f.path.name}.syncwarden")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, kept)
            os.fchown(fd, f.st.st_uid, f.st.st_gid)
            os.fchmod(fd, f.st.st_mode & 0o777)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, f.path)
        _sync_dir(f.path.parent)
        return sum(len(v) for v in moved.values())
    finally:
        f.close()


def append(path: Path, lines: list[bytes], owner: tuple[int, int]) -> None:
    """Append entries the way a Cyrus writer does (for entries put back into the stream)."""
    if not lines:
        return
    f = _Locked(path, create=True)
    try:
        if f.st.st_size == 0 and (f.st.st_uid, f.st.st_gid) != owner:
            os.fchown(f.fd, *owner)    # we created it: it must stay writable for Cyrus
        os.write(f.fd, b"".join(lines))
        os.fsync(f.fd)
    finally:
        f.close()


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
