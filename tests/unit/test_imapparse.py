"""Parsing Cyrus 3.6.1's answers as imaplib hands them over (recorded in the lab)."""

import contextlib
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.pair.imapclient import Login
from supervisor.pair.imapparse import (ParseError, by_name, message_from, parse_fetch, parse_list,
                                       parse_status, quote, split_name, userid_of)


def test_list_answers():
    assert parse_list(b'(\\HasNoChildren) "." user.bob') == ({"\\hasnochildren"}, ".", "user.bob")
    assert parse_list(b'(\\HasChildren \\Noselect) "/" "user/bob/My \\"Box\\""') == (
        {"\\haschildren", "\\noselect"}, "/", 'user/bob/My "Box"')
    assert parse_list((b'() "." {11}', b"user.bob.ab")) == (set(), ".", "user.bob.ab")
    assert parse_list(b"(\\Noselect) NIL \"\"") == ({"\\noselect"}, None, "")
    assert parse_list(b"garbage") is None


def test_userid_from_admin_names():
    assert userid_of("user.bob", ".") == "bob"
    assert userid_of("user.bob.Sent.2024", ".") == "bob"
    assert userid_of("user/bob.smith/Sent", "/") == "bob.smith"
    assert userid_of("user.bob.Sent@example.com", ".") == "bob@example.com"
    assert userid_of("shared.folder", ".") is None
    assert userid_of("user", ".") is None


def test_status_numbers_and_mailboxid_asked_alone():
    got = parse_status([b"user.bob (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 1795651062 HIGHESTMODSEQ 1)"])
    assert got == {"messages": 0, "uidnext": 1, "uidvalidity": 1795651062, "highestmodseq": 1}
    assert parse_status([b"INBOX (MAILBOXID (6c5l1jlwecahtj1vv3z1fn09))"]) == {
        "mailboxid": "6c5l1jlwecahtj1vv3z1fn09"}
    # A name that looks like items does not fool it.
    got = parse_status([b'"MESSAGES 7" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 4 HIGHESTMODSEQ 5)'])
    assert got["messages"] == 2


def test_status_ignores_the_garbled_combined_mailboxid():
    # What 3.6.1 sends when MAILBOXID is asked with other items: not a mailbox id at all.
    raw = b"INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 9 MAILBOXID (\xee\xcd\xcc\xd9\xabU) HIGHESTMODSEQ 2)"
    assert "mailboxid" not in parse_status([raw])


def test_fetch_metadata_lines():
    data = [b'1 (FLAGS (\\Recent \\Flagged \\Seen $Custom) UID 1 DIGEST.SHA1 '
            b'36bdc7716ffb26b521a82534a7790399f075e4a9 INTERNALDATE "22-Nov-2026 23:58:23 +0000"'
            b' MODSEQ (2) RFC822.SIZE 56)',
            b"2 (FLAGS () UID 7 DIGEST.SHA1 ABCDEF MODSEQ (9))"]
    first, second = parse_fetch(data)
    assert first["UID"] == 1 and first["MODSEQ"] == 2 and first["RFC822.SIZE"] == 56
    assert first["INTERNALDATE"] == "22-Nov-2026 23:58:23 +0000"
    msg = message_from(first)
    assert msg.flags == frozenset({"\\Flagged", "\\Seen", "$Custom"})      # no \Recent
    assert msg.guid == "36bdc7716ffb26b521a82534a7790399f075e4a9"
    assert message_from(second).guid == "abcdef" and message_from(second).flags == frozenset()


def test_fetch_with_literal_bodies_split_by_imaplib():
    body = b"From: a@b\r\nSubject: (tricky \"quote\"\r\n\r\nbody )\r\n"
    data = [(b'1 (FLAGS (\\Seen) UID 3 INTERNALDATE "22-Nov-2026 23:58:23 +0000" BODY[] {%d}'
             % len(body), body), b")",
            (b"2 (UID 4 BODY[] {2}", b"hi"), b" FLAGS (\\Draft))"]
    one, two = parse_fetch(data)
    assert one["BODY[]"] == body and one["UID"] == 3 and one["FLAGS"] == ["\\Seen"]
    assert two["BODY[]"] == b"hi" and two["FLAGS"] == ["\\Draft"] and two["UID"] == 4


