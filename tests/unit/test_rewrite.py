"""Rewriting sync logs while Cyrus writes and renames them: nothing lost, nothing doubled,
nothing written through a name the cyrus user planted."""

import fcntl
import os
import threading
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.cyrus import rewrite
from supervisor.cyrus.channel import Channel, UnsafeFile
from supervisor.cyrus.rewrite import Cancelled, append, move_out, replay_after_user_sync
from supervisor.cyrus.synclog import line_users, parse

USERS = ["alice", "bob", "carol", "john.doe", "a"]


def cyrus_write(d, line: bytes) -> None:
    """A Cyrus writer (imap/sync_log.c sync_log_base): open log O_APPEND|O_CREAT, take the
    fcntl lock, retry if the name no longer names the locked inode, append, fsync, unlock."""
    for _ in range(100):
        fd = os.open(d / "log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(d / "log").st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.write(fd, line)
                os.fsync(fd)
                return
        finally:
            os.close(fd)
    raise AssertionError("writer never got the log")


def sync_client_takes(d) -> bool:
    """sync_client starting a pass: rename log -> log-run, without any lock."""
    if (d / "log").exists() and not (d / "log-run").exists():
        os.rename(d / "log", d / "log-run")
        return True
    return False


def lines_of(*users, n=3):
    return [b"APPEND user.%s.f%d\n" % (u.replace(".", "^").encode(), i)
            for i in range(n) for u in users]


def everything(d, stored):
    """Every entry anywhere: log-run, log, and the store."""
    out = Counter()
    for name in ("log-run", "log"):
        if (d / name).exists():
            out.update((d / name).read_bytes().splitlines(keepends=True))
    for lines in stored.values():
        out.update(lines)
    return out


class Store(dict):
    def __call__(self, moved):
        for user, lines in moved.items():
            self.setdefault(user, []).extend(lines)


# -- splitting: every line exactly once -----------------------------------------------------------

NAMES = st.sampled_from(["user.alice", "user.alice.Sent", "user.bob", "user.bob.Proj",
                         "example.com!user.alice", "user.john^doe.x", "shared.news",
                         '"user.bob.My Folder"', "user.a", "DELETED.user.alice.x.5F00",
                         '"user.al\\ice.x"'])     # an escape a writer would not make
LINE = st.one_of(
    st.builds(lambda k, n: b"%s %s\n" % (k, n.encode()),
              st.sampled_from([b"APPEND", b"MAILBOX", b"UNMAILBOX", b"QUOTA", b"annotation"]),
              NAMES),
    st.builds(lambda k, a, b: b"%s %s %s\n" % (k, a.encode(), b.encode()),
              st.sampled_from([b"RENAME", b"DOUBLEMAILBOX"]), NAMES, NAMES),
    st.builds(lambda k, u: b"%s %s\n" % (k, u.encode()),
              st.sampled_from([b"USER", b"UNUSER", b"META", b"SEEN"]),
              st.sampled_from(USERS + ["alice@example.com"])),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"),
    st.just(b"\n"))


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, max_size=40), users=st.sets(st.sampled_from(
    USERS + ["alice@example.com"]), max_size=3), chunk=st.sampled_from([7, 64, 4096]),
    tail=st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")))
def test_every_line_kept_or_moved_exactly_once(tmp_path_factory, lines, users, chunk, tail):
    d = tmp_path_factory.mktemp("chan")
    data = b"".join(lines) + tail
    (d / "log").write_bytes(data)
    stored = Store()
    moved = move_out(d / "log", users, stored, chunk=chunk)
    kept = (d / "log").read_bytes()
    out = [x for v in stored.values() for x in v]
    assert moved == len(out)
    original = data.splitlines(keepends=True)
    expect_moved = [x for x in original if line_users(x) & users]
    # kept: the original minus the moved lines, in order, byte for byte
    assert kept == b"".join(x for x in original if not line_users(x) & users)
    # moved: each once, under the first quarantined user it names (a last line gets its LF)
    assert Counter(out) == Counter(x if x.endswith(b"\n") else x + b"\n" for x in expect_moved)
    for user, got in stored.items():
        assert all(sorted(line_users(x) & users)[0] == user for x in got)
    assert not list(d.glob(".*syncwarden"))


@settings(max_examples=100, deadline=None, database=None)
@given(stored=st.lists(LINE, max_size=20, unique=True), cut=st.integers(0, 20))
def test_release_puts_back_what_the_user_sync_does_not_cover(stored, cut):
    user = "alice"
    synced_upto = sum(len(x) for x in stored[:cut])
    back = replay_after_user_sync(stored, user, synced_upto)
    # in order, and exactly: what the user sync did not do (bob's or a shared part of a line
    # is never lost), then whatever was stored after it began
    covered = [i < cut and (e := parse(x)) is not None and e.covered_by(user)
               for i, x in enumerate(stored)]
    assert back == [x for x, c in zip(stored, covered) if not c]
    for i, line in enumerate(stored):
        if line_users(line) - {user} and i < cut:
            assert line in back


