"""The state-change hook: what it is told, as whom it runs, and that it never holds a link."""

import pytest

from supervisor import config as configmod
from supervisor.link.hooks import Hooks, environment
from supervisor.link.reconcile import Edges, LocalState, Reconciler
from supervisor.link.roles import RoleStore
from supervisor.link.quarantine_store import QuarantineStore
from supervisor.link.states import LinkState, Transition
from supervisor.state import Holds
from supervisor.cyrus import imapdconf

from .fakes import FakeClock, FakeJournal, FakeProber, FakeSystemd, SyncExecutor
from .test_core import state, step


def make(tmp_path, hooks="hooks: {on_state_change: 'logger -t x \"$SYNCWARDEN_TO\"'}"):
    cfg = configmod.parse(f"""
cyrus: {{imapd_conf: {tmp_path}/imapd.conf}}
links: {{replica1: {{host: 127.0.0.1, port: 11005}}}}
probe: {{interval: 2s, timeout: 1s}}
{hooks}
""")
    imapd = imapdconf.ImapdConf(tmp_path / "imapd.conf", {"configdirectory": str(tmp_path)})
    clock = FakeClock()
    env = dict(clock=clock, systemd=FakeSystemd(), prober=FakeProber(clock),
               journal=FakeJournal(), holds=Holds(tmp_path / "holds.json"))
    sup = Reconciler(cfg, imapd, Edges(env["systemd"], env["prober"], env["journal"], clock,
                                       env["systemd"].log, None, SyncExecutor,
                                       hooks=Hooks(env["systemd"], "default", clock)),
                     LocalState(env["holds"], RoleStore(tmp_path / "role.json"),
                                QuarantineStore(tmp_path / "quarantine"), tmp_path / "users"))
    return sup, env


def test_each_transition_starts_the_hook_as_nobody_with_its_environment(tmp_path):
    sup, env = make(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    assert state(sup) is LinkState.LIVE
    started = env["systemd"].transient
    assert [(h["env"]["SYNCWARDEN_FROM"], h["env"]["SYNCWARDEN_TO"]) for h in started] == \
        [("down", "catching-up"), ("catching-up", "live")]
    first = started[0]
    assert first["user"] == "nobody" and first["timeout"] == 30.0
    assert first["argv"] == ["/bin/sh", "-c", 'logger -t x "$SYNCWARDEN_TO"']
    assert first["env"]["SYNCWARDEN_LINK"] == "replica1"
    assert first["env"]["SYNCWARDEN_INSTANCE"] == "default"
    assert first["env"]["SYNCWARDEN_REASON"].startswith("replica answered:")
    assert first["env"]["SYNCWARDEN_TRIGGER"] == "replica_up"
    assert first["env"]["SYNCWARDEN_STATE_CODE"] == "1"
    assert first["name"].startswith("syncwarden-hook-default-replica1-")
    assert len({h["name"] for h in started}) == 2


def test_no_hook_configured_starts_nothing(tmp_path):
    sup, env = make(tmp_path, hooks="")
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    assert env["systemd"].transient == []


def test_a_hook_systemd_refuses_does_not_change_the_link(tmp_path):
    sup, env = make(tmp_path)

    def refuse(*a, **kw):
        raise RuntimeError("Unit syncwarden-hook-x.service has a bad unit file setting")
    env["systemd"].start_transient = refuse
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    assert state(sup) is LinkState.LIVE


def test_the_environment_is_one_line_per_variable():
    t = Transition("replica1", LinkState.LIVE, LinkState.DOWN, "replica_lost",
                   "replica unreachable:\nline two\x1b[2J", 0.0)
    env = environment(t, "east")
    assert env["SYNCWARDEN_REASON"] == "replica unreachable: line two [2J"
    assert env["SYNCWARDEN_INSTANCE"] == "east" and env["SYNCWARDEN_STATE_CODE"] == "0"


def test_the_hook_config_and_root_is_refused():
    cfg = configmod.parse("links: {r1: {host: h, port: 1}}\n"
                          "hooks: {on_state_change: /usr/local/bin/page, user: mail,"
                          " timeout: 2m}\n")
    assert cfg.hooks == configmod.HookSettings("/usr/local/bin/page", "mail", 120.0)
    with pytest.raises(configmod.ConfigError) as exc:
        configmod.parse("links: {r1: {host: h, port: 1}}\nhooks: {on_state_change: x,"
                        " user: root, timeout: 2h}\n")
    assert any(p.startswith("hooks.user: the hook never runs as root") for p in
               exc.value.problems)
    assert any(p.startswith("hooks.timeout: expected a duration from 1s to 1h") for p in
               exc.value.problems)
