"""check.run over an in-memory pair: users, backlog, the second look, recording the result."""

import io
import json

from supervisor.pair import check
from supervisor.cyrus.synclog import mailbox_key, mailbox_user, users_of
from supervisor.pair.check import parse_backlog

from .fakecyrus import Box, Pair
from .fakes import FakeJournal


def failover_pair() -> Pair:
    """The issue's hard failover, in memory (see test_check_repair.py for the real one)."""
    p = Pair()
    for server in (p.master, p.replica):
        server.boxes["user.bob"] = Box("bob-inbox")
        server.boxes["user.alice"] = Box("alice-inbox")
    for i in (1, 2):
        for server in (p.master, p.replica):
            server.deliver("bob", None, f"base {i}")
            server.deliver("alice", None, f"base {i}")
    p.replica.deliver("bob", None, "while the master was down")      # UID 3 on the replica
    p.replica.boxes["user.bob.New"] = Box()
    p.replica.deliver("bob", "New", "in a folder made on the replica")
    p.replica.boxes["user.zed"] = Box()
    p.replica.deliver("zed", None, "zed 1")
    p.replica.deliver("zed", None, "zed 2", flags=["\\Seen"])
    p.replica.subs["zed"] = {"INBOX"}
    p.replica.boxes["user.bob.Proj"] = Box("proj-on-replica")
    p.replica.deliver("bob", "Proj", "proj on the replica")
    p.master.boxes["user.bob.Proj"] = Box("proj-on-master")
    p.master.deliver("bob", "Proj", "proj on the master")
    p.master.deliver("bob", None, "after the master came back")     # UID 3 on the master
    return p


def run(pair, tmp_path, deep=True, **kw):
    kw.setdefault("pause", lambda s: None)
    return check.run(pair, tmp_path / "sync", deep, progress_out=None, clock=lambda: 100.0, **kw)


def test_failover_cases_each_in_their_category(tmp_path):
    report = run(failover_pair(), tmp_path)
    got = sorted((d.category, d.kind, d.user, d.mailbox or "", d.uid or 0)
                 for d in report.differences)
    assert got == [("guid-mismatch", "message", "bob", "user.bob", 3),
                   ("replica-only", "mailbox", "bob", "user.bob.New", 0),
                   ("replica-only", "message", "bob", "user.bob.Proj", 1),
                   ("replica-only", "user", "zed", "", 0),
                   ("uniqueid-conflict", "mailbox", "bob", "user.bob.Proj", 0)]
    assert (report.users, report.result, report.exit_code) == (3, "differences", 2)
    shallow = run(failover_pair(), tmp_path, deep=False)
    # Both sides got one message in user.bob: same counters, only the sync CRC tells.
    assert sorted(d.category for d in shallow.differences) == [
        "guid-mismatch", "replica-only", "replica-only", "uniqueid-conflict"]


def test_only_named_users_and_unknown_ones(tmp_path):
    report = run(failover_pair(), tmp_path, only_users=["alice", "nobody"])
    assert report.users == 1 and report.differences == []
    assert report.errors == ["nobody: no such user on the master or the replica"]
    assert report.exit_code == 3


def test_master_ahead_with_backlog_is_lag(tmp_path):
    p = Pair()
    for server in (p.master, p.replica):
        server.boxes["user.bob"] = Box("same")
    p.master.deliver("bob", None, "new")
    (tmp_path / "sync").mkdir()
    (tmp_path / "sync" / "log").write_text("APPEND user.bob\nMAILBOX user.bob\n")
    report = run(p, tmp_path)
    assert [d.category for d in report.differences] == ["replica-behind"]
    assert report.exit_code == 0


def test_a_lost_mailbox_is_not_lag_because_the_user_has_other_mail_queued(tmp_path):
    # the replica came back empty; new mail to bob's INBOX re-created only the INBOX there
    p = Pair()
    for server in (p.master, p.replica):
        server.boxes["user.bob"] = Box("same")
    p.master.boxes["user.bob.Archive"] = Box("archive")
    p.master.deliver("bob", "Archive", "old mail")
    p.master.deliver("bob", None, "new")
    (tmp_path / "sync").mkdir()
    (tmp_path / "sync" / "log").write_text("APPEND user.bob\nMAILBOX user.bob\n")
    report = run(p, tmp_path)
    assert sorted((d.category, d.mailbox) for d in report.differences) == [
        ("master-only", "user.bob.Archive"), ("replica-behind", "user.bob")]
    assert report.result == "differences"


def test_backlog_names_mailboxes_and_whole_users():
    pending = parse_backlog(b'APPEND user.bob\nMAILBOX "user.bob.My Folder"\n'
                            b"SEEN erin 6f1c2a0e\nMAILBOX example.com!user.hal^x.Sent\n")
    assert pending.of("erin") is True and pending.of("zed") is False
    in_flight = pending.of("bob")
    assert in_flight(None) and in_flight("user.bob") and in_flight("user/bob/My Folder")
    assert not in_flight("user.bob.Archive")
    assert pending.of("hal.x@example.com")("user/hal.x/Sent@example.com")
    assert mailbox_key("user.bob.Sent@example.com", internal=False) == mailbox_key(
        "example.com!user.bob.Sent", internal=True)


