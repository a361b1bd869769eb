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


LINK = "links: {r1: {host: h, port: 1}}\n"


@pytest.mark.parametrize("setting,value,message", [
    ("probe: {timeout: .inf}", "inf",
     "probe.timeout: expected a duration such as 2s, 10m or 1h (from 100ms to 10m), got inf"),
    ("drain: {timeout: .nan}", "nan",
     "drain.timeout: expected a duration such as 2s, 10m or 1h (from 1s to 365d), got nan"),
    ("quarantine: {retry_interval: 99999999999999999999d}", None,
     "quarantine.retry_interval: expected a duration from 1s to 30d, got"
     " '99999999999999999999d'"),
    ("quarantine: {retry_interval: .inf}", None,
     "quarantine.retry_interval: expected a duration such as 2s, 10m or 1h (from 1s to 30d),"
     " got inf"),
    ("probe: {interval: 250000000000}", None,
     "probe.interval: expected a duration from 100ms to 1h, got 250000000000"),
    ("drain: {timeout: 366d}", None, "drain.timeout: expected a duration from 1s to 365d,"
     " got '366d'"),
    ("live: {max_lag: 31d}", None, "live.max_lag: expected a duration from 0s to 30d, got '31d'"),
    ("check: {timeout: 2d}", None, "check.timeout: expected a duration from 1s to 1d, got '2d'"),
])
def test_durations_have_an_upper_bound_and_must_be_finite(setting, value, message):
    assert problems(LINK + setting + "\n") == [message]


def test_durations_at_their_bounds_are_accepted():
    cfg = parse(LINK + "drain: {timeout: 365d}\nquarantine: {retry_interval: 30d}\n"
                "probe: {interval: 100ms, timeout: 10m}\nlive: {max_lag: 0}\n")
    assert (cfg.drain.timeout, cfg.quarantine.retry_interval) == (365 * 86400, 30 * 86400)
    assert (cfg.probe.interval, cfg.probe.timeout, cfg.live.max_lag) == (0.1, 600, 0)


@pytest.mark.parametrize("huge", [2**2000, float("inf"), float("nan"), "1e400s"])
def test_parse_duration_refuses_what_is_not_finite(huge):
    assert parse_duration(huge) is None


def test_defaults_are_the_dataclass_defaults():
    """One place for defaults: a config that says nothing gets exactly the dataclasses'."""
    cfg = parse(LINK)
    assert cfg.probe == configmod.ProbeSettings() and cfg.live == configmod.LiveSettings()
    assert cfg.drain == configmod.DrainSettings()
    assert cfg.quarantine == configmod.QuarantineSettings()
    assert cfg.control == configmod.ControlSettings() and cfg.cyrus == configmod.CyrusSettings()
    assert cfg.check == configmod.CheckSettings() and cfg.role == configmod.Config.role


def test_a_word_for_a_duration_is_reported_with_the_range():
    found = problems(LINK + "probe: {interval: 1s, timeout: forever}\n")
    assert found == ["probe.timeout: expected a duration such as 2s, 10m or 1h"
                     " (from 100ms to 10m), got 'forever'"]


def test_a_key_with_a_line_break_stays_on_one_report_line():
    assert problems(LINK + 'probe: {"a\\nb": 1}\n') == [
        "probe.a\\nb: unknown key (known: interval, timeout)"]


def test_a_list_as_a_key_is_a_yaml_problem_not_a_crash():
    (found,) = problems(LINK + "? [a, b]\n: 1\n")
    assert "not valid YAML: a list cannot be a key" in found


def test_metrics_are_off_by_default_and_a_port_alone_stays_on_this_host():
    assert parse(GOOD).metrics == configmod.MetricsSettings(None, None)
    for listen in ("9747", "'9747'", "127.0.0.1:9747"):
        assert parse(GOOD + f"metrics: {{listen: {listen}}}\n").metrics.listen == \
            ("127.0.0.1", 9747)
    cfg = parse(GOOD + "metrics: {listen: '[::]:9100', textfile: /var/lib/x/sw.prom}\n")
    assert cfg.metrics.listen == ("::", 9100)
    assert str(cfg.metrics.textfile) == "/var/lib/x/sw.prom"
    assert parse(GOOD + "metrics: {listen: 'mon.example.org:80'}\n").metrics.listen == \
        ("mon.example.org", 80)


@pytest.mark.parametrize("listen", ["':9747'", "0", "65536", "true", "'*:9747'",
                                    "'10.0.0.300:9747'", "'::1:9747'", "'[::1]'", "'h:x'",
                                    "[9747]"])
def test_bad_listen_addresses_name_the_key(listen):
    [p] = problems(GOOD + f"metrics: {{listen: {listen}}}\n")
    assert p.startswith("metrics.listen: expected PORT or ADDR:PORT (9747 for"), p


@pytest.mark.parametrize("textfile,message", [
    ("relative.prom", "expected an absolute path"),
    ("/var/lib/node-exporter/sw.txt", "expected a file name ending in .prom"),
    ("/var/lib/node-exporter/.prom", "expected a file name ending in .prom")])
def test_bad_textfiles_name_the_key(textfile, message):
    [p] = problems(GOOD + f"metrics: {{textfile: {textfile}}}\n")
    assert p.startswith(f"metrics.textfile: {message}"), p
