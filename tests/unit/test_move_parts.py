"""User moves, around the workflow: the config sections, the Cyrus command lines and session
scan, the edges with a fake runner and fake processes, and the command (users, plan, summary,
JSON, exit codes) with fake edges."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from supervisor import config as configmod
from supervisor.commands import move as movecmd
from supervisor.commands.cli import main
from supervisor.cyrus import commands, imapdconf, sessions
from supervisor.move import files, report as move_report, workflow
from supervisor.move.edges import CyrusEdges, lock_services
from supervisor.move.workflow import EdgeError

from .test_cli import write

STORES = """stores:
  east:
    imapd_conf: {d}/east.conf
    imap: {{host: 127.0.0.1, port: 24243}}
move: {{switch_hook: /bin/true, lock_timeout: 20s, verify_service: imapverify}}
"""
EAST = "configdirectory: {d}/east\nsync_log: on\nsync_log_channels: replica2 backup\n"


# --- config ------------------------------------------------------------------------------------

def test_stores_and_move_parse_with_defaults():
    cfg = configmod.parse("links: {r1: {host: h, port: 1}}\n" + STORES.format(d="/srv"))
    east = cfg.stores["east"]
    assert (east.channel, east.imapd_conf, east.imap.port, east.imap.tls) == \
        ("east", Path("/srv/east.conf"), 24243, "none")
    assert cfg.move == configmod.MoveSettings("/bin/true", 20.0, "imapverify")
    bare = configmod.parse("links: {r1: {host: h, port: 1}}\n")
    assert bare.stores == {} and bare.move.switch_hook is None and bare.move.lock_timeout == 60


def test_bad_stores_and_move_are_reported_together_with_their_paths():
    with pytest.raises(configmod.ConfigError) as e:
        configmod.parse("links: {r1: {host: h, port: 1}}\nstores:\n  East: {}\n"
                        "  w: {channel: 'a b', imap: {port: x}}\n  v: [1]\n"
                        "move: {lock_timeout: 2h, verify_service: 'a,b', switch: x}\n")
    assert e.value.problems == [
        "stores.East: invalid store name: use 1-64 of a-z 0-9 _ - starting with a letter or"
        " digit",
        "stores.w.channel: invalid Cyrus channel name 'a b': use a-z 0-9 _ - (imapd.conf"
        " lowercases option keys)",
        "stores.w.imapd_conf: required",
        "stores.w.imap.host: required",
        "stores.w.imap.port: expected an integer 1-65535, got 'x'",
        "stores.v: expected a mapping, got a list",
        "move.switch: unknown key (did you mean 'switch_hook'?)",
        "move.lock_timeout: expected a duration from 1s to 1h, got '2h'",
        "move.verify_service: expected a cyrus.conf service name such as imapverify (letters,"
        " digits, _ -), got 'a,b'",
    ]


def test_check_config_names_a_store_this_instance_cannot_reach(tmp_path, capsys):
    cfg = write(tmp_path, extra=STORES.format(d=tmp_path))
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"stores.east.channel: {tmp_path}/imapd.conf sets neither east_sync_host" in err
    assert f"stores.east.imapd_conf: cannot read {tmp_path}/east.conf" in err
    (tmp_path / "east.conf").write_text(EAST.format(d=tmp_path))
    with open(tmp_path / "imapd.conf", "a") as f:
        f.write("east_sync_host: 127.0.0.1\neast_sync_port: 24005\n")
    assert main(["check-config", str(cfg)]) == 0
    assert "; stores east" in capsys.readouterr().out


# --- Cyrus: command lines and sessions -------------------------------------------------------

def test_command_lines():
    assert commands.user_to(Path("/b/sync_client"), Path("/e/imapd.conf"), "east", "bob") == [
        "runuser", "-u", "cyrus", "--", "/b/sync_client", "-C", "/e/imapd.conf", "-n", "east",
        "-u", "bob"]
    assert commands.cyr_deny(Path("/b"), Path("/e.conf"), "bob", "moving",
                             services=lock_services("imapverify"))[4:] == [
        "/b/cyr_deny", "-C", "/e.conf", "-s", "!imapverify,*", "-m", "moving", "bob"]
    assert commands.cyr_deny(Path("/b"), Path("/e.conf"), "bob", allow=True)[4:] == [
        "/b/cyr_deny", "-C", "/e.conf", "-a", "bob"]
    assert lock_services(None) == "*"


def fake_sessions(tmp_path):
    """A Cyrus proc directory and a /proc: bob in imapd (live) and pop3d (live), bob in a stale
    file whose pid is now a shell, alice, and a file being written."""
    conf_dir, proc = tmp_path / "conf", tmp_path / "proc"
    if (conf_dir / "proc").exists():
        return imapdconf.parse(f"configdirectory: {conf_dir}\n", tmp_path / "imapd.conf"), proc
    (conf_dir / "proc").mkdir(parents=True)
    rows = {101: ("imap", "bob"), 102: ("pop3", "bob"), 103: ("imap", "bob"),
            104: ("imap", "alice")}
    exes = {101: "/usr/lib/cyrus/bin/imapd", 102: "/usr/lib/cyrus/bin/pop3d",
            103: "/usr/bin/bash", 104: "/usr/lib/cyrus/bin/imapd"}
    for pid, (service, user) in rows.items():
        (conf_dir / "proc" / str(pid)).write_text(f"{service}\thost[1.2.3.4]\t{user}\t"
                                                  f"user.{user}\tIDLE\n")
        (proc / str(pid)).mkdir(parents=True)
        os.symlink(exes[pid], proc / str(pid) / "exe")
    (conf_dir / "proc" / "105.new").write_text("imap\th\tbob\t\t\n")
    imapd = imapdconf.parse(f"configdirectory: {conf_dir}\n", tmp_path / "imapd.conf")
    return imapd, proc


def test_user_sessions_come_from_cyrus_proc_files_of_live_cyrus_services(tmp_path):
    imapd, proc = fake_sessions(tmp_path)
    found = sessions.user_sessions(imapd, "bob", proc)
    assert sorted((s.pid, s.service) for s in found) == [(101, "imap"), (102, "pop3")]
    assert sessions.user_sessions(imapd, "nobody", proc) == []


# --- edges -------------------------------------------------------------------------------------

class Run:
    def __init__(self, fail=None):
        self.calls, self.fail = [], fail or {}

    def __call__(self, argv, timeout, what, env=None, give_up=None):
        self.calls.append((argv, timeout, env))
        for word, text in self.fail.items():
            if word in argv:
                raise EdgeError(f"{what}: {text}")
        return ""


def edges(tmp_path, run=None, kill=None, clock=None, proc=None):
    cfg = configmod.parse(f"cyrus: {{sync_client: /b/sync_client, imapd_conf:"
                          f" {tmp_path}/imapd.conf}}\nlinks: {{r1: {{host: h, port: 1}}}}\n"
                          + STORES.format(d=tmp_path))
    imapd, fake_proc = fake_sessions(tmp_path)
    target = imapdconf.parse(EAST.format(d=tmp_path), tmp_path / "east.conf")
    return CyrusEdges(cfg, imapd, cfg.stores["east"], target, run=run or Run(),
                      proc_root=proc or fake_proc, kill=kill or (lambda pid, sig: None),
                      clock=clock or (lambda: 0.0), sleep=lambda s: None)


def test_edges_lock_with_every_service_but_the_verify_one_and_sync_by_the_channel(tmp_path):
    run = Run()
    e = edges(tmp_path, run=run)
    e.deny_source("bob", 3.0)
    e.deny_target("bob")
    e.sync_to_target("bob", 2.5)
    assert e.replicate("bob") == ["replica2", "backup"]
    argvs = [c[0] for c in run.calls]
    assert argvs[0][-5:] == ["-s", "!imapverify,*", "-m",
                             "moving to another store, try again in a minute", "bob"]
    assert argvs[0][6] == str(tmp_path / "imapd.conf") and run.calls[0][1] == 3.0
    assert argvs[1][6] == str(tmp_path / "east.conf")
    assert argvs[2][4:] == ["/b/sync_client", "-C", f"{tmp_path}/imapd.conf", "-n", "east",
                            "-u", "bob"] and run.calls[2][1] == 2.5
    assert [a[6:] for a in argvs[3:]] == [[f"{tmp_path}/east.conf", "-n", "replica2", "-u",
                                          "bob"], [f"{tmp_path}/east.conf", "-n", "backup",
                                                   "-u", "bob"]]


def test_switch_runs_the_hook_with_user_source_target(tmp_path):
    run = Run()
    edges(tmp_path, run=run).switch("bob", "default", "east", 5.0)
    argv, timeout, env = run.calls[0]
    assert argv == ["/bin/sh", "-c", '/bin/true "$@"', "switch-hook", "bob", "default", "east"]
    assert env["SYNCWARDEN_USER"] == "bob" and env["SYNCWARDEN_TARGET"] == "east"
    assert timeout == 5.0


def test_a_real_failing_command_is_one_line_naming_it(tmp_path):
    from supervisor.move.edges import Runner
    with pytest.raises(EdgeError) as e:
        Runner()(["/bin/sh", "-c", "echo first >&2; echo 'no route to host' >&2; exit 3"],
                 5, "sync_client -n east -u bob")
    assert str(e.value) == "sync_client -n east -u bob: exit 3: no route to host"
    with pytest.raises(EdgeError, match=r"^x: no answer within 0.2s$"):
        Runner()(["sleep", "5"], 0.2, "x")


def test_a_sync_client_that_cannot_connect_is_stopped_at_its_first_retry_line():
    """3.6's sync_client retries for minutes (-o is ignored there): its stderr line ends it."""
    from supervisor.move.edges import Runner, _unreachable
    script = ("echo \"Can not connect to server 'east', retrying in 15 seconds\" >&2;"
              " sleep 60")
    with pytest.raises(EdgeError) as e:
        Runner()(["/bin/sh", "-c", script], None, "sync_client -n east -u bob",
                 give_up=_unreachable)
    assert str(e.value) == ("sync_client -n east -u bob: sync_client cannot connect to east and"
                            " keeps retrying")


