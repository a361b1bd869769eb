"""The quarantine store: users held out of a link's stream, with their pending entries on disk.

``/var/lib/syncwarden/quarantine/<link>/<user>.json`` records the user (since, attempts, last
error, next retry); ``<user>.entries`` holds the sync log lines moved out of the stream, in
Cyrus's own format, so an admin can read them. The record is written before any entry is moved
and removed after the entries, so a crash at any point leaves the user quarantined with every
entry still somewhere (the store, the log, or both: replays are idempotent).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

from ..state import atomic_write


@dataclass
class Quarantined:
    link: str
    user: str
    since: float            # wall clock
    error: str
    attempts: int = 0
    next_retry: float = 0.0  # wall clock
    retry_offset: int = -1   # size of the entries file when the running retry began

    def as_json(self, entries: int) -> dict:
        from .report import iso

        return {"link": self.link, "user": self.user, "since": iso(self.since),
                "attempts": self.attempts, "error": self.error,
                "next_retry": iso(self.next_retry), "entries": entries}


class QuarantineStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._records: dict[tuple[str, str], Quarantined] = {}
        for meta in self.root.glob("*/*.json"):
            try:
                q = Quarantined(**json.loads(meta.read_text()))
            except (OSError, ValueError, TypeError):
                # Damaged record: keep the user quarantined (safe) with what the name says.
                q = Quarantined(meta.parent.name, urllib.parse.unquote(meta.stem), 0.0,
                                f"unreadable record {meta}")
            self._records[(q.link, q.user)] = q

    def _path(self, link: str, user: str, suffix: str) -> Path:
        return self.root / link / (urllib.parse.quote(user, safe="@") + suffix)

    def users(self, link: str) -> set[str]:
        return {u for (lk, u) in self._records if lk == link}

    def records(self, link: str | None = None) -> list[Quarantined]:
        return sorted((q for q in self._records.values() if link in (None, q.link)),
                      key=lambda q: (q.link, q.user))

    def get(self, link: str, user: str) -> Quarantined | None:
        return self._records.get((link, user))

    def add(self, link: str, user: str, error: str, now: float, retry_in: float) -> Quarantined:
        q = self._records.get((link, user))
        if q is None:
            q = Quarantined(link, user, now, error, next_retry=now + retry_in)
        else:
            q.error = error
        self.save(q)
        return q

    def save(self, q: Quarantined) -> None:
        atomic_write(self._path(q.link, q.user, ".json"), json.dumps(asdict(q)).encode(), 0o600)
        self._records[(q.link, q.user)] = q

    def append(self, link: str, moved: dict[str, list[bytes]]) -> None:
        for user, lines in moved.items():
            path = self._path(link, user, ".entries")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, b"".join(lines))
                os.fsync(fd)
            finally:
                os.close(fd)

    def entries_size(self, link: str, user: str) -> int:
        try:
            return self._path(link, user, ".entries").stat().st_size
        except FileNotFoundError:
            return 0

    def entries(self, link: str, user: str, start: int = 0) -> list[bytes]:
        try:
            with open(self._path(link, user, ".entries"), "rb") as f:
                f.seek(start)
                return f.read().splitlines(keepends=True)
        except FileNotFoundError:
            return []

    def count(self, link: str, user: str) -> int:
        return len(self.entries(link, user))

    def remove(self, link: str, user: str) -> None:
        """Forget a user: entries first, then the record (a crash in between keeps it held)."""
        for suffix in (".entries", ".json"):
            try:
                self._path(link, user, suffix).unlink()
            except FileNotFoundError:
                pass
        self._records.pop((link, user), None)
