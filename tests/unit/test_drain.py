"""The drain protocol, with fake units that act on real sync log files like sync_client -R -1."""

import os

from supervisor.link.drain import MAX_FAILED_PASSES, WORKER_FINISH_GRACE
from supervisor.link.states import LinkState

from .fakes import REFUSED
from .test_core import W1, make, state, step

D1 = "syncwarden-drain@replica1.service"
LINES = "APPEND user.bob\nMAILBOX user.bob\n"


def sync_dir(tmp_path):
    d = tmp_path / "sync" / "replica1"
    d.mkdir(parents=True, exist_ok=True)
    return d


def one_pass(d, works=True):
    """What `sync_client -R -1` does: one file, log-run first; the file goes only on success."""
    def run():
        if not (d / "log-run").exists():
            if not (d / "log").exists():
                return
            os.rename(d / "log", d / "log-run")
        if works:
            (d / "log-run").unlink()
    return run


def live(tmp_path, passes=None):
    sup, env = make(tmp_path, passes=passes)
    env["prober"].reachable["replica1"] = True
    env["prober"].reachable["replica2"] = True
    step(sup, env, n=3)
    assert state(sup) is LinkState.LIVE
    return sup, env


def test_drain_command_sends_everything_then_holds(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log-run").write_text(LINES * 3)
    (d / "log").write_text(LINES * 5)
    env["systemd"].oneshot[D1] = one_pass(d)
    sup.operator.drain("replica1")
    step(sup, env)
    assert (d / "shutdown").exists()              # the rolling worker was asked to finish
    env["systemd"].stop(W1)                       # ... and it does (exit 0, file removed)
    (d / "shutdown").unlink()
    step(sup, env, n=4)
    assert state(sup) is LinkState.DOWN and "drained" in sup.links["replica1"].link.reason
    assert not (d / "log").exists() and not (d / "log-run").exists()
    assert env["systemd"].calls.count(("start", D1)) == 2      # log-run, then log
    assert "replica1" in env["holds"]
    step(sup, env, n=3)
    assert state(sup) is LinkState.DOWN and not env["systemd"].running(W1)  # held
    finished = [e for e in env["journal"].entries if e["ID"] == "drain-finished"]
    assert finished and finished[0]["SYNCWARDEN_ENTRIES_LEFT"] == 0
    assert sup.status()["links"][0]["last_drain"]["drained"] is True


def test_worker_that_does_not_finish_is_signalled_not_stopped(tmp_path):
    sup, env = live(tmp_path)
    (sync_dir(tmp_path) / "log-run").write_text(LINES)     # the file it is on
    sup.operator.drain("replica1")
    step(sup, env)
    assert env["systemd"].running(W1) and (tmp_path / "sync/replica1/shutdown").exists()
    step(sup, env, seconds=WORKER_FINISH_GRACE + 1, n=2)
    # SIGTERM over KillUnit: a StopUnit job would wait for the daemon's own stop
    assert ("kill", W1) in env["systemd"].calls and ("stop", W1) not in env["systemd"].calls


def test_a_worker_between_files_is_signalled_at_once(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES)              # no log-run: it has no file in hand
    env["systemd"].oneshot[D1] = one_pass(d)
    sup.operator.drain("replica1")
    step(sup, env)
    # the shutdown file would only have it sleep out sync_repeat_interval first
    assert ("kill", W1) in env["systemd"].calls and not (d / "shutdown").exists()
    step(sup, env, n=2)
    assert sup.drains.last["replica1"]["drained"] is True and not (d / "log").exists()
    assert env["systemd"].calls.count(("start", D1)) == 1


def test_a_worker_is_signalled_as_soon_as_its_file_is_sent(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log-run").write_text(LINES * 3)
    (d / "log").write_text(LINES)
    env["systemd"].oneshot[D1] = one_pass(d)
    sup.operator.drain("replica1")
    step(sup, env, seconds=0.1)
    assert (d / "shutdown").exists() and ("kill", W1) not in env["systemd"].calls
    step(sup, env, seconds=0.1)                # still on it
    assert ("kill", W1) not in env["systemd"].calls
    (d / "log-run").unlink()                   # sent; it sleeps before it reads "shutdown"
    step(sup, env, seconds=0.1)
    assert ("kill", W1) in env["systemd"].calls
    step(sup, env, seconds=0.1, n=2)
    assert not (d / "shutdown").exists()
    assert sup.drains.last["replica1"]["drained"] is True and not (d / "log").exists()
    assert env["systemd"].calls.count(("start", D1)) == 1          # log only


def test_the_loop_is_woken_by_each_end_the_drain_waits_for(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log-run").write_text(LINES)
    (d / "log").write_text(LINES)
    sup.operator.drain("replica1")
    step(sup, env, seconds=0.1)
    worker = env["systemd"].main_pid(W1)
    assert env["exits"].watched == [worker]    # the worker finishing its file
    env["systemd"].stop(W1)
    step(sup, env, seconds=0.1)                # a pass starts (it keeps running: no hook)
    step(sup, env, seconds=0.1)
    step(sup, env, seconds=0.1)
    assert env["exits"].watched == [worker, env["systemd"].main_pid(D1)]   # each once


def test_unreachable_replica_leaves_files_and_reports_count(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES * 50)
    env["systemd"].oneshot[D1] = one_pass(d, works=False)
    env["prober"].reachable["replica1"] = False
    step(sup, env, seconds=2.0, n=3)              # the replica is lost
    sup.operator.drain("replica1", hold_after=False)
    step(sup, env, n=2)
    assert state(sup) is LinkState.DOWN
    assert (d / "log").read_text() == LINES * 50   # untouched
    (entry,) = [e for e in env["journal"].entries if e["ID"] == "drain-incomplete"]
    assert entry["SYNCWARDEN_ENTRIES_LEFT"] == 100 and "unreachable" in entry["MESSAGE"]
    assert str(d / "log") in entry["MESSAGE"]


def test_passes_that_keep_failing_give_up(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log-run").write_text(LINES)
    env["systemd"].oneshot[D1] = one_pass(d, works=False)
    env["systemd"].stop(W1)
    sup.operator.drain("replica1")
    step(sup, env, n=MAX_FAILED_PASSES + 3)
    assert state(sup) is LinkState.DOWN
    assert env["systemd"].calls.count(("start", D1)) == MAX_FAILED_PASSES
    assert sup.drains.last["replica1"]["drained"] is False
    assert (d / "log-run").exists()


def test_timeout_stops_a_pass_and_keeps_files(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES)
    env["systemd"].stop(W1)
    sup.operator.drain("replica1")
    step(sup, env)                                # a pass starts and never ends (no hook)
    assert env["systemd"].running(D1)
    step(sup, env, seconds=sup.config.drain.timeout)
    step(sup, env)
    assert ("stop", D1) in env["systemd"].calls and (d / "log").exists()
    assert "drain.timeout" in sup.drains.last["replica1"]["message"]


def test_entries_written_during_drain_do_not_keep_it_going(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES * 2)
    env["systemd"].stop(W1)
    passes = one_pass(d)

    def busy_writers():
        passes()
        (d / "log").write_text(LINES)             # a writer is faster than every pass
    env["systemd"].oneshot[D1] = busy_writers
    sup.operator.drain("replica1")
    step(sup, env, n=4)
    assert sup.drains.last["replica1"]["drained"] is True
    assert (d / "log").exists()                   # the new entry waits for resume


def test_stop_drains_every_link_and_starts_nothing_after(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES)
    env["systemd"].oneshot[D1] = one_pass(d)
    env["systemd"].oneshot["syncwarden-drain@replica2.service"] = lambda: None
    sup.drain_all("because syncwarden is stopping")
    assert sup.draining
    for _ in range(10):
        step(sup, env)
        env["systemd"].units.pop(W1, None)        # workers obey the shutdown file
        env["systemd"].units.pop("syncwarden-sync@replica2.service", None)
    assert not sup.draining
    assert state(sup) is LinkState.DOWN and state(sup, "replica2") is LinkState.DOWN
    assert "replica1" not in env["holds"]         # a stop does not hold: the next start resumes
    starts = [c for c in env["systemd"].calls if c[0] == "start" and "sync@" in c[1]]
    assert len(starts) == 2                       # only the two original worker starts


def test_second_stop_request_aborts(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES)
    env["systemd"].stop(W1)
    sup.drain_all("stopping")
    step(sup, env)
    sup.drains.abort_all("aborted by a second stop request")
    step(sup, env)
    assert sup.drains.last["replica1"]["message"] == "aborted by a second stop request"
    assert (d / "log").exists() or (d / "log-run").exists()


def test_an_edge_error_ends_the_drain_instead_of_looping(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES)

    def refuse(unit):
        raise PermissionError(30, "Read-only file system")
    sup.operator.drain("replica1", hold_after=False)
    env["systemd"].start = refuse
    env["systemd"].stop(W1)
    step(sup, env, n=3)
    assert not sup.draining and ("draining", "down") in env["journal"].transitions("replica1")
    assert "Read-only file system" in sup.drains.last["replica1"]["message"]
    assert (d / "log").read_text() == LINES


def test_a_refused_login_ends_the_drain_at_once_and_keeps_the_entries(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES * 4)
    env["systemd"].stop(W1)
    sup.drain_all("because syncwarden is stopping")
    step(sup, env)
    assert env["systemd"].running(D1)        # sync_client -R -1 retries the login forever
    sup.feed_worker_log(D1, REFUSED)
    step(sup, env)
    assert not sup.draining and not env["systemd"].running(D1)
    assert (d / "log").read_text() == LINES * 4
    (entry,) = [e for e in env["journal"].entries if e["ID"] == "drain-incomplete"]
    assert "replica refused the sync login: authentication failure" in entry["MESSAGE"]
    assert "more passes cannot fix that" in entry["MESSAGE"]
    assert entry["SYNCWARDEN_ENTRIES_LEFT"] == 8


def test_a_line_from_before_the_drain_does_not_end_it(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES)
    env["systemd"].stop(W1)
    sup.operator.drain("replica1")
    step(sup, env)
    before = int((env["clock"].wall() - 60) * 1_000_000)
    sup.feed_worker_log(D1, REFUSED, "old-pass", before)     # replayed from an earlier drain
    step(sup, env)
    assert sup.draining


def test_a_configuration_exit_ends_the_drain_at_once(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log-run").write_text(LINES)
    env["systemd"].oneshot[D1] = lambda: 78
    env["systemd"].stop(W1)
    sup.operator.drain("replica1")
    step(sup, env, n=3)
    assert env["systemd"].calls.count(("start", D1)) == 1
    assert "status 78, a configuration error" in sup.drains.last["replica1"]["message"]
    assert (d / "log-run").read_text() == LINES


def test_a_fresh_install_drains_at_once_with_nothing_to_send(tmp_path):
    sup, env = live(tmp_path)                # Cyrus never logged anything: no channel dir
    assert not (tmp_path / "sync" / "replica1").exists()
    sup.drain_all("because syncwarden is stopping")
    step(sup, env, n=2)
    assert not sup.draining
    assert ("kill", W1) in env["systemd"].calls and ("stop", W1) not in env["systemd"].calls
    (entry,) = [e for e in env["journal"].entries if e["ID"] == "drain-finished"
                and e["SYNCWARDEN_LINK"] == "replica1"]
    assert "nothing to send" in entry["MESSAGE"] and entry["SYNCWARDEN_PASSES"] == 0
    assert not (tmp_path / "sync" / "replica1").exists()     # never made by root


def test_a_worker_that_never_logged_in_is_signalled_not_asked(tmp_path):
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES)
    env["systemd"].exit(W1, 0)
    env["systemd"].says[W1] = []             # the new run is stuck retrying its login
    step(sup, env, seconds=2.0, n=3)
    assert env["systemd"].running(W1) and state(sup) is LinkState.CATCHING_UP
    env["systemd"].oneshot[D1] = one_pass(d)
    sup.operator.drain("replica1")
    step(sup, env)
    # it looks at the shutdown file only between passes: SIGTERM (log-run stays whole)
    assert ("kill", W1) in env["systemd"].calls and not (d / "shutdown").exists()
    step(sup, env, n=3)
    assert sup.drains.last["replica1"]["drained"] is True


def test_no_pass_starts_while_the_rolling_worker_is_still_stopping(tmp_path):
    """Two sync_clients on one channel at once would race on log-run."""
    from supervisor.systemd.units import UnitStatus

    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES * 5)
    env["systemd"].oneshot[D1] = one_pass(d)
    sup.operator.drain("replica1")
    step(sup, env)
    env["systemd"].units[W1] = UnitStatus(W1, "deactivating", "stop-sigterm")
    step(sup, env, n=3)
    assert ("start", D1) not in env["systemd"].calls
    env["systemd"].units[W1] = UnitStatus(W1, "inactive", "dead")
    step(sup, env, n=3)
    assert ("start", D1) in env["systemd"].calls


class PassArgv:
    """The drain units' EnvironmentFile (commands/worker.py PassFiles), as a set of links."""

    def __init__(self, fails=False):
        self.ready: set[str] = set()
        self.fails = fails

    def prepare(self, link):
        if self.fails:
            raise PermissionError(13, "Permission denied")
        self.ready.add(link)

    def discard(self, link):
        self.ready.discard(link)


def test_passes_exec_sync_client_from_the_argv_the_drain_leaves_and_takes_back(tmp_path):
    passes = PassArgv()
    sup, env = live(tmp_path, passes)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES * 5)
    env["systemd"].stop(W1)
    seen = []
    env["systemd"].oneshot[D1] = lambda: seen.append(set(passes.ready)) or one_pass(d)()
    sup.operator.drain("replica1")
    step(sup, env, n=3)
    assert seen == [{"replica1"}] and sup.drains.last["replica1"]["drained"] is True
    assert passes.ready == set()                  # a unit started later runs the launcher
    # a drain that fails takes it back too
    (d / "log").write_text(LINES)
    env["systemd"].oneshot[D1] = one_pass(d, works=False)
    sup.operator.drain("replica1")
    step(sup, env, n=MAX_FAILED_PASSES + 2)
    assert sup.drains.last["replica1"]["drained"] is False and passes.ready == set()


def test_a_drain_that_cannot_leave_the_argv_runs_the_launcher(tmp_path):
    sup, env = live(tmp_path, PassArgv(fails=True))
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES * 5)
    env["systemd"].stop(W1)
    env["systemd"].oneshot[D1] = one_pass(d)
    sup.operator.drain("replica1")
    step(sup, env, n=3)
    assert sup.drains.last["replica1"]["drained"] is True


def test_a_shutdown_file_is_removed_before_every_pass(tmp_path):
    """sync_client -R -1 exits at once, sending nothing, while one exists; a pass may start
    without the launcher that removed it."""
    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log-run").write_text(LINES)
    (d / "log").write_text(LINES * 5)
    env["systemd"].stop(W1)
    seen = []

    def run():
        seen.append((d / "shutdown").exists())
        one_pass(d)()
        (d / "shutdown").touch()               # left behind, by whatever
    env["systemd"].oneshot[D1] = run
    sup.operator.drain("replica1")
    step(sup, env, n=4)
    assert seen == [False, False] and sup.drains.last["replica1"]["drained"] is True


def test_the_loop_ticks_slower_while_the_end_it_waits_for_will_wake_it(tmp_path):
    from supervisor.daemon import TICK_DRAIN_WATCHED, TICK_DRAINING, Daemon

    sup, env = live(tmp_path)
    d = sync_dir(tmp_path)
    (d / "log").write_text(LINES)
    env["systemd"].stop(W1)
    sup.operator.drain("replica1")
    assert Daemon._pace(sup) == TICK_DRAINING             # nothing watched yet
    step(sup, env, seconds=0.1)                           # a pass starts, keeps running
    assert Daemon._pace(sup) == TICK_DRAIN_WATCHED > TICK_DRAINING
    env["exits"].ended.add(env["systemd"].main_pid(D1))   # its end woke the loop, and a
    assert Daemon._pace(sup) == TICK_DRAINING             # tick did not see it: soon again
