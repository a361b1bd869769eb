"""`live` is earned (SPEC guarantee 6): a worker's session with the replica, through the core."""

import os

from supervisor.cyrus.failures import Session, session_event
from supervisor.link.states import LinkState
from supervisor.systemd.units import UnitStatus

from .fakes import LOGIN, REFUSED, FakeClock
from .test_core import W1, make, state, step

NO_CONNECT = "connect(127.0.0.1) failed: Connection refused"
REFUSED_CAUSE = "replica refused the sync login: authentication failure"
RETRYING = "Can not connect to server '127.0.0.1', retrying in 15 seconds"


def started(tmp_path, says=()):
    """A link whose replica answers and whose worker logs ``says`` as it starts."""
    sup, env = make(tmp_path)
    env["systemd"].says[W1] = list(says)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=2)
    return sup, env


def link(sup):
    return sup.status()["links"][0]


def fresh_log_run(tmp_path):
    """A log-run just written (by the fake clock), well within the live thresholds."""
    d = tmp_path / "sync" / "replica1"
    d.mkdir(parents=True)
    (d / "log-run").write_text("APPEND user.bob\n")
    now = FakeClock().wall()
    os.utime(d / "log-run", (now, now))
    return d


def test_the_lines_cyrus_logs_about_its_session():
    assert session_event(LOGIN).kind is Session.LOGGED_IN
    assert session_event("Reprocessing sync log file /x/log-run").kind is Session.LOGGED_IN
    refused = session_event(REFUSED)
    assert refused.kind is Session.REFUSED
    assert refused.cause == "replica refused the sync login: authentication failure"
    assert session_event(NO_CONNECT).cause == ("cannot reach the replica: connect(127.0.0.1)"
                                               " failed: Connection refused")
    assert session_event(RETRYING).generic
    assert session_event("MAILBOX user.bob") is None


def test_refused_login_is_never_live_and_says_why(tmp_path):
    sup, env = started(tmp_path, says=[])           # silent at first: nothing proven yet
    step(sup, env, n=3)
    assert state(sup) is LinkState.CATCHING_UP       # backlog empty, but no pass seen
    assert link(sup)["worker"]["session"] == "no login or completed pass seen yet"
    sup.feed_worker_log(W1, REFUSED, env["systemd"].invocations[W1])
    sup.feed_worker_log(W1, RETRYING, env["systemd"].invocations[W1])
    step(sup, env)
    assert state(sup) is LinkState.DOWN and not env["systemd"].running(W1)
    reason = link(sup)["reason"]
    assert reason.startswith("replica refused the sync login: authentication failure")
    assert "trying again in 1s" in reason
    env["systemd"].says[W1] = []
    step(sup, env, n=2)                               # the next worker, after 1 s
    assert state(sup) is LinkState.CATCHING_UP
    assert link(sup)["reason"].endswith("retrying after: " + REFUSED_CAUSE)
    sup.feed_worker_log(W1, REFUSED, env["systemd"].invocations[W1])
    # a new worker reads imapd.conf again; as long as it is refused, never live
    env["systemd"].says[W1] = [REFUSED]
    seen = set()
    for _ in range(12):
        step(sup, env)
        seen.add(state(sup))
    assert LinkState.LIVE not in seen and env["systemd"].calls.count(("start", W1)) >= 3
    assert ("catching-up", "live") not in env["journal"].transitions("replica1")
    # fixed: the next worker logs in and earns live; the back-off starts afresh
    env["systemd"].says[W1] = [LOGIN]
    for _ in range(20):
        step(sup, env, seconds=2.0)
        if state(sup) is LinkState.LIVE:
            break
    assert state(sup) is LinkState.LIVE
    assert sup.links["replica1"].restart_backoff == 1.0


def test_backoff_between_refused_logins_grows(tmp_path):
    sup, env = started(tmp_path, says=[REFUSED])
    starts = []
    for i in range(40):
        step(sup, env)
        starts.append(env["systemd"].calls.count(("start", W1)))
    # 1s, 2s, 4s, 8s, 16s apart: six starts in 40 s, not forty
    assert 4 <= starts[-1] <= 7


