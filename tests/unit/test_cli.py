"""The command line: exit codes and one-line errors."""

import grp
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from supervisor.commands.cli import main

IMAPD = """configdirectory: {d}
sync_log: on
sync_log_channels: replica1
sync_try_imap: no
replica1_sync_host: 127.0.0.1
replica1_sync_port: 11005
"""


def write(tmp_path, links="replica1: {host: 127.0.0.1, port: 11005}", extra="", cyrus=None):
    """A config and its imapd.conf; Cyrus's binaries and unit configured (stand-ins), so
    that nothing depends on where, or whether, this host has Cyrus."""
    (tmp_path / "imapd.conf").write_text(IMAPD.format(d=tmp_path))
    (tmp_path / "bin").mkdir(exist_ok=True)
    for prog in ("sync_client", "bin/master"):     # check-config wants executables there
        (tmp_path / prog).write_text("#!/bin/sh\n")
        (tmp_path / prog).chmod(0o755)
    if cyrus is None:
        cyrus = (f"sync_client: {tmp_path}/sync_client, master: {tmp_path}/bin/master,"
                 " service: cyrus-imapd.service")
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"cyrus: {{imapd_conf: {tmp_path}/imapd.conf, {cyrus}}}\n"
                   f"links: {{{links}}}\n{extra}")
    return cfg


