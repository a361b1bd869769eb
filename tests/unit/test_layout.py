"""Where Cyrus is: sync_client, master and the mail unit, on each distribution's layout."""

from pathlib import Path

import pytest

from supervisor import config as configmod
from supervisor.cyrus import layout
from supervisor.cyrus.layout import Found

# (programs as each distribution's packages install them, the unit file)
LAYOUTS = {
    "debian": (["usr/lib/cyrus/bin/sync_client", "usr/lib/cyrus/bin/master",
                "usr/lib/cyrus/bin/imapd"], "usr/lib/systemd/system/cyrus-imapd.service"),
    "fedora-rhel9": (["usr/sbin/sync_client", "usr/libexec/cyrus-imapd/master",
                      "usr/libexec/cyrus-imapd/imapd"],
                     "usr/lib/systemd/system/cyrus-imapd.service"),
    "rhel8": (["usr/libexec/cyrus-imapd/sync_client", "usr/libexec/cyrus-imapd/cyrus-master"],
              "usr/lib/systemd/system/cyrus-imapd.service"),
    "upstream": (["usr/local/sbin/sync_client", "usr/local/libexec/master"], None),
}


def make_root(tmp_path: Path, name: str) -> Path:
    programs, unit = LAYOUTS[name]
    for prog in programs:
        p = tmp_path / prog
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    if unit:
        (tmp_path / unit).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / unit).write_text("[Service]\n")
    return tmp_path


@pytest.mark.parametrize("name,sync_client,master", [
    ("debian", "/usr/lib/cyrus/bin/sync_client", "/usr/lib/cyrus/bin/master"),
    ("fedora-rhel9", "/usr/sbin/sync_client", "/usr/libexec/cyrus-imapd/master"),
    ("rhel8", "/usr/libexec/cyrus-imapd/sync_client", "/usr/libexec/cyrus-imapd/cyrus-master"),
    ("upstream", "/usr/local/sbin/sync_client", "/usr/local/libexec/master"),
])
def test_each_distributions_layout_is_found(tmp_path, name, sync_client, master):
    root = make_root(tmp_path, name)
    assert layout.find_sync_client(root) == Found(sync_client, "found")
    assert layout.find_master(root) == Found(master, "found")
    resolved = layout.resolve(configmod.CyrusSettings(), root)
    assert (resolved.sync_client, resolved.master) == (Path(sync_client), Path(master))
    assert resolved.imapd_conf == Path("/etc/imapd.conf") and resolved.service is None
    found, problems = layout.check_binaries(configmod.CyrusSettings(), root)
    assert problems == [] and found["master"].value == master


def test_a_configured_path_wins_and_nothing_found_names_where_it_looked(tmp_path):
    root = make_root(tmp_path, "debian")
    mine = configmod.CyrusSettings(sync_client=Path("/opt/cyrus/sync_client"))
    resolved = layout.resolve(mine, root)
    assert resolved.sync_client == Path("/opt/cyrus/sync_client")
    assert resolved.master == Path("/usr/lib/cyrus/bin/master")
    found, problems = layout.check_binaries(mine, root)
    assert found["sync_client"] == Found("/opt/cyrus/sync_client", "configured")
    assert problems == []           # a missing sync_client is preflight.py's to report
    mine = configmod.CyrusSettings(master=Path("/opt/cyrus/master"))
    assert layout.check_binaries(mine, root)[1] == [
        "cyrus.master: /opt/cyrus/master is not an executable file (failover runs it to read"
        " the master)"]
    empty = tmp_path / "empty"
    empty.mkdir()
    # nothing there: Debian's paths stand in, so what fails names a path
    assert layout.resolve(configmod.CyrusSettings(), empty).sync_client == \
        Path("/usr/lib/cyrus/bin/sync_client")
    found, problems = layout.check_binaries(configmod.CyrusSettings(), empty)
    assert found["sync_client"] == Found(None, "no sync_client in /usr/lib/cyrus/bin,"
                                         " /usr/sbin, /usr/libexec/cyrus-imapd, /usr/local/sbin")
    assert problems == [
        "cyrus.master: no master or cyrus-master in /usr/lib/cyrus/bin,"
        " /usr/libexec/cyrus-imapd, /usr/local/libexec; set cyrus.master to where it is"
        " (failover runs it to read the master)"]


def test_the_mail_unit_is_the_running_masters_whatever_its_name(tmp_path):
    installed = layout.installed_mail_unit(make_root(tmp_path, "debian"))
    assert installed == Found("cyrus-imapd.service", "installed")
    assert layout.mail_unit(None, {7: "mail-elsewhere.service"}, installed) == \
        (Found("mail-elsewhere.service", "runs this instance's master"), [])
    assert layout.mail_unit(None, {}, installed) == (installed, [])
    assert layout.mail_unit("cyrus.service", {}, installed) == \
        (Found("cyrus.service", "configured"), [])
    assert layout.mail_unit("cyrus.service", {7: "cyrus.service"}, installed)[1] == []
    assert layout.mail_unit("cyrus.service", {7: "other.service"}, installed)[1] == [
        "cyrus.service: cyrus.service, but this instance's master runs as pid 7 in"
        " other.service"]
    assert layout.mail_unit(None, {7: None}, installed)[1] == [
        "cyrus.service: this instance's master runs as pid 7 in no unit, outside systemd:"
        " syncwarden cannot be ordered after it"]
    assert layout.mail_unit(None, {7: "a.service", 9: "b.service"}, installed)[1] == [
        "cyrus.service: this instance's master runs as pid 7 in a.service, pid 9 in"
        " b.service; set cyrus.service to the one that should run it"]
    none = layout.installed_mail_unit(tmp_path / "nothing")
    assert layout.mail_unit(None, {}, none) == (none, [
        "cyrus.service: Cyrus is not running and none of cyrus-imapd.service is installed;"
        " set cyrus.service to the unit that runs Cyrus"])


def test_the_daemon_must_be_ordered_before_the_mail_unit():
    assert layout.order_problem("syncwarden.service", "cyrus-imapd.service",
                                ["cyrus-imapd.service", "shutdown.target"]) == []
    assert layout.order_problem("syncwarden.service", "x.service", None) == []  # no systemd
    assert layout.order_problem("syncwarden@east.service", "cyrus-east.service",
                                ["cyrus-imapd.service"]) == [
        "cyrus.service: syncwarden@east.service is not ordered Before=cyrus-east.service, so"
        " at shutdown the links drain while cyrus-east.service still accepts mail; add it with"
        " `systemctl edit syncwarden@east.service` ([Unit] Before=cyrus-east.service)"]


def test_config_takes_the_cyrus_paths_and_a_unit_name():
    cfg = configmod.parse("cyrus: {master: /usr/libexec/cyrus-imapd/cyrus-master,"
                          " service: cyrus-imapd.service}\nlinks: {r: {host: h, port: 1}}\n")
    assert cfg.cyrus.master == Path("/usr/libexec/cyrus-imapd/cyrus-master")
    assert cfg.cyrus.service == "cyrus-imapd.service" and cfg.cyrus.sync_client is None
    with pytest.raises(configmod.ConfigError) as info:
        configmod.parse("cyrus: {master: cyrus-master, service: cyrus-imapd}\n"
                        "links: {r: {host: h, port: 1}}\n")
    assert info.value.problems == [
        "cyrus.master: expected an absolute path, got 'cyrus-master'",
        "cyrus.service: expected a systemd service name such as cyrus-imapd.service, got"
        " 'cyrus-imapd'"]