def test_a_line_naming_two_users_survives_the_release_of_one(tmp_path):
    rename = b"RENAME user.alice.Proj user.bob.Proj\n"
    (tmp_path / "log").write_bytes(b"APPEND user.alice\n" + rename)
    stored = Store()
    move_out(tmp_path / "log", {"alice"}, stored)
    assert stored == {"alice": [b"APPEND user.alice\n", rename]}
    # sync_client -u alice succeeded: its own line is covered, bob's part goes back
    back = replay_after_user_sync(stored["alice"], "alice", len(b"".join(stored["alice"])))
    assert back == [rename]
    append(tmp_path / "log", back)
    assert (tmp_path / "log").read_bytes() == rename


# -- racing Cyrus at every step -----------------------------------------------------------------

def steps_of(tmp_path, **kw):
    seen = []
    d = tmp_path / "dry"
    d.mkdir()
    (d / "log").write_bytes(b"".join(lines_of("alice", "bob", "carol", n=4)))
    move_out(d / "log", {"alice"}, Store(), hook=seen.append, chunk=40, **kw)
    return seen


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "in-place"])
@pytest.mark.parametrize("rename", [True, False], ids=["rename+write", "write"])
def test_cyrus_racing_every_step_loses_and_doubles_nothing(tmp_path, monkeypatch, swap, rename):
    if not swap:
        monkeypatch.setattr(rewrite, "_renameat2", None)
    steps = steps_of(tmp_path)
    assert {"locked", "read", "stored", "synced", "swapped", "replaced"} <= set(steps)
    for at in range(len(steps)):
        d = tmp_path / f"at{at}"
        d.mkdir()
        original = lines_of("alice", "bob", "carol", n=4)
        (d / "log").write_bytes(b"".join(original))
        written = [b"APPEND user.carol.new%d\n" % at, b"APPEND user.alice.new%d\n" % at]
        writers, count = [], iter(range(10**6))

        def hook(step):
            if next(count) != at:
                return
            if rename:
                assert sync_client_takes(d)
            for line in written:
                t = threading.Thread(target=cyrus_write, args=(d, line))
                t.start()
                t.join(0.03)             # done, or waiting for our lock
                writers.append(t)

        stored = Store()
        move_out(d / "log", {"alice"}, stored, hook=hook, chunk=40)
        for t in writers:
            t.join(5)
            assert not t.is_alive()
        # what sync_client then reads from log-run (after the lock) and log, plus the store
        assert everything(d, stored) == Counter(original + written), f"at {steps[at]}"
        assert not list(d.glob(".*syncwarden"))
        # and alice's entries left the stream, wherever the rewritten inode now is
        logs = b"".join((d / n).read_bytes() for n in ("log-run", "log") if (d / n).exists())
        assert b"user.alice.f" not in logs, f"at {steps[at]}"


def test_log_run_needs_the_callers_word_that_no_sync_client_runs(tmp_path):
    (tmp_path / "log-run").write_bytes(b"APPEND user.alice\n")
    with pytest.raises(ValueError, match="no sync_client"):
        move_out(tmp_path / "log-run", {"alice"}, Store())
    assert move_out(tmp_path / "log-run", {"alice"}, Store(), no_client=True) == 1
    with pytest.raises(ValueError):
        move_out(tmp_path / "elsewhere", {"alice"}, Store())


def test_cancelled_leaves_the_log_whole(tmp_path):
    data = b"".join(lines_of("alice", "bob", n=50))
    (tmp_path / "log").write_bytes(data)
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        move_out(tmp_path / "log", {"alice"}, Store(), chunk=64,
                 cancelled=lambda: next(calls) == 3)
    assert (tmp_path / "log").read_bytes() == data
    assert not list(tmp_path.glob(".*syncwarden"))


def test_owner_and_mode_survive_and_the_temp_file_is_created_new(tmp_path):
    log = tmp_path / "log"
    log.write_bytes(b"APPEND user.alice\nAPPEND user.bob\n")
    os.chown(log, 8, 12)
    log.chmod(0o640)
    move_out(log, {"alice"}, Store())
    st = log.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (8, 12, 0o640)


# -- names the cyrus user can plant ------------------------------------------------------------

@pytest.fixture
def victim(tmp_path):
    """A root-owned file elsewhere, as under /var/lib."""
    v = tmp_path / "victim"
    v.mkdir()
    f = v / "secret"
    f.write_bytes(b"root's\n")
    f.chmod(0o600)
    return f


def untouched(f):
    st = f.stat()
    return f.read_bytes() == b"root's\n" and (st.st_uid, st.st_mode & 0o777) == (0, 0o600)


