"""Cross-checking links against imapd.conf: one line per mismatch, naming both files."""

from pathlib import Path

from supervisor import config as configmod
from supervisor.cyrus import imapdconf

CFG = configmod.parse("""
links:
  replica1: {host: 127.0.0.1, port: 11005}
  replica2: {host: 127.0.0.1, port: 12005}
""", source="/etc/syncwarden/syncwarden.yaml")

GOOD = """
# comment
configdirectory: /srv/master/conf
Sync_Log: on
sync_log_channels: replica1 replica2
sync_try_imap: no
replica1_sync_host: 127.0.0.1
replica1_sync_port: 11005
replica2_sync_host: 127.0.0.1
replica2_sync_port: 12005
"""


def imapd(text):
    return imapdconf.parse(text, Path("/etc/imapd.conf"))


def test_agreeing_files_have_no_problems():
    conf = imapd(GOOD)
    assert imapdconf.cross_check(CFG, conf) == []
    assert conf.sync_dir("replica1") == Path("/srv/master/conf/sync/replica1")


def test_link_missing_from_channels():
    text = GOOD.replace("sync_log_channels: replica1 replica2", "sync_log_channels: replica1")
    (problem,) = imapdconf.cross_check(CFG, imapd(text))
    assert problem.startswith("links.replica2: not in sync_log_channels of /etc/imapd.conf")
    assert "/etc/syncwarden/syncwarden.yaml" in problem


def test_port_and_host_mismatch_name_both_files():
    text = GOOD.replace("replica1_sync_port: 11005", "replica1_sync_port: 2005").replace(
        "replica2_sync_host: 127.0.0.1", "replica2_sync_host: 10.1.1.1")
    found = imapdconf.cross_check(CFG, imapd(text))
    assert ("links.replica1.port: 11005 in /etc/syncwarden/syncwarden.yaml, but /etc/imapd.conf"
            " says replica1_sync_port: 2005") in found
    assert any(p.startswith("links.replica2.host: '127.0.0.1' in") for p in found)


def test_global_sync_port_counts_and_try_imap_per_channel():
    text = GOOD.replace("replica1_sync_port: 11005\n", "").replace("sync_try_imap: no", "")
    text += "sync_port: 11005\nreplica1_sync_try_imap: no\n"
    found = imapdconf.cross_check(CFG, imapd(text))
    assert len(found) == 1 and found[0].startswith("links.replica2: /etc/imapd.conf leaves"
                                                   " sync_try_imap on")


def test_missing_configdirectory_and_sync_log():
    found = imapdconf.cross_check(CFG, imapd("sync_log_channels: replica1 replica2\n"))
    assert any("has no configdirectory" in p for p in found)
    assert any("does not set 'sync_log: on'" in p for p in found)


def test_unreadable_imapd_conf(tmp_path):
    try:
        imapdconf.load(tmp_path / "nope.conf")
    except imapdconf.ImapdConfError as exc:
        assert str(exc).startswith(f"cannot read {tmp_path}/nope.conf")
    else:
        raise AssertionError("no error")
