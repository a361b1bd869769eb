"""The YAML configuration: strict parsing into frozen dataclasses.

Every problem is collected with its path (``links.replica1.port``) and reported at once, so an
admin fixes a file in one round. Unknown keys are errors, with a suggestion when one is close.
"""

from __future__ import annotations

import dataclasses
import difflib
import grp
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

DEFAULT_PATH = Path("/etc/syncwarden/syncwarden.yaml")

# A link name is a Cyrus channel name (imapd.conf lowercases option keys, so `<link>_sync_host`
# only matches a lowercase name; sync_log_channels is split on spaces) and a systemd instance
# name (no '@', '/', ':' or '\\' that would need escaping). We reject rather than escape: the same
# name must be greppable in imapd.conf, the sync directory, unit names and the journal.
LINK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class ConfigError(Exception):
    """One or more problems in a config file; ``problems`` holds "path: message" lines."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        n = len(problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''}")

    def report(self) -> str:
        return "\n".join([str(self)] + [f"  {p}" for p in self.problems])


@dataclass(frozen=True)
class CyrusSettings:
    imapd_conf: Path = Path("/etc/imapd.conf")
    sync_client: Path = Path("/usr/lib/cyrus/bin/sync_client")


@dataclass(frozen=True)
class LinkSettings:
    name: str
    host: str
    port: int
    enabled: bool = True


@dataclass(frozen=True)
class ProbeSettings:
    interval: float = 2.0
    timeout: float = 3.0


@dataclass(frozen=True)
class LiveSettings:
    max_backlog: int = 1000
    max_lag: float = 30.0


@dataclass(frozen=True)
class DrainSettings:
    timeout: float = 900.0


@dataclass(frozen=True)
class QuarantineSettings:
    retry_interval: float = 600.0


@dataclass(frozen=True)
class ControlSettings:
    # Members of this group may read status over the control socket; changes need root.
    group: str = "adm"


@dataclass(frozen=True)
class ImapEndpoint:
    """Where `syncwarden check` reads one side over IMAP."""
    host: str
    port: int = 143
    tls: str = "none"               # none | starttls | imaps
    ca_file: Path | None = None     # None: the system's CAs
    timeout: float = 60.0


@dataclass(frozen=True)
class CheckSettings:
    # An admin login for both sides, in a root-only file (see supervisor/credentials.py).
    credentials: Path = Path("/etc/syncwarden/imap-credentials")
    master: ImapEndpoint = ImapEndpoint("localhost")
    # Per link; a link not listed is read at its sync host, port 143, with STARTTLS.
    replicas: Mapping[str, ImapEndpoint] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}))
    parallel: int = 4               # users read at the same time

    def replica(self, link: LinkSettings) -> ImapEndpoint:
        return self.replicas.get(link.name) or ImapEndpoint(link.host, 143, "starttls",
                                                            timeout=self.master.timeout)


@dataclass(frozen=True)
class Config:
    links: Mapping[str, LinkSettings]
    cyrus: CyrusSettings = CyrusSettings()
    role: str = "master"
    probe: ProbeSettings = ProbeSettings()
    live: LiveSettings = LiveSettings()
    drain: DrainSettings = DrainSettings()
    quarantine: QuarantineSettings = QuarantineSettings()
    control: ControlSettings = ControlSettings()
    check: CheckSettings = CheckSettings()
    source: str = str(DEFAULT_PATH)


def parse_duration(value: Any) -> float | None:
    """'2s', '10m', '1.5h', 500ms' or a bare number of seconds; None when not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    return None


