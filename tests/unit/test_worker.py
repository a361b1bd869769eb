"""The worker units' ExecStart: the settings the daemon leaves, and reading the config."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor import config as configmod
from supervisor.commands import main, worker
from supervisor.cyrus import imapdconf
from supervisor.paths import Instance

IMAPD = """configdirectory: {d}/cyrus
sync_log: on
sync_log_channels: replica1
replica1_sync_host: 127.0.0.1
replica1_sync_port: 11005
"""
SYNC_CLIENT = "/bin/true"          # executable, and never run: os.execv records instead


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The default instance under tmp_path, its unit's environment; os.execv records."""
    inst = Instance(root=tmp_path)
    (tmp_path / "imapd.conf").write_text(IMAPD.format(d=tmp_path))
    inst.config.parent.mkdir(parents=True)
    write_config(inst, SYNC_CLIENT)
    monkeypatch.setenv(worker.SETTINGS_ENV, str(inst.worker_settings("replica1")))
    execs = []

    def execv(path, args):
        execs.append(args)
        raise SystemExit(0)
    monkeypatch.setattr(os, "execv", execv)
    return inst, execs


def write_config(inst, sync_client):
    inst.config.write_text(f"cyrus: {{imapd_conf: {inst.root}/imapd.conf, sync_client:"
                           f" {sync_client}}}\nlinks: {{replica1: {{host: 127.0.0.1, port:"
                           " 11005}}\n")


def daemon_loaded(inst):
    """What the daemon does at start and at each reload."""
    cfg = configmod.load(inst.config)
    worker.save_settings(inst, cfg, imapdconf.load(cfg.cyrus.imapd_conf))


def run(inst, mode="rolling"):
    with pytest.raises(SystemExit):           # os.execv, recorded
        worker.main("replica1", mode=mode, root=inst.root)


def test_a_worker_starts_from_the_daemons_settings_without_reading_yaml(installed,
                                                                        monkeypatch):
    inst, execs = installed
    daemon_loaded(inst)
    sync = inst.root / "cyrus" / "sync" / "replica1"
    sync.mkdir(parents=True)
    (sync / "shutdown").touch()                          # stale: it would stop the worker
    monkeypatch.setattr(worker, "_read_config", lambda *a: pytest.fail("read the YAML"))
    run(inst)
    assert execs == [[SYNC_CLIENT, "-C", f"{inst.root}/imapd.conf", "-R", "-n", "replica1",
                      "-F", str(sync / "shutdown")]]
    assert not (sync / "shutdown").exists()
    run(inst, "once")
    assert execs[-1] == [SYNC_CLIENT, "-C", f"{inst.root}/imapd.conf", "-R", "-1", "-n",
                         "replica1"]
    run(inst, "users")
    assert execs[-1][-3:] == ["-u", "-f", str(inst.users_file("replica1"))]


def test_the_settings_are_readable_by_the_workers_group_only(installed):
    from supervisor.state import cyrus_gid

    inst, _ = installed
    daemon_loaded(inst)
    path = inst.worker_settings("replica1")
    for p, mode in ((path.parent, 0o750), (path, 0o640)):
        st = p.stat()
        assert st.st_mode & 0o777 == mode
        assert cyrus_gid() is None or st.st_gid == cyrus_gid()   # the workers run as cyrus


def test_a_config_changed_since_is_read_again(installed):
    inst, execs = installed
    daemon_loaded(inst)
    write_config(inst, "/bin/false")                    # edited, not reloaded
    run(inst)
    assert execs[-1][0] == "/bin/false"


def test_without_settings_the_config_is_read(installed, monkeypatch):
    inst, execs = installed
    monkeypatch.delenv(worker.SETTINGS_ENV)             # a unit file from before them
    run(inst, "users")
    assert execs[-1] == [SYNC_CLIENT, "-C", f"{inst.root}/imapd.conf", "-n", "replica1", "-u",
                         "-f", str(inst.users_file("replica1"))]


def test_a_daemon_with_another_config_file_leaves_nothing(installed, tmp_path):
    inst, _ = installed
    other = tmp_path / "other.yaml"
    other.write_text(inst.config.read_text())
    cfg = configmod.load(other)                      # `syncwarden -c other.yaml daemon`
    worker.save_settings(inst, cfg, imapdconf.load(cfg.cyrus.imapd_conf))
    assert not inst.worker_settings("replica1").exists()   # its workers read their own


