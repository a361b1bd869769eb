"""Backlog accounting over real files, with a fake clock."""

import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.cyrus.backlog import Backlog, count_lines
from supervisor.cyrus.rewrite import move_out
from supervisor.cyrus.synclog import parse

from .fakes import FakeClock

LINES = b"APPEND user.bob\nMAILBOX user.bob\n"


def read(b, clock):
    return b.read(clock.monotonic(), clock.wall())


def test_counts_valid_and_malformed_lines():
    data = (b'APPEND user.bob\nmailbox "user.bob.My Folder"\nDOUBLEMAILBOX user.a user.a.x\n'
            b'SEEN alice 6f1c2a0e\nUSER john^doe\nGARBAGE here\nAPPEND\n\nMAILBOX a b c\n'
            b'QUOTA "unterminated\n')
    assert count_lines(data) == (5, 5)


def test_follow_appends_and_rename_to_log_run(tmp_path):
    clock = FakeClock(wall=time.time())  # new files are dated by their (real) mtime
    b = Backlog(tmp_path)
    assert read(b, clock).entries == 0
    log = tmp_path / "log"
    log.write_bytes(LINES)
    clock.advance(1)
    snap = read(b, clock)
    assert snap.entries == 2 and not snap.log_run
    clock.advance(5)
    with open(log, "ab") as f:
        f.write(LINES * 3)
    assert read(b, clock).entries == 8
    os.rename(log, tmp_path / "log-run")          # what sync_client does
    log.write_bytes(LINES)                       # a writer starts a new log
    os.utime(log, (clock.wall(), clock.wall()))
    clock.advance(2)
    snap = read(b, clock)
    assert snap.entries == 10 and snap.log_run
    assert snap.oldest_age >= 7                  # age carried over with the renamed inode
    (tmp_path / "log-run").unlink()              # sent
    snap = read(b, clock)
    assert snap.entries == 2 and not snap.log_run and snap.oldest_age < 3


def test_partial_line_is_not_counted_until_complete(tmp_path):
    clock = FakeClock()
    b = Backlog(tmp_path)
    (tmp_path / "log").write_bytes(b"APPEND user.bob\nMAIL")
    assert read(b, clock).entries == 1
    with open(tmp_path / "log", "ab") as f:
        f.write(b"BOX user.bob\n")
    snap = read(b, clock)
    assert snap.entries == 2 and snap.malformed == 0


def test_malformed_lines_counted_never_fatal(tmp_path):
    clock = FakeClock()
    (tmp_path / "log").write_bytes(b"\x00\xff garbage\nAPPEND user.bob\n")
    snap = read(Backlog(tmp_path), clock)
    assert (snap.entries, snap.malformed) == (1, 1)
    assert snap.as_json()["malformed"] == 1


def test_rewritten_file_is_recounted(tmp_path):
    clock = FakeClock()
    b = Backlog(tmp_path)
    (tmp_path / "log").write_bytes(LINES * 10)
    assert read(b, clock).entries == 20
    with open(tmp_path / "log", "r+b") as f:      # same inode, shorter: e.g. a quarantine rewrite
        f.truncate(0)
        f.write(LINES)
    assert read(b, clock).entries == 2


def test_preexisting_files_are_dated_by_mtime(tmp_path):
    clock = FakeClock(wall=1_800_000_000.0)
    (tmp_path / "log").write_bytes(LINES)
    os.utime(tmp_path / "log", (1_800_000_000.0 - 120, 1_800_000_000.0 - 120))
    snap = read(Backlog(tmp_path), clock)
    assert 119 <= snap.oldest_age <= 121


def test_log_run_age_from_ctime(tmp_path):
    clock = FakeClock(wall=os.stat(tmp_path).st_ctime + 30)
    (tmp_path / "log-run").write_bytes(LINES)
    snap = read(Backlog(tmp_path), clock)
    assert snap.log_run and 25 <= snap.log_run_age <= 35


def test_unreadable_directory_is_reported_not_raised(tmp_path):
    clock = FakeClock()
    (tmp_path / "log").write_bytes(LINES)
    os.chmod(tmp_path / "log", 0)
    try:
        snap = read(Backlog(tmp_path), clock)
    finally:
        os.chmod(tmp_path / "log", 0o600)
    if os.geteuid() != 0:  # root reads it anyway
        assert snap.error and "log" in snap.error


def test_tick_cost_is_proportional_to_appended_bytes(tmp_path, monkeypatch):
    clock = FakeClock()
    b = Backlog(tmp_path)
    (tmp_path / "log").write_bytes(LINES * 50_000)
    read(b, clock)
    counted = []
    import supervisor.cyrus.backlog as mod

    real = mod.count_lines
    monkeypatch.setattr(mod, "count_lines", lambda data: counted.append(len(data)) or real(data))
    with open(tmp_path / "log", "ab") as f:
        f.write(LINES * 5)
    assert read(b, clock).entries == 100_010
    assert counted == [len(LINES) * 5]           # only the new bytes were looked at
    read(b, clock)
    assert counted == [len(LINES) * 5]           # nothing new: nothing read