class _Reader:
    """Walks the parsed YAML, converting values and collecting problems with their paths."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def section(self, data: Any, path: str, keys: tuple[str, ...]) -> dict:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.problem(path, f"expected a mapping, got {_show(data)}")
            return {}
        for key in data:
            if key not in keys:
                self.unknown(path, key, keys)
        return data

    def unknown(self, path: str, key: Any, known: tuple[str, ...]) -> None:
        hint = difflib.get_close_matches(str(key), known, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(known)})"
        self.problem(_join(path, key), f"unknown key{suggestion}")

    def duration(self, data: dict, path: str, key: str, default: float, minimum: float = 0.0):
        if key not in data:
            return default
        seconds = parse_duration(data[key])
        if seconds is None:
            self.problem(_join(path, key), f"expected a duration such as 2s, 10m or 1h, got {_show(data[key])}")
            return default
        if seconds < minimum:
            self.problem(_join(path, key), f"must be at least {minimum:g}s, got {_show(data[key])}")
            return default
        return seconds

    def integer(self, data: dict, path: str, key: str, default, lo: int, hi: int):
        if key not in data:
            return default
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.problem(_join(path, key), f"expected an integer {lo}-{hi}, got {_show(value)}")
            return default
        return value

    def boolean(self, data: dict, path: str, key: str, default: bool) -> bool:
        if key not in data:
            return default
        if not isinstance(data[key], bool):
            self.problem(_join(path, key), f"expected true or false, got {_show(data[key])}")
            return default
        return data[key]

    def string(self, data: dict, path: str, key: str, default, choices=None):
        if key not in data:
            if default is None:
                self.problem(_join(path, key), "required")
            return default
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            self.problem(_join(path, key), f"expected a non-empty string, got {_show(value)}")
            return default
        if choices and value not in choices:
            self.problem(_join(path, key), f"expected one of {', '.join(choices)}, got {_show(value)}")
            return default
        return value

    def path(self, data: dict, path: str, key: str, default: Path) -> Path:
        value = self.string(data, path, key, str(default))
        if value and not value.startswith("/"):
            self.problem(_join(path, key), f"expected an absolute path, got {_show(value)}")
        return Path(value)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return repr(value)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML silently keeps the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

TOP_KEYS = ("cyrus", "role", "links", "probe", "live", "drain", "quarantine", "control",
            "check")


def parse(text: str, source: str = str(DEFAULT_PATH)) -> Config:
    """Parse config text; raise ConfigError listing every problem."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}not valid YAML: {what}"]) from None
    r = _Reader()
    if data is None:
        data = {}
    top = r.section(data, "", TOP_KEYS)
    if not isinstance(data, dict):
        raise ConfigError(source, r.problems)

    c = r.section(top.get("cyrus"), "cyrus", ("imapd_conf", "sync_client"))
    cyrus = CyrusSettings(
        imapd_conf=r.path(c, "cyrus", "imapd_conf", CyrusSettings.imapd_conf),
        sync_client=r.path(c, "cyrus", "sync_client", CyrusSettings.sync_client))
    role = r.string(top, "", "role", "master", choices=("master", "replica"))

    p = r.section(top.get("probe"), "probe", ("interval", "timeout"))
    probe = ProbeSettings(interval=r.duration(p, "probe", "interval", 2.0, minimum=0.1),
                          timeout=r.duration(p, "probe", "timeout", 3.0, minimum=0.1))
    lv = r.section(top.get("live"), "live", ("max_backlog", "max_lag"))
    live = LiveSettings(max_backlog=r.integer(lv, "live", "max_backlog", 1000, 0, 10**9),
                        max_lag=r.duration(lv, "live", "max_lag", 30.0))
    d = r.section(top.get("drain"), "drain", ("timeout",))
    drain = DrainSettings(timeout=r.duration(d, "drain", "timeout", 900.0, minimum=1.0))
    q = r.section(top.get("quarantine"), "quarantine", ("retry_interval",))
    quarantine = QuarantineSettings(
        retry_interval=r.duration(q, "quarantine", "retry_interval", 600.0, minimum=1.0))
    ct = r.section(top.get("control"), "control", ("group",))
    control = ControlSettings(group=r.string(ct, "control", "group", "adm"))

    links = _links(r, top)
    check = _check(r, top.get("check"), links)
    if r.problems:
        raise ConfigError(source, r.problems)
    return Config(cyrus=cyrus, role=role, links=links, probe=probe, live=live, drain=drain,
                  quarantine=quarantine, control=control, check=check, source=source)