def test_end_sessions_terms_then_kills_what_stays(tmp_path):
    now = [0.0]
    sent = []
    imapd, proc = fake_sessions(tmp_path)

    def kill(pid, sig):
        sent.append((pid, sig))
        if pid == 102:                     # pop3d exits on TERM; imapd 101 ignores it
            (proc / "102" / "exe").unlink()
        if sig == signal.SIGKILL:
            (proc / str(pid) / "exe").unlink()

    def sleep_clock():
        now[0] += 0.5
        return now[0]
    e = edges(tmp_path, kill=kill, clock=sleep_clock, proc=proc)
    assert e.end_sessions("bob", 10.0) == 2
    assert (101, signal.SIGTERM) in sent and (102, signal.SIGTERM) in sent
    assert (101, signal.SIGKILL) in sent and (102, signal.SIGKILL) not in sent
    assert all(pid != 104 for pid, _ in sent)          # alice's session is left alone


# --- the command -------------------------------------------------------------------------------

class Args:
    def __init__(self, tmp_path, users=("bob",), **kw):
        from supervisor.paths import Instance
        self.users, self.to, self.parallel, self.from_file = list(users), "east", 1, None
        self.dry_run, self.json = False, False
        self.instance = Instance(root=tmp_path)
        self.state_dir = tmp_path / "state"
        self.config = write(tmp_path, extra=STORES.format(d=tmp_path))
        (tmp_path / "east.conf").write_text(EAST.format(d=tmp_path))
        self.__dict__.update(kw)


