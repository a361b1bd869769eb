"""State files: durable and symlink-safe writes, and loads that repair or report, never crash."""

import json
import os
import re
import stat
import urllib.parse

import pytest

from supervisor import state as store
from supervisor.link.quarantine_store import ATTEMPTS_MAX, QuarantineStore, file_stem
from supervisor.link.roles import RoleRecord, RoleStore
from supervisor.state import UnsafeDirectory, atomic_write

from .test_core import make, step
from .test_isolation import U1, alice_quarantined

NOW = 1_800_000_000.0
NOBODY = 65534


@pytest.fixture
def fsyncs(monkeypatch):
    """What was fsync'ed: ("dir" | "file", path) in order."""
    seen = []
    real = os.fsync

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        seen.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)
    monkeypatch.setattr(store.os, "fsync", fsync)
    return seen


def test_atomic_write_syncs_the_file_then_its_directory(tmp_path, fsyncs):
    atomic_write(tmp_path / "a" / "b" / "holds.json", b"[]\n")
    assert (tmp_path / "a" / "b" / "holds.json").read_bytes() == b"[]\n"
    kinds = [(k, os.path.basename(p)) for k, p in fsyncs]
    # the new directories, each in its parent; then the file; then the rename in its directory
    assert kinds[:2] == [("dir", tmp_path.name), ("dir", "a")]
    assert kinds[2][0] == "file" and kinds[3] == ("dir", "b")
    assert not [p for p in (tmp_path / "a" / "b").iterdir() if p.name != "holds.json"]


def test_append_syncs_the_directory_when_it_creates_the_file(tmp_path, fsyncs):
    store.append(tmp_path / "x.entries", b"APPEND user.bob\n")
    store.append(tmp_path / "x.entries", b"APPEND user.bob\n")
    assert [k for k, _ in fsyncs] == ["file", "dir", "file"]
    assert (tmp_path / "x.entries").read_bytes() == b"APPEND user.bob\n" * 2


def test_a_symlink_at_the_final_name_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "role.json").symlink_to(victim)
    atomic_write(tmp_path / "state" / "role.json", b"{}\n")
    assert victim.read_text() == "root's file\n"
    assert not (tmp_path / "state" / "role.json").is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory another user owns")
