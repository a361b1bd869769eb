"""The comparison core: each situation of a failover lands in exactly one category."""

from supervisor.pair import compare
from supervisor.pair.compare import Mailbox, Message, Report, Status, compare_user


def box(name, mailboxid="A", messages=None, uidnext=None, hms=None, uidvalidity=100,
        deep=True):
    """A mailbox; messages is {uid: guid} or {uid: (guid, flags, modseq)}."""
    msgs = {}
    for uid, value in (messages or {}).items():
        guid, flags, modseq = value if isinstance(value, tuple) else (value, (), uid + 1)
        msgs[uid] = Message(uid, guid, frozenset(flags), modseq)
    last = max(msgs, default=0)
    status = Status(len(msgs), uidnext or last + 1, uidvalidity,
                    hms or max((m.modseq for m in msgs.values()), default=1), mailboxid)
    return Mailbox(name, status, msgs if deep else None)


def view(*boxes):
    return {b.name: b for b in boxes}


def cats(diffs):
    return [(d.category, d.kind, d.mailbox, d.uid) for d in diffs]


def test_identical_sides_have_no_difference():
    m = view(box("user.bob", messages={1: "g1", 2: "g2"}), box("user.bob.Sent"))
    r = view(box("user.bob", messages={1: "g1", 2: "g2"}), box("user.bob.Sent"))
    assert compare_user("bob", m, r) == []


def test_user_only_on_one_side():
    r = view(box("user.zed", messages={1: "a", 2: "b"}), box("user.zed.Work", "B"))
    [d] = compare_user("zed", None, r)
    assert (d.category, d.kind) == ("replica-only", "user")
    assert d.replica == {"mailboxes": 2, "messages": 2}
    [d] = compare_user("zed", r, None)
    assert (d.category, d.kind) == ("master-only", "user")
    [d] = compare_user("zed", r, None, pending=True)
    assert d.category == "replica-behind"


def test_mailbox_only_on_one_side():
    m = view(box("user.bob"), box("user.bob.Old", "O"))
    r = view(box("user.bob"), box("user.bob.New", "N", messages={1: "x"}))
    assert cats(compare_user("bob", m, r)) == [
        ("replica-only", "mailbox", "user.bob.New", None),
        ("master-only", "mailbox", "user.bob.Old", None)]


def test_same_name_other_mailboxid_is_a_conflict_and_its_replica_only_messages_are_listed():
    m = view(box("user.bob.Proj", "M1", messages={1: "m-msg"}))
    r = view(box("user.bob.Proj", "R1", messages={1: "r-msg", 2: "m-msg"}))
    assert cats(compare_user("bob", m, r)) == [
        ("uniqueid-conflict", "mailbox", "user.bob.Proj", None),
        ("replica-only", "message", "user.bob.Proj", 1)]
    shallow = compare_user("bob", view(box("user.bob.Proj", "M1", deep=False)),
                           view(box("user.bob.Proj", "R1", deep=False)))
    assert cats(shallow) == [("uniqueid-conflict", "mailbox", "user.bob.Proj", None)]


def test_split_brain_in_a_shared_mailbox_deep():
    # Both sides had 1-2; then the replica got 3-4 and the master got 3 (another message).
    m = view(box("user.erin", messages={1: "a", 2: "b", 3: "m3"}))
    r = view(box("user.erin", messages={1: "a", 2: "b", 3: "r3", 4: "r4"}))
    assert cats(compare_user("erin", m, r)) == [
        ("guid-mismatch", "message", "user.erin", 3),
        ("replica-ahead", "message", "user.erin", 4)]


def test_split_brain_shallow_is_replica_ahead_even_if_the_master_moved_too():
    m = view(box("user.erin", uidnext=9, hms=20, deep=False))
    r = view(box("user.erin", uidnext=12, hms=15, deep=False))
    [d] = compare_user("erin", m, r)
    assert (d.category, d.kind) == ("replica-ahead", "mailbox")
    assert "UIDNEXT 9 on the master, 12 on the replica" in d.detail


def test_master_ahead_is_lag_when_queued_and_master_only_otherwise():
    m = view(box("user.bob", uidnext=12, hms=30, deep=False))
    r = view(box("user.bob", uidnext=10, hms=25, deep=False))
    assert compare_user("bob", m, r)[0].category == "master-only"
    assert compare_user("bob", m, r, pending=True)[0].category == "replica-behind"


