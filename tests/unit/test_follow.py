"""Following the workers' journal from a saved cursor (a fake python3-systemd Reader)."""

import selectors

from supervisor.link.states import LinkState
from supervisor.systemd import follow
from supervisor.systemd.follow import JournalFollower

from .fakes import FakeJournalFiles
from .test_core import W1, W2, make, state, step
from .test_failures import PASS_METHOD1

U1 = "syncwarden-user@replica1.service"
D1 = "syncwarden-drain@replica1.service"
OTHER = "syncwarden-sync@east:replica1.service"     # another instance's worker


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def journal():
    files = FakeJournalFiles()
    files.log("init.scope", "Started syncwarden.service")   # never empty on a real system
    return files


def follower(files, tmp_path, lines, units=(W1, U1, D1)):
    f = JournalFollower(lambda *a: lines.append(a), selectors.DefaultSelector(), Clock(),
                        tmp_path / "journal-cursor", reader_factory=files.reader)
    f.watch(units)
    return f


def messages(lines):
    return [(unit, message) for unit, message, *_ in lines]


def test_first_start_reads_from_now_and_saves_a_position_at_once(tmp_path):
    files, lines = journal(), []
    files.log(W1, "old news")
    files.log("cron.service", "unrelated")
    f = follower(files, tmp_path, lines)
    assert (tmp_path / "journal-cursor").exists()      # a SIGKILL now still resumes here
    f.pump()
    assert lines == []
    files.log(W1, "bailing out!", "inv-7")
    files.log(OTHER, "not ours")
    f.pump()
    assert lines == [(W1, "bailing out!", "inv-7", files.entries[-2]["__REALTIME_TIMESTAMP"])]


def test_restart_reads_what_the_workers_logged_while_down(tmp_path):
    files, lines = journal(), []
    f = follower(files, tmp_path, lines)
    files.log(W1, "seen before the crash")
    f.pump()
    f.save(force=True)
    f.reader = None                     # SIGKILL: no close, no last save
    files.log(W1, "MAILBOX received NO response: Unknown error")
    files.log(OTHER, "another instance")
    files.log(U1, "bailing out!")
    again = []
    follower(files, tmp_path, again).pump()
    assert messages(again) == [(W1, "MAILBOX received NO response: Unknown error"),
                               (U1, "bailing out!")]


def test_a_damaged_cursor_file_means_from_now_and_a_new_cursor(tmp_path):
    files, lines = journal(), []
    (tmp_path / "journal-cursor").write_text("garbage\n")
    files.log(W1, "old news")
    f = follower(files, tmp_path, lines)
    files.log(W1, "new")
    f.pump()
    assert messages(lines) == [(W1, "new")]
    assert (tmp_path / "journal-cursor").read_text().startswith("s=")


def test_a_huge_backlog_is_read_from_its_newest_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(follow, "REPLAY_MAX", 5)
    files, lines = journal(), []
    f = follower(files, tmp_path, lines)
    f.close()
    for i in range(12):
        files.log(W1, f"line {i}")
    again = []
    f = follower(files, tmp_path, again)
    while f.pump():
        pass
    assert [m for _, m in messages(again)] == [f"line {i}" for i in range(7, 12)]


def test_pump_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(follow, "BATCH", 3)
    files, lines = journal(), []
    f = follower(files, tmp_path, lines)
    for i in range(7):
        files.log(W1, f"line {i}")
    assert [f.pump(), f.pump(), f.pump(), f.pump()] == [3, 3, 1, 0]
    assert len(lines) == 7


def test_cursor_is_saved_after_reading_and_not_too_often(tmp_path):
    files, lines = journal(), []
    f = follower(files, tmp_path, lines)
    first = (tmp_path / "journal-cursor").read_text()
    files.log(W1, "x")
    f.pump()
    f.save()
    assert (tmp_path / "journal-cursor").read_text() == first      # within CURSOR_SAVE
    f.clock.t += follow.CURSOR_SAVE
    f.save()
    assert (tmp_path / "journal-cursor").read_text().strip() == files.entries[-1]["__CURSOR"]


def test_units_added_by_a_reload_are_read_from_the_position(tmp_path):
    files, lines = journal(), []
    f = follower(files, tmp_path, lines, units=(W1,))
    files.log(W1, "a")
    f.pump()
    files.log(W2, "b")
    f.watch((W1, W2))
    f.pump()
    assert messages(lines) == [(W1, "a"), (W2, "b")]


def test_history_is_the_newest_lines_of_one_run_oldest_first(tmp_path, monkeypatch):
    monkeypatch.setattr(follow, "HISTORY_MAX", 2)
    files, lines = journal(), []
    f = follower(files, tmp_path, lines)
    files.log(W1, "run 1", "inv-1")
    files.log(W1, "run 2 a", "inv-2")
    files.log(W1, "run 2 b", "inv-2")
    files.log(W1, "run 2 c", "inv-2")
    assert [m for m, _ in f.history(W1, "inv-2")] == ["run 2 b", "run 2 c"]


def test_failures_logged_while_the_daemon_was_down_quarantine_the_user(tmp_path):
    files = journal()
    sup, env = make(tmp_path)
    f = JournalFollower(sup.feed_worker_log, selectors.DefaultSelector(), Clock(),
                        tmp_path / "journal-cursor", reader_factory=files.reader)
    f.watch(sup.watched_units())
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    assert state(sup) is LinkState.LIVE
    f.close()                                       # the daemon goes away
    d = tmp_path / "sync" / "replica1"
    d.mkdir(parents=True)
    (d / "log-run").write_bytes(b"APPEND user.alice\nAPPEND user.bob\n")
    inv = env["systemd"].invocations[W1]
    for line in PASS_METHOD1:                       # the worker fails meanwhile, once
        files.log(W1, line, inv)
    sup, env2 = make(tmp_path)                      # a new daemon: it adopts the worker
    env2["systemd"].units, env2["systemd"].invocations = env["systemd"].units, {W1: inv}
    env2["prober"].reachable["replica1"] = True
    f = JournalFollower(sup.feed_worker_log, selectors.DefaultSelector(), Clock(),
                        tmp_path / "journal-cursor", reader_factory=files.reader)
    f.watch(sup.watched_units())
    f.pump()
    step(sup, env2, n=5)
    assert [q["user"] for q in sup.status()["quarantine"]] == ["alice"]
    assert b"alice" not in (d / "log-run").read_bytes()
