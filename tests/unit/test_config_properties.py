"""Property: any YAML, with any value at any key, either parses into a config whose every
duration and count lies in its documented range, or raises ConfigError; never anything else."""

import math

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.config import RANGES, ConfigError, parse

SETTINGS = settings(max_examples=500, deadline=None, database=None)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2**80, 2**80),
    st.floats(),                                        # nan and +-inf included
    st.text(max_size=12),
    st.sampled_from([".inf", "-.inf", ".nan", "99999999999999999999d", "1e400", "0", "0s",
                     "500ms", "2s", "10m", "1.5h", "30d", "31d", "365d", "366d", "1 d",
                     "master", "replica", "none", "starttls", "/etc/imapd.conf", "rel/path",
                     "adm", "127.0.0.1", "65535", "65536"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)

SECTIONS = {
    "cyrus": ["imapd_conf", "sync_client"],
    "probe": ["interval", "timeout"],
    "live": ["max_backlog", "max_lag"],
    "drain": ["timeout"],
    "quarantine": ["retry_interval"],
    "control": ["group"],
    "check": ["credentials", "timeout", "parallel", "master", "replicas"],
}


@st.composite
def configs(draw):
    """A config with a valid link, then any value (or a whole section) swapped in anywhere."""
    doc = {"links": {"replica1": {"host": "h", "port": 2005}}}
    for section, keys in SECTIONS.items():
        choice = draw(st.integers(0, 3))
        if choice == 1:
            doc[section] = draw(values)
        elif choice >= 2:
            doc[section] = {k: draw(values) for k in keys if draw(st.booleans())}
    if draw(st.booleans()):
        doc["role"] = draw(values)
    if draw(st.booleans()):
        doc["links"]["replica1"] = {k: draw(values) for k in ("host", "port", "enabled")
                                    if draw(st.booleans())}
    if draw(st.booleans()):
        doc[draw(st.text(max_size=8))] = draw(values)
    return doc


def bounded(cfg):
    for path, (lo, hi) in RANGES.items():
        if path == "port":
            continue
        section, key = path.split(".")
        value = getattr(getattr(cfg, section), key) if section != "check" or key == "parallel" \
            else cfg.check.master.timeout
        assert math.isfinite(value) and lo <= value <= hi, (path, value)
    for link in cfg.links.values():
        assert 1 <= link.port <= 65535


@given(doc=configs())
@SETTINGS
def test_any_values_parse_or_raise_config_error(doc):
    try:
        text = yaml.safe_dump(doc)
    except yaml.YAMLError:
        return
    try:
        cfg = parse(text, source="fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and "\n" not in p for p in exc.problems)
        return
    bounded(cfg)


@given(text=st.text(max_size=200) | st.sampled_from(["[" * 5000, "{a: " * 2000, "? [a]\n: 1",
                                                     "&a [*a]", "!!python/object:os.system"]))
@SETTINGS
def test_any_text_parses_or_raises_config_error(text):
    try:
        cfg = parse(text, source="fuzz.yaml")
    except ConfigError:
        return
    bounded(cfg)
