"""Splitting a sync log by user, streamed: the part of a rewrite that reads every byte.

The file is read in chunks (no single read of a whole file: one read returns at most about
2 GiB, and memory stays bounded), lines are never split across chunks, and lines are found
at C speed: every line naming a user holds a byte string known beforehand (synclog.needle),
so only the few lines holding one are parsed, and each distinct line only once. A "line"
longer than LONG_LINE is not an entry (Cyrus's names are far shorter): it is passed through.
"""

from __future__ import annotations

import os

from . import synclog

CHUNK = 4 << 20          # bytes read at a time
BATCH = 8 << 20          # bytes of moved lines handed to the sink at a time
LONG_LINE = 1 << 20      # a "line" longer than this is garbage: passed through, never parsed
_UNSEEN = object()


class Cancelled(Exception):
    """The caller asked the rewrite to stop; the log was left as it was."""


def split_stream(fd: int, out, users: set[str], sink, hook, cancelled, chunk: int = CHUNK) -> int:
    """Read ``fd`` to its end in chunks of ``chunk`` bytes: the lines naming one of ``users`` go
    to ``sink({user: [lines]})`` in batches of about BATCH bytes, the rest to ``out``
    (``keep(view)``, ``keep_around(data, start, end, hits)``). Returns how many lines moved.
    ``cancelled()`` is asked before each chunk; ``hook(step)`` is told "read" after each chunk
    and "stored" after each batch."""
    finder = Finder(users)
    batch: dict[str, list[bytes]] = {}
    batched = moved = 0

    def split(data: bytes, start: int, end: int) -> None:
        nonlocal batched, moved
        hits = finder.hits(data, start, end)
        out.keep_around(data, start, end, hits)
        for ls, le, user in hits:
            line = data[ls:le]
            batch.setdefault(user, []).append(line if line[-1:] == b"\n" else line + b"\n")
            batched += le - ls
        moved += len(hits)
        if batched >= BATCH:
            flush_batch()

    def flush_batch() -> None:
        nonlocal batched
        if batch:
            sink(dict(batch))
            batch.clear()
            batched = 0
            hook("stored")

    pos, carry, passing = 0, b"", False
    while True:
        if cancelled is not None and cancelled():
            raise Cancelled(f"rewrite cancelled after {pos} bytes")
        block = os.pread(fd, chunk, pos)
        if not block:
            break
        pos += len(block)
        data = carry + block if carry else block
        carry = b""
        start = 0
        if passing:                      # inside an over-long line: pass it through
            nl = data.find(b"\n")
            if nl < 0:
                out.keep(memoryview(data))
                continue
            out.keep(memoryview(data)[:nl + 1])
            start, passing = nl + 1, False
        cut = max(data.rfind(b"\n") + 1, start)
        if cut > start:
            split(data, start, cut)
        carry = data[cut:]
        if len(carry) > LONG_LINE:
            out.keep(memoryview(carry))
            carry, passing = b"", True
        hook("read")
    if carry:                            # a last line without its newline (Cyrus ignores it)
        split(carry, 0, len(carry))
    flush_batch()
    return moved


class Finder:
    """Finds the lines of a buffer that name one of ``users``: candidate lines first, at C
    speed, by a byte string each user's lines must hold (synclog.needle); the grammar decides,
    once per distinct line (logs repeat the same lines)."""

    _CACHE = 1 << 16

    def __init__(self, users: set[str]):
        self.users = set(users)
        needles = [synclog.needle(u) for u in sorted(users)]
        # a backslash: quoting may escape any byte of a name, so such lines are candidates too
        self.needles = None if None in needles else sorted(set(needles)) + [b"\\"]
        self.verdicts: dict[bytes, str | None] = {}

    def hits(self, data: bytes, start: int, end: int) -> list[tuple[int, int, str]]:
        """(start, end, user) of each line in data[start:end] naming one of the users (the
        first in sorted order), in order."""
        out = []
        verdicts = self.verdicts
        for ls, le in self._candidates(data, start, end):
            line = data[ls:le]
            hit = verdicts.get(line, _UNSEEN)
            if hit is _UNSEEN:
                named = synclog.line_users(line) & self.users
                hit = min(named) if named else None
                if len(verdicts) >= self._CACHE:
                    verdicts.clear()
                verdicts[line] = hit
            if hit is not None:
                out.append((ls, le, hit))
        return out

    def _candidates(self, data: bytes, start: int, end: int) -> list[tuple[int, int]]:
        """(start, end) of each line holding a needle, in order."""
        if self.needles is None:         # every line is a candidate (slow, but exact)
            spans, pos = [], start
            while pos < end:
                nl = data.find(b"\n", pos, end)
                le = end if nl < 0 else nl + 1
                spans.append((pos, le))
                pos = le
            return spans
        spans = []
        find, rfind = data.find, data.rfind
        for needle in self.needles:
            i = find(needle, start, end)
            while i >= 0:
                nl = find(b"\n", i, end)
                le = end if nl < 0 else nl + 1
                spans.append((max(rfind(b"\n", start, i) + 1, start), le))
                i = find(needle, le, end)
        return spans if len(self.needles) == 1 else sorted(set(spans))
