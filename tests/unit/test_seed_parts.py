"""The Cyrus knowledge a seed relies on, and the names and commands it runs, one by one."""

from __future__ import annotations

import json

import pytest

from supervisor import config as configmod
from supervisor.commands import worker
from supervisor.commands.cli import main
from supervisor.control_schema import Refused, validate
from supervisor.cyrus import mailboxes, writers
from supervisor.cyrus.commands import SyncClient
from supervisor.cyrus.imapdconf import ImapdConf, parse
from supervisor.link.seed import Seed
from supervisor.link.seed_plan import BATCH_SECONDS, BATCH_SECONDS_MIN, Progress, work
from supervisor.systemd.units import LinkUnits, belongs_to, parse_slot, slot_unit

from .fakeproc import BIN, FakeProc

HZ, BOOT = 100, 1_700_000_000


@pytest.fixture
def lab(tmp_path):
    conf = tmp_path / "inst" / "imapd.conf"
    (tmp_path / "inst" / "conf" / "proc").mkdir(parents=True)
    conf.write_text(f"configdirectory: {tmp_path}/inst/conf\n")
    proc = FakeProc(tmp_path / "proc")
    proc.boot(BOOT)
    return parse(conf.read_text(), conf), proc


def at(seconds: float) -> int:
    """A start time in clock ticks, ``seconds`` after boot."""
    return int(seconds * HZ)


# --- processes with the old channel list ------------------------------------------------------

def test_writers_that_started_before_imapd_conf_changed_are_named(lab):
    imapd, proc = lab
    conf = str(imapd.path)
    proc.add(10, f"{BIN}/master", f"{BIN}/master", "-C", conf, start=at(5))
    proc.add(11, f"{BIN}/lmtpd", "lmtpd", "-C", conf, "-a", ppid=10, start=at(20))
    proc.add(12, f"{BIN}/imapd", ppid=10, start=at(30), retitled="imapd: h [1.2.3.4] bob user.bob")
    proc.add(13, f"{BIN}/lmtpd", "lmtpd", "-C", conf, ppid=10, start=at(200))    # after
    proc.add(14, f"{BIN}/idled", "idled", "-C", conf, ppid=10, start=at(6))      # writes nothing
    proc.add(15, f"{BIN}/lmtpd", "lmtpd", "-C", "/etc/other.conf", start=at(7))  # not ours
    old = writers.old_writers(imapd, BOOT + 100, proc.root, hz=HZ)
    assert [(w.pid, w.program) for w in old] == [(11, "lmtpd"), (12, "imapd")]
    assert old[0].started == BOOT + 20
    assert "started by master pid 10" in old[1].why or "-C" in old[1].why


def test_children_of_a_master_are_found_without_reading_proc_pid_exe(lab):
    # the daemon has no CAP_SYS_PTRACE: /proc/PID/exe of cyrus's processes is unreadable
    imapd, proc = lab
    conf = str(imapd.path)
    for d in (proc.add(10, f"{BIN}/master", f"{BIN}/master", "-C", conf, start=at(1)),
              proc.add(11, f"{BIN}/lmtpd", "lmtpd", ppid=10, start=at(2)),
              proc.add(12, f"{BIN}/imapd", ppid=10, start=at(3),
                       retitled="imapd: host [10.0.0.9] alice user.alice/Sent Idle")):
        (d / "exe").unlink()
    old = writers.old_writers(imapd, BOOT + 100, proc.root, hz=HZ)
    assert [(w.pid, w.program) for w in old] == [(11, "lmtpd"), (12, "imapd")]


def test_sync_server_writes_only_with_sync_log_chain(lab, tmp_path):
    imapd, proc = lab
    conf = str(imapd.path)
    proc.add(21, f"{BIN}/sync_server", "sync_server", "-C", conf, start=at(1))
    assert writers.old_writers(imapd, BOOT + 100, proc.root, hz=HZ) == []
    chained = ImapdConf(imapd.path, {**imapd.options, "sync_log_chain": "on"})
    assert [w.pid for w in writers.old_writers(chained, BOOT + 100, proc.root, hz=HZ)] == [21]