def test_quoting_and_no_password_in_repr():
    assert quote('a "b" \\c') == '"a \\"b\\" \\\\c"'
    assert "secret" not in repr(Login("cyrus", "secret"))


def test_list_status_answers_by_mailbox():
    from supervisor.pair.imapparse import by_name
    status = [b"INBOX (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 17 HIGHESTMODSEQ 1)",
              b'"INBOX.My \\"Box\\"" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 18 HIGHESTMODSEQ 3)',
              (b"{5}", b"INBOX"), b"garbage"]
    got = by_name(status, parse_status)
    assert got["INBOX"]["uidvalidity"] == 17 and got['INBOX.My "Box"']["messages"] == 2
    assert set(got) == {"INBOX", 'INBOX.My "Box"'}
    meta = [b'INBOX ("/shared/vendor/cmu/cyrus-imapd/synccrcs" "0 12345678")',
            b'INBOX.Shared ("/shared/vendor/cmu/cyrus-imapd/synccrcs" "1720107062 1047124393")']
    assert by_name(meta, parse_status)["INBOX.Shared"] == {"synccrc": "1720107062 1047124393"}
    ids = [b"INBOX.Shared (MAILBOXID (jk36pmt5py4y6srqvz1nnbxr))"]
    assert by_name(ids, parse_status) == {"INBOX.Shared": {"mailboxid": "jk36pmt5py4y6srqvz1nnbxr"}}


# --- hostile answers: a result or ParseError, never anything else, never a hang ---------------

@contextlib.contextmanager
def terminates(seconds=5):
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``."""
    def expired(signum, frame):
        raise AssertionError(f"did not terminate within {seconds}s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# No example database in the checkout, and no per-example deadline on a shared machine:
# termination is what terminates() checks.
def fuzz(n):
    return settings(max_examples=n, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def outcome(fn, *args):
    """fn(*args), or None when it raised ParseError; any other exception fails the test."""
    with terminates():
        try:
            return fn(*args)
        except ParseError:
            return None


# Bytes that mean something to the parser, so that examples reach past the first check.
TOKENS = [b"(", b")", b'"', b"\\", b" ", b"\r\n", b"1", b"42", b"99999999999999999999999",
          b"UID", b"FLAGS", b"MODSEQ", b"DIGEST.SHA1", b"RFC822.SIZE", b"BODY[]", b"NIL",
          b"{5}", b"{0}", b"\x00", b"\\Seen", b"MESSAGES", b"MAILBOXID", b"\xe9", b"{"]
imapish = st.one_of(st.binary(max_size=80),
                    st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join))


@st.composite
def literal_piece(draw):
    """imaplib's (line ending in {N}, N bytes), mostly well-formed, sometimes not."""
    head, lit = draw(imapish), draw(st.binary(max_size=12))
    size = draw(st.sampled_from([len(lit), len(lit), len(lit), len(lit) + 1]))
    return (head + b"{%d}" % size, lit)


item = st.one_of(st.none(), imapish, literal_piece(), st.tuples(imapish, imapish))
answers = st.lists(item, max_size=8)


@fuzz(200)
@given(answers)
def test_fetch_answers_parse_or_raise_parse_error(data):
    fetched = outcome(parse_fetch, data)
    for msg in fetched or []:
        if "UID" in msg:
            outcome(message_from, msg)


@fuzz(150)
@given(answers)
def test_status_answers_parse_or_raise_parse_error(data):
    got = outcome(parse_status, data)
    assert got is None or all(isinstance(v, (int, str)) for v in got.values())
    outcome(by_name, data, parse_status)


@fuzz(150)
@given(item)
def test_list_answers_parse_or_raise_parse_error(one):
    got = outcome(parse_list, one)
    assert got is None or (isinstance(got[0], set) and isinstance(got[2], str))


