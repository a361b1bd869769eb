"""Structured journal entries over journald's native protocol, and logging to the journal.

MESSAGE_IDs are fixed forever: admins filter on them (``journalctl MESSAGE_ID=...``) and the
message catalog explains them. Without a journal socket (tests, a terminal) entries go to stderr.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import time

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "syncwarden"

MESSAGE_IDS = {
    "state-change": "9188708125f0471ca551bf5b2bf38e93",
    "daemon-started": "10bea557b4494183b2a264fc5fa7ce75",
    "daemon-stopped": "870f0fe792d04652b89c7a68e2d59f88",
    "config-rejected": "079e45ee09f248a4854ea2bda5110589",
    "config-reloaded": "1cf2c3820a374294ae242cbc8ccece9e",    # every setting applied
    "worker-exited": "63406f0f8f204ea9a8544f29bb0d2977",
    "drain-started": "1298f2b758144975a8594738b542a373",
    "drain-finished": "581662cb1fa54a15a0fc686c70a56e53",
    "drain-incomplete": "c11644a4ea7e4edb80dd7a5ec88a19aa",
    "role-changed": "6674d3b951824ead8428a0fa5e30776c",
    "user-quarantined": "45c01d22db55461db7e54216c2522d47",
    "user-retried": "b5d8f33847524ca5999b9aba9400e760",
    "user-released": "5219f7cc06734648ba41f2991540bf0d",
    "divergence-found": "02ddff89b4fb4d0aae9a70c778cdd4a9",
    "check-finished": "7ea2d6779cb9475db33529d5a233cb83",    # in sync (lag aside)
    "check-failed": "3fe20adece62470ca23bef6bda41dea9",      # a side or user unreadable
    "repair-action": "731e5034f2ae471c8c0cc739e53ee141",     # one per action of a repair
    "repair-finished": "1149416023f04f0089f7768230c5c314",
    "state-damaged": "8300b5d2b9e34093a19654a9a85c65a8",     # read the safe way, reported
    "seed-started": "8cc0ccb01d5c45ceb4e810530283c790",
    "seed-progress": "d26a3e4f8de14250992ffd96628d10e1",     # a phase, every 10 %, waits
    "seed-finished": "5127795700ec42f19dbc816cf2aa1811",     # complete or incomplete
    "link-retired": "09c29d7c2356442dbeb6c12d3837bd95",      # or abandoned (not drained)
    "link-frozen": "889d82197bc7464d92e8ad443703df1a",
    "link-thawed": "f44f93ae247e41f3a175251e9aaa28ea",       # deadline, operator, or failed
    "freeze-hook": "864c64c2b9914c98868adb8ac7d54d2c",       # the --exec command ended
    "move-started": "d31cdc3966b44ce0b9689575660527f0",      # a user's move, or its resume
    "move-phase": "153b693b77ee4ecba663d5e594bf559d",        # one per phase done
    "move-finished": "1d19ba93f6f1410e8ed89232942c0556",     # done, rolled back or failed
    "master-key": "74b52afcc5564388b252fb4226878557",        # the pair's key (etcd) changed holder
}

PRIORITY = {"err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}


def encode(fields: dict[str, object]) -> bytes:
    """journald's native format: KEY=value lines; values with a newline are length-prefixed."""
    out = bytearray()
    for key, value in fields.items():
        data = str(value).encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class Journal:
    def __init__(self, path: str = JOURNAL_SOCKET, fallback=sys.stderr):
        self._path = path
        self._fallback = fallback
        self._sock = None
        if os.path.exists(path):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, message: str, priority: str = "info", message_id: str | None = None,
             **fields: object) -> None:
        entry = {"MESSAGE": message, "PRIORITY": PRIORITY[priority],
                 "SYSLOG_IDENTIFIER": IDENTIFIER}
        if message_id:
            entry["MESSAGE_ID"] = MESSAGE_IDS[message_id]
        entry.update({k: v for k, v in fields.items() if v is not None})
        if self._sock is not None:
            try:
                self._sock.sendto(encode(entry), self._path)
                return
            except OSError:
                pass  # journald restarting or entry too large: fall back to stderr
        print(f"<{PRIORITY[priority]}>{message}", file=self._fallback, flush=True)


class Repeats:
    """Rate limiting for lines that say the same thing again (a unit that cannot be started,
    D-Bus down): the first goes out; the same kind again within ``window`` seconds is only
    counted, and said once when the window is over: "... (repeated 57 times in the last
    60 s)". A kind is the logger, the message template and the link, not the words filled in.
    Events (entries with a MESSAGE_ID) are never limited: they are sent with Journal.send."""

    def __init__(self, window: float = 60.0, clock=time.monotonic):
        self.window, self.clock = window, clock
        self._open: dict[tuple, list] = {}     # kind -> [opened, suppressed, last (text, ...)]

    def admit(self, kind: tuple, line: tuple) -> tuple[bool, list[tuple]]:
        """(send ``line`` now, summaries of closed windows to send before it)."""
        now = self.clock()
        due = self.due(now)
        w = self._open.get(kind)
        if w is None:
            self._open[kind] = [now, 0, line]
            return True, due
        w[1] += 1
        w[2] = line
        return False, due

    def due(self, now: float | None = None) -> list[tuple]:
        """Summaries of windows that are over (``line`` tuples whose text says how often)."""
        now = self.clock() if now is None else now
        out = []
        for kind, (opened, count, line) in list(self._open.items()):
            if now - opened >= self.window:
                del self._open[kind]
                if count:
                    text = f"{line[0]} (repeated {count} times in the last {self.window:g} s)"
                    out.append((text, *line[1:]))
        return out


class JournalHandler(logging.Handler):
    """Python logging into the same journal, with the right PRIORITY per level, repeated
    lines rate-limited (Repeats).

    The text is the plain sentence; where it came from goes into fields: CODE_MODULE (the
    logger), CODE_FUNC, and SYNCWARDEN_LINK when the call passes ``extra={"link": NAME}``.
    """

    LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
              logging.ERROR: "err", logging.CRITICAL: "err"}

    def __init__(self, journal: Journal, repeats: Repeats | None = None):
        super().__init__()
        self.journal = journal
        self.repeats = repeats or Repeats()
        # logging.basicConfig() gives handlers without a formatter "LEVEL:logger:message"
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            link = getattr(record, "link", None)
            line = (self.format(record), self.LEVELS.get(record.levelno, "info"),
                    record.funcName, record.name, link)
            send, due = self.repeats.admit((record.name, str(record.msg), link), line)
            for each in due + ([line] if send else []):
                self._send(each)
        except Exception:  # logging must never take the daemon down
            self.handleError(record)

    def release_due(self) -> None:
        """Say how often lines were repeated, for windows that are over (once a tick)."""
        for line in self.repeats.due():
            self._send(line)

    def _send(self, line: tuple) -> None:
        text, priority, func, module, link = line
        self.journal.send(text, priority, CODE_FUNC=func, CODE_MODULE=module,
                          SYNCWARDEN_LINK=link)