def test_advice_names_the_processes_and_what_ends_them(lab):
    imapd, _ = lab
    old = [writers.OldWriter(p, "lmtpd", 1.0, "x") for p in range(1, 9)]
    text = writers.advice(old, imapd, "replica3")
    assert "8 Cyrus process(es)" in text and "lmtpd pid 1, " in text and "and 3 more" in text
    assert "channel replica3" in text and "SIGHUP" in text


# --- the mailbox list -------------------------------------------------------------------------

def test_users_and_shared_mailboxes_from_ctl_mboxlist_dump():
    imapd = ImapdConf("/x/imapd.conf", {})
    dump = {
        "user.bob": {"mbtype": "e"}, "user.bob.Sent": {"mbtype": "e"},
        "user.john^doe": {"mbtype": "e"},
        "example.com!user.carol": {"mbtype": "e"},
        "DELETED.user.erin.Trash.5F3A2B1C": {"mbtype": "e"},      # erin's, synced with erin
        "shared": {"mbtype": "e"}, "shared.proj": {"mbtype": "e"},
        "example.com!shared.news": {"mbtype": "e"},
        "DELETED.shared.old.5F3A2B1C": {"mbtype": "e"},           # -A syncs these alone too
        "user.gone": {"mbtype": "ed"},                            # tombstone
        "user.dave": {"mbtype": "ei"},                            # intermediate
        "calendars": {"mbtype": "c"},
    }
    inv = mailboxes.parse(json.dumps(dump).encode(), imapd)
    assert inv.users == ["bob", "carol@example.com", "erin", "john.doe"]
    assert inv.shared == ["DELETED.shared.old.5F3A2B1C", "calendars", "shared",
                          "shared.news@example.com", "shared.proj"]


def test_shared_names_use_the_hierarchy_separator_sync_client_expects():
    assert mailboxes.external("shared.a^b.c", unixhierarchysep=True) == "shared/a.b/c"
    assert mailboxes.external("shared.proj", unixhierarchysep=False) == "shared.proj"
    assert mailboxes.external("ex.org!shared.x", unixhierarchysep=True) == "shared/x@ex.org"


@pytest.mark.parametrize("data", [b"", b"{", b"[1]", b'{"user.bob": {"mbty'])
def test_a_partial_dump_is_an_error_not_a_short_list(data):
    with pytest.raises(mailboxes.MailboxListError):
        mailboxes.parse(data, ImapdConf("/x", {}))


def test_ctl_mboxlist_is_found_beside_sync_client():
    assert mailboxes.list_argv("/usr/lib/cyrus/bin/sync_client", "/etc/imapd.conf") == [
        "/usr/lib/cyrus/bin/ctl_mboxlist", "-C", "/etc/imapd.conf", "-d"]