@fuzz(100)
@given(imapish, st.text(max_size=20), st.text(max_size=3))
def test_names_parse_or_raise_parse_error(line, name, delim):
    outcome(split_name, line)
    assert outcome(userid_of, name, delim) is None or delim


@fuzz(100)
@given(st.integers(1, 2**32), st.integers(1, 2**63),
       st.lists(st.sampled_from(["\\Seen", "\\Flagged", "$Label1", "\\Answered"]), unique=True),
       st.binary(max_size=40), st.booleans())
def test_well_formed_fetch_answers_read_back(uid, modseq, flags, body, body_first):
    """What imaplib hands over for a real answer comes back item for item."""
    items = b"UID %d FLAGS (%s) MODSEQ (%d)" % (uid, " ".join(flags).encode(), modseq)
    if body_first:
        data = [(b"7 (BODY[] {%d}" % len(body), body), b" " + items + b")"]
    else:
        data = [(b"7 (" + items + b" BODY[] {%d}" % len(body), body), b")"]
    (msg,) = parse_fetch(data)
    assert (msg["SEQ"], msg["UID"], msg["FLAGS"], msg["MODSEQ"], msg["BODY[]"]) == (
        7, uid, flags, modseq, body)


@pytest.mark.parametrize("data", [
    # the reported hang: a backslash before the literal leaves a quoted string open
    [(b'1 (UID 1 X "a\\{5}', b"hello"), b'"")'],
    [(b'1 (UID 1 X "a\\{5}', b"hello"), b")"],
    [b'1 (UID 1 X "a'],
])
def test_unterminated_quoted_string_is_an_error_not_a_hang(data):
    with terminates(), pytest.raises(ParseError, match="unterminated quoted string"):
        parse_fetch(data)


@pytest.mark.parametrize("data, message", [
    ([b"1 (MODSEQ ())"], "MODSEQ: expected \\(number\\)"),          # was IndexError
    ([b"x (UID 1)"], "sequence number: expected a number"),        # was ValueError
    ([b"1 (UID one)"], "UID: expected a number"),                  # was ValueError
    ([b"1 (UID 1" + b"0" * 5000 + b")"], "UID: expected a number"),  # int() digit limit
    ([b"1 (UID)"], "odd number of items"),
    ([b"1 (UID 1))"], "'\\)' without '\\('"),
    ([b"1 (UID 1"], "'\\(' without '\\)'"),
    ([b"1 UID 1"], "expected 'seq \\(items\\)'"),
    ([b"1 " + b"(" * 100 + b")" * 100], "nested deeper than"),
    ([(b"1 (BODY[] {5}", b"hi")], "announced as"),
    ([(b"1 (BODY[] {2}", b"hi")], "cut after a literal"),
    ([(b"1 (BODY[] ", b"hi"), b")"], "without a \\{size\\}"),
])
def test_malformed_fetch_answers_raise_parse_error(data, message):
    with pytest.raises(ParseError, match=message):
        parse_fetch(data)


def test_malformed_items_raise_parse_error_in_message_from():
    (msg,) = parse_fetch([b"1 (UID 3 DIGEST.SHA1 (abc))"])
    with pytest.raises(ParseError, match="DIGEST.SHA1 is not an atom"):   # was AttributeError
        message_from(msg)
    with pytest.raises(ParseError, match="FLAGS: expected a list"):
        parse_fetch([b"1 (UID 3 FLAGS \\Seen)"])
    with pytest.raises(ParseError, match="no UID"):
        message_from({"SEQ": 1})


def test_malformed_status_and_list_answers_raise_parse_error():
    with pytest.raises(ParseError, match="MESSAGES: expected a number"):
        parse_status([b"INBOX (MESSAGES " + b"9" * 5000 + b")"])            # was ValueError
    with pytest.raises(ParseError, match="bad quoted string"):
        parse_list(b'() "." "user.bob')
    with pytest.raises(ParseError, match="expected bytes"):
        parse_status([42])
    assert parse_list(b'(\\HasNoChildren \xff) "." user.bob')[2] == "user.bob"  # was UnicodeError
    assert userid_of("user.bob", "") is None                                     # was ValueError