def _links(r: _Reader, top: dict) -> Mapping[str, LinkSettings]:
    raw = top.get("links")
    if raw is None:
        r.problem("links", "required: at least one link (a Cyrus sync channel) to supervise")
        return MappingProxyType({})
    if not isinstance(raw, dict) or not raw:
        r.problem("links", f"expected a mapping of link names to settings, got {_show(raw)}")
        return MappingProxyType({})
    links = {}
    for name, body in raw.items():
        path = f"links.{name}"
        if not isinstance(name, str) or not LINK_NAME.match(name):
            r.problem(path, "invalid link name: use 1-64 of a-z 0-9 _ - starting with a letter or"
                      " digit (it is a Cyrus channel name and a systemd instance name)")
            continue
        s = r.section(body, path, ("host", "port", "enabled"))
        if not isinstance(body, dict):
            continue
        host = r.string(s, path, "host", None)
        port = r.integer(s, path, "port", None, 1, 65535)
        if "port" not in s:
            r.problem(_join(path, "port"), "required")
        enabled = r.boolean(s, path, "enabled", True)
        links[name] = LinkSettings(name=name, host=host or "", port=port or 0, enabled=enabled)
    return MappingProxyType(links)


_ENDPOINT_KEYS = ("host", "port", "tls", "ca_file")


def _endpoint(r: _Reader, data: Any, path: str, timeout: float, default: ImapEndpoint):
    e = r.section(data, path, _ENDPOINT_KEYS)
    ca = r.path(e, path, "ca_file", Path("/")) if "ca_file" in e else None
    return ImapEndpoint(host=r.string(e, path, "host", default.host) or default.host,
                        port=r.integer(e, path, "port", default.port, 1, 65535),
                        tls=r.string(e, path, "tls", default.tls,
                                     choices=("none", "starttls", "imaps")) or default.tls,
                        ca_file=ca, timeout=timeout)


def _check(r: _Reader, data: Any, links: Mapping[str, LinkSettings]) -> CheckSettings:
    c = r.section(data, "check", ("credentials", "master", "replicas", "timeout", "parallel"))
    timeout = r.duration(c, "check", "timeout", 60.0, minimum=1.0)
    master = _endpoint(r, c.get("master"), "check.master", timeout, ImapEndpoint("localhost"))
    replicas = {}
    raw = c.get("replicas")
    if raw is not None and not isinstance(raw, dict):
        r.problem("check.replicas",
                  f"expected a mapping of link names to endpoints, got {_show(raw)}")
        raw = None
    for name, body in (raw or {}).items():
        path = f"check.replicas.{name}"
        if name not in links:
            r.problem(path, f"no such link (links: {', '.join(links) or 'none'})")
            continue
        if not isinstance(body, dict) or "host" not in body:
            r.problem(_join(path, "host"), "required")
        replicas[name] = _endpoint(r, body, path, timeout,
                                   ImapEndpoint(links[name].host, 143, "starttls"))
    return CheckSettings(
        credentials=r.path(c, "check", "credentials", CheckSettings.credentials),
        master=master, replicas=MappingProxyType(replicas),
        parallel=r.integer(c, "check", "parallel", 4, 1, 64))


def load(path: Path | str = DEFAULT_PATH) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {getattr(exc, 'strerror', None) or exc}"]) from None
    return parse(text, source=str(path))


def control_gid(config: Config) -> int | None:
    """The control group's gid, or None when the group does not exist on this host."""
    try:
        return grp.getgrnam(config.control.group).gr_gid
    except KeyError:
        return None


def replace(config: Config, **changes) -> Config:
    return dataclasses.replace(config, **changes)
