"""A sync_client syncwarden did not start, running for one of our channels (cyrus/procs.py
finds it): named in status, no log rewrite and no claimed drain while it runs."""

from supervisor.cyrus.procs import Rival
from supervisor.link import rivals as rivalsmod
from supervisor.link.states import LinkState

from .test_core import W1, make, state, step
from .test_drain import D1, LINES, one_pass
from .test_failures import PASS_METHOD1
from .test_isolation import entries

RIVAL = Rival(4242, "replica1", "pid 4242 (unit cyrus-imapd.service)",
              "-C /etc/imapd.conf -r -n replica1")


class Procs:
    """What /proc shows, and how often it was looked at."""

    def __init__(self, *found):
        self.found = list(found)
        self.looks = 0

    def __call__(self, imapd_conf_path, links):
        self.looks += 1
        return list(self.found)


def live_with(tmp_path, procs):
    sup, env = make(tmp_path, rivals=procs)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    d = tmp_path / "sync" / "replica1"
    d.mkdir(parents=True)
    return sup, env, d


def test_a_rival_is_named_in_status_and_the_status_line(tmp_path):
    others = [Rival(7, "elsewhere", "pid 7", "-r -n elsewhere"),      # not one of ours
              Rival(8, None, "pid 8", "-r"),                          # the default channel
              Rival(None, "replica1", "/etc/cyrus.conf:30", "-r")]    # an entry, not running
    procs = Procs(*others)
    sup, env, _ = live_with(tmp_path, procs)
    assert sup.status()["links"][0]["rival"] is None
    procs.found.append(RIVAL)
    step(sup, env, seconds=rivalsmod.SCAN_INTERVAL, n=2)
    link = sup.status()["links"][0]
    assert link["rival"] == RIVAL.reason and link["reason"].endswith("; " + RIVAL.reason)
    assert "replica1 live, 0 queued, rival sync_client running" in sup.summary
    assert sup.status()["links"][1]["rival"] is None
    procs.found.remove(RIVAL)
    step(sup, env, seconds=rivalsmod.SCAN_INTERVAL, n=2)
    assert sup.status()["links"][0]["rival"] is None and "rival" not in sup.summary


def test_proc_is_looked_at_every_scan_interval_not_every_tick(tmp_path):
    procs = Procs()
    sup, env, _ = live_with(tmp_path, procs)
    before = procs.looks
    step(sup, env, seconds=1.0, n=int(rivalsmod.SCAN_INTERVAL))
    assert procs.looks - before == 1


def test_no_log_rewrite_while_a_rival_runs(tmp_path):
    procs = Procs(RIVAL)
    sup, env, d = live_with(tmp_path, procs)
    (d / "log-run").write_bytes(entries("alice", "bob"))
    for line in PASS_METHOD1:
        sup.feed_worker_log(W1, line)
    step(sup, env, n=4)
    assert (d / "log-run").read_bytes() == entries("alice", "bob")       # untouched
    assert sup.status()["quarantine"] == [] and not env["systemd"].running(W1)
    procs.found = []
    step(sup, env, seconds=rivalsmod.SCAN_INTERVAL, n=3)
    assert [q["user"] for q in sup.status()["quarantine"]] == ["alice"]
    assert b"alice" not in (d / "log-run").read_bytes()


def test_a_drain_does_not_claim_completion_while_a_rival_runs(tmp_path):
    procs = Procs()
    sup, env, d = live_with(tmp_path, procs)
    (d / "log").write_text(LINES)
    env["systemd"].stop(W1)
    env["systemd"].oneshot[D1] = one_pass(d)
    procs.found = [RIVAL]                   # started meanwhile: not yet seen by a scan
    sup.operator.drain("replica1")
    step(sup, env, n=3)
    last = sup.drains.last["replica1"]
    assert last["drained"] is False and RIVAL.reason in last["message"]
    assert state(sup) is LinkState.DOWN
    procs.found = []
    sup.operator.hold("replica1", False)
    step(sup, env, n=2)
    sup.operator.drain("replica1")
    step(sup, env, n=3)
    assert sup.drains.last["replica1"]["drained"] is True
