"""Parsing Cyrus 3.6.1's answers as imaplib hands them over (recorded in the lab)."""

from supervisor.pair.imapclient import Login
from supervisor.pair.imapparse import (message_from, parse_fetch, parse_list, parse_status, quote,
                                  userid_of)


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