class FakeEdges:
    """Every call succeeds, except verify for the users in ``differ``."""
    differ: set = set()

    def __init__(self, cfg, imapd, store, target_imapd, **kw):
        self.store = store

    def target_replicas(self):
        return ["replica2"]

    def __getattr__(self, name):
        return lambda *a: ["replica2"] if name == "replicate" else 0

    def verify(self, user, timeout):
        return ["INBOX: differs"] if user in self.differ else []


def test_users_from_the_line_and_a_file_each_once_bad_ones_named(tmp_path):
    f = tmp_path / "users"
    f.write_text("# to east\nalice\nbob  # again\n\ncarol\n")
    users, problems = movecmd.read_users(Args(tmp_path, users=["bob"], from_file=str(f)))
    assert (users, problems) == (["bob", "alice", "carol"], [])
    f.write_text("ok\nbad/name\n")
    _, problems = movecmd.read_users(Args(tmp_path, users=["-x"], from_file=str(f)))
    assert problems == [f"{f}: line 2: 'bad/name': not a userid (printable, no spaces or '/',"
                        " at most 255 characters)", "'-x': not a userid (starts with '-')"]
    _, problems = movecmd.read_users(Args(tmp_path, users=[], from_file=str(tmp_path / "no")))
    assert problems[0].startswith(f"--from-file {tmp_path}/no: cannot read")


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path, capsys):
    args = Args(tmp_path, dry_run=True)
    assert movecmd.cmd_move(args, edges_factory=FakeEdges, euid=lambda: 1000) == 0   # any user
    out = capsys.readouterr().out
    assert out.startswith("move bob: default -> east\n  prepare: deny bob on east")
    assert "at most 20s until the switch" in out and "(replica2)" in out
    assert not (tmp_path / "state" / "moves").exists()