def test_no_write_through_a_directory_another_user_owns(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    (tmp_path / "state").symlink_to(theirs)            # planted on the way to the file
    with pytest.raises(UnsafeDirectory, match="owned by uid 65534"):
        atomic_write(tmp_path / "state" / "holds.json", b"[]\n")
    with pytest.raises(UnsafeDirectory):
        store.append(tmp_path / "state" / "x.entries", b"x\n")
    assert list(theirs.iterdir()) == []


def test_append_refuses_a_symlink_or_a_hard_link(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"")
    (tmp_path / "sym.entries").symlink_to(target)
    os.link(target, tmp_path / "hard.entries")
    for name in ("sym.entries", "hard.entries"):
        with pytest.raises(OSError):
            store.append(tmp_path / name, b"APPEND user.x\n")
    assert target.read_bytes() == b""


def test_ensure_dir_enforces_mode_and_group_on_an_existing_directory(tmp_path):
    d = tmp_path / "users"
    d.mkdir(mode=0o755)
    store.ensure_dir(d, 0o750, os.getgid())
    assert stat.S_IMODE(d.stat().st_mode) == 0o750


# --- the quarantine store ----------------------------------------------------------------------

def make_store(tmp_path, now=NOW):
    return QuarantineStore(tmp_path / "q", clock=lambda: now)


LONG = "é" + "x" * 56                                   # 57 characters, one of them not ASCII


def test_any_user_id_fits_the_store(tmp_path):
    users = [LONG, "a" * 300, "../../etc/passwd", "bob smith", "a+b", "ünïcødé.user@example.org"]
    q = make_store(tmp_path)
    for u in users:
        q.add("replica1", u, "failed", NOW, 600)
        q.append("replica1", {u: [b"APPEND user.%s\n" % u.encode()]})
    names = [p.name for p in (tmp_path / "q" / "replica1").iterdir()]
    assert len(names) == 2 * len(users)
    assert all(re.fullmatch(r"[A-Za-z0-9._@-]{0,40}\+[0-9a-f]{32}\.(json|entries)", n)
               for n in names)
    again = make_store(tmp_path)
    assert {r.user for r in again.records()} == set(users) and not again.problems
    assert again.count("replica1", LONG) == 1
    assert json.loads((tmp_path / "q" / "replica1" / (file_stem("replica1", LONG) + ".json"))
                      .read_text())["user"] == LONG


def test_entries_stay_in_cyrus_format_readable_by_an_admin(tmp_path):
    q = make_store(tmp_path)
    q.add("replica1", LONG, "failed", NOW, 600)
    q.append("replica1", {LONG: [b"APPEND user.x\n", b"MAILBOX user.x\n"]})
    (entries,) = (tmp_path / "q" / "replica1").glob("*.entries")
    assert entries.read_bytes() == b"APPEND user.x\nMAILBOX user.x\n"
    assert entries.name.startswith("_" + "x" * 39 + "+")    # the id's readable part


def legacy(tmp_path, user, record=True, entries=b""):
    d = tmp_path / "q" / "replica1"
    d.mkdir(parents=True, exist_ok=True)
    stem = urllib.parse.quote(user, safe="@")
    if record:
        (d / f"{stem}.json").write_text(json.dumps(
            {"link": "replica1", "user": user, "since": NOW - 60, "error": "old", "attempts": 2,
             "next_retry": NOW + 60, "retry_offset": -1}))
    if entries:
        (d / f"{stem}.entries").write_bytes(entries)
    return d


def test_an_old_store_is_moved_to_hashed_names_on_load(tmp_path):
    d = legacy(tmp_path, "bob", entries=b"APPEND user.bob\n")
    legacy(tmp_path, "a+b", entries=b"APPEND user.a+b\n")
    q = make_store(tmp_path)
    assert {r.user for r in q.records()} == {"bob", "a+b"}
    assert q.get("replica1", "bob").attempts == 2 and q.count("replica1", "bob") == 1
    assert sorted(p.name for p in d.iterdir()) == sorted(
        file_stem("replica1", u) + s for u in ("bob", "a+b") for s in (".json", ".entries"))
    assert not q.problems
    assert make_store(tmp_path).count("replica1", "a+b") == 1      # and it stays so


def test_a_migration_cut_short_by_a_crash_loses_no_entry(tmp_path):
    d = legacy(tmp_path, "bob", entries=b"APPEND user.bob\n")
    q = make_store(tmp_path)                 # new names now; put the old ones back beside them
    legacy(tmp_path, "bob", entries=b"MAILBOX user.bob\n")
    q = make_store(tmp_path)
    assert sorted(q.entries("replica1", "bob")) == [b"APPEND user.bob\n", b"MAILBOX user.bob\n"]
    assert len(list(d.iterdir())) == 2


def test_entries_without_a_record_are_quarantined_again(tmp_path):
    q = make_store(tmp_path)
    q.add("replica1", LONG, "failed", NOW, 600)
    q.append("replica1", {LONG: [b"APPEND user.%s\n" % LONG.encode()]})
    os.unlink(tmp_path / "q" / "replica1" / (file_stem("replica1", LONG) + ".json"))
    legacy(tmp_path, "carol", record=False, entries=b"APPEND user.carol\n")
    again = make_store(tmp_path)
    for user in (LONG, "carol"):
        r = again.get("replica1", user)
        assert r.error == "record lost, entries kept" and r.next_retry <= NOW
        assert again.count("replica1", user) == 1
    assert len(again.problems) == 2 and "without a record: quarantined again" in again.problems[0]
    assert not make_store(tmp_path).problems                # repaired on disk


def test_a_garbled_record_is_rebuilt_from_its_entries(tmp_path):
    q = make_store(tmp_path)
    q.add("replica1", "dave", "failed", NOW, 600)
    q.append("replica1", {"dave": [b"APPEND user.dave\n"]})
    (tmp_path / "q" / "replica1" / (file_stem("replica1", "dave") + ".json")).write_text("{\"us")
    again = make_store(tmp_path)
    assert again.get("replica1", "dave").error.startswith("record unreadable")
    assert "rebuilt for user 'dave'" in again.problems[0]


def test_what_cannot_be_attributed_is_reported_and_left_alone(tmp_path):
    d = tmp_path / "q" / "replica1"
    d.mkdir(parents=True)
    (d / "zz+0123456789abcdef0123456789abcdef.json").write_text("[")
    (d / "yy+0123456789abcdef0123456789abcdef.entries").write_bytes(b"APPEND user.nobody\n")
    (d / "xx+0123456789abcdef0123456789abcdef.entries").write_bytes(b"")
    q = make_store(tmp_path)
    assert q.records() == [] and len(q.problems) == 2
    assert all("left in place, not retried" in p for p in q.problems)
    assert sorted(p.name[:2] for p in d.iterdir()) == ["yy", "zz"]   # the empty one is gone


@pytest.mark.parametrize("field,value,note", [
    ("next_retry", float("inf"), "next_retry inf out of range: retried now"),
    ("next_retry", float("nan"), "next_retry nan out of range: retried now"),
    ("next_retry", 10**400, "out of range: retried now"),
    ("next_retry", "soon", "next_retry 'soon' out of range: retried now"),
    ("since", -1, "since -1 out of range: set to now"),
    ("attempts", 1024, f"attempts 1024 capped at {ATTEMPTS_MAX}"),
    ("attempts", "many", "attempts 'many' is not a count: set to 0"),
])
def test_out_of_range_fields_are_repaired_and_reported(tmp_path, field, value, note):
    q = make_store(tmp_path)
    q.add("replica1", "bob", "failed", NOW, 600)
    path = tmp_path / "q" / "replica1" / (file_stem("replica1", "bob") + ".json")
    raw = json.loads(path.read_text())
    raw[field] = value
    path.write_text(json.dumps(raw))                   # Infinity, NaN: what json.dumps writes
    again = make_store(tmp_path)
    (problem,) = again.problems
    assert note in problem
    r = again.get("replica1", "bob")
    assert 0 <= r.next_retry <= NOW + 600 and 0 <= r.attempts <= ATTEMPTS_MAX
    assert "Infinity" not in path.read_text() and "NaN" not in path.read_text()
    r.as_json(0)                                           # renders: iso() of sane times


def test_a_record_is_never_saved_out_of_range(tmp_path):
    q = make_store(tmp_path)
    r = q.add("replica1", "bob", "failed", NOW, 600)
    r.attempts, r.next_retry = 5000, float("inf")
    q.save(r)
    again = make_store(tmp_path)
    assert again.get("replica1", "bob").attempts == ATTEMPTS_MAX and not again.problems


def test_a_retry_after_1024_attempts_does_not_overflow(tmp_path):
    """The back-off is retry_interval * 2 ** attempts: 2 ** 1024 is no float."""
    alice_quarantined(tmp_path)
    path = next((tmp_path / "quarantine" / "replica1").glob("*.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()), "attempts": 1024}))
    sup, env = make(tmp_path)                              # restarted: the store is loaded
    env["prober"].reachable["replica1"] = True
    env["systemd"].oneshot[U1] = lambda: 1
    step(sup, env, n=3)
    env["clock"].advance(sup.config.quarantine.retry_interval)
    step(sup, env, n=3)                                    # the retry fails and is rescheduled
    q = sup.local.store.get("replica1", "alice")
    assert q.attempts == ATTEMPTS_MAX and q.next_retry > env["clock"].wall()
    assert q.error == "sync_client -u alice exited 1"


# --- role --------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ['{"role": "mas', "[]", '{"role": "boss"}', "[" * 10000,
                                     b"\xff\xfe"])
def test_an_unreadable_role_reads_as_replica_and_says_why(tmp_path, content):
    path = tmp_path / "role.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    record = RoleStore(path).load()
    assert record.role == "replica" and "every link held" in record.problem


def test_a_saved_role_loads_back_without_a_problem(tmp_path):
    roles = RoleStore(tmp_path / "role.json")
    roles.save(RoleRecord("replica", NOW, "syncwarden demote"))
    assert roles.load() == RoleRecord("replica", NOW, "syncwarden demote")
    assert set(json.loads((tmp_path / "role.json").read_text())) == {"role", "since", "by"}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory another user owns")
def test_a_repair_that_cannot_be_written_is_reported_not_a_crash(tmp_path):
    q = make_store(tmp_path)
    q.add("replica1", "bob", "failed", NOW, 600)
    path = tmp_path / "q" / "replica1" / (file_stem("replica1", "bob") + ".json")
    path.write_text(json.dumps({**json.loads(path.read_text()), "next_retry": "never"}))
    os.chown(path.parent, NOBODY, NOBODY)                  # no longer a directory root writes in
    again = make_store(tmp_path)
    assert again.get("replica1", "bob").next_retry == NOW
    assert any("cannot be repaired on disk" in p for p in again.problems)
