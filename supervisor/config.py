"""The YAML configuration: strict parsing into frozen dataclasses.

Every problem is collected with its path (``links.replica1.port``) and reported at once, so an
admin fixes a file in one round. Unknown keys are errors, with a suggestion when one is close.
"""

from __future__ import annotations

import dataclasses
import difflib
import grp
import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from .moveconfig import MoveSettings, StoreSettings, read_move, read_stores

DEFAULT_PATH = Path("/etc/syncwarden/syncwarden.yaml")

# A link name is a Cyrus channel name (imapd.conf lowercases option keys, so `<link>_sync_host`
# only matches a lowercase name; sync_log_channels is split on spaces) and a systemd instance
# name (no '@', '/', ':' or '\\' that would need escaping). We reject rather than escape: the same
# name must be greppable in imapd.conf, the sync directory, unit names and the journal.
LINK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@\\-]{1,240}\.service$")
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
    # None: found where this host's Cyrus is (cyrus/layout.py); daemon.load_checked fills
    # sync_client and master in, check-config also finds and checks the service.
    sync_client: Path | None = None
    master: Path | None = None
    service: str | None = None      # the systemd unit that runs this instance's Cyrus


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
class HookSettings:
    # A shell command run on every state change (link/hooks.py), as ``user``, for at most
    # ``timeout``; None: no hook.
    on_state_change: str | None = None
    user: str = "nobody"
    timeout: float = 30.0


@dataclass(frozen=True)
class MetricsSettings:
    # Prometheus metrics: an HTTP endpoint (host, port) and/or a node_exporter textfile; both
    # off unless configured.
    listen: tuple[str, int] | None = None
    textfile: Path | None = None


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
        return self.replicas.get(link.name) or ImapEndpoint(link.host, tls="starttls",
                                                            timeout=self.master.timeout)


@dataclass(frozen=True)
class Config:
    links: Mapping[str, LinkSettings]
    cyrus: CyrusSettings = CyrusSettings()
    role: str = "master"            # master | replica
    probe: ProbeSettings = ProbeSettings()
    live: LiveSettings = LiveSettings()
    drain: DrainSettings = DrainSettings()
    quarantine: QuarantineSettings = QuarantineSettings()
    control: ControlSettings = ControlSettings()
    check: CheckSettings = CheckSettings()
    hooks: HookSettings = HookSettings()
    metrics: MetricsSettings = MetricsSettings()
    # other Cyrus stores users can be moved to, and how (moveconfig.py)
    stores: Mapping[str, StoreSettings] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}))
    move: MoveSettings = MoveSettings()
    source: str = str(DEFAULT_PATH)


# The range of every bounded setting (seconds for durations), as syncwarden.yaml(5) documents
# it. Durations have an upper bound too: 99999999999999999999d or .inf is a typo, not a plan,
# and would overflow the arithmetic that schedules with it.
_M, _H, _D = 60.0, 3600.0, 86400.0
RANGES: Mapping[str, tuple[float, float]] = MappingProxyType({
    "probe.interval": (0.1, 1 * _H),
    "probe.timeout": (0.1, 10 * _M),
    "live.max_backlog": (0, 10**9),
    "live.max_lag": (0, 30 * _D),
    "drain.timeout": (1, 365 * _D),
    "quarantine.retry_interval": (1, 30 * _D),
    "check.timeout": (1, 1 * _D),
    "check.parallel": (1, 64),
    "hooks.timeout": (1, 1 * _H),
    "move.lock_timeout": (1, 1 * _H),
    "port": (1, 65535),
})
ROLES = ("master", "replica")
TLS_MODES = ("none", "starttls", "imaps")


