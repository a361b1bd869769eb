"""imapclient against a scripted server on a real socket: every hostile answer ends in
ImapError (never a hang, never another exception) within the bounds the module sets."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.pair import imapclient
from supervisor.pair.imapclient import ImapError, Login, UserSession

from .fakeimap import FakeImapServer
from .test_imapparse import TOKENS

LOGIN = Login("cyrus", "secret")


def run_bounded(fn, seconds=30):
    """fn() in a thread; fail the test (instead of hanging the suite) if it does not return."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:        # handed to the test thread, which re-raises it
            result["error"] = exc
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds}s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def fetch_with(answer, timeout=5.0, close_after=None):
    """Log in as bob, EXAMINE INBOX and fetch its messages from a server answering ``answer``."""
    with FakeImapServer({"FETCH": answer}, close_after=close_after) as server:
        def go():
            s = UserSession(server.endpoint(timeout), LOGIN, "bob")
            try:
                return s.messages("user.bob")
            finally:
                s.close()
        return run_bounded(go)


def test_a_well_formed_answer_is_read():
    got = fetch_with(b"* 1 FETCH (UID 4 FLAGS (\\Seen) MODSEQ (7) DIGEST.SHA1 AB)\r\n"
                     b"{tag} OK done\r\n")
    assert got[4].guid == "ab" and got[4].flags == frozenset({"\\Seen"}) and got[4].modseq == 7


def test_the_reported_hanging_literal_ends_in_imap_error():
    answer = b'* 1 FETCH (UID 1 X "a\\{5}\r\nhello"")\r\n{tag} OK done\r\n'
    with pytest.raises(ImapError, match=r"127\.0\.0\.1:\d+ as bob: FETCH user\.bob: "
                                        r"unterminated quoted string"):
        fetch_with(answer)


def test_a_server_that_stops_mid_literal_ends_in_imap_error():
    with pytest.raises(ImapError, match=r"FETCH user\.bob: .*no complete answer after"
                                        r" [\d.]+s \(timeout 0\.5s\)"):
        fetch_with(b"* 1 FETCH (UID 1 BODY[] {50}\r\nonly twenty bytes...", timeout=0.5)


def test_a_server_dripping_one_byte_at_a_time_ends_in_imap_error():
    def drip(conn, tag):
        for _ in range(1000):       # 20 s if nothing stopped the client; it gives up after 1 s
            conn.sendall(b"x")
            time.sleep(0.02)
    with pytest.raises(ImapError, match=r"no complete answer after [\d.]+s \(timeout 1s\)"):
        fetch_with(drip, timeout=1.0)


def test_a_literal_over_the_limit_is_refused_before_it_is_read():
    with pytest.raises(ImapError, match=r"literal of 99999999999 bytes \(at most \d+\)"):
        fetch_with(b"* 1 FETCH (UID 1 BODY[] {99999999999}\r\n")


def test_an_endless_answer_is_cut_at_the_answer_limit(monkeypatch):
    monkeypatch.setattr(imapclient, "MAX_ANSWER", 1 << 20)

    def flood(conn, tag):
        try:
            while True:
                conn.sendall(b"* OK still going\r\n" * 1000)
        except OSError:             # the client hung up: the point of the test
            pass
    with pytest.raises(ImapError, match=r"answer larger than 1048576 bytes"):
        fetch_with(flood)


def test_a_non_ascii_capability_line_is_an_imap_error_not_a_unicode_error():
    with FakeImapServer({"CAPABILITY": b"* CAPABILITY IMAP4rev1 \xff\r\n{tag} OK\r\n"}) as server:
        with pytest.raises(ImapError, match="cannot connect"):
            run_bounded(lambda: imapclient.connect(server.endpoint(), LOGIN))


# Whatever a server answers to FETCH (then closing the connection, so that nothing waits for
# a timeout): the messages, or ImapError.
server_bytes = st.lists(st.one_of(st.sampled_from(TOKENS + [b"* 1 FETCH ", b"{tag} OK done",
                                                            b"{tag} NO", b"* BYE", b"+ "]),
                                  st.binary(max_size=10)), max_size=30).map(b"".join)


