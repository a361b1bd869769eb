"""Repair over an in-memory pair: the plan, its order, its refusals, and holding the link."""

import json
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from supervisor.pair import check

from supervisor.commands import repair as repaircmd
from supervisor.config import parse
from supervisor.cyrus.commands import SyncClient
from supervisor.pair.repair import Action, Executor, RepairError, plan_user

from .fakecyrus import Pair
from .fakes import FakeJournal
from .test_check import failover_pair

CFG = parse("links: {replica1: {host: 127.0.0.1, port: 11005}}\n"
            "cyrus: {imapd_conf: /srv/m/imapd.conf, sync_client: /usr/lib/cyrus/bin/sync_client}\n")
IMAPD = SimpleNamespace(sync_dir=lambda link: Path("/nonexistent/sync") / link)


def deep_check(pair, tmp_path):
    return check.run(pair, tmp_path / "none", True, progress_out=None, confirm=False,
                     keep_views=True)


def plans(pair, tmp_path):
    report = deep_check(pair, tmp_path)
    return {u: plan_user(u, *report.views[u], [d for d in report.differences if d.user == u])
            for u in report.views}


def test_plan_for_the_failover(tmp_path):
    got = {u: [(a.kind, a.mailbox, a.uids) for a in acts]
           for u, acts in plans(failover_pair(), tmp_path).items()}
    assert got == {
        "bob": [("create-mailbox", "user.bob.New", ()), ("copy", "user.bob.New", (1,)),
                ("copy", "user.bob.Proj", (1,)), ("copy-subscriptions", None, ()),
                ("replace", "user.bob.New", ()), ("replace", "user.bob.Proj", ()),
                ("sync-user", None, ())],
        "zed": [("create-mailbox", "user.zed", ()), ("copy", "user.zed", (1, 2)),
                ("copy-subscriptions", None, ()), ("replace", "user.zed", ()),
                ("sync-user", None, ())]}
    assert Action("copy", "b", "user.b", (1, 2, 3, 7)).describe().startswith(
        "copy 4 message(s) of the replica's user.b to the master's (replica UIDs 1-3,7;")


def test_repair_makes_the_pair_equal_and_loses_nothing(tmp_path):
    pair = failover_pair()
    before = {m["guid"] for b in pair.replica.boxes.values() for m in b.msgs.values()}
    before |= {m["guid"] for b in pair.master.boxes.values() for m in b.msgs.values()}
    journal, out = FakeJournal(), []
    ex = Executor(CFG, pair, journal, tmp_path / "stash", out=out.append,
                  sync_client=pair.sync_client)
    report = deep_check(pair, tmp_path)
    for user in sorted(report.views):
        ex.run(plan_user(user, *report.views[user], report.differences), report.views[user][1])
    assert ex.outcome.failures == [] and ex.outcome.copied == 4
    assert deep_check(pair, tmp_path).differences == []
    after = {m["guid"] for b in pair.master.boxes.values() for m in b.msgs.values()}
    assert before <= after
    # The replica's copy is replaced only after its messages were appended to the master's.
    log = pair.log
    assert log.index(("append", "user.bob.Proj")) < log.index(("sync_client",
                                                               "-O -m user.bob.Proj"))
    assert pair.master.boxes["user.zed"].msgs[2]["flags"] == ["\\Seen"]
    assert pair.master.subs["zed"] == {"INBOX"}
    actions = [e["SYNCWARDEN_ACTION"] for e in journal.entries if e["ID"] == "repair-action"]
    assert actions.count("copy") == 4 and actions.count("replace") == 3


def test_replace_is_refused_while_the_master_lacks_a_message(tmp_path):
    pair = failover_pair()
    ex = Executor(CFG, pair, FakeJournal(), tmp_path, out=lambda s: None,
                  sync_client=pair.sync_client)
    ex.run([Action("replace", "bob", "user.bob.Proj")], None)      # no copy before it
    assert ("sync_client", "-O -m user.bob.Proj") not in pair.log
    assert "1 message(s) of the replica's copy are not in the master's" in ex.outcome.failures[0]
    assert pair.replica.boxes["user.bob.Proj"].mailboxid == "proj-on-replica"


def test_stash_puts_back_what_the_merge_expunged(tmp_path):
    pair = failover_pair()

    def stale_merge(argv):        # Cyrus judging the replica's UID 3 stale: expunged, not copied
        if "-u" in argv:
            pair.replica.boxes["user.bob"].msgs.pop(3, None)
        return pair.sync_client(argv)

    journal = FakeJournal()
    ex = Executor(CFG, pair, journal, tmp_path / "stash", out=lambda s: None,
                  sync_client=stale_merge)
    report = deep_check(pair, tmp_path)
    ex.run(plan_user("bob", *report.views["bob"], report.differences), report.views["bob"][1])
    guids = {m["guid"] for m in pair.master.boxes["user.bob"].msgs.values()}
    assert report.views["bob"][1]["user.bob"].messages[3].guid in guids
    assert any("put it back" in e["MESSAGE"] for e in journal.entries)
    assert not (tmp_path / "stash" / "bob").exists()