def parse_duration(value: Any) -> float | None:
    """'2s', '10m', '1.5h', 500ms' or a bare number of seconds; None when not a finite,
    non-negative duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = float(value) if value < 2**1000 else math.inf
    if isinstance(value, float):
        return value if 0 <= value < math.inf else None
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            return seconds if seconds < math.inf else None
    return None


def show_duration(seconds: float) -> str:
    """The shortest way to write a range bound in config syntax: 100ms, 30s, 10m, 365d."""
    if seconds == 0:
        return "0s"
    for unit, size in (("d", _D), ("h", _H), ("m", _M), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


_BAD = object()   # a value that was reported: the dataclass default stands in for it


class _Reader:
    """Walks the parsed YAML, converting values and collecting problems with their paths.
    Each value reader takes (path, value) and returns the converted value or _BAD."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        if not path.isprintable():   # a key with a line break must not break the report
            path = path.encode("unicode_escape").decode("ascii")
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

    def fill(self, data: dict, path: str, readers: Mapping[str, Any]) -> dict:
        """{key: converted value} for the keys given and valid; missing keys are left to the
        dataclass defaults (the one place defaults are written)."""
        values = {}
        for key, read in readers.items():
            if key in data:
                value = read(_join(path, key), data[key])
                if value is not _BAD:
                    values[key] = value
        return values

    def duration(self, path: str, value: Any):
        seconds = parse_duration(value)
        lo, hi = RANGES[_range_key(path)]
        if seconds is None:
            self.problem(path, f"expected a duration such as 2s, 10m or 1h (from"
                         f" {show_duration(lo)} to {show_duration(hi)}), got {_show(value)}")
            return _BAD
        if not lo <= seconds <= hi:
            self.problem(path, f"expected a duration from {show_duration(lo)} to"
                         f" {show_duration(hi)}, got {_show(value)}")
            return _BAD
        return seconds

    def integer(self, path: str, value: Any):
        lo, hi = RANGES[_range_key(path)]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.problem(path, f"expected an integer {lo}-{hi}, got {_show(value)}")
            return _BAD
        return value

    def boolean(self, path: str, value: Any):
        if not isinstance(value, bool):
            self.problem(path, f"expected true or false, got {_show(value)}")
            return _BAD
        return value

    def string(self, path: str, value: Any, choices: tuple[str, ...] = ()):
        if not isinstance(value, str) or not value.strip():
            self.problem(path, f"expected a non-empty string, got {_show(value)}")
            return _BAD
        if choices and value not in choices:
            self.problem(path, f"expected one of {', '.join(choices)}, got {_show(value)}")
            return _BAD
        return value

    def path(self, path: str, value: Any):
        value = self.string(path, value)
        if value is _BAD:
            return _BAD
        if not value.startswith("/") or "\0" in value:
            self.problem(path, f"expected an absolute path, got {_show(value)}")
            return _BAD
        return Path(value)

    def listen(self, path: str, value: Any):
        """PORT (on 127.0.0.1: metrics stay on this host unless an address is given), or
        ADDR:PORT with an IPv4 address, a [bracketed] IPv6 address or a host name."""
        found = _listen(value)
        if found is None:
            self.problem(path, "expected PORT or ADDR:PORT (9747 for 127.0.0.1:9747,"
                         f" 0.0.0.0:9747, [::1]:9747), got {_show(value)}")
            return _BAD
        return found

    def textfile(self, path: str, value: Any):
        value = self.path(path, value)
        if value is not _BAD and (value.suffix != ".prom" or value.name.startswith(".")):
            self.problem(path, "expected a file name ending in .prom (node_exporter's textfile"
                         f" collector reads no other), got {_show(str(value))}")
            return _BAD
        return value

    def unit(self, path: str, value: Any):
        value = self.string(path, value)
        if value is not _BAD and not UNIT_NAME.match(value):
            self.problem(path, f"expected a systemd service name such as cyrus-imapd.service,"
                         f" got {_show(value)}")
            return _BAD
        return value

    def choice(self, *choices: str):
        return lambda path, value: self.string(path, value, choices)


_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def _listen(value: Any) -> tuple[str, int] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return ("127.0.0.1", value) if 1 <= value <= 65535 else None
    if not isinstance(value, str):
        return None
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value.strip()
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            return str(ipaddress.IPv6Address(host)), int(port)
        except ValueError:
            return None
    try:
        return str(ipaddress.IPv4Address(host)), int(port)
    except ValueError:
        pass
    numeric = all(part.isdigit() for part in host.split("."))    # a mistyped IPv4 address
    return (host, int(port)) if _HOST_NAME.match(host) and not numeric else None