@settings(max_examples=60, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(server_bytes)
def test_any_fetch_answer_gives_messages_or_imap_error(answer):
    try:
        got = fetch_with(answer + b"\r\n", timeout=2.0, close_after="FETCH")
    except ImapError:
        return
    assert isinstance(got, dict)


def test_a_line_without_end_is_cut_at_the_line_limit():
    with pytest.raises(ImapError, match=r"line longer than 1000000 bytes"):
        fetch_with(b"* 1 FETCH (UID 1 X " + b"y" * 1_100_000)


ROOT = b'* LIST (\\Noselect) "." ""\r\n{tag} OK done\r\n'
SURVEY = {   # what each of the survey's three sessions asks for, and Cyrus's answer
    b"HIGHESTMODSEQ": b'* LIST (\\HasChildren) "." user.bob\r\n* STATUS user.bob (MESSAGES 2'
                      b' UIDNEXT 3 UIDVALIDITY 7 HIGHESTMODSEQ 4)\r\n'
                      b'* LIST (\\HasNoChildren) "." user.bob.Sent\r\n'    # no STATUS for it
                      b'* LIST (\\HasNoChildren) "." user.ann\r\n* STATUS user.ann (MESSAGES 0'
                      b' UIDNEXT 1 UIDVALIDITY 8 HIGHESTMODSEQ 1)\r\n{tag} OK done\r\n',
    b"METADATA": b'* LIST (\\HasChildren) "." user.bob\r\n* METADATA user.bob'
                 b' ("/shared/vendor/cmu/cyrus-imapd/synccrcs" "12 34")\r\n'
                 b'* LIST (\\HasNoChildren) "." user.bob.Sent\r\n'
                 b'* LIST (\\HasNoChildren) "." user.ann\r\n{tag} OK done\r\n',
    b"MAILBOXID": b'* LIST (\\HasChildren) "." user.bob\r\n* STATUS user.bob (MAILBOXID (b1))\r\n'
                  b'* LIST (\\HasNoChildren) "." user.bob.Sent\r\n'
                  b'* STATUS user.bob.Sent (MAILBOXID (b2))\r\n'
                  b'* LIST (\\HasNoChildren) "." user.ann\r\n* STATUS user.ann (MAILBOXID (a1))'
                  b'\r\n{tag} OK done\r\n',
    b"": b'* LIST (\\HasNoChildren) "." user.bob\r\n{tag} OK done\r\n'}     # plain LIST


def survey_with(answers):
    asked = []

    def listing(conn, tag, line):
        asked.append(line)
        if b' "" ""' in line:
            answer = ROOT
        else:
            answer = next(a for k, a in answers.items() if k in line.partition(b"RETURN")[2]
                          or not k and b"RETURN" not in line)
        conn.sendall(answer.replace(b"{tag}", tag))
    with FakeImapServer({"LIST": listing}) as server:
        return run_bounded(lambda: imapclient.survey(server.endpoint(), LOGIN)), asked


def test_the_admin_survey_reads_every_status_in_its_list():
    got, asked = survey_with(SURVEY)
    assert len([x for x in asked if b"RETURN" in x]) == 3     # in three sessions at once
    assert got.users == {"bob": ["user.bob", "user.bob.Sent"], "ann": ["user.ann"]}
    assert got.statuses["user.bob"] == imapclient.Status(2, 3, 7, 4, "b1", "12 34")
    assert got.view(["user.ann"]) == {"user.ann": imapclient.Mailbox(
        "user.ann", imapclient.Status(0, 1, 8, 1, "a1", ""))}
    assert got.view(["user.bob", "user.bob.Sent"]) is None    # read bob as bob instead


def test_a_server_without_list_status_still_lists_its_users():
    refused = b"{tag} BAD Unrecognized LIST option\r\n"
    got, _ = survey_with({b"HIGHESTMODSEQ": refused, b"METADATA": refused,
                          b"MAILBOXID": refused, b"": SURVEY[b""]})
    assert got.users == {"bob": ["user.bob"]} and got.statuses == {}
