"""The quarantine store: users held out of a link's stream, with their pending entries on disk.

``/var/lib/syncwarden/quarantine/<link>/<name>.json`` records the user (since, attempts, last
error, next retry); ``<name>.entries`` holds the sync log lines moved out of the stream, in
Cyrus's own format, so an admin can read them. ``<name>`` is a readable part of the user id
plus a hash of link and user (``alice+9f86d0...``): user ids of any length and character set
fit a file name, and the real id is kept inside the record only. Files named by the old scheme
(the quoted user id, ``alice.json``) are moved to their new names on load.

The record is written before any entry is moved and removed after the entries, every write
made durable (file and directory fsync), so a crash at any point leaves the user quarantined
with every entry still somewhere (the store, the log, or both: replays are idempotent). Loading
never trusts the files: each record is validated (out-of-range times and counts are repaired
and reported), a record that cannot be read is rebuilt from its entries, and entries whose
record was lost get a new one; whatever cannot be repaired is reported, never ignored.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.parse
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .. import state as files
from ..cyrus.synclog import line_users

log = logging.getLogger(__name__)

# Failed retries counted at most; the back-off is capped long before, and a count kept this
# small keeps ``retry_interval * 2 ** attempts`` a finite float.
ATTEMPTS_MAX = 1000
# Times further ahead than this are damage, not a plan: retries are at most a day apart, the
# first one at most 30 days (config bounds).
HORIZON = 366 * 86400.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]")
_CHUNK = 1 << 20


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
        from ..timefmt import iso

        return {"link": self.link, "user": self.user, "since": iso(self.since),
                "attempts": self.attempts, "error": self.error,
                "next_retry": iso(self.next_retry), "entries": entries}


_FIELDS = {f.name for f in fields(Quarantined)}


def file_stem(link: str, user: str) -> str:
    """The store's file name (without suffix) for a user of a link: bounded length, any id."""
    import hashlib     # here: it maps libcrypto (3.5 MB), needed once users are quarantined

    digest = hashlib.sha256(f"{link}\0{user}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"{_UNSAFE.sub('_', user)[:40]}+{digest[:32]}"


def _legacy_stem(user: str) -> str:
    # The old scheme; it never yields '+' (quoted as %2B), which tells the two apart.
    return urllib.parse.quote(user, safe="@")


def _wall(value, now: float) -> float | None:
    """A persisted wall-clock time, or None when it is not a plausible one (nan, inf, huge)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not 0 <= value <= now + HORIZON:   # false for nan too
        return None
    return float(value)


def _count(value, lo: int, hi: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        return None
    return min(value, hi)


def validated(raw, link: str, now: float) -> tuple[Quarantined, list[str]]:
    """A record read from disk, repaired where a field is out of range; the notes say what was
    repaired. ValueError when not even the user can be read from it."""
    if not isinstance(raw, dict):
        raise ValueError("expected a JSON object")
    user = raw.get("user")
    if not isinstance(user, str) or not user:
        raise ValueError("no user id in it")
    notes = []
    if raw.get("link", link) != link:
        notes.append(f"names link {raw.get('link')!r} but lies under {link}: kept under {link}")
    since = _wall(raw.get("since", now), now)
    if since is None:
        notes.append(f"since {raw.get('since')!r} out of range: set to now")
    next_retry = _wall(raw.get("next_retry", 0.0), now)
    if next_retry is None:
        notes.append(f"next_retry {raw.get('next_retry')!r} out of range: retried now")
    attempts = _count(raw.get("attempts", 0), 0, ATTEMPTS_MAX)
    if attempts is None:
        notes.append(f"attempts {raw.get('attempts')!r} is not a count: set to 0")
    elif attempts != raw.get("attempts", 0):
        notes.append(f"attempts {raw.get('attempts')!r} capped at {ATTEMPTS_MAX}")
    offset = _count(raw.get("retry_offset", -1), -1, 2**63)
    error = raw.get("error", "")
    if not isinstance(error, str):
        notes.append("error is not a string")
        error = json.dumps(error)
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        notes.append(f"unknown fields ignored: {', '.join(map(str, unknown))}")
    return Quarantined(link, user, now if since is None else since, error,
                       attempts or 0, now if next_retry is None else next_retry,
                       -1 if offset is None else offset), notes


class QuarantineStore:
    def __init__(self, root: Path, clock=time.time):
        self.root = Path(root)
        self.clock = clock
        self._records: dict[tuple[str, str], Quarantined] = {}
        # What loading found damaged and repaired, or could not repair: for the journal.
        self.problems: list[str] = []
        self._load()

    def _path(self, link: str, user: str, suffix: str) -> Path:
        return self.root / link / (file_stem(link, user) + suffix)

    # -- loading -----------------------------------------------------------------------------
    def _load(self) -> None:
        now = self.clock()
        found = []
        for meta in sorted(self.root.glob("*/*.json")):
            link = meta.parent.name
            try:
                q, notes = validated(json.loads(meta.read_bytes()), link, now)
            except (OSError, ValueError, RecursionError) as exc:
                why = getattr(exc, "strerror", None) or exc
                user = self._owner_of(meta)
                if user is None:
                    self.problems.append(f"{meta}: unreadable record ({why}) whose user its"
                                         " entries do not tell: left in place, not retried")
                    continue
                q = Quarantined(link, user, now, f"record unreadable ({why}), entries kept")
                notes = [f"unreadable ({why}): rebuilt for user {user!r} from its file name"
                         " or entries"]
            found.append((meta, q, notes))
        # A record at its own name wins over a copy under the old name (a migration that a
        # crash interrupted).
        found.sort(key=lambda f: f[0] != self._path(f[1].link, f[1].user, ".json"))
        for meta, q, notes in found:
            self.problems += [f"{meta}: {n}" for n in notes]
            try:
                self._settle(meta, q, bool(notes))
            except OSError as exc:   # a repair that cannot be written must not stop the start
                self.problems.append(f"{meta}: cannot be repaired on disk ({exc}): used as read")
        for entries in sorted(self.root.glob("*/*.entries")):
            if entries.with_suffix(".json").exists():
                continue    # its record (or one left in place above, already reported)
            try:
                self._orphan(entries, now)
            except OSError as exc:
                self.problems.append(f"{entries}: cannot be repaired on disk ({exc})")

    def _settle(self, meta: Path, q: Quarantined, repaired: bool) -> None:
        """Take a loaded record; write back what was repaired, move old names to new ones."""
        home = self._path(q.link, q.user, ".json")
        if (q.link, q.user) not in self._records:
            self._records[(q.link, q.user)] = q
            if repaired or meta != home:
                self.save(q)
        if meta != home:
            self._merge_entries(meta.with_suffix(".entries"), home.with_suffix(".entries"))
            files.unlink(meta)

    def _orphan(self, entries: Path, now: float) -> None:
        """Entries whose record was lost (a crash before the record reached the disk)."""
        link = entries.parent.name
        user = self._owner_of(entries)
        if user is None:
            try:
                empty = entries.stat().st_size == 0
            except FileNotFoundError:
                return
            if empty:
                files.unlink(entries)      # created, nothing written: nothing to keep
            else:
                self.problems.append(f"{entries}: entries without a record, and their user"
                                     " cannot be told: left in place, not retried")
            return
        home = self._path(link, user, ".entries")
        if (link, user) not in self._records:
            q = Quarantined(link, user, now, "record lost, entries kept", next_retry=now)
            self._records[(link, user)] = q
            self.problems.append(f"{entries}: entries of {user!r} without a record: quarantined"
                                 " again")
            self.save(q)
        self._merge_entries(entries, home)

    def _owner_of(self, path: Path) -> str | None:
        """Whose record or entries ``path`` is: from an old-style name, else from the entries'
        first line whose users include the one the name was made for."""
        stem, link = path.stem, path.parent.name
        if "+" not in stem:
            user = urllib.parse.unquote(stem)
            return user if user and _legacy_stem(user) == stem else None
        try:
            with open(path.with_suffix(".entries"), "rb") as f:
                for _, line in zip(range(64), f):
                    for user in line_users(line):
                        if file_stem(link, user) == stem:
                            return user
        except OSError:
            pass
        return None

    def _merge_entries(self, src: Path, dst: Path) -> None:
        if src == dst or not src.exists():
            return
        if not dst.exists():
            os.rename(src, dst)
            files.fsync_dir(dst.parent)
            return
        with open(src, "rb") as f:        # a crash here duplicates entries, never loses one
            while chunk := f.read(_CHUNK):
                files.append(dst, chunk)
        files.unlink(src)

    # -- reading -----------------------------------------------------------------------------
    def users(self, link: str) -> set[str]:
        return {u for (lk, u) in self._records if lk == link}

    def records(self, link: str | None = None) -> list[Quarantined]:
        return sorted((q for q in self._records.values() if link in (None, q.link)),
                      key=lambda q: (q.link, q.user))

    def get(self, link: str, user: str) -> Quarantined | None:
        return self._records.get((link, user))

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

    # -- writing -----------------------------------------------------------------------------
    def add(self, link: str, user: str, error: str, now: float, retry_in: float) -> Quarantined:
        q = self._records.get((link, user))
        if q is None:
            q = Quarantined(link, user, now, error, next_retry=now + retry_in)
        else:
            q.error = error
        self.save(q)
        return q

    def save(self, q: Quarantined) -> None:
        fixed, notes = validated(asdict(q), q.link, self.clock())
        if notes:   # what is written must load: never persist a time or count out of range
            log.warning("quarantine record of %s on %s repaired before saving: %s", q.user,
                        q.link, "; ".join(notes), extra={"link": q.link})
            q.__dict__.update(asdict(fixed))
        files.atomic_write(self._path(q.link, q.user, ".json"),
                           json.dumps(asdict(q), allow_nan=False).encode(), 0o600)
        self._records[(q.link, q.user)] = q

    def append(self, link: str, moved: dict[str, list[bytes]]) -> None:
        for user, lines in moved.items():
            files.append(self._path(link, user, ".entries"), b"".join(lines), 0o600)

    def remove(self, link: str, user: str) -> None:
        """Forget a user: entries first, then the record (a crash in between keeps it held)."""
        for suffix in (".entries", ".json"):
            files.unlink(self._path(link, user, suffix))
        self._records.pop((link, user), None)