def test_the_units_command_lines_skip_the_command_line_module(monkeypatch):
    seen = []
    monkeypatch.setattr(worker, "main", lambda name, mode="rolling": seen.append((name, mode)) or 0)
    assert main(["worker", "east:replica1"]) == 0
    assert main(["worker", "--once", "replica1"]) == 0
    assert seen == [("east:replica1", "rolling"), ("replica1", "once")]
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--bogus", "replica1"])          # cli.py's argparse: a usage error
    assert exc.value.code == 2


def test_a_worker_with_settings_imports_json_and_nothing_of_syncwarden_but_itself(installed):
    inst, _ = installed
    daemon_loaded(inst)
    code = (f"import os, sys; sys.path.insert(0, {str(Path(worker.__file__).parents[2])!r})\n"
            "from supervisor.commands import main\n"
            "os.execv = lambda p, a: sys.exit(' '.join(sorted(m for m in sys.modules if"
            " m.startswith('supervisor.') and m not in ('supervisor.commands',"
            " 'supervisor.commands.worker') or m in ('yaml', 'argparse', 'pathlib'))))\n"
            "main(['worker', 'replica1'])\n")
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                       env={worker.SETTINGS_ENV: str(inst.worker_settings("replica1"))})
    assert (r.returncode, r.stderr.strip()) == (1, "")    # sys.exit(names): none of them


# -- a drain pass without the launcher (units/syncwarden-drain@.service) --------------------------

def pass_env(inst):
    return Path(worker.pass_file(inst.worker_settings("replica1")))


def test_a_drain_leaves_its_passes_the_argv_to_exec_and_takes_it_back(installed):
    inst, execs = installed
    daemon_loaded(inst)
    passes = worker.PassFiles(inst)
    assert passes.prepare("replica1") is True
    assert pass_env(inst).read_text() == (f"SYNCWARDEN_PASS={SYNC_CLIENT} -C"
                                          f" {inst.root}/imapd.conf -R -1 -n replica1\n")
    run(inst, "once")                                   # the launcher would exec the same
    assert " ".join(execs[-1]) == pass_env(inst).read_text().strip().partition("=")[2]
    passes.discard("replica1")
    assert not pass_env(inst).exists()
    passes.discard("replica1")                          # twice: nothing to do


def test_settings_older_than_the_config_leave_the_pass_to_the_launcher(installed):
    inst, _ = installed
    daemon_loaded(inst)
    passes = worker.PassFiles(inst)
    passes.prepare("replica1")
    write_config(inst, "/bin/false")                    # edited, not reloaded
    assert passes.prepare("replica1") is False and not pass_env(inst).exists()
    daemon_loaded(inst)                                 # reloaded
    assert passes.prepare("replica1") is True
    daemon_loaded(inst)                                 # a config load takes back what a
    assert not pass_env(inst).exists()                  # drain of the old one left


def test_an_argv_systemd_would_split_wrongly_is_left_to_the_launcher(installed, tmp_path):
    inst, _ = installed
    odd = tmp_path / "cyrus tools"
    odd.mkdir()
    (odd / "sync_client").symlink_to("/bin/true")
    write_config(inst, odd / "sync_client")
    daemon_loaded(inst)
    assert worker.PassFiles(inst).prepare("replica1") is False
    assert not pass_env(inst).exists()


def test_the_drain_unit_reads_the_argv_where_the_daemon_leaves_it():
    unit = (Path(__file__).parents[2] / "units" / "syncwarden-drain@.service").read_text()
    lines = [x for x in unit.splitlines() if x and not x.startswith("#")]
    settings = next(x.rpartition("=")[2] for x in lines
                    if x.startswith(f"Environment={worker.SETTINGS_ENV}="))
    assert f"EnvironmentFile=-{worker.pass_file(settings)}" in lines
    assert f"ExecStart=/usr/bin/env ${worker.PASS_VAR}" in lines
    # without the file: the launcher, in the form commands.main serves first
    assert f'Environment="{worker.PASS_VAR}=/usr/bin/syncwarden worker --once %i"' in lines