def test_second_look_drops_what_was_in_flight(tmp_path):
    p = Pair()
    for server in (p.master, p.replica):
        server.boxes["user.bob"] = Box("same")
    p.master.deliver("bob", None, "replicated during the pause")
    pauses = []

    def pause(seconds):            # the rolling worker catches up meanwhile
        pauses.append(seconds)
        p.replica.boxes["user.bob"] = Box("same")
        p.replica.deliver("bob", None, "replicated during the pause")

    report = run(p, tmp_path, pause=pause)
    assert pauses == [check.CONFIRM_PAUSE] and report.differences == []


def test_unreadable_user_is_an_error_not_a_crash(tmp_path):
    p = failover_pair()
    p.unreadable.add("alice")
    report = run(p, tmp_path)
    assert report.errors == ["alice: 127.0.0.1:143 as alice: login refused"]
    assert report.result == "error"


def test_progress_lines_on_stderr():
    out, now = io.StringIO(), [0.0]
    prog = check.Progress("replica1", 3, out, clock=lambda: now[0])
    prog.step(2, 0)
    now[0] = 5.0
    prog.step(5, 1)
    assert out.getvalue() == "check replica1: 2/3 users, 7 mailboxes, 1 differences so far\n"


def test_backlog_names_users():
    log = (b'APPEND user.bob\nMAILBOX "user.bob.My Folder"\nDOUBLEMAILBOX user.a.X user.c\n'
           b"SEEN erin 6f1c2a0e\nSUB frank user.frank.Sent\nUSER john^doe\nQUOTA user.gina\n"
           b"MAILBOX shared.news\nMAILBOX example.com!user.hal^x.Sent\ngarbage\n")
    assert users_of(log.splitlines()) == {"bob", "a", "c", "erin", "frank", "john.doe", "gina",
                                          "hal.x@example.com"}
    assert mailbox_user("user") is None and mailbox_user("shared.x") is None


def test_result_file_and_journal(tmp_path):
    report = run(failover_pair(), tmp_path)
    check.save(report, tmp_path)
    last = check.load_last("replica1", tmp_path)
    assert last["result"] == "differences" and last["counts"]["uniqueid-conflict"] == 1
    assert "differences" not in last            # the summary only, not every message
    journal = FakeJournal()
    check.journal_report(journal, report)
    [entry] = journal.entries
    assert entry["ID"] == "divergence-found" and entry["SYNCWARDEN_REPLICA_ONLY"] == 3
    assert entry["SYNCWARDEN_GUID_MISMATCH"] == 1 and entry["PRIORITY"] == "warning"
    assert "replica-only 3, uniqueid-conflict 1, guid-mismatch 1" in entry["MESSAGE"]
    clean = check.run(Pair(), tmp_path / "s", True, progress_out=None)
    check.journal_report(journal, clean)
    assert journal.entries[-1]["ID"] == "check-finished"
    assert json.loads(check.result_path("replica1", tmp_path).read_text())["users"] == 3
    assert check.load_last("nolink", tmp_path) is None


def test_status_says_what_to_run_after_a_check_that_found_differences(tmp_path):
    from supervisor.commands.check import last_check_lines

    report = run(failover_pair(), tmp_path)
    check.save(report, tmp_path)
    doc = {"links": [{"name": "replica1", "last_check": check.load_last("replica1", tmp_path)}]}
    (line,) = last_check_lines(doc, now=report.finished + 7200)
    assert line.startswith("replica1: last deep check 2h00m ago: DIFFERENCES: replica-only 3")
    assert line.endswith("; to make them equal, run: syncwarden repair replica1 (syncwarden"
                         " repair replica1 --dry-run shows the plan first)")


def test_a_shallow_check_reads_no_user_session_and_finds_the_same(tmp_path):
    surveyed = failover_pair()
    report = run(surveyed, tmp_path, deep=False)
    assert surveyed.reads == []                 # both sides read in one admin LIST each
    sessions = failover_pair()
    sessions.no_list_status = {"bob", "alice", "zed"}
    again = run(sessions, tmp_path, deep=False)
    assert sorted(sessions.reads) == ["alice", "bob", "bob", "zed", "zed"]   # 2nd looks
    def found(r):
        return sorted((d.category, d.kind, d.user, d.mailbox or "", d.uid or 0, d.detail)
                      for d in r.differences), r.counts(), (r.users, r.mailboxes, r.messages)
    assert found(report) == found(again)


def test_only_users_without_a_status_are_read_as_themselves(tmp_path):
    p = failover_pair()
    p.no_list_status = {"alice"}
    run(p, tmp_path, deep=False)
    assert p.reads == ["alice"]