def test_sync_client_runs_as_cyrus_with_the_link():
    assert SyncClient.from_config(CFG).as_cyrus("replica1", "-O", "-m", "user.bob") == [
        "runuser", "-u", "cyrus", "--", "/usr/lib/cyrus/bin/sync_client", "-C",
        "/srv/m/imapd.conf", "-n", "replica1", "-O", "-m", "user.bob"]


class FakeDaemon:
    """Answers status/hold/resume on a unix socket like the daemon's control socket."""

    def __init__(self, path, held=False, quarantined=()):
        self.path, self.held, self.requests = str(path), held, []
        self.quarantined = {u: "replica1" for u in quarantined}
        self.retried = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        threading.Thread(target=self.serve, daemon=True).start()

    def crash(self):
        """Gone, as a SIGKILLed daemon is: nothing listens on the socket any more."""
        self.sock.close()
        Path(self.path).unlink()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            req = json.loads(conn.makefile().readline())
            self.requests.append(req["cmd"])
            if req["cmd"] in ("hold", "resume"):
                self.held = req["cmd"] == "hold"
                result = f"replica1: {req['cmd']}"
            elif req["cmd"] == "quarantine" and req["action"] == "list":
                result = [{"link": link, "user": u} for u, link in self.quarantined.items()]
            elif req["cmd"] == "quarantine":
                self.retried.append((req["action"], req["user"], req["link"]))
                result = f"{req['link']}: {req['user']} will be retried now"
            else:
                result = {"links": [{"name": "replica1", "held": self.held, "state": "down"
                                     if self.held else "live",
                                     "worker": {"active": not self.held}}]}
            conn.sendall(json.dumps({"ok": True, "result": result}).encode() + b"\n")
            conn.close()


def test_repair_holds_the_link_and_resumes_it(tmp_path):
    daemon = FakeDaemon(tmp_path / "c.sock")
    pair, out = failover_pair(), []
    rc = repaircmd.run(CFG, IMAPD, "replica1", None, False, FakeJournal(), tmp_path / "c.sock",
                       tmp_path, out=out.append, sides=pair, sync_client=pair.sync_client)
    assert rc == 0, out
    assert daemon.requests[:2] == ["status", "hold"]
    assert [r for r in daemon.requests if r in ("hold", "resume")][-1] == "resume"
    assert not daemon.held
    assert "verify zed: 2 of 2 message(s) of the replica are on the master" in out


def test_repaired_users_in_quarantine_are_retried_at_once(tmp_path):
    # bob's same-name folder quarantined him; carol is quarantined for something else
    daemon = FakeDaemon(tmp_path / "c.sock", quarantined=("bob", "carol"))
    pair, out = failover_pair(), []
    rc = repaircmd.run(CFG, IMAPD, "replica1", None, False, FakeJournal(), tmp_path / "c.sock",
                       tmp_path, out=out.append, sides=pair, sync_client=pair.sync_client)
    assert rc == 0, out
    assert daemon.retried == [("retry", "bob", "replica1")]
    assert "replica1: bob was quarantined; repaired, so retried now" in out
    assert daemon.requests.index("resume") < daemon.requests.index("quarantine")


def test_a_link_held_before_stays_held(tmp_path):
    daemon = FakeDaemon(tmp_path / "c.sock", held=True)
    out = []
    pair = Pair()
    assert repaircmd.run(CFG, IMAPD, "replica1", None, False, FakeJournal(),
                         tmp_path / "c.sock", tmp_path, out=out.append, sides=pair) == 0
    assert "resume" not in daemon.requests and daemon.held
    assert out[0] == "replica1: already held by an operator; it stays held afterwards"


def test_a_daemon_that_crashes_meanwhile_is_waited_for_to_resume(tmp_path):
    path, out, naps = tmp_path / "c.sock", [], []
    daemon = FakeDaemon(path)

    def sleep(seconds):           # systemd restarts the daemon while we wait
        naps.append(seconds)
        if len(naps) == 3:
            restarted.append(FakeDaemon(path, held=True))   # the hold outlived it

    restarted = []
    with repaircmd.held("replica1", path, out.append, clock=lambda: len(naps), sleep=sleep):
        daemon.crash()
    assert out == ["replica1: held for the repair", "replica1: resumed"]
    assert not restarted[0].held and restarted[0].requests == ["resume"]


def test_dry_run_changes_nothing_and_needs_no_daemon(tmp_path):
    pair, out = failover_pair(), []
    rc = repaircmd.run(CFG, IMAPD, "replica1", None, True, FakeJournal(), tmp_path / "none",
                       tmp_path, out=out.append, sides=pair, sync_client=pair.sync_client)
    assert rc == 0 and pair.log == []
    assert out[0] == "repair plan for replica1 (--dry-run: nothing is changed):"
    assert out[1] == "  1. create user.bob.New on the master (mailbox only on the replica)"
    assert len(out) == 13


def test_no_daemon_no_repair(tmp_path):
    with pytest.raises(RepairError, match="daemon is not running"):
        repaircmd.run(CFG, IMAPD, "replica1", None, False, FakeJournal(), tmp_path / "none",
                      tmp_path, out=lambda s: None, sides=failover_pair())