def test_bulk_move_summary_json_and_exit_status(tmp_path, capsys):
    from .fakes import FakeJournal
    FakeEdges.differ = {"carol"}
    journal = FakeJournal()
    args = Args(tmp_path, users=["bob", "alice", "carol"], parallel=2, json=True)
    assert movecmd.cmd_move(args, journal=journal, edges_factory=FakeEdges) == 1
    shown = capsys.readouterr()
    doc = json.loads(shown.out)
    assert doc["store"] == "east" and doc["source"] == "default"
    got = {m["user"]: (m["result"], m["error"]) for m in doc["moves"]}
    assert got == {"bob": ("done", None), "alice": ("done", None),
                   "carol": ("rolled-back", "verify: 1 difference(s) after a second sync:"
                             " INBOX: differs")}
    assert all(m["critical_path_seconds"] is not None for m in doc["moves"]
               if m["result"] == "done")
    ids = [e["ID"] for e in journal.entries if e["SYNCWARDEN_USER"] == "bob"]
    assert ids == ["move-started"] + ["move-phase"] * 10 + ["move-finished"]
    # several users: the terminal gets how each move ended, the journal every phase
    assert sorted(x.split(":")[0] for x in shown.err.splitlines()) == [
        "move alice default -> east", "move bob default -> east", "move carol default -> east"]
    saved = files.load(args.state_dir, "carol")
    assert saved["result"] == "rolled-back"
    # status: finished moves counted, an unfinished one shown with its phase
    files.save(args.state_dir, {**saved, "user": "dave", "phase": "final-sync", "result": None,
                                "locked_at": 1.0, "unlocked_at": None, "error": None})
    doc = {}
    move_report.add_moves(doc, args.state_dir)
    assert move_report.move_lines(doc) == ["move dave default -> east: final-sync, user locked",
                                       "moves: 2 done, 1 rolled back"]
    FakeEdges.differ = set()