def test_no_connection_keeps_catching_up_with_the_cause(tmp_path):
    sup, env = started(tmp_path, says=[NO_CONNECT, RETRYING])
    step(sup, env, n=3)
    assert state(sup) is LinkState.CATCHING_UP and env["systemd"].running(W1)
    assert link(sup)["reason"].startswith("cannot reach the replica: connect(127.0.0.1) failed")
    changes = env["journal"].transitions("replica1")
    assert changes.count(("catching-up", "catching-up")) == 1       # said once, not each tick
    sup.feed_worker_log(W1, LOGIN, env["systemd"].invocations[W1])
    step(sup, env)
    assert state(sup) is LinkState.LIVE


def test_live_link_whose_worker_loses_its_session_is_catching_up(tmp_path):
    sup, env = started(tmp_path, says=[LOGIN])
    step(sup, env)
    assert state(sup) is LinkState.LIVE
    sup.feed_worker_log(W1, NO_CONNECT, env["systemd"].invocations[W1])
    step(sup, env)
    assert state(sup) is LinkState.CATCHING_UP and "Connection refused" in link(sup)["reason"]


def test_lines_of_an_earlier_run_count_for_nothing(tmp_path):
    sup, env = started(tmp_path, says=[LOGIN])
    step(sup, env)
    old = env["systemd"].invocations[W1]
    env["systemd"].exit(W1, 0)
    step(sup, env, n=4)                              # restarted: a new run, logged in
    assert env["systemd"].invocations[W1] != old and state(sup) is LinkState.LIVE
    sup.feed_worker_log(W1, REFUSED, old)            # the old run's late line
    step(sup, env)
    assert state(sup) is LinkState.LIVE and env["systemd"].running(W1)


def test_a_pass_in_progress_is_not_yet_earned(tmp_path):
    d = fresh_log_run(tmp_path)
    sup, env = started(tmp_path, says=[LOGIN])
    step(sup, env, n=3)
    assert state(sup) is LinkState.CATCHING_UP
    assert link(sup)["worker"]["session"] == "logged in, first pass in progress"
    (d / "log-run").unlink()                         # sync_client unlinks it after the pass
    step(sup, env)
    assert state(sup) is LinkState.LIVE


def test_a_replica_that_logs_no_login_line_earns_live_by_a_finished_log_run(tmp_path):
    d = fresh_log_run(tmp_path)
    sup, env = started(tmp_path, says=[])            # pre-3.6 replica: no SIEVE-MAILBOX
    step(sup, env, n=3)
    assert state(sup) is LinkState.CATCHING_UP
    (d / "log-run").unlink()
    step(sup, env)
    assert state(sup) is LinkState.LIVE


def test_an_adopted_worker_earns_live_from_what_it_logged_before(tmp_path):
    sup, env = make(tmp_path)
    env["systemd"].units[W1] = UnitStatus(W1, "active", "running")   # logged in long ago
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    assert state(sup) is LinkState.LIVE and ("start", W1) not in env["systemd"].calls


def test_an_adopted_worker_whose_login_was_refused_is_restarted(tmp_path):
    sup, env = make(tmp_path)
    env["systemd"].units[W1] = UnitStatus(W1, "active", "running")
    env["systemd"].says[W1] = [REFUSED, RETRYING]
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    assert ("stop", W1) in env["systemd"].calls
    assert "replica refused the sync login" in link(sup)["reason"]


def test_while_the_daemon_stops_workers_are_signalled_not_stopped(tmp_path):
    sup, env = started(tmp_path, says=[LOGIN])
    step(sup, env)
    sup.stopping = True                              # a link no drain took (e.g. just added)
    step(sup, env)
    assert ("kill", W1) in env["systemd"].calls and ("stop", W1) not in env["systemd"].calls
