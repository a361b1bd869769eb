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


# --- the grammar of lib/libconfig.c config_read_file() ---------------------------------------

import pytest  # noqa: E402


def test_include_continuation_case_and_whitespace_as_cyrus_reads_them(tmp_path):
    sync = tmp_path / "sync.conf"
    sync.write_text("replica1_sync_host: 127.0.0.1\n  Replica1_Sync_Port:\t11005  \n"
                    "replica2_sync_host: 127.0.0.1\nreplica2_sync_port: 12005\n")
    main = tmp_path / "imapd.conf"
    main.write_text("configdirectory: /srv/master/conf\n# a comment \\\n still the comment\n"
                    "sync_log: on\nsync_log_channels: replica1 \\\nreplica2\n"
                    f"@include: {sync}\nsync_try_imap: no\n")
    conf = imapdconf.load(main)
    assert conf.options["sync_log_channels"] == "replica1 replica2"
    assert conf.options["replica1_sync_port"] == "11005"
    assert conf.files == (main, sync)
    assert imapdconf.cross_check(CFG, conf) == []


@pytest.mark.parametrize("text, error", [
    ("sync_log : on\n", "invalid option name on line 1 of /etc/imapd.conf"),
    ("configdirectory: /x\nsync_log:\n", "empty option value on line 2 of /etc/imapd.conf"),
    ("sync_log: on\nSYNC_LOG: off\n", "option 'sync_log' was specified twice: line 1 of"
                                       " /etc/imapd.conf and line 2 of /etc/imapd.conf"),
    ("@includes: /x\n", "invalid directive @includes on line 1"),
    ("sync_log: maybe\n", "sync_log: 'maybe' on line 1 of /etc/imapd.conf is not a switch"),
    ("sync_log: Off\n", "sync_log: 'Off' on line 1"),       # case matters to Cyrus
    ("just some words\n", "invalid option name on line 1"),
])
def test_what_cyrus_refuses_is_refused_with_the_line(text, error):
    with pytest.raises(imapdconf.ImapdConfError) as exc:
        imapd(text)
    assert error in str(exc.value)


def test_a_file_included_twice_is_refused(tmp_path):
    inc = tmp_path / "inc.conf"
    inc.write_text("sync_log: on\n")
    main = tmp_path / "imapd.conf"
    main.write_text(f"@include: {inc}\n@include: {inc}\n")
    with pytest.raises(imapdconf.ImapdConfError, match="included twice"):
        imapdconf.load(main)
    loop = tmp_path / "loop.conf"
    loop.write_text(f"@include: {tmp_path}/./loop.conf\n")     # another spelling of itself
    with pytest.raises(imapdconf.ImapdConfError, match="included twice"):
        imapdconf.load(loop)
    main.write_text(f"@include: {tmp_path}/none.conf\n")
    with pytest.raises(imapdconf.ImapdConfError, match=f"cannot read {tmp_path}/none.conf"):
        imapdconf.load(main)


def test_switches_service_options_and_channel_values_as_sync_client_sees_them():
    conf = imapd("sync_log: off\nsync_try_imap: t\nsync_client_sync_try_imap: 0\n"
                 "replica1_sync_try_imap: yes\nreplica2_sync_try_imap: 1\n"
                 "sync_host: a\nsync_client_sync_host: b\n")
    assert conf.flag("sync_log", True) is False
    assert conf.flag("sync_try_imap", True) is False        # sync_client's own value
    assert conf.flag("sync_try_imap", True, "replica1") is False   # atoi("yes") == 0
    assert conf.flag("sync_try_imap", False, "replica2") is True
    assert conf.get("sync_host", "replica1") == "b"


def test_channels_and_the_default_channel():
    assert imapd("sync_log: on\n").channels == [None]
    conf = imapd('configdirectory: /c\nsync_log_channels: squatter "" replica1\n')
    assert conf.channels == ["squatter", None, "replica1"]
    assert conf.sync_dir(None) == Path("/c/sync") and conf.sync_dir("x") == Path("/c/sync/x")


def test_unsupervised_channels_but_not_those_cyrus_conf_reads():
    conf = imapd('sync_log: on\nsync_log_channels: replica1 replica2 squatter backup ""\n')
    assert imapdconf.unsupervised_channels(CFG, conf) == ["squatter", "backup", None]
    assert imapdconf.unsupervised_channels(CFG, conf, {"squatter", None}) == ["backup"]
    off = imapd("sync_log: off\nsync_log_channels: backup\n")
    assert imapdconf.unsupervised_channels(CFG, off) == []
