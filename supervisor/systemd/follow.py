"""Following the workers' journal from where the last daemon left off (python3-systemd).

sync_client reports failures only through syslog, which journald files under the unit that ran
it. The reader matches exactly this instance's units (rolling workers, user syncs, drain passes:
``_SYSTEMD_UNIT=`` field matches), so nothing of other instances or services is read. It is read
from the daemon's select loop (the reader's inotify descriptor) and once a tick, in bounded
batches, and each line goes to ``on_line(unit, message, invocation, at)`` (``at``: journal time,
µs).

The position is a journal cursor kept in the instance's state directory, saved after the tick
that acted on what was read (at most every CURSOR_SAVE seconds, and at exit). At start the reader
resumes after it, so failures the workers logged while the daemon was down (crashed, killed,
restarting) are read. Bounded: when more than REPLAY_MAX entries of this instance's units were
written since, only the newest REPLAY_MAX are read, and the journal says so. Without a cursor
(the first start) reading begins at the end of the journal, and a cursor is saved at once.

``history`` reads one invocation's newest lines: the tick asks for them when it adopts a worker
that was started before the daemon could read it.
"""

from __future__ import annotations

import logging
import selectors
from pathlib import Path

from ..state import atomic_write

log = logging.getLogger(__name__)

REPLAY_MAX = 5000      # entries read at start at most, the newest ones
BATCH = 2000           # entries read per call, so that a flood cannot stall the loop
HISTORY_MAX = 200      # newest lines of one invocation read for an adopted worker
CURSOR_SAVE = 2.0      # seconds between cursor writes while lines arrive


def _reader():
    from systemd import journal   # python3-systemd

    # journal time as plain µs, to order lines; other fields decoded as text where they can be
    return journal.Reader(converters={"__REALTIME_TIMESTAMP": int})


