"""Reading sync_client's log lines (as seen in cyrus-lab.md 4c) and sync log entries."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.cyrus.channel import Channel
from supervisor.cyrus.failures import FailedPass, FailureDetector
from supervisor.cyrus.rewrite import move_out
from supervisor.cyrus.synclog import line_users, mailbox_user

PASS_METHOD1 = [  # chmod 000 on the replica's mailbox: named through do_folders and Promoting
    "MAILBOX user.alice",
    "MAILBOX received NO response: Unknown error",
    "do_folders(): update failed: user.alice 'The remote Server(s) denied the operation'",
    "  Promoting: MAILBOX user.alice -> USER alice",
    "USER received NO response: Unknown error",
    "Error in do_sync(): bailing out! The remote Server(s) denied the operation",
    "Processing sync log file /srv/m/conf/sync/repl/log-run failed: The remote Server(s)"
    " denied the operation",
]
PASS_METHOD3 = [  # the same folder created on both sides: named by user replication failed
    "do_folders: no tombstone for deleted mailbox user.bob.Proj (Success)",
    "MAILBOX received NO response: IMAP_MAILBOX_MOVED Mailbox exists with another name or"
    " uniqueid",
    "do_folders(): update failed: user.bob.Proj 'Mailbox has been moved to another server'",
    "IOERROR: user replication failed: error=<Mailbox has been moved to another server>"
    " userid=<bob> channel=<repl> servername=<127.0.0.1> func=<do_user_main>",
    "Error in do_sync(): bailing out! Mailbox has been moved to another server",
]
PASS_DISK_FULL = [  # the replica's spool filesystem is full (the two-host lab, issue 11)
    "IOERROR: received bad response: command=<MESSAGE> response=<BAD> errmsg=<IMAP_PROTOCOL_ERROR"
    " Failed to parse APPLY line> func=<sync_parse_response>",
    "do_folders(): update failed: user.dave 'Bad protocol'",
    "  Promoting: MAILBOX user.dave -> USER dave",
    "IOERROR: received bad response: command=<MESSAGE> response=<BAD> errmsg=<IMAP_PROTOCOL_ERROR"
    " Failed to parse APPLY line> func=<sync_parse_response>",
    "do_folders(): update failed: user.bob 'Bad protocol'",
    "  Promoting: MAILBOX user.bob -> USER bob",
    "IOERROR: received bad response: command=<MESSAGE> response=<BAD> errmsg=<IMAP_PROTOCOL_ERROR"
    " Failed to parse APPLY line> func=<sync_parse_response>",
    "do_folders(): update failed: user.dave 'Bad protocol'",
    "IOERROR: user replication failed: error=<Bad protocol> userid=<dave> channel=<replica2>"
    " servername=<10.77.0.3> func=<do_user_main>",
    "Error in do_sync(): bailing out! Bad protocol",
    "Processing sync log file /srv/m/conf/sync/replica2/log-run failed: Bad protocol",
]
ANONYMOUS = ["USER received NO response: Unknown error",
             "Error in do_sync(): bailing out! The remote Server(s) denied the operation"]


def feed(det, lines):
    out = [det.feed(line) for line in lines]
    return [x for x in out if x is not None]


def test_named_by_update_failed_and_promotion():
    (failed,) = feed(FailureDetector(), PASS_METHOD1)[:1]
    assert list(failed.users) == ["alice"]
    assert "update of user.alice failed" in failed.users["alice"]


def test_named_by_user_replication_failed():
    (failed,) = feed(FailureDetector(), PASS_METHOD3)
    assert failed.users["bob"] == ("Mailbox has been moved to another server (MAILBOX refused by"
                                   " the replica: IMAP_MAILBOX_MOVED Mailbox exists with another"
                                   " name or uniqueid)")


def test_anonymous_failures_count_reprocessing():
    det = FailureDetector()
    for _ in range(3):
        det.feed("Reprocessing sync log file /x/log-run")
        (failed,) = feed(det, ANONYMOUS)
        assert failed.users == {}
    assert det.reprocessing == 3


def test_one_shot_user_failure_names_the_user():
    (failed,) = feed(FailureDetector(), ["Error in sync_do_user(carol): bailing out!"])
    assert list(failed.users) == ["carol"]


@pytest.mark.parametrize("mailbox,user", [
    ("user.bob", "bob"), ("user.bob.Sent", "bob"), ("example.com!user.bob.Sent",
                                                     "bob@example.com"),
    ("user.john^doe", "john.doe"), ("shared.folder", None), ("user.bob.My Folder", "bob"),
    ("DELETED.user.bob.Sent.5F3A1B2C", "bob"), ("user", None), ("!user.bob", "bob"),
    ("user..bob", "bob"), ("DELETED.user.5F3A1B2C", None)])
def test_mailbox_user(mailbox, user):
    assert mailbox_user(mailbox) == user


@pytest.mark.parametrize("line,users", [
    (b"APPEND user.bob", {"bob"}), (b"MAILBOX user.bob.Sent", {"bob"}),
    (b'MAILBOX "user.bob.My Folder"', {"bob"}),
    (b"DOUBLEMAILBOX user.alice user.bob.x", {"alice", "bob"}),
    (b"RENAME user.carol.a user.carol.b", {"carol"}), (b"SEEN alice 6f1c2a0e", {"alice"}),
    (b"SUB alice user.alice.Archive", {"alice"}), (b"USER john^doe", {"john.doe"}),
    (b"UNUSER erin", {"erin"}), (b"QUOTA user.carol", {"carol"}), (b"ANNOTATION \"\"", set()),
    (b"MAILBOX shared.news", set()), (b"garbage", set())])
def test_line_users(line, users):
    assert line_users(line) == users


def test_move_out_keeps_order_and_moves_each_line_once(tmp_path):
    log = tmp_path / "log"
    data = b"APPEND user.bob\nAPPEND user.alice\nDOUBLEMAILBOX user.alice user.bob.x\n"
    log.write_bytes(data)
    stored = {}
    assert move_out(log, {"alice", "bob"}, stored.update) == 3
    assert log.read_bytes() == b""
    assert stored == {"alice": [b"APPEND user.alice\n", b"DOUBLEMAILBOX user.alice user.bob.x\n"],
                      "bob": [b"APPEND user.bob\n"]}
    log.write_bytes(data)
    move_out(log, {"alice"}, stored.update)
    assert log.read_bytes() == b"APPEND user.bob\n"


def test_move_out_rewrites_and_keeps_owner_mode(tmp_path):
    log = tmp_path / "log"
    log.write_bytes(b"APPEND user.bob\nAPPEND user.alice\nMAILBOX user.bob\n")
    log.chmod(0o600)
    stored = {}
    n = move_out(log, {"alice"}, stored.update)
    assert n == 1 and stored == {"alice": [b"APPEND user.alice\n"]}
    assert log.read_bytes() == b"APPEND user.bob\nMAILBOX user.bob\n"
    assert log.stat().st_mode & 0o777 == 0o600
    assert Channel(tmp_path).users_in("log") == {"bob"}
    assert move_out(tmp_path / "absent" / "log", {"alice"}, stored.update) == 0


def test_a_crash_after_storing_duplicates_never_loses(tmp_path):
    log = tmp_path / "log-run"
    original = b"APPEND user.bob\nAPPEND user.alice\n"
    log.write_bytes(original)
    stored = []

    def sink_then_crash(moved):
        stored.extend(moved["alice"])
        raise KeyboardInterrupt        # the daemon dies between storing and rewriting

    with pytest.raises(KeyboardInterrupt):
        move_out(log, {"alice"}, sink_then_crash, no_client=True)
    assert log.read_bytes() == original and stored == [b"APPEND user.alice\n"]
    assert not list(tmp_path.glob(".*syncwarden"))


def test_a_broken_connection_blames_nobody():
    lines = [  # the replica was SIGKILLed mid-pass (seen in the system tests)
        "IOERROR: zero length response: command=<MAILBOXES> prot_error=<end of file reached>"
        " func=<sync_parse_response>",
        "  Promoting: MAILBOX user.dave -> USER dave",
        "IOERROR: zero length response: command=<RESTART> prot_error=<end of file reached>",
        "Error in do_sync(): bailing out! Bad protocol",
        "Processing sync log file /x/log-run failed: Bad protocol",
    ]
    det = FailureDetector()
    (failed,) = feed(det, lines)
    assert failed.transport and "dave" in failed.users
    (again,) = feed(det, PASS_METHOD3)          # the next real failure is judged afresh
    assert not again.transport and list(again.users) == ["bob"]


FRAGMENTS = PASS_METHOD1 + PASS_METHOD3 + ANONYMOUS + [
    "Reprocessing sync log file /x/log-run", "Error in sync_do_user(): bailing out!",
    "IOERROR: user replication failed: error=<> userid=<>", "do_folders(): update failed: ! ''",
    "  Promoting: MAILBOX DELETED.user.x -> USER ^", "Processing sync log file x failed"]


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.one_of(st.text(max_size=80), st.sampled_from(FRAGMENTS),
                          st.builds(lambda a, b: a + b, st.sampled_from(FRAGMENTS),
                                    st.text(max_size=20))), max_size=30))
def test_any_log_lines_give_failed_passes_or_nothing(lines):
    det = FailureDetector()
    for i, line in enumerate(lines):
        out = det.feed(line)
        assert out is None or isinstance(out, FailedPass)
        if out is not None:
            assert all(isinstance(u, str) and isinstance(e, str) for u, e in out.users.items())
        if i % 7 == 6:
            det.pass_succeeded()


def test_a_replica_that_answers_bad_is_refusing_not_gone():
    (failed,) = feed(FailureDetector(), PASS_DISK_FULL)
    assert not failed.transport
    assert sorted(failed.users) == ["bob", "dave"]
    assert failed.users["bob"] == ("update of user.bob failed: Bad protocol (MESSAGE refused by"
                                   " the replica: IMAP_PROTOCOL_ERROR Failed to parse APPLY line)")