def test_table_and_refusals(tmp_path, capsys):
    from .fakes import FakeJournal
    assert movecmd.cmd_move(Args(tmp_path), journal=FakeJournal(),
                            edges_factory=FakeEdges) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["USER", "RESULT", "CRITICAL", "PATH", "TOTAL", "DETAIL"]
    assert out[1].split()[:2] == ["bob", "done"] and out[-1] == "1 of 1 user(s) moved"
    assert movecmd.cmd_move(Args(tmp_path, to="west"), edges_factory=FakeEdges) == 2
    assert "--to west: no such store (stores: east)" in capsys.readouterr().err
    assert movecmd.cmd_move(Args(tmp_path, parallel=0), edges_factory=FakeEdges) == 2
    assert movecmd.cmd_move(Args(tmp_path, users=["zoe"]), edges_factory=FakeEdges,
                            euid=lambda: 1000) == 1
    assert "syncwarden move: needs root" in capsys.readouterr().err
    assert not (tmp_path / "state" / "moves" / "zoe.json").exists()
    # bob was moved away: this store's copy is stale, moving it again is refused
    assert movecmd.cmd_move(Args(tmp_path), journal=FakeJournal(),
                            edges_factory=FakeEdges) == 1
    assert "already moved to east" in capsys.readouterr().out
    # a second move of a user whose move to another store is unfinished is refused
    files.save(tmp_path / "state", {**workflow.new_state(workflow.Plan(
        "erin", "default", "west", 60), 1.0)})
    assert movecmd.cmd_move(Args(tmp_path, users=["erin"]), journal=FakeJournal(),
                            edges_factory=FakeEdges) == 1
    assert "an unfinished move to west is recorded" in capsys.readouterr().out


def test_one_user_is_never_moved_twice_at_once(tmp_path):
    a = files.UserLock(tmp_path, "bob")
    b = files.UserLock(tmp_path, "bob")
    assert a.acquire() and not b.acquire()
    a.close()
    assert b.acquire()
    b.close()


def test_the_guard_is_a_transient_timer_that_runs_move_expire(tmp_path):
    run = Run(fail={"stop": "not loaded"})
    e = edges(tmp_path, run=run)
    e.instance, e.program = "east", "/usr/bin/syncwarden"
    e.guard("bob@example.com", 20.0)
    unit = e.guard_unit("bob@example.com")
    assert unit.startswith("syncwarden-move-guard-east-") and len(unit) == 27 + 16
    assert run.calls[0][0] == ["systemctl", "stop", f"{unit}.timer"]     # a stale one
    assert run.calls[1][0] == [
        "systemd-run", f"--unit={unit}", "--quiet", "--collect", "--on-active=20.000s",
        "--timer-property=AccuracySec=100ms", "--timer-property=RemainAfterElapse=no", "--",
        "/usr/bin/syncwarden", "-i", "east", "move-expire", "bob@example.com"]
    with pytest.raises(EdgeError):
        e.unguard("bob@example.com")


def test_move_expire_rolls_back_only_a_dead_move_past_its_deadline(tmp_path, capsys):
    from .fakes import FakeJournal

    class Recording(FakeEdges):
        calls: list = []

        def __getattr__(self, name):
            return lambda *a: Recording.calls.append(name)

    args = Args(tmp_path)
    args.user = "bob"
    plan = workflow.Plan("bob", "default", "east", 20)
    locked = {**workflow.new_state(plan, 100.0), "phase": "verify", "locked_at": 100.0,
              "deadline": 120.0}
    files.save(args.state_dir, locked)
    journal = FakeJournal()
    assert movecmd.cmd_move_expire(args, journal, Recording, clock=lambda: 119.0) == 0
    assert Recording.calls == [] and files.load(args.state_dir, "bob")["phase"] == "verify"
    held = files.UserLock(args.state_dir, "bob")
    assert held.acquire()                       # a move process still runs
    assert movecmd.cmd_move_expire(args, journal, Recording, clock=lambda: 121.0) == 0
    assert Recording.calls == [] and "is running" in capsys.readouterr().out
    held.close()
    assert movecmd.cmd_move_expire(args, journal, Recording, clock=lambda: 121.0) == 0
    assert Recording.calls == ["allow_source", "unguard"]
    st = files.load(args.state_dir, "bob")
    assert st["result"] == "rolled-back" and "no move process" in st["error"]
    assert [e["ID"] for e in journal.entries] == ["move-finished"]


