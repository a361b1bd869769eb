"""Finding an instance's Cyrus processes and rival sync_clients from a fake /proc and
cyrus.conf samples (Debian's own, as shipped with 3.6.1-4+deb12u5, plus entries)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.cyrus import procs as cyrus_procs
from supervisor.cyrus.procs import (Rival, cyrus_conf_paths, cyrus_conf_sync_clients, options,
                                    rival_sync_clients, service_processes)
from supervisor.cyrus.cyrusconf import SECTIONS, master_entries
from supervisor.cyrus.imapdconf import parse

from .fakeproc import BIN, FakeProc

DIRS = (BIN,)
LINKS = ("replica1", "replica2")


@pytest.fixture
def lab(tmp_path):
    """An instance under tmp_path/inst and a fake /proc at tmp_path/proc."""
    conf = tmp_path / "inst" / "imapd.conf"
    (tmp_path / "inst" / "conf" / "proc").mkdir(parents=True)
    conf.write_text(f"configdirectory: {tmp_path}/inst/conf\n")
    return conf, FakeProc(tmp_path / "proc")


def found(conf, proc):
    imapd = parse(conf.read_text(), conf)
    return {(p.pid, p.program): p for p in service_processes(imapd, DIRS, proc.root)}


def test_a_master_is_ours_by_its_dash_c_whatever_unit_it_runs_in(lab, tmp_path):
    conf, proc = lab
    proc.add(100, f"{BIN}/master", "/usr/sbin/cyrmaster", "-C", str(conf), "-M", "x.conf",
             cgroup="/system.slice/mail-elsewhere.service")
    proc.add(200, f"{BIN}/master", f"{BIN}/master", "-C", str(tmp_path / "other.conf"))
    proc.add(300, "/usr/lib/postfix/sbin/master", "/usr/lib/postfix/sbin/master", "-w")
    proc.add(400, f"{BIN}/sync_client", "sync_client", "-C", str(conf), "-R", "-n", "replica1")
    got = found(conf, proc)
    assert list(got) == [(100, "master")]
    rhel = "/usr/libexec/cyrus-imapd"
    proc.add(500, f"{rhel}/cyrus-master", "cyrus-master", "-C", str(conf))
    proc.add(501, f"{rhel}/imapd", ppid=500, retitled="imapd: somewhere")
    rhel_dirs = cyrus_procs.bin_dirs(f"{rhel}/sync_client")
    assert [(p.pid, p.why) for p in service_processes(parse(conf.read_text(), conf), rhel_dirs,
                                                      proc.root)] == [
        (100, f"-C {conf}"), (500, f"-C {conf}"), (501, "started by master pid 500")]
    assert got[100, "master"].describe() == (f"master pid 100 (-C {conf};"
                                              " unit mail-elsewhere.service)")


def test_without_dash_c_a_program_reads_etc_imapd_conf(lab):
    _, proc = lab
    proc.add(100, f"{BIN}/master", "master", "-d")
    proc.add(101, f"{BIN}/lmtpd", "lmtpd", "-a", ppid=100)
    etc = parse("configdirectory: /nonexistent\n", Path("/etc/imapd.conf"))
    got = {p.pid: p.why for p in service_processes(etc, DIRS, proc.root)}
    assert got == {100: "no -C, so /etc/imapd.conf", 101: "no -C, so /etc/imapd.conf"}


def test_retitled_services_are_ours_by_their_master_or_their_session_file(lab, tmp_path):
    conf, proc = lab
    other = tmp_path / "other.conf"
    proc.add(100, f"{BIN}/master", "master", "-C", str(conf))
    proc.add(101, f"{BIN}/imapd", ppid=100, retitled="imapd: localhost [127.0.0.1] bob")
    proc.add(200, f"{BIN}/master", "master", "-C", str(other))
    proc.add(201, f"{BIN}/imapd", ppid=200, retitled="imapd: localhost [127.0.0.1] eve")
    # orphans whose master is gone: one still serves a client here, one elsewhere
    proc.add(301, f"{BIN}/pop3d", ppid=1, retitled="pop3d: localhost [127.0.0.1] carol")
    proc.add(302, f"{BIN}/imapd", ppid=1, retitled="imapd: localhost [127.0.0.1] dave")
    (tmp_path / "inst" / "conf" / "proc" / "301").write_text("pop3d\tlocalhost\tcarol\n")
    got = {pid: p.why for (pid, _), p in found(conf, proc).items()}
    assert got == {100: f"-C {conf}", 101: "started by master pid 100",
                   301: f"serves a client: {tmp_path}/inst/conf/proc/301"}


def test_whoever_listens_on_the_instances_lmtp_socket_keeps_mail_coming(lab, tmp_path):
    conf, proc = lab
    lmtp = f"{tmp_path}/inst/conf/socket/lmtp"
    proc.add(1, "/usr/lib/systemd/systemd", "/sbin/init", fds={3: "socket:[777]"})
    proc.add(50, "/usr/bin/python3", "python3", fds={4: "socket:[778]", 5: "/dev/null"})
    proc.listen(777, lmtp)
    proc.listen(778, lmtp, listening=False)        # a client connected to it: not a server
    proc.listen(779, "/run/other/socket/lmtp")
    got = found(conf, proc)
    assert list(got) == [(1, "systemd")] and got[1, "systemd"].why == f"listens on {lmtp}"
    # lmtpsocket set elsewhere in imapd.conf: that path is the instance's
    conf.write_text(conf.read_text() + "lmtpsocket: /run/other/socket/lmtp\n")
    proc.add(60, f"{BIN}/master", "master", fds={7: "socket:[779]"})
    assert (60, "master") in found(conf, proc)


def test_hostile_or_vanishing_proc_entries_are_skipped(lab, tmp_path):
    conf, proc = lab
    proc.add(100, f"{BIN}/master (deleted)", "master", "-C", str(conf))   # upgraded under it
    gone = proc.add(101, f"{BIN}/master", "master", "-C", str(conf))
    (gone / "cmdline").unlink()                                            # exited meanwhile
    fifo = proc.add(102, f"{BIN}/master", "master", "-C", str(conf))
    (fifo / "cmdline").unlink()
    os.mkfifo(fifo / "cmdline")                                            # would block a read
    odd = proc.add(103, f"{BIN}/imapd", "imapd", "-C", str(conf))
    (odd / "stat").write_bytes(b"103 (a) b) c) \xff")                      # comm with ")"
    foreign = proc.add(104, f"{BIN}/master", "master", "-C", str(conf))    # in a container
    (proc.root / "self" / "ns").mkdir(parents=True)
    os.symlink("mnt:[1]", proc.root / "self" / "ns" / "mnt")
    (foreign / "ns").mkdir()
    os.symlink("mnt:[2]", foreign / "ns" / "mnt")
    (proc.root / "net" / "unix").write_bytes(b"header\n\xff\xfe garbage\n1 2 3 zz 5 6 7 /x\n")
    assert sorted(found(conf, proc)) == [(100, "master"), (103, "imapd")]


@settings(max_examples=150, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.binary(max_size=100), st.binary(max_size=100),
       st.binary(max_size=300))
def test_any_proc_content_gives_a_list(tmp_path_factory, cmdline, stat, cgroup, unix):
    root = tmp_path_factory.mktemp("proc")
    proc = FakeProc(root)
    d = proc.add(7, f"{BIN}/sync_client", "x")
    (d / "cmdline").write_bytes(cmdline)
    (d / "stat").write_bytes(stat)
    (d / "cgroup").write_bytes(cgroup)
    (root / "net" / "unix").write_bytes(unix)
    imapd = parse("configdirectory: /c\n", Path("/etc/imapd.conf"))
    assert isinstance(service_processes(imapd, DIRS, root), list)
    assert isinstance(rival_sync_clients("/etc/imapd.conf", LINKS, root), list)


def test_getopt_as_glibc_does_it():
    assert options("sync_client", ["sync_client", "-rn", "replica1", "-Cx.conf"]) == {
        "r": "", "n": "replica1", "C": "x.conf"}
    assert options("master", ["master", "-d", "operand", "-p", "/run/m.pid", "--", "-C", "y"]) \
        == {"d": "", "p": "/run/m.pid"}
    assert options("imapd", ["imapd", "-p", "-C", "-C", "z"]) == {"p": "-C", "C": "z"}
    assert options("sync_client", ["sync_client", "-n"]) == {}


# --- rival sync_clients ----------------------------------------------------------------------

def test_rival_sync_clients_are_those_outside_our_units(lab, tmp_path):
    conf, proc = lab
    c = str(conf)
    ours = "/system.slice/system-syncwarden\\x2dsync.slice/syncwarden-sync@replica1.service"
    proc.add(10, f"{BIN}/sync_client", "sync_client", "-C", c, "-R", "-n", "replica1",
             "-F", "/x/shutdown", cgroup=ours)
    proc.add(11, f"{BIN}/sync_client", "sync_client", "-C", c, "-R", "-1", "-n", "replica2",
             cgroup="/system.slice/system-syncwarden\\x2ddrain.slice/"
                    "syncwarden-drain@replica2.service")
    proc.add(20, f"{BIN}/sync_client", "sync_client", "-C", c, "-r", "-n", "replica1",
             cgroup="/user.slice/user-0.slice/session-4.scope")
    proc.add(21, f"{BIN}/sync_client", "sync_client", "-C", "inst/imapd.conf", "-r",
             cwd=str(tmp_path), cgroup="/system.slice/cyrus-imapd.service")     # relative -C
    proc.add(30, f"{BIN}/sync_client", "sync_client", "-C", c, "-r", "-n", "elsewhere")
    proc.add(31, f"{BIN}/sync_client", "sync_client", "-C", c, "-n", "replica1", "-u", "bob")
    proc.add(32, f"{BIN}/sync_client", "sync_client", "-C", "/other.conf", "-r", "-n", "replica1")
    proc.add(33, f"{BIN}/sync_client", "sync_client", "-r", "-n", "replica1")  # /etc/imapd.conf
    got = rival_sync_clients(conf, LINKS, proc.root)
    assert got == [
        Rival(20, "replica1", "pid 20 (unit session-4.scope)", f"-C {c} -r -n replica1"),
        Rival(21, None, "pid 21 (unit cyrus-imapd.service)", "-C inst/imapd.conf -r")]
    assert got[0].problem() == (
        f"links.replica1: a sync_client runs for channel replica1 outside syncwarden: pid 20"
        f" (unit session-4.scope), `sync_client -C {c} -r -n replica1`; stop it and whatever"
        " starts it (two clients on one channel race for its sync log)")
    assert got[1].problem().startswith("cyrus.imapd_conf: a sync_client runs for the default"
                                       " channel (no -n) outside syncwarden: pid 21")
    assert got[0].reason == ("a sync_client that syncwarden did not start runs for channel"
                             " replica1: pid 20 (unit session-4.scope)")



def test_a_rival_is_found_even_where_proc_pid_exe_cannot_be_read(lab):
    # the daemon's unit has no CAP_SYS_PTRACE: another user's /proc/PID/exe is EACCES there
    conf, proc = lab
    d = proc.add(20, f"{BIN}/sync_client", f"{BIN}/sync_client", "-C", str(conf), "-r", "-n",
                 "replica1", cgroup="/system.slice/cyrus-imapd.service")
    (d / "exe").unlink()
    assert [r.pid for r in rival_sync_clients(conf, LINKS, proc.root)] == [20]

# Debian's /etc/cyrus.conf (3.6.1-4+deb12u5), shortened, with the entries a plain-Cyrus site
# adds for replication.
DEBIAN_CYRUS_CONF = """\
# Debian defaults for Cyrus IMAP server/cluster implementation
START {
	# do not delete this entry!
	recover		cmd="/usr/sbin/cyrus ctl_cyrusdb -r"
	#syncclient	cmd="sync_client -r"
	syncclient	cmd="/usr/sbin/cyrus sync_client -r"
	delprune	cmd="/usr/sbin/cyrus expire -E 3"
}
SERVICES {
	imap		cmd="imapd -U 30" listen="imap" prefork=0 maxchild=100
	lmtpunix	cmd="lmtpd" listen="/run/cyrus/socket/lmtp" prefork=0 maxchild=20
	notify		cmd="notifyd" listen="/run/cyrus/socket/notify" proto="udp" prefork=1
}
EVENTS {
	checkpoint	cmd="/usr/sbin/cyrus ctl_cyrusdb -c" period=30
	sync2		cmd="/usr/lib/cyrus/bin/sync_client -C /etc/imapd.conf -R -1 -n replica2" period=5
	sync3		cmd="sync_client -n replica3 -r" at=0400
	syncu		cmd="sync_client -n replica1 -u -f /tmp/users" at=0400
}
DAEMON {
	syncdaemon	cmd="sync_client -C /srv/other/imapd.conf -R -n replica1"
}
"""


def test_cyrus_conf_entries_are_read_as_master_reads_them():
    entries = master_entries(DEBIAN_CYRUS_CONF)
    assert [(e.section, e.name, e.line) for e in entries][:3] == [
        ("START", "recover", 4), ("START", "syncclient", 6), ("START", "delprune", 7)]
    notify = next(e for e in entries if e.name == "notify")
    assert notify.args == {"cmd": "notifyd", "listen": "/run/cyrus/socket/notify",
                           "proto": "udp", "prefork": "1"}
    assert [e.section for e in entries].count("DAEMON") == 1
    # master's own quirks: the first letter of a section name is matched as written, a
    # second section of the same name is not read, '#' cuts anywhere, and a bad name is no entry
    assert master_entries("start {\n a cmd=x\n}\n") == []
    assert [e.name for e in master_entries(
        "START {\n a cmd=x # b cmd=y\n b-c cmd=z\n}\nSTART {\n d cmd=w\n}\n")] == ["a"]
    assert master_entries("EVENTS{\n e cmd=\"x\" period=1\n}")[0].args == {"cmd": "x",
                                                                          "period": "1"}


def test_cyrus_conf_sync_clients_for_our_channels(tmp_path):
    path = tmp_path / "cyrus.conf"
    path.write_text(DEBIAN_CYRUS_CONF)
    got = cyrus_conf_sync_clients(path, "/etc/imapd.conf", LINKS)
    assert [(r.link, r.where, r.command) for r in got] == [
        (None, f"{path}:6 (START entry 'syncclient')", "-r"),
        ("replica2", f"{path}:16 (EVENTS entry 'sync2')", "-C /etc/imapd.conf -R -1 -n replica2")]
    assert got[1].problem() == (
        f"links.replica2: {path}:16 (EVENTS entry 'sync2') starts `sync_client -C"
        " /etc/imapd.conf -R -1 -n replica2` for channel replica2; remove the entry (two"
        " clients on one channel race for its sync log)")
    assert cyrus_conf_sync_clients(path, "/srv/other/imapd.conf", LINKS)[0].where.endswith(
        "(DAEMON entry 'syncdaemon')")
    assert cyrus_conf_sync_clients(tmp_path / "missing.conf", "/etc/imapd.conf", LINKS) == []


def test_the_cyrus_conf_of_a_running_master_is_found(lab, tmp_path):
    conf, proc = lab
    proc.add(100, f"{BIN}/master", "master", "-C", str(conf), "-M", "cyrus.conf",
             cwd=str(tmp_path / "inst"))
    proc.add(200, f"{BIN}/master", "master", "-C", "/other.conf", "-M", "/other/cyrus.conf")
    assert cyrus_conf_paths(conf, DIRS, proc.root, default="/etc/cyrus.conf") == [
        "/etc/cyrus.conf", f"{tmp_path}/inst/cyrus.conf"]


CONF_TOKENS = ["START", "EVENTS", "start", "{", "}", " ", "\t", "#", '"', "=", "cmd=",
               "a1", "-", "sync_client -r", "\u00e9", "x"]
noise = st.lists(st.sampled_from(CONF_TOKENS), max_size=8).map("".join)
conf_line = st.one_of(st.sampled_from(["START {", "SERVICES {", "EVENTS {", "DAEMON {", "}"]),
                      st.builds("{}{} cmd=\"{}\" {}".format, st.sampled_from(["", "  "]),
                                st.sampled_from(["a", "b1", "bad-name"]), noise, noise),
                      noise)


@settings(max_examples=200, database=None, deadline=None)
@given(st.lists(conf_line, max_size=20).map("\n".join))
def test_any_cyrus_conf_text_gives_entries(text):
    for e in master_entries(text):
        assert e.section in SECTIONS and e.name.isalnum() and isinstance(e.args, dict)


def test_cyrus_conf_channel_readers(tmp_path):
    from supervisor.cyrus.procs import cyrus_conf_channel_readers
    conf = tmp_path / "imapd.conf"
    conf.write_text("")
    (tmp_path / "cyrus.conf").write_text(
        "EVENTS {\n}\nDAEMON {\n"
        f'  squatter cmd="squatter -C {conf} -R"\n'
        f'  idx cmd="squatter -C {conf} -R -n index2"\n'
        f'  backup cmd="/usr/sbin/cyrus sync_client -C {conf} -r -n backup"\n'
        f'  deflt cmd="sync_client -C {conf} -r"\n'
        f'  once cmd="squatter -C {conf} -s"\n'
        '  other cmd="sync_client -C /etc/other.conf -r -n elsewhere"\n}\n')
    assert cyrus_conf_channel_readers(tmp_path / "cyrus.conf", conf) == \
        {"squatter", "index2", "backup", None}
    assert cyrus_conf_channel_readers(tmp_path / "none.conf", conf) == set()