def test_check_config_ok(tmp_path, capsys):
    assert main(["check-config", str(write(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "OK: 1 link(s) (replica1)" in out
    assert (f"Cyrus: sync_client {tmp_path}/sync_client (configured), master"
            f" {tmp_path}/bin/master (configured), service cyrus-imapd.service (configured)"
            in out)


def test_check_config_names_missing_cyrus_binaries_and_a_wrong_mail_unit(tmp_path, capsys):
    from .fakeproc import BIN, FakeProc
    cfg = write(tmp_path, cyrus=f"sync_client: {tmp_path}/nosuch/sync_client,"
                f" master: {tmp_path}/imapd.conf, service: mail.service")
    proc = FakeProc(tmp_path / "proc")
    proc.add(10, f"{BIN}/master", "master", "-C", str(tmp_path / "imapd.conf"))
    assert main(["--proc-root", str(tmp_path / "proc"), "check-config", str(cfg)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:3] == [
        f"{cfg}: 3 problems",
        f"  cyrus.master: {tmp_path}/imapd.conf is not an executable file (failover runs it"
        " to read the master)",
        "  cyrus.service: mail.service, but this instance's master runs as pid 10 in"
        " cyrus-imapd.service"]
    assert err[3].startswith(f"  cyrus.sync_client: {tmp_path}/nosuch/sync_client does not"
                             " exist")


def test_check_config_mismatch_names_both_files(tmp_path, capsys):
    cfg = write(tmp_path, "replica1: {host: 127.0.0.1, port: 2005}")
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"links.replica1.port: 2005 in {cfg}, but {tmp_path}/imapd.conf says" in err


def test_check_config_unreadable_imapd_conf(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"cyrus: {{imapd_conf: {tmp_path}/none.conf}}\n"
                   "links: {r1: {host: h, port: 1}}\n")
    assert main(["check-config", str(cfg)]) == 2
    assert f"cyrus.imapd_conf: cannot read {tmp_path}/none.conf" in capsys.readouterr().err


def test_status_without_daemon_says_so_and_shows_backlog(tmp_path, capsys):
    cfg = write(tmp_path)
    (tmp_path / "sync" / "replica1").mkdir(parents=True)
    (tmp_path / "sync" / "replica1" / "log").write_text("APPEND user.bob\nMAILBOX user.bob\n")
    sock = tmp_path / "none.sock"
    assert main(["-c", str(cfg), "--socket", str(sock), "status"]) == 3   # unreachable
    out = capsys.readouterr().out
    assert out.startswith("syncwarden daemon is not running (no daemon socket at")
    assert "replica1  ?" in out and " 2 " in out
    assert main(["-c", str(cfg), "--socket", str(sock), "status", "--json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["daemon"]["running"] is False and doc["links"][0]["backlog"]["entries"] == 2


def test_worker_refuses_unknown_link(tmp_path, capsys):
    cfg = write(tmp_path)
    assert main(["-c", str(cfg), "worker", "nosuch"]) == 78
    assert "links.nosuch: no such link" in capsys.readouterr().err


def test_check_config_names_rival_sync_clients_by_pid_and_cyrus_conf_line(tmp_path, capsys):
    from .fakeproc import BIN, FakeProc
    cfg, conf = write(tmp_path), tmp_path / "imapd.conf"
    (tmp_path / "cyrus.conf").write_text(
        f'START {{\n  recover cmd="ctl_cyrusdb -C {conf} -r"\n'
        f'  syncclient cmd="sync_client -C {conf} -r -n replica1"\n}}\n')
    proc = FakeProc(tmp_path / "proc")
    proc.add(10, f"{BIN}/master", "master", "-C", str(conf), "-M", str(tmp_path / "cyrus.conf"))
    proc.add(11, f"{BIN}/sync_client", "sync_client", "-C", str(conf), "-R", "-n", "replica1",
             cgroup="/system.slice/syncwarden-sync@replica1.service")          # our worker
    proc.add(12, f"{BIN}/sync_client", "sync_client", "-C", str(conf), "-r", "-n", "replica1",
             ppid=10)
    assert main(["--proc-root", str(tmp_path / "proc"), "check-config", str(cfg)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{cfg}: 2 problems"
    assert err[1].startswith(f"  links.replica1: {tmp_path}/cyrus.conf:3 (START entry"
                             " 'syncclient') starts `sync_client")
    assert err[2].startswith("  links.replica1: a sync_client runs for channel replica1 outside"
                             " syncwarden: pid 12 (unit cyrus-imapd.service)")
    assert "pid 11" not in "\n".join(err)
    (tmp_path / "proc" / "12" / "cmdline").unlink()                         # the rival exits
    (tmp_path / "cyrus.conf").write_text("START {\n}\n")                    # and its entry goes
    assert main(["--proc-root", str(tmp_path / "proc"), "check-config", str(cfg)]) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play a non-member")
@pytest.mark.parametrize("argv", [["status"], ["hold", "replica1"], ["demote", "--yes"]])
def test_a_non_member_is_told_the_group_not_that_the_daemon_is_down(argv):
    where = Path(tempfile.mkdtemp())
    where.chmod(0o755)
    listening = socket.socket(socket.AF_UNIX)
    try:
        path = where / "control.sock"
        listening.bind(str(path))
        listening.listen()
        os.chmod(path, 0o660)
        os.chown(path, 0, grp.getgrnam("adm").gr_gid)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                      # a user outside adm
            try:
                sys.stderr = open(w, "w")
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                rc = main(["--socket", str(path), *argv])
                sys.stderr.flush()
                os._exit(rc)
            finally:
                os._exit(99)
        os.close(w)
        err = os.read(r, 4096).decode()
        os.close(r)
        # status: 3, the daemon did not answer us (a state it cannot tell); the others refused
        expected = 3 if argv[0] == "status" else 1
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == expected
        assert err == (f"syncwarden {argv[0]}: permission denied on {path}: you are not root"
                       " or in group adm\n")
    finally:
        listening.close()
        shutil.rmtree(where)


def test_check_config_finds_what_fails_on_this_host(tmp_path, capsys):
    cfg = write(tmp_path, extra="control: {group: no-such-group-here}\n")
    (tmp_path / "sync_client").chmod(0o644)
    imapd = tmp_path / "imapd.conf"
    imapd.write_text(imapd.read_text().replace("sync_log_channels: replica1",
                                               "sync_log_channels: replica1 backup"))
    (tmp_path / "sync" / "backup").mkdir(parents=True)
    (tmp_path / "sync" / "backup" / "log").write_text("APPEND user.bob\n" * 3)
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{cfg}: 3 problems"
    assert err[1] == f"  cyrus.sync_client: {tmp_path}/sync_client is not executable"
    assert err[2].startswith("  control.group: no group 'no-such-group-here' on this host")
    assert err[3].startswith(f"  cyrus.imapd_conf: channel backup is in sync_log_channels of"
                             f" {imapd}, but no link supervises it")
    assert f"{tmp_path}/sync/backup/log grows without bound (3 entries now)" in err[3]
    (tmp_path / "sync_client").unlink()
    assert main(["check-config", str(cfg)]) == 2
    assert "sync_client does not exist" in capsys.readouterr().err


def test_a_missing_sync_client_is_one_line_from_the_worker(tmp_path, capsys):
    cfg = write(tmp_path)
    (tmp_path / "sync_client").unlink()
    assert main(["-c", str(cfg), "worker", "replica1"]) == 78
    err = capsys.readouterr().err.strip()
    assert err == (f"{cfg}: cyrus.sync_client: cannot run {tmp_path}/sync_client: No such file"
                   " or directory")
