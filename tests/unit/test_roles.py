"""Role changes: persisted, outrank the config, and fence off backlogs from before."""

from supervisor.link.roles import RoleStore
from supervisor.link.states import LinkState

from .test_core import W1, make, state, step


def with_roles(tmp_path, role="master"):
    sup, env = make(tmp_path, role=role)
    return sup, env


def test_demote_stops_workers_and_survives_restart(tmp_path):
    sup, env = with_roles(tmp_path)
    env["prober"].reachable["replica1"] = True
    step(sup, env, n=3)
    assert state(sup) is LinkState.LIVE
    assert sup.operator.change_role("replica", "test")[0] == "role master -> replica"
    step(sup, env)
    assert state(sup) is LinkState.DOWN and not env["systemd"].running(W1)
    again, env2 = with_roles(tmp_path)                 # config still says master
    env2["prober"].reachable["replica1"] = True
    step(again, env2, n=3)
    assert again.role.role == "replica" and again.status()["role_source"].endswith("(test)")
    assert ("start", W1) not in env2["systemd"].calls


def test_promote_holds_links_with_old_backlog_and_clears_cache(tmp_path):
    sup, env = with_roles(tmp_path, role="replica")
    d = tmp_path / "sync" / "replica1"
    d.mkdir(parents=True)
    (d / "log-run").write_text("APPEND user.bob\n")
    cache = tmp_path / "sync_cache.db"
    cache.write_text("x")
    sup.imapd.options["sync_cache_db_path"] = str(cache)
    done = sup.operator.change_role("master", "test")
    assert f"removed sync cache {cache}" in done and not cache.exists()
    assert any(line.startswith("replica1: held, because") for line in done)
    env["prober"].reachable.update(replica1=True, replica2=True)
    step(sup, env, n=3)
    assert state(sup) is LinkState.DOWN and "held" in sup.summary        # needs resume
    assert state(sup, "replica2") is LinkState.LIVE                        # nothing left over
    sup.operator.hold("replica1", False)
    step(sup, env, n=2)
    assert state(sup) is not LinkState.DOWN
    assert [e for e in env["journal"].entries if e["ID"] == "role-changed"]


def test_damaged_role_file_reads_as_replica(tmp_path):
    (tmp_path / "role.json").write_text("{not json")
    sup, env = with_roles(tmp_path)
    assert sup.role.role == "replica" and "assumed replica" in sup.role.source
