"""Quarantine of failing users through the core, with fake units acting on real files."""

import json
import time

from supervisor.link.quarantine_store import QuarantineStore
from supervisor.link.states import LinkState

from .fakes import REFUSED
from .test_core import W1, make, state, step
from .test_failures import ANONYMOUS, PASS_DISK_FULL, PASS_METHOD1

U1 = "syncwarden-user@replica1.service"


def live_link(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    assert state(sup) is LinkState.LIVE
    d = tmp_path / "sync" / "replica1"
    d.mkdir(parents=True)
    return sup, env, d


def fail_pass(sup, lines=PASS_METHOD1, invocation=None):
    """The worker's journal lines of one failed pass reach the supervisor."""
    for line in lines:
        sup.feed_worker_log(W1, line, invocation)


def spin(sup, times, invocation=None):
    """Passes over the same stuck log-run that fail naming nobody."""
    for _ in range(times):
        fail_pass(sup, ["Reprocessing sync log file /x/log-run"] + ANONYMOUS, invocation)


def alice_quarantined(tmp_path):
    """A live link whose worker failed on alice, after the quarantine took effect."""
    sup, env, d = live_link(tmp_path)
    (d / "log-run").write_bytes(entries("alice"))
    fail_pass(sup)
    step(sup, env, n=3)
    return sup, env, d


def entries(*users, n=2):
    return b"".join(b"APPEND user.%s\nMAILBOX user.%s\n" % (u.encode(), u.encode())
                    for u in users for _ in range(n))


def all_lines(tmp_path, d):
    """Every entry anywhere: log, log-run and the store (what must never shrink)."""
    out = []
    for p in [d / "log", d / "log-run", *(tmp_path / "quarantine").glob("*/*.entries")]:
        if p.exists():
            out += p.read_bytes().splitlines()
    return sorted(out)


def test_named_user_is_quarantined_and_the_rest_flows(tmp_path):
    sup, env, d = live_link(tmp_path)
    (d / "log-run").write_bytes(entries("bob", "alice", "carol"))
    (d / "log").write_bytes(entries("alice", "dave"))
    before = all_lines(tmp_path, d)
    fail_pass(sup)
    step(sup, env)
    assert ("stop", W1) in env["systemd"].calls            # SIGTERM: log-run stays whole
    step(sup, env, n=2)
    assert b"alice" not in (d / "log-run").read_bytes() + (d / "log").read_bytes()
    assert b"user.bob" in (d / "log-run").read_bytes() and b"dave" in (d / "log").read_bytes()
    assert all_lines(tmp_path, d) == before                # moved, not lost
    assert env["systemd"].running(W1)                      # the worker runs again
    assert state(sup) in (LinkState.LIVE, LinkState.CATCHING_UP)
    doc = sup.status()
    (q,) = doc["quarantine"]
    assert q["user"] == "alice" and q["entries"] == 8 and "user.alice" in q["error"]
    assert doc["links"][0]["quarantined"] == 1
    (entry,) = [e for e in env["journal"].entries if e["ID"] == "user-quarantined"]
    assert entry["SYNCWARDEN_USER"] == "alice" and entry["SYNCWARDEN_ERROR"]


def test_later_entries_for_a_quarantined_user_are_kept_out(tmp_path):
    sup, env, d = alice_quarantined(tmp_path)
    with open(d / "log", "ab") as f:
        f.write(entries("alice", "bob", n=1))
    step(sup, env)
    assert (d / "log").read_bytes() == entries("bob", n=1)
    assert sup.status()["quarantine"][0]["entries"] == 6


def test_bisection_finds_the_user_the_logs_do_not_name(tmp_path):
    sup, env, d = live_link(tmp_path)
    users = ["u%02d" % i for i in range(10)]
    (d / "log-run").write_bytes(entries(*users))
    tried = []

    def user_sync():
        listed = (tmp_path / "users" / "replica1").read_text().split()
        tried.append(listed)
        return 1 if "u07" in listed else 0
    env["systemd"].oneshot[U1] = user_sync
    for _ in range(2):
        spin(sup, 1)
        step(sup, env)
    step(sup, env, n=12)
    assert tried[0] == users and ["u07"] in tried
    assert [q["user"] for q in sup.status()["quarantine"]] == ["u07"]
    assert b"u07" not in (d / "log-run").read_bytes()
    assert env["systemd"].running(W1) and state(sup) is not LinkState.QUARANTINED


def test_every_user_failing_quarantines_the_link(tmp_path):
    sup, env, d = live_link(tmp_path)
    (d / "log-run").write_bytes(entries("bob", "alice", "carol"))
    env["systemd"].oneshot[U1] = lambda: 1          # e.g. the replica's disk is full
    for _ in range(2):
        spin(sup, 1)
        step(sup, env)
    step(sup, env, n=10)
    assert state(sup) is LinkState.QUARANTINED
    assert "every user of the stuck log-run fails (3)" in sup.links["replica1"].link.reason
    assert sup.status()["quarantine"] == []          # nobody was singled out
    assert (d / "log-run").read_bytes() == entries("bob", "alice", "carol")


def test_every_user_of_the_log_run_named_quarantines_the_link(tmp_path):
    sup, env, d = live_link(tmp_path)
    (d / "log-run").write_bytes(entries("bob", "dave"))
    (d / "log").write_bytes(entries("carol"))
    fail_pass(sup, PASS_DISK_FULL)                  # the replica's disk is full
    step(sup, env, n=5)
    assert state(sup) is LinkState.QUARANTINED
    reason = sup.links["replica1"].link.reason
    assert "every user of the stuck log-run fails (2)" in reason
    assert "MESSAGE refused by the replica: IMAP_PROTOCOL_ERROR Failed to parse APPLY" in reason
    assert sup.status()["quarantine"] == []          # nobody was singled out
    assert (d / "log-run").read_bytes() == entries("bob", "dave")
    assert (d / "log").read_bytes() == entries("carol")


def test_retry_releases_and_puts_later_entries_back(tmp_path):
    sup, env, d = alice_quarantined(tmp_path)
    ok = {"now": False}

    def retry():
        # while the user sync runs, a new entry for alice is moved into the store
        with open(d / "log", "ab") as f:
            f.write(b"APPEND user.alice\n")
        return 0 if ok["now"] else 1
    env["systemd"].oneshot[U1] = retry
    env["clock"].advance(sup.config.quarantine.retry_interval)
    step(sup, env, n=3)
    q = sup.status()["quarantine"][0]
    assert q["attempts"] == 1 and q["error"].startswith("sync_client -u alice exited 1")
    (d / "log").unlink()
    ok["now"] = True
    sup.operator.quarantine("retry", "alice", None)
    step(sup, env, n=3)
    assert sup.status()["quarantine"] == []
    kinds = [e["ID"] for e in env["journal"].entries]
    assert "user-retried" in kinds and "user-released" in kinds
    # the entry that reached the store during the successful retry went back to the stream
    assert (d / "log").read_bytes() == b"APPEND user.alice\n"


def test_release_puts_back_what_names_another_user_too(tmp_path):
    """RENAME user.alice.Proj user.bob.Proj left the stream with alice; `sync_client -u alice`
    does not cover bob's part, so her release puts it back (issue 10, item 3)."""
    sup, env, d = live_link(tmp_path)
    rename = b"RENAME user.alice.Proj user.bob.Proj\n"
    (d / "log-run").write_bytes(entries("alice") + rename + entries("bob"))
    fail_pass(sup)
    step(sup, env, n=3)
    assert [q["user"] for q in sup.status()["quarantine"]] == ["alice"]
    assert rename not in (d / "log-run").read_bytes()
    env["systemd"].oneshot[U1] = lambda: 0
    sup.operator.quarantine("retry", "alice", None)
    step(sup, env, n=3)
    assert sup.status()["quarantine"] == []
    assert (d / "log").read_bytes() == rename       # alice's own lines were covered


def test_back_off_doubles(tmp_path):
    sup, env, d = alice_quarantined(tmp_path)
    env["systemd"].oneshot[U1] = lambda: 1
    iv = sup.config.quarantine.retry_interval
    env["clock"].advance(iv)
    step(sup, env, n=2)
    q = sup.local.store.get("replica1", "alice")
    assert q.attempts == 1 and q.next_retry - env["clock"].wall() > 1.9 * iv - 5


def test_a_retry_whose_login_is_refused_is_ended_and_tried_again(tmp_path):
    sup, env, d = alice_quarantined(tmp_path)
    env["clock"].advance(sup.config.quarantine.retry_interval)
    step(sup, env)
    assert env["systemd"].running(U1)         # sync_client -u: it would retry the login forever
    sup.feed_worker_log(U1, REFUSED)
    step(sup, env, n=2)
    assert ("stop", U1) in env["systemd"].calls
    q = sup.local.store.get("replica1", "alice")
    assert q.attempts == 1 and q.error == "replica refused the sync login: authentication failure"


def test_drop_needs_the_user_and_gives_entries_up(tmp_path):
    sup, env, d = alice_quarantined(tmp_path)
    assert "4 stored entries given up" in sup.operator.quarantine("drop", "alice", None)
    assert sup.status()["quarantine"] == []
    assert not list((tmp_path / "quarantine").glob("*/*"))


def test_store_survives_a_restart(tmp_path):
    sup, env, d = alice_quarantined(tmp_path)
    again = QuarantineStore(tmp_path / "quarantine")
    (q,) = again.records()
    assert q.user == "alice" and again.count("replica1", "alice") == 4
    meta = json.loads(next((tmp_path / "quarantine" / "replica1").glob("*.json")).read_text())
    assert meta["user"] == "alice"


def test_entries_the_worker_took_before_the_filter_are_moved_again(tmp_path):
    sup, env, d = alice_quarantined(tmp_path)
    (d / "log-run").write_bytes(entries("alice", "bob", n=1))   # taken from log meanwhile
    fail_pass(sup)
    step(sup, env, n=3)
    assert (d / "log-run").read_bytes() == entries("bob", n=1)
    assert sup.status()["quarantine"][0]["entries"] == 6
    assert [e["ID"] for e in env["journal"].entries].count("user-quarantined") == 1


def test_failures_from_before_a_release_are_forgotten(tmp_path):
    sup, env, d = alice_quarantined(tmp_path)
    env["systemd"].oneshot[U1] = lambda: 0
    sup.operator.quarantine("retry", "alice", None)
    step(sup, env)                                   # the retry unit runs (and succeeds)
    fail_pass(sup)                                   # late lines of a pass before the repair
    step(sup, env, n=3)
    assert sup.status()["quarantine"] == []
    assert [e["ID"] for e in env["journal"].entries].count("user-quarantined") == 1


def test_late_lines_of_a_stopped_worker_start_nothing(tmp_path):
    sup, env, d = live_link(tmp_path)
    (d / "log-run").write_bytes(entries("alice", "bob"))
    fail_pass(sup, invocation="run-1")
    step(sup, env, n=3)                                  # quarantined; worker restarted
    (d / "log-run").unlink()                             # the new run sent everything
    spin(sup, 3, "run-1")                # the old run's last lines arrive late
    step(sup, env, n=3)
    assert state(sup) is LinkState.LIVE and env["systemd"].running(W1)
    assert [e["ID"] for e in env["journal"].entries].count("user-quarantined") == 1


def test_a_stall_that_ended_is_not_a_link_problem(tmp_path):
    sup, env, d = live_link(tmp_path)
    spin(sup, 2)                         # anonymous failures, then log-run gone
    step(sup, env, n=4)
    assert state(sup) is LinkState.LIVE and env["systemd"].running(W1)


def test_replica_dying_mid_pass_quarantines_nobody(tmp_path):
    sup, env, d = live_link(tmp_path)
    (d / "log-run").write_bytes(entries("dave"))
    fail_pass(sup, ["IOERROR: zero length response: command=<MAILBOXES> prot_error=<end of"
                    " file reached>", "  Promoting: MAILBOX user.dave -> USER dave",
                    "Error in do_sync(): bailing out! Bad protocol"])
    step(sup, env, n=3)
    assert sup.status()["quarantine"] == [] and ("stop", W1) not in env["systemd"].calls


class GatedExecutor:
    """A real thread that holds each rewrite until the test opens the gate."""

    def __init__(self):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.gate = threading.Event()
        self.pool = ThreadPoolExecutor(1)

    def submit(self, fn):
        def held():
            assert self.gate.wait(10)
            return fn()
        return self.pool.submit(held)

    def shutdown(self, wait=True):
        self.gate.set()
        self.pool.shutdown(wait)


def test_the_rewrite_runs_off_the_loop_and_the_worker_waits_for_it(tmp_path):
    """A multi-GB log takes seconds to rewrite: the tick goes on (the watchdog is petted),
    and the worker starts again only once the entries are out."""
    sup, env, d = live_link(tmp_path)
    gated = GatedExecutor()
    sup.links["replica1"].quarantine._executor = lambda: gated
    (d / "log-run").write_bytes(entries("bob", "alice"))
    before = all_lines(tmp_path, d)
    fail_pass(sup)
    step(sup, env, n=4)                                    # ticks return while it is held
    assert not env["systemd"].running(W1)
    assert b"alice" in (d / "log-run").read_bytes()        # not rewritten yet
    gated.gate.set()
    for _ in range(1000):               # the rewrite thread needs a moment of the GIL
        step(sup, env)
        if env["systemd"].running(W1):
            break
        time.sleep(0.005)
    assert b"alice" not in (d / "log-run").read_bytes()
    assert env["systemd"].running(W1)
    assert all_lines(tmp_path, d) == before
    sup.close()


def test_log_run_is_not_rewritten_while_the_worker_is_still_stopping(tmp_path):
    """A unit in "deactivating" has a sync_client that may still be at work on log-run."""
    from supervisor.systemd.units import UnitStatus

    sup, env, d = live_link(tmp_path)
    (d / "log-run").write_bytes(entries("bob", "alice"))
    fail_pass(sup)
    step(sup, env)
    assert ("stop", W1) in env["systemd"].calls
    env["systemd"].units[W1] = UnitStatus(W1, "deactivating", "stop-sigterm")
    step(sup, env, n=3)
    assert b"alice" in (d / "log-run").read_bytes()
    env["systemd"].units[W1] = UnitStatus(W1, "inactive", "dead")
    step(sup, env, n=2)
    assert b"alice" not in (d / "log-run").read_bytes()
