"""The worker units' ExecStart: the settings the daemon leaves, and reading the config."""

import os

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


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The default instance under tmp_path; os.execv records instead of replacing the test."""
    inst = Instance(root=tmp_path)
    (tmp_path / "imapd.conf").write_text(IMAPD.format(d=tmp_path))
    inst.config.parent.mkdir(parents=True)
    write_config(inst, "/usr/lib/cyrus/bin/sync_client")
    execs = []

    def execv(path, args):
        execs.append(args)
        raise SystemExit(0)
    monkeypatch.setattr(os, "execv", execv)
    return inst, execs


def write_config(inst, sync_client):
    root = inst.root
    inst.config.write_text(f"cyrus: {{imapd_conf: {root}/imapd.conf, sync_client: {sync_client}}}"
                           "\nlinks: {replica1: {host: 127.0.0.1, port: 11005}}\n")


def daemon_loaded(inst):
    """What the daemon does at start and at each reload."""
    cfg = configmod.load(inst.config)
    worker.save_settings(inst.runtime_dir, cfg, imapdconf.load(cfg.cyrus.imapd_conf))


def run(inst, *args):
    with pytest.raises(SystemExit):           # os.execv, recorded
        worker.main(args[-1], mode=worker.MODES.get(args[0], "rolling"), root=inst.root)


def test_a_worker_starts_from_the_daemons_settings_without_reading_yaml(installed,
                                                                        monkeypatch):
    inst, execs = installed
    daemon_loaded(inst)
    sync = inst.root / "cyrus" / "sync" / "replica1"
    sync.mkdir(parents=True)
    (sync / "shutdown").touch()                          # stale: it would stop the worker
    monkeypatch.setattr(worker, "_read_config", lambda *a: pytest.fail("read the YAML"))
    run(inst, "replica1")
    assert execs == [["/usr/lib/cyrus/bin/sync_client", "-C", f"{inst.root}/imapd.conf", "-R",
                      "-n", "replica1", "-F", str(sync / "shutdown")]]
    assert not (sync / "shutdown").exists()
    run(inst, "--once", "replica1")
    assert execs[-1][-4:] == ["-R", "-1", "-n", "replica1"]


def test_a_config_changed_since_is_read_again(installed):
    inst, execs = installed
    daemon_loaded(inst)
    write_config(inst, "/opt/cyrus/sync_client")        # edited, not reloaded
    run(inst, "replica1")
    assert execs[-1][0] == "/opt/cyrus/sync_client"


def test_without_settings_the_config_is_read(installed):
    inst, execs = installed
    run(inst, "--users", "replica1")
    assert execs[-1] == ["/usr/lib/cyrus/bin/sync_client", "-C", f"{inst.root}/imapd.conf",
                         "-n", "replica1", "-u", "-f", str(inst.users_file("replica1"))]


def test_the_units_command_lines_skip_the_command_line_module(monkeypatch):
    seen = []
    monkeypatch.setattr(worker, "main", lambda name, mode="rolling": seen.append((name, mode)) or 0)
    assert main(["worker", "east:replica1"]) == 0
    assert main(["worker", "--once", "replica1"]) == 0
    assert seen == [("east:replica1", "rolling"), ("replica1", "once")]
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--bogus", "replica1"])          # cli.py's argparse: a usage error
    assert exc.value.code == 2


def test_a_worker_with_saved_settings_loads_neither_the_command_line_nor_yaml(installed):
    import subprocess
    import sys
    from pathlib import Path

    inst, _ = installed
    daemon_loaded(inst)
    code = (f"import os, sys; sys.path.insert(0, {str(Path(worker.__file__).parents[2])!r})\n"
            "from supervisor.commands import main, worker\n"
            "os.execv = lambda p, a: sys.exit(','.join(sorted(m for m in sys.modules"
            " if m in ('yaml', 'argparse', 'supervisor.commands.cli', 'supervisor.config'))))\n"
            f"worker.main('replica1', root={str(inst.root)!r})\n")
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert r.stderr.strip() == ""          # sys.exit(text): the modules loaded, none of them
    assert r.returncode == 1
