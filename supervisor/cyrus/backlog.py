"""Backlog accounting for one link from Cyrus's sync log files (read-only).

A channel's pending entries are ``{configdirectory}/sync/<link>/log`` (appended by every Cyrus
writer) plus ``log-run`` (the file sync_client is working on: ``log`` renamed). Files are
followed like ``tail -f``: each tick reads only the bytes appended since the last one, and a
rename of ``log`` to ``log-run`` is recognised by its inode, so the work per tick is
proportional to what was appended, never to the size of the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .synclog import VALID_LINE, count_lines  # noqa: F401  (the grammar lives there)

_CHUNK = 4 << 20


class _Tail:
    """Position and counts of one file, identified by (device, inode)."""

    def __init__(self, ident: tuple[int, int]):
        self.ident = ident
        self.offset = 0          # bytes consumed, always at a line boundary
        self.entries = 0
        self.malformed = 0
        self.first_time: float | None = None  # monotonic time the oldest entry appeared
        self.last_look: float | None = None   # monotonic time of the previous follow()
        # Set when the directory changed: Cyrus unlinks log-run and a writer creates a new log
        # at any time, and the new file may get the old inode number back.
        self.suspect = False

    def follow(self, path: Path, size: int, now: float, written: float | None = None) -> None:
        """Count what was appended. Lines found on the first look at a file are dated by
        ``written`` (from its mtime); lines appended later, by the previous look, which did
        not see them yet: an age is then at most one look too old, and never 0 while
        something is pending."""
        try:
            self._follow(path, size, now, written)
        finally:
            self.last_look = now

    def _follow(self, path: Path, size: int, now: float, written: float | None) -> None:
        if self.suspect:
            # Recount from the start (rare: only after a rename in the directory, and then log
            # is small because the worker just took it). Fewer lines means a new file, dated
            # like one.
            before, first = self.entries + self.malformed, self.first_time
            self.suspect = False
            self.offset = self.entries = self.malformed = 0
            self.first_time = None
            self._follow(path, size, now, written)
            if self.entries + self.malformed >= before and first is not None:
                self.first_time = first
            return
        if size < self.offset:
            # Rewritten in place (the quarantine takes users' lines out): what is left was
            # pending already, and keeps its age.
            self.offset = self.entries = self.malformed = 0
            written = self.first_time if self.first_time is not None else written
        if size == self.offset:
            return
        with open(path, "rb") as f:
            f.seek(self.offset)
            remaining = size - self.offset
            carry = b""
            while remaining > 0:
                block = f.read(min(_CHUNK, remaining))
                if not block:
                    break
                remaining -= len(block)
                block = carry + block
                cut = block.rfind(b"\n") + 1
                carry = block[cut:]
                if cut:
                    valid, bad = count_lines(block[:cut])
                    if self.entries + self.malformed == 0:
                        self.first_time = next(t for t in (written, self.last_look, now)
                                               if t is not None)
                    self.entries += valid
                    self.malformed += bad
                    self.offset += cut


@dataclass(frozen=True)
class BacklogSnapshot:
    entries: int = 0
    malformed: int = 0
    oldest_age: float = 0.0       # seconds since the oldest pending entry was written (approx.)
    log_run: bool = False
    log_run_age: float = 0.0      # seconds since log was renamed to log-run
    error: str | None = None

    def as_json(self) -> dict:
        out = {"entries": self.entries, "oldest_age_seconds": round(self.oldest_age, 3),
               "log_run": self.log_run, "malformed": self.malformed}
        if self.log_run:
            out["log_run_age_seconds"] = round(self.log_run_age, 3)
        if self.error:
            out["error"] = self.error
        return out


class Backlog:
    """Follows ``log`` and ``log-run`` of one channel directory."""

    def __init__(self, sync_dir: Path):
        self.sync_dir = Path(sync_dir)
        self.log_path = self.sync_dir / "log"
        self.run_path = self.sync_dir / "log-run"
        self._log: _Tail | None = None
        self._run: _Tail | None = None
        self._dir_mtime: int | None = None

    def read(self, mono: float, wall: float) -> BacklogSnapshot:
        try:
            dir_st = _stat(self.sync_dir)
            dir_mtime = dir_st.st_mtime_ns if dir_st is not None else None
            if dir_mtime != self._dir_mtime and self._log is not None:
                self._log.suspect = True  # names changed: "log" may be a new file, same inode
            self._dir_mtime = dir_mtime
            run_st = _stat(self.run_path)
            log_st = _stat(self.log_path)
            self._run = self._track(self._run, self.run_path, run_st, mono, wall)
            self._log = self._track(self._log, self.log_path, log_st, mono, wall)
        except OSError as exc:
            return BacklogSnapshot(error=f"{exc.filename}: {exc.strerror}")
        tails = [t for t in (self._run, self._log) if t is not None]
        firsts = [t.first_time for t in tails if t.entries + t.malformed and t.first_time is not None]
        return BacklogSnapshot(
            entries=sum(t.entries for t in tails),
            malformed=sum(t.malformed for t in tails),
            oldest_age=max(0.0, mono - min(firsts)) if firsts else 0.0,
            log_run=run_st is not None,
            # rename(2) sets ctime, so this survives a daemon restart
            log_run_age=max(0.0, wall - run_st.st_ctime) if run_st is not None else 0.0)

    def _track(self, tail, path, st, mono, wall):
        if st is None:
            return None
        ident = (st.st_dev, st.st_ino)
        # A file we have not seen grow: its entries are at least as old as its mtime.
        by_mtime = mono - max(0.0, wall - st.st_mtime)
        written = by_mtime if tail is not None and tail.suspect else None
        if tail is None or tail.ident != ident:
            # log renamed to log-run keeps its inode: carry its position and age over.
            if self._log is not None and self._log.ident == ident and path == self.run_path:
                tail = self._log
                self._log = None
            else:
                tail = _Tail(ident)
                written = by_mtime
        tail.follow(path, st.st_size, mono, written)
        return tail


def _stat(path: Path):
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