def _range_key(path: str) -> str:
    return "port" if path.endswith(".port") else path


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML silently keeps the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:   # a list or mapping as a key: PyYAML would say so less clearly
            raise yaml.constructor.ConstructorError(
                None, None, f"a {type(key).__name__} cannot be a key", key_node.start_mark)
        if duplicate:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

TOP_KEYS = ("cyrus", "role", "links", "probe", "live", "drain", "quarantine", "control",
            "check", "hooks", "metrics", "stores", "move")


def _yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}not valid YAML: {what}"]) from None
    except RecursionError:
        raise ConfigError(source, ["not valid YAML: nested too deeply"]) from None


def parse(text: str, source: str = str(DEFAULT_PATH)) -> Config:
    """Parse config text; raise ConfigError listing every problem."""
    data = _yaml(text, source)
    r = _Reader()
    if data is None:
        data = {}
    top = r.section(data, "", TOP_KEYS)
    if not isinstance(data, dict):
        raise ConfigError(source, r.problems)

    def flat(name: str, cls, readers):
        return cls(**r.fill(r.section(top.get(name), name, tuple(readers)), name, readers))

    values = r.fill(top, "", {"role": r.choice(*ROLES)})
    values["cyrus"] = flat("cyrus", CyrusSettings, {"imapd_conf": r.path,
                                                    "sync_client": r.path, "master": r.path,
                                                    "service": r.unit})
    values["probe"] = flat("probe", ProbeSettings, {"interval": r.duration,
                                                    "timeout": r.duration})
    values["live"] = flat("live", LiveSettings, {"max_backlog": r.integer,
                                                 "max_lag": r.duration})
    values["drain"] = flat("drain", DrainSettings, {"timeout": r.duration})
    values["quarantine"] = flat("quarantine", QuarantineSettings,
                                {"retry_interval": r.duration})
    values["control"] = flat("control", ControlSettings, {"group": r.string})
    values["hooks"] = flat("hooks", HookSettings, {"on_state_change": r.string,
                                                   "user": r.string, "timeout": r.duration})
    if values["hooks"].user == "root":
        r.problem("hooks.user", "the hook never runs as root (the daemon is root, the command"
                  " is yours): name an unprivileged user, e.g. nobody")
    values["metrics"] = flat("metrics", MetricsSettings, {"listen": r.listen,
                                                          "textfile": r.textfile})
    links = _links(r, top)
    values["check"] = _check(r, top.get("check"), links)
    timeout = values["check"].master.timeout
    values["stores"] = read_stores(r, top.get("stores"), lambda data, path: _endpoint(
        r, data, path, timeout, ImapEndpoint("localhost")))
    values["move"] = read_move(r, top.get("move"))
    if r.problems:
        raise ConfigError(source, r.problems)
    return Config(links=links, source=source, **values)


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
        readers = {"host": r.string, "port": r.integer, "enabled": r.boolean}
        s = r.section(body, path, tuple(readers))
        if not isinstance(body, dict):
            continue
        for key in ("host", "port"):
            if key not in s:
                r.problem(_join(path, key), "required")
        values = {"host": "", "port": 0, **r.fill(s, path, readers)}
        links[name] = LinkSettings(name=name, **values)
    return MappingProxyType(links)


def _endpoint(r: _Reader, data: Any, path: str, timeout: float, default: ImapEndpoint):
    readers = {"host": r.string, "port": r.integer, "tls": r.choice(*TLS_MODES),
               "ca_file": r.path}
    values = r.fill(r.section(data, path, tuple(readers)), path, readers)
    return dataclasses.replace(default, timeout=timeout, **values)


def _check(r: _Reader, data: Any, links: Mapping[str, LinkSettings]) -> CheckSettings:
    c = r.section(data, "check", ("credentials", "master", "replicas", "timeout", "parallel"))
    values = r.fill(c, "check", {"credentials": r.path, "parallel": r.integer})
    timeout = r.fill(c, "check", {"timeout": r.duration}).get("timeout", ImapEndpoint.timeout)
    master = _endpoint(r, c.get("master"), "check.master", timeout, CheckSettings.master)
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
        replicas[name] = _endpoint(r, body, path, timeout, CheckSettings().replica(links[name]))
    return CheckSettings(master=master, replicas=MappingProxyType(replicas), **values)


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
