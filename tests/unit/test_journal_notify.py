"""Journal entries and sd_notify messages, against real datagram sockets."""

import socket
import struct

from supervisor.systemd.journal import MESSAGE_IDS, Journal, encode
from supervisor.systemd.notify import Notifier


def test_native_protocol_encoding():
    assert encode({"A": "x", "B": 2}) == b"A=x\nB=2\n"
    assert encode({"M": "two\nlines"}) == b"M\n" + struct.pack("<Q", 9) + b"two\nlines\n"


def test_entries_reach_a_journal_socket(tmp_path):
    path = str(tmp_path / "journal.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    Journal(path).send("link r1: down -> catching-up", "notice", "state-change",
                       SYNCWARDEN_LINK="r1", SYNCWARDEN_FROM="down", SYNCWARDEN_TO="catching-up",
                       SYNCWARDEN_REASON="replica answered")
    fields = dict(line.split("=", 1) for line in sink.recv(65536).decode().splitlines())
    assert fields["MESSAGE_ID"] == MESSAGE_IDS["state-change"]
    assert fields["PRIORITY"] == "5" and fields["SYSLOG_IDENTIFIER"] == "syncwarden"
    assert fields["SYNCWARDEN_TO"] == "catching-up"


def test_no_journal_falls_back_to_stderr(tmp_path, capsys):
    import sys

    Journal(str(tmp_path / "absent"), fallback=sys.stderr).send("hello", "err")
    assert capsys.readouterr().err == "<3>hello\n"


def test_message_ids_are_unique_128_bit():
    ids = list(MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids) and all(len(i) == 32 and int(i, 16) for i in ids)


def test_notify_messages_on_a_real_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier()
    n.ready()
    n.status("replica1 live, 0 queued")
    n.status("replica1 live, 0 queued")   # unchanged: not sent again
    n.watchdog()
    n.extend_timeout(2.5)
    sink.settimeout(1)
    got = [sink.recv(4096) for _ in range(4)]
    assert got == [b"READY=1", b"STATUS=replica1 live, 0 queued", b"WATCHDOG=1",
                   b"EXTEND_TIMEOUT_USEC=2500000"]


# --- a quiet journal: repeated lines rate-limited ----------------------------------------------

def test_a_line_repeated_every_tick_is_said_once_a_minute_with_its_count():
    import logging

    from supervisor.systemd.journal import JournalHandler, Repeats

    from .fakes import FakeClock, FakeJournal

    clock, journal = FakeClock(), FakeJournal()
    handler = JournalHandler(journal, Repeats(60.0, clock.monotonic))
    logger = logging.getLogger("test.repeats")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(120):                     # two minutes of one failure per second
            logger.error("cannot start %s: %s", "syncwarden-sync@r1.service", f"no ({i})",
                         extra={"link": "r1"})
            logger.warning("cannot list worker units over D-Bus: %s", "timeout")
            handler.release_due()
            clock.advance(1.0)
        handler.release_due()
    finally:
        logger.removeHandler(handler)
    start = [e for e in journal.entries if e["MESSAGE"].startswith("cannot start")]
    assert [e["MESSAGE"] for e in start] == [
        "cannot start syncwarden-sync@r1.service: no (0)",
        "cannot start syncwarden-sync@r1.service: no (59) (repeated 59 times in the last 60 s)",
        "cannot start syncwarden-sync@r1.service: no (60)",
        "cannot start syncwarden-sync@r1.service: no (119) (repeated 59 times in the last"
        " 60 s)"]
    assert all(e["SYNCWARDEN_LINK"] == "r1" and e["PRIORITY"] == "err" for e in start)
    assert len(journal.entries) == 8                  # not 240