def test_uidvalidity_decides_direction_first():
    m = view(box("user.bob", uidvalidity=200, uidnext=5, deep=False))
    r = view(box("user.bob", uidvalidity=300, uidnext=2, deep=False))
    assert compare_user("bob", m, r)[0].category == "replica-ahead"


def test_flags_direction_follows_modseq():
    base = {1: ("g", (), 5)}
    m = view(box("user.bob", messages=base, hms=5))
    r = view(box("user.bob", messages={1: ("g", ("\\Flagged",), 9)}, hms=9))
    [d] = compare_user("bob", m, r)
    assert (d.category, d.uid) == ("replica-ahead", 1) and "newer on the replica" in d.detail
    m = view(box("user.bob", messages={1: ("g", ("\\Seen",), 9)}, hms=9))
    r = view(box("user.bob", messages=base, hms=5))
    assert compare_user("bob", m, r)[0].category == "master-only"


def test_expunges_pending_on_either_side():
    # UID 2 expunged on the master (its HIGHESTMODSEQ moved past the message's modseq).
    m = view(box("user.bob", messages={1: ("a", (), 2)}, uidnext=3, hms=10))
    r = view(box("user.bob", messages={1: ("a", (), 2), 2: ("b", (), 3)}, uidnext=3, hms=3))
    [d] = compare_user("bob", m, r, pending=True)
    assert (d.category, d.uid) == ("replica-behind", 2) and "expunged on the master" in d.detail
    # ... and the mirror: expunged on the replica during a split brain.
    [d] = compare_user("bob", r, m)
    assert (d.category, d.uid) == ("replica-ahead", 2)


def test_deep_status_difference_without_message_difference_is_still_reported():
    m = view(box("user.bob", messages={1: "a"}, hms=7))
    r = view(box("user.bob", messages={1: "a"}, hms=4))
    [d] = compare_user("bob", m, r)
    assert (d.category, d.kind) == ("master-only", "mailbox")


def test_report_result_exit_code_and_counts():
    rep = Report("replica1", deep=False, started=10.0, finished=12.5)
    assert (rep.result, rep.exit_code) == ("in-sync", 0)
    rep.differences.append(compare.Difference("replica-behind", "mailbox", "bob", "user.bob"))
    assert (rep.result, rep.exit_code) == ("in-sync", 0)      # lag is not divergence
    rep.differences.append(compare.Difference("replica-only", "user", "zed"))
    assert (rep.result, rep.exit_code) == ("differences", 2)   # CRITICAL
    assert rep.counts()["replica-only"] == 1 and set(rep.counts()) == set(compare.CATEGORIES)
    rep.errors.append("carol: login refused")
    # what was found stays CRITICAL although one user could not be read
    assert (rep.result, rep.exit_code) == ("error", 2)
    doc = rep.as_json()
    assert doc["duration_seconds"] == 2.5 and doc["differences"][1]["category"] == "replica-only"
    rep.differences.pop()
    assert (rep.result, rep.exit_code) == ("error", 3)          # UNKNOWN: nothing found


def test_render_lists_each_difference_and_the_counts():
    rep = Report("replica1", deep=True, started=0.0, finished=1.0, users=2, mailboxes=3,
                 messages=9)
    rep.differences = compare_user("bob", view(box("user.bob.P", "M", messages={1: "x"})),
                                   view(box("user.bob.P", "R", messages={1: "y"})))
    text = compare.render(rep)
    assert "uniqueid-conflict  bob  user.bob.P: same name, different MAILBOXID" in text
    assert "replica-only       bob  user.bob.P uid 1:" in text
    assert text.splitlines()[-2] == ("replica1: DIFFERENT: 2 user(s), 3 mailbox(es), 9 message(s)"
                                     " compared in 1.0s; differences: replica-only 1,"
                                     " uniqueid-conflict 1")
    # and what to do about it
    assert text.splitlines()[-1] == ("replica1: to make them equal, run: syncwarden repair"
                                     " replica1 (syncwarden repair replica1 --dry-run shows the"
                                     " plan first)")