def test_batches_are_sized_by_the_rate_so_far_and_share_the_tail():
    plan = {"users": [f"u{i}" for i in range(1000)], "shared": ["s1", "s2"]}
    seed = Seed(LinkUnits.of("r"), None, Progress("r", 0.0, parallel=4, phase="syncing",
                                                  users=1000, shared=2), plan)
    assert seed.p.next_range() == [0, 63]              # to learn the rate: a quarter of a share
    seed.p.seconds_per_item = BATCH_SECONDS / 100              # 100 users take BATCH_SECONDS
    assert seed.p.next_range() == [63, 163]
    seed.p.seconds_per_item = 0.01                            # fast: an even share of the rest
    a, b = seed.p.next_range()
    assert b - a == -(-(1002 - a) // 4)
    seed.p.seconds_per_item, seed.p.cursor = BATCH_SECONDS_MIN / 50, 900
    assert seed.p.next_range() == [900, 950]                         # the tail: never below 2 s' worth
    while seed.p.cursor < 1000:
        assert seed.p.next_range()[1] <= 1000                        # never users and shared at once
    assert work(seed.plan, seed.p.next_range()) == ("mailboxes", ["s1", "s2"])
    assert work(seed.plan, [0, 3]) == ("users", ["u0", "u1", "u2"])


# --- units and the worker's command line ------------------------------------------------------

def test_seed_slots_are_user_units_of_their_own():
    assert slot_unit("replica3", "seed", 2) == "syncwarden-user@replica3.seed2.service"
    assert slot_unit("replica3", "shared", 1, "east") == \
        "syncwarden-user@east:replica3.shared1.service"
    assert LinkUnits.of("replica3", "east").slot("seed", 4) == \
        "syncwarden-user@east:replica3.seed4.service"
    assert LinkUnits.of("replica3").listing == "syncwarden-list@replica3.service"
    assert LinkUnits.of("replica3").hook == "syncwarden-freeze@replica3.service"
    assert belongs_to("syncwarden-user@replica3.seed2.service")
    assert not belongs_to("syncwarden-user@east:replica3.seed2.service")
    assert parse_slot("replica3") == ("replica3", None)
    assert parse_slot("replica3.seed12") == ("replica3", "users")
    assert parse_slot("replica3.shared1") == ("replica3", "mailboxes")
    for bad in ("replica3.seed", "replica3.other1", "replica3.1"):
        with pytest.raises(ValueError):
            parse_slot(bad)


def test_worker_command_lines_for_seed_slots():
    cfg = configmod.parse("cyrus: {sync_client: /usr/lib/cyrus/bin/sync_client}\n"
                          "links: {replica3: {host: h, port: 1}}\n")
    client = SyncClient.from_config(cfg)
    base = ["/usr/lib/cyrus/bin/sync_client", "-C", "/etc/imapd.conf"]
    assert worker.argv(client, "replica3", None, "mailboxes", "/run/u/replica3.shared1") == \
        base + ["-n", "replica3", "-m", "-f", "/run/u/replica3.shared1"]
    assert worker.argv(client, "replica3", None, "users", "/run/u/replica3.seed1") == \
        base + ["-n", "replica3", "-u", "-f", "/run/u/replica3.seed1"]


def test_a_user_sync_leaves_a_drains_shutdown_file_alone(tmp_path, monkeypatch):
    conf = tmp_path / "imapd.conf"
    conf.write_text(f"configdirectory: {tmp_path}\n")
    cfg = tmp_path / "sw.yaml"
    cfg.write_text(f"cyrus: {{imapd_conf: {conf}, sync_client: /bin/true}}\n"
                   "links: {replica3: {host: h, port: 1}}\n")
    shutdown = tmp_path / "sync" / "replica3" / "shutdown"
    shutdown.parent.mkdir(parents=True)
    shutdown.touch()
    ran = []
    monkeypatch.setattr(worker.os, "execv", lambda path, args: ran.append(args))
    worker.main("replica3.seed1", cfg, mode="users")
    assert shutdown.exists() and ran[0][-3:-1] == ["-u", "-f"]
    assert ran[0][-1].endswith("/users/replica3.seed1")
    worker.main("replica3", cfg, mode="rolling")
    assert not shutdown.exists()


# --- the control requests and the CLI ---------------------------------------------------------

def test_lifecycle_requests_are_checked_like_the_others():
    assert validate({"cmd": "freeze", "link": "r", "until": 60})["exec"] is None
    assert validate({"cmd": "seed", "link": "r", "parallel": 8})["parallel"] == 8
    for req, error in (({"cmd": "freeze", "link": "r", "until": "1h"},
                        "freeze: until must be an integer, got '1h'"),
                       ({"cmd": "seed", "link": "r", "parallel": True},
                        "seed: parallel must be an integer, got True"),
                       ({"cmd": "retire"}, "retire needs a link"),
                       ({"cmd": "thaw", "link": "r", "force": True},
                        "thaw: unknown field 'force'")):
        with pytest.raises(Refused) as exc:
            validate(req)
        assert str(exc.value) == error


def test_freeze_until_is_a_bounded_duration(capsys):
    assert main(["freeze", "replica1", "--until", "8d"]) == 2
    assert "--until: expected a duration 1s-7d" in capsys.readouterr().err
    assert main(["freeze", "replica1", "--until", "soon"]) == 2


@pytest.mark.parametrize("cpus,expected", [(1, 1), (2, 2), (3, 3), (16, 4), (None, 1)])
def test_a_seed_runs_one_user_sync_per_cpu_at_most_four(monkeypatch, cpus, expected):
    from supervisor.link import seed as seedmod

    monkeypatch.setattr(seedmod.os, "cpu_count", lambda: cpus)
    assert seedmod.default_parallel() == expected