def test_new_log_reusing_the_old_inode_is_recounted(tmp_path):
    """Cyrus unlinks log-run and a writer creates a new log: the inode number may come back."""
    clock = FakeClock(wall=time.time())
    b = Backlog(tmp_path)
    log = tmp_path / "log"
    log.write_bytes(LINES * 10)
    assert read(b, clock).entries == 20
    st = os.stat(log)
    log.unlink()
    log.write_bytes(b"APPEND user." + b"x" * 60 + b"\n" * 1 * 1 + b"MAILBOX user.y\n" * 40)
    if os.stat(log).st_ino != st.st_ino:      # force the reuse the filesystem did not give us
        b._log.ident = (os.stat(log).st_dev, os.stat(log).st_ino)
    snap = read(b, clock)
    assert (snap.entries, snap.malformed) == (41, 0)
    log.write_bytes(LINES)                    # truncate-and-rewrite of the same file
    assert read(b, clock).entries == 2


# -- property: the counts equal a reference count, whatever Cyrus does --------------------------

BACKLOG_LINE = st.sampled_from([b"APPEND user.bob\n", b"MAILBOX user.alice.Sent\n",
                                b"RENAME user.a user.b\n", b"SEEN alice x\n", b"garbage\n",
                                b"\n", b"APPEND user.bob", b"MAILBOX user.c\r\n"])
OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.lists(BACKLOG_LINE, min_size=1, max_size=5)),
    st.tuples(st.just("rename"), st.none()),     # sync_client starts a pass
    st.tuples(st.just("sent"), st.none()),       # ... and unlinks log-run after it
    st.tuples(st.just("move"), st.sampled_from(["alice", "bob"]))),   # a quarantine rewrite
    max_size=25)


def reference(d):
    valid = malformed = 0
    for name in ("log-run", "log"):
        if (d / name).exists():
            data = (d / name).read_bytes()
            complete = data[:data.rfind(b"\n") + 1]
            for line in complete.splitlines(keepends=True):
                entry = parse(line)
                if entry is not None and entry.valid:
                    valid += 1
                else:
                    malformed += 1
    return valid, malformed


@settings(max_examples=80, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_counts_follow_any_sequence_of_appends_and_renames(tmp_path_factory, ops):
    d = tmp_path_factory.mktemp("chan")
    clock = FakeClock(wall=time.time())
    b = Backlog(d)
    listed = {}
    for step, (op, arg) in enumerate(ops):
        if op == "append":
            data = b"".join(arg)
            with open(d / "log", "ab") as f:
                f.write(data)
        elif op == "rename" and (d / "log").exists() and not (d / "log-run").exists():
            os.rename(d / "log", d / "log-run")
        elif op == "sent" and (d / "log-run").exists():
            (d / "log-run").unlink()
        elif op == "move":
            move_out(d / "log", {arg}, lambda moved: None)
        # names changed: the directory's mtime moves on (the kernel's clock is coarse: two
        # changes within a few ms could look like one, which is not what is tested here)
        names = {p.name: p.stat().st_ino for p in d.iterdir()}
        if names != listed:
            os.utime(d, ns=((step + 1) * 10**9,) * 2)
            listed = names
        clock.advance(1)
        snap = read(b, clock)
        assert (snap.entries, snap.malformed) == reference(d), (op, arg)


def test_pending_entries_never_show_age_zero(tmp_path):
    """Entries appended to a file already followed are dated by the look before (which did not
    see them): at most one look too old, never 0 while they are pending."""
    clock = FakeClock(wall=time.time())
    b = Backlog(tmp_path)
    log = tmp_path / "log"
    log.write_bytes(b"")                         # followed while empty
    assert read(b, clock).entries == 0
    clock.advance(1)
    log.write_bytes(LINES)
    snap = read(b, clock)
    assert snap.entries == 2 and snap.oldest_age == 1.0
    clock.advance(4)
    assert read(b, clock).oldest_age == 5.0


def test_a_rewrite_in_place_keeps_the_age_of_what_is_left(tmp_path):
    """The quarantine takes a user's lines out of log-run while no worker runs: the rest was
    pending all along and must not look fresh."""
    clock = FakeClock(wall=time.time())
    b = Backlog(tmp_path)
    run = tmp_path / "log-run"
    run.write_bytes(LINES * 10)
    os.utime(run, (clock.wall() - 60, clock.wall() - 60))
    assert 59 <= read(b, clock).oldest_age <= 61
    clock.advance(30)
    with open(run, "r+b") as f:                  # same inode, shorter
        f.truncate(0)
        f.write(LINES)
    snap = read(b, clock)
    assert snap.entries == 2 and 89 <= snap.oldest_age <= 91
