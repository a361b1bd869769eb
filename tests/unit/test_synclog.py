"""Cyrus's sync log grammar (imap/sync_log.c), and properties over arbitrary lines."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.cyrus import synclog
from supervisor.cyrus.synclog import Entry, count_lines, line_users, mailbox_user, needle, parse


@pytest.mark.parametrize("line,entry", [
    (b"APPEND user.bob\n", Entry("APPEND", ("user.bob",))),
    (b"append user.bob\r\n", Entry("APPEND", ("user.bob",))),          # types: any case
    (b'MAILBOX "user.bob.My Folder"\n', Entry("MAILBOX", ("user.bob.My Folder",))),
    (b'MAILBOX "user.bob.a\\"b\\\\c"\n', Entry("MAILBOX", ('user.bob.a"b\\c',))),
    # a brace inside a bare name: the reader takes it, a writer would have quoted it
    (b"MAILBOX user.bob.a{1}\n", Entry("MAILBOX", ("user.bob.a{1}",), False)),
    (b'SEEN alice ""\n', Entry("SEEN", ("alice", ""))),
    (b"FOO x\n", Entry("FOO", ("x",))),          # read, but sync_client ignores the type
])
def test_parse_like_the_reader(line, entry):
    assert parse(line) == entry


@pytest.mark.parametrize("line", [
    b"\n", b"APPEND\n", b"APPEND  user.bob\n", b"APPEND user.bob extra words\n",
    b'APPEND "unterminated\n', b"APPEND {3}\n", b"APPEND user.bob\tx\n", b"APPEND(x) y\n",
    b'APPEND "a\rb"\n'])
def test_what_the_reader_skips_or_chokes_on(line):
    assert parse(line) is None and count_lines(line)[0] == 0


def test_validity_is_the_writers_arity():
    assert parse(b"SEEN alice\n").valid is False                       # SEEN takes two
    assert parse(b"USER a b\n").valid is False and parse(b"FOO x\n").valid is False
    assert parse(b"RENAME a b\n").valid and parse(b"unsub a b\n").valid
    assert not parse(b"MAILBOX user.bob.a{1}\n").valid and parse(b'MAILBOX "a{1}"\n').valid
    assert parse(b"MAILBOX user.bob.a{1}\n").users() == {"bob"}


def test_owners_and_cover():
    rename = parse(b"RENAME user.alice.Proj user.bob.Proj\n")
    assert rename.owners() == ["alice", "bob"] and not rename.covered_by("alice")
    assert parse(b"RENAME user.alice.A user.alice.B\n").covered_by("alice")
    assert not parse(b"RENAME user.alice.A shared.B\n").covered_by("alice")
    assert parse(b"SUB alice user.bob.Shared\n").owners() == ["alice"]   # alice's subscription
    assert parse(b"SEEN john^doe x\n").users() == {"john.doe"}
    assert parse(b"FOO user.alice\n").owners() == [] and not parse(b"FOO x\n").covered_by("x")


# -- properties over arbitrary input ------------------------------------------------------------

ATOM_BYTES = st.binary(min_size=1, max_size=12)
ANY_LINE = st.one_of(
    st.binary(max_size=60),
    st.builds(lambda k, a, b: k + b" " + a + b, st.sampled_from(
        [t.encode() for t in synclog.TYPES] + [b"apPend", b"X"]), ATOM_BYTES,
        st.one_of(st.just(b""), ATOM_BYTES.map(lambda x: b" " + x))),
    st.builds(lambda k, q: k + b' "' + q + b'"', st.sampled_from([b"MAILBOX", b"USER"]),
              st.binary(max_size=12)))


@settings(max_examples=250, deadline=None, database=None)
@given(ANY_LINE, st.sampled_from([b"\n", b"\r\n"]))
def test_counting_and_parsing_agree(body, eol):
    """backlog's regex (C speed) and the parser say the same of every line."""
    line = body.replace(b"\n", b"") + eol
    entry = parse(line)
    valid, malformed = count_lines(line)
    assert valid == int(entry is not None and entry.valid)
    assert malformed == 1 - valid


@settings(max_examples=250, deadline=None, database=None)
@given(ANY_LINE)
def test_every_line_naming_a_user_holds_its_needle(body):
    """The rewrite finds candidate lines by needle(user) (and a backslash, as quoting may escape
    any byte): it must never miss one."""
    for user in line_users(body):
        n = needle(user)
        assert n is None or n in body or b"\\" in body


@settings(database=None, deadline=None)
@given(st.text(max_size=30))
def test_mailbox_user_never_raises(name):
    user = mailbox_user(name)
    assert user is None or isinstance(user, str)


def test_needle():
    assert needle("john.doe@example.com") == b"john"
    assert needle("x") == b"x" and needle(".") is None
