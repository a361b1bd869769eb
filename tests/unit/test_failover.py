"""failover's "is mail stopped?" check: Cyrus processes of the instance, whatever their unit."""

from __future__ import annotations

from argparse import Namespace

from supervisor import config as configmod
from supervisor.cyrus import imapdconf
from supervisor.pair import failover

from .fakeproc import BIN, FakeProc


def instance(tmp_path):
    conf = tmp_path / "imapd.conf"
    conf.write_text(f"configdirectory: {tmp_path}/conf\n")
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"cyrus: {{imapd_conf: {conf}, master: {BIN}/master}}\n"
                   "links: {r1: {host: h, port: 1}}\n")
    proc = FakeProc(tmp_path / "proc")
    proc.add(7, f"{BIN}/master", "master", "-C", str(tmp_path / "other.conf"))   # not ours
    return configmod.load(cfg), imapdconf.load(conf), proc


def test_failover_refuses_while_a_master_of_the_instance_runs_under_any_unit(tmp_path, capsys):
    cfg, imapd, proc = instance(tmp_path)
    proc.add(42, f"{BIN}/master", "master", "-C", str(imapd.path),
             cgroup="/system.slice/mail-elsewhere.service")
    args = Namespace(force=False, socket=tmp_path / "none.sock")
    assert failover.run(args, cfg, imapd, proc_root=proc.root) == failover.EXIT_PROBLEM
    err = capsys.readouterr().err
    assert err == (f"failover: refused: Cyrus still runs for {imapd.path}, so mail may still be"
                   f" accepted here: master pid 42 (-C {imapd.path}; unit"
                   " mail-elsewhere.service); stop it first (or use --force)\n")


def test_force_says_what_it_overrides_and_goes_on(tmp_path, capsys):
    cfg, imapd, proc = instance(tmp_path)
    proc.add(42, f"{BIN}/master", "master", "-C", str(imapd.path))
    args = Namespace(force=True, socket=tmp_path / "none.sock")
    assert failover.run(args, cfg, imapd, proc_root=proc.root) == failover.EXIT_PROBLEM
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"failover: --force: going on although Cyrus still runs for {imapd.path}"
                      " (mail accepted from now on stays here): master pid 42"
                      f" (-C {imapd.path}; unit cyrus-imapd.service)")
    assert err[1].startswith("failover: the daemon must run to drain the links")   # went on


def test_with_cyrus_stopped_failover_goes_on_to_the_drain(tmp_path, capsys):
    cfg, imapd, proc = instance(tmp_path)
    args = Namespace(force=False, socket=tmp_path / "none.sock")
    assert failover.run(args, cfg, imapd, proc_root=proc.root) == failover.EXIT_PROBLEM
    assert capsys.readouterr().err.startswith("failover: the daemon must run to drain")
