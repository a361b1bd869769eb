"""Strict config: every problem reported with its path, in one go."""

import pytest

from supervisor import config as configmod
from supervisor.config import ConfigError, parse, parse_duration

GOOD = """
cyrus: {imapd_conf: /etc/imapd.conf, sync_client: /usr/lib/cyrus/bin/sync_client}
role: master
links:
  replica1: {host: 10.0.0.2, port: 2005, enabled: true}
probe: {interval: 2s, timeout: 3s}
live: {max_backlog: 1000, max_lag: 30s}
drain: {timeout: 15m}
quarantine: {retry_interval: 10m}
"""


def problems(text):
    with pytest.raises(ConfigError) as info:
        parse(text, source="test.yaml")
    return info.value.problems


def test_spec_example_parses_into_typed_values():
    cfg = parse(GOOD)
    assert cfg.links["replica1"].port == 2005 and cfg.links["replica1"].enabled is True
    assert cfg.probe.interval == 2.0 and cfg.drain.timeout == 900.0
    assert cfg.quarantine.retry_interval == 600.0 and cfg.live.max_backlog == 1000


def test_shipped_example_config_is_valid():
    from pathlib import Path

    cfg = configmod.load(Path(__file__).parents[2] / "config" / "syncwarden.yaml")
    assert "replica1" in cfg.links


def test_all_problems_reported_with_paths():
    found = problems("""
links:
  replica1: {host: 10.0.0.2, port: csync}
probe: {intervall: 2s}
live: {max_lag: soon}
""")
    assert "links.replica1.port: expected an integer 1-65535, got 'csync'" in found
    assert "probe.intervall: unknown key (did you mean 'interval'?)" in found
    assert any(p.startswith("live.max_lag: expected a duration") for p in found)
    assert len(found) == 3


@pytest.mark.parametrize("name", ["Replica1", "r.1", "r:1", "r@1", "-r", "a b", "ré", "x" * 65])
def test_invalid_link_names_are_rejected_not_escaped(name):
    found = problems(f'links: {{"{name}": {{host: h, port: 1}}}}')
    assert found[0].startswith(f"links.{name}: invalid link name")


def test_wrong_types_and_missing_keys():
    found = problems("""
role: primary
links:
  r1: {port: 0, enabled: "yes"}
  r2: []
""")
    assert "role: expected one of master, replica, got 'primary'" in found
    assert "links.r1.host: required" in found
    assert "links.r1.port: expected an integer 1-65535, got 0" in found
    assert "links.r1.enabled: expected true or false, got 'yes'" in found
    assert "links.r2: expected a mapping, got a list" in found


def test_links_required_and_unknown_top_level_key():
    found = problems("role: master\nlinkz: {}\n")
    assert "links: required: at least one link (a Cyrus sync channel) to supervise" in found
    assert any(p.startswith("linkz: unknown key (did you mean 'links'?)") for p in found)


def test_yaml_syntax_error_names_line():
    found = problems("links:\n  r1: {host: h\n  port: 2\n")
    assert found[0].startswith("line ") and "not valid YAML" in found[0]


def test_duplicate_keys_are_errors():
    found = problems("links:\n  r1: {host: a, port: 1}\n  r1: {host: b, port: 2}\n")
    assert "duplicate key 'r1'" in found[0]


def test_report_format():
    with pytest.raises(ConfigError) as info:
        parse("links: {r1: {host: h, port: x}}\nprobe: {intervall: 1}\n", source="/etc/s.yaml")
    assert info.value.report().splitlines() == [
        "/etc/s.yaml: 2 problems",
        "  probe.intervall: unknown key (did you mean 'interval'?)",
        "  links.r1.port: expected an integer 1-65535, got 'x'",
    ]


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        configmod.load(tmp_path / "missing.yaml")
    assert info.value.problems == ["cannot read: No such file or directory"]


@pytest.mark.parametrize("text,seconds", [("2s", 2), ("10m", 600), ("1.5h", 5400), (3, 3),
                                          ("500ms", 0.5), ("1d", 86400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["2 weeks", "-1s", True, None, "", [1]])
def test_bad_durations(bad):
    assert parse_duration(bad) is None


def test_check_section_defaults_and_endpoints():
    cfg = parse(GOOD)
    assert cfg.check.master.host == "localhost" and cfg.check.master.tls == "none"
    assert str(cfg.check.credentials) == "/etc/syncwarden/imap-credentials"
    default = cfg.check.replica(cfg.links["replica1"])
    assert (default.host, default.port, default.tls) == ("10.0.0.2", 143, "starttls")
    cfg = parse(GOOD + "check:\n  master: {host: 127.0.0.1, port: 10143}\n"
                "  replicas: {replica1: {host: 127.0.0.1, port: 11143, tls: none}}\n"
                "  timeout: 5s\n  parallel: 8\n")
    r = cfg.check.replica(cfg.links["replica1"])
    assert (r.port, r.tls, r.timeout, cfg.check.parallel) == (11143, "none", 5.0, 8)


def test_check_section_problems_have_paths():
    found = problems(GOOD + """check:
  credentials: relative/path
  master: {hots: x, tls: ssl}
  replicas: {replica9: {host: x}, replica1: {port: 0}}
  parallel: 0
""")
    assert "check.credentials: expected an absolute path, got 'relative/path'" in found
    assert "check.master.hots: unknown key (did you mean 'host'?)" in found
    assert "check.master.tls: expected one of none, starttls, imaps, got 'ssl'" in found
    assert "check.replicas.replica9: no such link (links: replica1)" in found
    assert "check.replicas.replica1.host: required" in found
    assert "check.replicas.replica1.port: expected an integer 1-65535, got 0" in found
    assert "check.parallel: expected an integer 1-64, got 0" in found
    assert len(found) == 7