def test_the_verify_lists_only_the_moved_users_hierarchy():
    from supervisor.pair.imapclient import AdminView, Login

    from .fakeimap import FakeImapServer
    asked = []
    boxes = {b'"user.bob"': [b"user.bob"], b'"user.bob.*"': [b"user.bob.Sent", b"user.bob.a.b"],
             b'"user.*"': [b"user.bob", b"user.bobby", b"user.alice"]}

    def answer(conn, tag):
        pattern = asked[-1] if asked else None
        conn.sendall(b"".join(b'* LIST (\\HasNoChildren) "." ' + n + b"\r\n"
                              for n in boxes.get(pattern, [])) + tag + b" OK done\r\n")

    class Recording(FakeImapServer):
        def _session(self, conn, rfile):
            class Tap:
                def readline(self_inner):
                    line = rfile.readline()
                    if b" LIST " in line:
                        asked.append(line.rstrip(b"\r\n").rsplit(b" ", 1)[1])
                    return line
            super()._session(conn, Tap())

    with Recording({"LIST": answer}) as server:
        view = AdminView(server.endpoint(), Login("cyrus", "pw"))
        try:
            assert view.users(only="bob") == {"bob": ["user.bob", "user.bob.Sent",
                                                      "user.bob.a.b"]}
        finally:
            view.close()
    assert asked == [b'""', b'"user.bob"', b'"user.bob.*"']


def test_a_verify_read_through_a_locked_service_says_which_ports_to_fix(tmp_path):
    """imapd ends a denied user's session before its first command, also one an admin opened
    as the user: the verify must read through move.verify_service, and says so."""
    import socket
    import threading
    from supervisor.config import ImapEndpoint
    from .fakeimap import GREETING
    from supervisor.move.edges import DENY_MESSAGE

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def session(conn):
        rfile = conn.makefile("rb")
        conn.sendall(GREETING)
        while True:
            line = rfile.readline()
            if not line:
                return
            tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
            if rest.startswith(b"AUTHENTICATE"):
                conn.sendall(b"+ \r\n")
                rfile.readline()
                conn.sendall(tag + b" OK in\r\n")
            elif rest.startswith(b"CAPABILITY"):
                conn.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n")
            elif rest == b'LIST "" ""':
                conn.sendall(b'* LIST (\\Noselect) "." ""\r\n' + tag + b" OK done\r\n")
            elif rest == b'LIST "" "user.bob"':
                conn.sendall(b'* LIST (\\HasNoChildren) "." user.bob\r\n' + tag + b" OK done\r\n")
            elif rest.startswith(b"NAMESPACE"):
                conn.sendall(b"* BYE [ALERT] " + DENY_MESSAGE.encode() + b"\r\n")
                return
            elif rest.startswith(b"LOGOUT"):
                conn.sendall(b"* BYE\r\n" + tag + b" OK done\r\n")
                return
            else:
                conn.sendall(tag + b" OK done\r\n")

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=guarded, args=(conn,), daemon=True).start()

    def guarded(conn):
        with conn:
            try:
                session(conn)
            except OSError:
                pass          # the client went away first
    threading.Thread(target=serve, daemon=True).start()
    creds = tmp_path / "creds"
    creds.write_text("user: cyrus\npassword: pw\n")
    creds.chmod(0o600)
    try:
        e = edges(tmp_path)
        endpoint = ImapEndpoint("127.0.0.1", port, "none", timeout=5)
        e.cfg = configmod.replace(e.cfg, check=configmod.CheckSettings(
            credentials=creds, master=endpoint))
        e.store = configmod.StoreSettings("east", "east", tmp_path / "east.conf", endpoint)
        with pytest.raises(EdgeError) as err:
            e.verify("bob", 5)
    finally:
        listener.close()
    assert DENY_MESSAGE in str(err.value)
    assert str(err.value).endswith("(the lock ended the verify's session: check.master and"
                                   " stores.east.imap must name the port of"
                                   " move.verify_service, imapverify)")