class JournalFollower:
    def __init__(self, on_line, selector: selectors.BaseSelector, clock, cursor_file: Path,
                 reader_factory=_reader):
        self.on_line = on_line
        self.selector = selector
        self.clock = clock
        self.cursor_file = Path(cursor_file)
        self.reader_factory = reader_factory
        self.reader = None
        self.units: tuple[str, ...] = ()
        self.cursor: str | None = None        # the last entry read (or where reading began)
        self.skip: str | None = None          # the entry at the cursor: read already
        self.saved: str | None = None
        self.saved_at = float("-inf")

    # -- position ----------------------------------------------------------------------------
    def watch(self, units) -> None:
        """Read these units' lines (called at start and after a reload)."""
        units = tuple(sorted(set(units)))
        if units == self.units and self.reader is not None:
            return
        self.units = units
        if self.reader is None:
            if not self._open():
                return
        else:
            self.reader.flush_matches()
            self._match()
            self._seek_after(self.cursor)

    def _open(self) -> bool:
        try:
            self.reader = self.reader_factory()
        except Exception as exc:   # python3-systemd missing, or no journal to read
            log.error("cannot read the workers' journal (%s): failed users will not be"
                      " detected", exc)
            return False
        saved = self._load()
        self._match()
        if saved is not None:
            try:
                self._replay_from(saved)
            except (OSError, ValueError) as exc:     # not a cursor sd-journal can read
                log.warning("cannot resume the workers' journal at the cursor in %s (%s):"
                            " following it from now", self.cursor_file, exc)
                saved = None
        if saved is None:
            self._start_at_end()
        self.selector.register(self.reader.fileno(), selectors.EVENT_READ, self._ready)
        return True

    def _start_at_end(self) -> None:
        """From the end of the whole journal (first start): a position that a saved cursor can
        name even before any worker logged anything."""
        r = self.reader
        r.flush_matches()
        r.seek_tail()
        self.cursor = r.get_previous().get("__CURSOR")
        self._match()
        self._seek_after(self.cursor)
        self.save(force=True)

    def _match(self) -> None:
        for unit in self.units:
            self.reader.add_match(_SYSTEMD_UNIT=unit)   # one field: the matches are OR-ed

    def _seek_after(self, cursor: str | None) -> None:
        if cursor is None:
            self.reader.seek_tail()
            self.reader.get_previous()
            return
        self.reader.seek_cursor(cursor)
        self.skip = cursor            # the entry at the cursor itself comes first, if it is ours

    def _replay_from(self, cursor: str) -> None:
        """Position after ``cursor``; if more than REPLAY_MAX entries follow, before the
        newest REPLAY_MAX of them instead."""
        r = self.reader
        r.seek_cursor(cursor)
        count = 0
        entry = r.get_next()
        while entry and count <= REPLAY_MAX:
            if entry.get("__CURSOR") != cursor:
                count += 1
            entry = r.get_next()
        self.cursor = cursor
        if count <= REPLAY_MAX:
            self._seek_after(cursor)
            if count:
                log.info("reading %d worker journal %s written since the daemon last ran",
                         count, "entry" if count == 1 else "entries")
            return
        r.seek_tail()
        r.get_previous(REPLAY_MAX + 1)      # the entry before the newest REPLAY_MAX
        log.warning("more than %d worker journal entries were written since the daemon last"
                    " ran: reading only the newest %d", REPLAY_MAX, REPLAY_MAX)

    # -- reading -----------------------------------------------------------------------------
    def _ready(self) -> None:
        self.reader.process()          # resets the descriptor's readiness
        self.pump()

    def pump(self) -> int:
        """Deliver up to BATCH new entries; returns how many were read."""
        if self.reader is None:
            return 0
        n = 0
        while n < BATCH:
            entry = self.reader.get_next()
            if not entry:
                break
            n += 1
            cursor = entry.get("__CURSOR")
            if cursor is not None and cursor == self.skip:
                self.skip = None
                continue
            self.skip = None
            self.cursor = cursor or self.cursor
            message, unit = entry.get("MESSAGE"), entry.get("_SYSTEMD_UNIT")
            if isinstance(message, bytes):     # not UTF-8: journald keeps the bytes
                message = message.decode("utf-8", "replace")
            if isinstance(message, str) and isinstance(unit, str):
                self.on_line(unit, message, entry.get("_SYSTEMD_INVOCATION_ID"),
                             entry.get("__REALTIME_TIMESTAMP"))
        return n

    def history(self, unit: str, invocation: str) -> list[tuple[str, int]]:
        """The newest lines of one run of a unit, oldest first: [(message, at)]."""
        r = self.reader_factory()
        try:
            r.add_match(_SYSTEMD_UNIT=unit, _SYSTEMD_INVOCATION_ID=invocation)
            r.seek_tail()
            out = []
            while len(out) < HISTORY_MAX:
                entry = r.get_previous()
                if not entry:
                    break
                message = entry.get("MESSAGE")
                if isinstance(message, bytes):
                    message = message.decode("utf-8", "replace")
                if isinstance(message, str):
                    out.append((message, entry.get("__REALTIME_TIMESTAMP")))
            return out[::-1]
        finally:
            r.close()

    # -- the cursor file ---------------------------------------------------------------------
    def _load(self) -> str | None:
        try:
            text = self.cursor_file.read_text().strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read %s (%s): following the workers' journal from now",
                        self.cursor_file, exc)
            return None
        return text or None

    def save(self, force: bool = False) -> None:
        """Remember the position; called after each tick, which has acted on what was read."""
        if self.cursor is None or self.cursor == self.saved:
            return
        now = self.clock()
        if not force and now - self.saved_at < CURSOR_SAVE:
            return
        try:
            atomic_write(self.cursor_file, self.cursor.encode() + b"\n", mode=0o600)
        except OSError as exc:
            log.warning("cannot save the journal position to %s: %s", self.cursor_file, exc)
            return
        self.saved, self.saved_at = self.cursor, now

    def close(self) -> None:
        if self.reader is None:
            return
        self.save(force=True)
        try:
            self.selector.unregister(self.reader.fileno())
        except (KeyError, ValueError):
            pass
        self.reader.close()
        self.reader = None