def test_symlink_at_the_temp_name_is_never_followed(tmp_path, victim):
    d = tmp_path / "chan"
    d.mkdir()
    (d / "log").write_bytes(b"APPEND user.alice\nAPPEND user.bob\n")
    os.chown(d / "log", 8, 12)
    (d / rewrite.temp_name("log")).symlink_to(victim)
    assert move_out(d / "log", {"alice"}, Store()) == 1
    assert untouched(victim)
    assert (d / "log").read_bytes() == b"APPEND user.bob\n"
    assert not (d / rewrite.temp_name("log")).is_symlink()


def test_symlink_at_log_is_refused(tmp_path, victim):
    d = tmp_path / "chan"
    d.mkdir()
    victim.write_bytes(b"root's\n")
    (d / "log").symlink_to(victim)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        move_out(d / "log", {"alice"}, Store())
    with pytest.raises(UnsafeFile, match="symbolic link"):
        append(d / "log", [b"APPEND user.alice\n"])
    assert untouched(victim)


def test_hardlinked_log_is_refused(tmp_path):
    d = tmp_path / "chan"
    d.mkdir()
    other = tmp_path / "state.json"
    other.write_bytes(b"APPEND user.alice\n")
    os.link(other, d / "log")
    with pytest.raises(UnsafeFile, match="2 hard links"):
        move_out(d / "log", {"alice"}, Store())
    with pytest.raises(UnsafeFile, match="2 hard links"):
        append(d / "log", [b"x\n"])
    assert other.read_bytes() == b"APPEND user.alice\n"


def test_fifo_at_log_is_refused_without_hanging(tmp_path):
    os.mkfifo(tmp_path / "log")
    with pytest.raises(UnsafeFile, match="not a regular file"):
        move_out(tmp_path / "log", {"alice"}, Store())


def test_symlink_at_shutdown_is_refused(tmp_path, victim):
    d = tmp_path / "chan"
    d.mkdir()
    (d / "shutdown").symlink_to(victim)
    ch = Channel(d)
    assert ch.request_shutdown() is False          # the drain stops the worker by signal
    assert untouched(victim)
    assert ch.clear_shutdown() is True             # the link itself goes, not its target
    assert untouched(victim) and not (d / "shutdown").is_symlink()
    assert ch.request_shutdown() is True and (d / "shutdown").is_file()
    assert ch.request_shutdown() is True           # already asked


def test_channel_directory_swapped_for_a_symlink_is_refused(tmp_path, victim):
    cyrus = tmp_path / "cyrus"                     # owned by "cyrus", which plants the link
    cyrus.mkdir()
    os.chown(cyrus, 8, 12)
    (cyrus / "sync").symlink_to(victim.parent)
    os.lchown(cyrus / "sync", 8, 12)
    (victim.parent / "log").write_bytes(b"APPEND user.alice\n")
    with pytest.raises(UnsafeFile, match="symbolic link"):
        move_out(cyrus / "sync" / "log", {"alice"}, Store())
    assert Channel(cyrus / "sync").request_shutdown() is False
    assert not (victim.parent / "shutdown").exists()
    # a link root made in a directory only root can change is followed
    (tmp_path / "rootlink").symlink_to(victim.parent)
    assert move_out(tmp_path / "rootlink" / "log", {"alice"}, Store()) == 1


def test_append_creates_log_for_cyrus_and_keeps_the_protocol(tmp_path):
    os.chown(tmp_path, 8, 12)
    append(tmp_path / "log", [b"APPEND user.alice\n"])
    st = (tmp_path / "log").stat()
    assert (st.st_uid, st.st_gid) == (8, 12)
    cyrus_write(tmp_path, b"APPEND user.bob\n")
    append(tmp_path / "log", [b"APPEND user.carol\n"])
    assert (tmp_path / "log").read_bytes() == (b"APPEND user.alice\nAPPEND user.bob\n"
                                               b"APPEND user.carol\n")


def test_many_flushes_and_early_writeback_keep_every_byte(tmp_path, monkeypatch):
    monkeypatch.setattr(rewrite, "CHUNK", 4096)          # flush T every 4 KiB
    monkeypatch.setattr(rewrite, "_WRITEBACK", 16384)    # and start its writeback often
    lines = [b"APPEND user.u%03d.f\n" % (i % 97) for i in range(60_000)]
    lines[30_000:30_500] = [b"MAILBOX user.u001\n"] * 500                 # a clustered burst
    (tmp_path / "log").write_bytes(b"".join(lines))
    stored = Store()
    moved = move_out(tmp_path / "log", {"u001", "u050"}, stored, chunk=65536)
    expect_kept = [x for x in lines if not line_users(x) & {"u001", "u050"}]
    assert (tmp_path / "log").read_bytes() == b"".join(expect_kept)
    assert moved == len(lines) - len(expect_kept) == sum(len(v) for v in stored.values())
