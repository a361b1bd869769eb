"""The YAML configuration: its sections as frozen dataclasses (the one place defaults are
written), the bounds of every setting, and how the file's sections map onto them.

Every problem is collected with its path (``links.replica1.port``) and reported at once, so an
admin fixes a file in one round. Unknown keys are errors, with a suggestion when one is close.
How a value is read and what its error says is configread.py.
"""

from __future__ import annotations

import dataclasses
import grp
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .configread import (BAD, DAY, HOUR, MINUTE, UNIT_NAME, ConfigError, Reader,  # noqa: F401
                         join, load_yaml, parse_duration, show, show_duration)

from .moveconfig import MoveSettings, StoreSettings, read_move, read_stores

from .coord.settings import CoordinationSettings
from .coord.settings import read as read_coordination

DEFAULT_PATH = Path("/etc/syncwarden/syncwarden.yaml")

# A link name is a Cyrus channel name (imapd.conf lowercases option keys, so `<link>_sync_host`
# only matches a lowercase name; sync_log_channels is split on spaces) and a systemd instance
# name (no '@', '/', ':' or '\\' that would need escaping). We reject rather than escape: the same
# name must be greppable in imapd.conf, the sync directory, unit names and the journal.
LINK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class CyrusSettings:
    imapd_conf: Path = Path("/etc/imapd.conf")
    # None: found where this host's Cyrus is (cyrus/layout.py); configload.load_checked fills
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
    # None: this host decides alone (no etcd); coord/settings.py
    coordination: CoordinationSettings | None = None
    source: str = str(DEFAULT_PATH)


# The range of every bounded setting (seconds for durations), as syncwarden.yaml(5) documents
# it. Durations have an upper bound too: 99999999999999999999d or .inf is a typo, not a plan,
# and would overflow the arithmetic that schedules with it.
_M, _H, _D = MINUTE, HOUR, DAY
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


TOP_KEYS = ("cyrus", "role", "links", "probe", "live", "drain", "quarantine", "control",
            "check", "hooks", "metrics", "stores", "move", "coordination")


def parse(text: str, source: str = str(DEFAULT_PATH)) -> Config:
    """Parse config text; raise ConfigError listing every problem."""
    data = load_yaml(text, source)
    r = Reader(RANGES)
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
    values["coordination"] = read_coordination(r, top.get("coordination"))
    links = _links(r, top)
    values["check"] = _check(r, top.get("check"), links)
    timeout = values["check"].master.timeout
    values["stores"] = read_stores(r, top.get("stores"), lambda data, path: _endpoint(
        r, data, path, timeout, ImapEndpoint("localhost")))
    values["move"] = read_move(r, top.get("move"))
    if r.problems:
        raise ConfigError(source, r.problems)
    return Config(links=links, source=source, **values)


def _links(r: Reader, top: dict) -> Mapping[str, LinkSettings]:
    raw = top.get("links")
    if raw is None:
        r.problem("links", "required: at least one link (a Cyrus sync channel) to supervise")
        return MappingProxyType({})
    if not isinstance(raw, dict) or not raw:
        r.problem("links", f"expected a mapping of link names to settings, got {show(raw)}")
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
                r.problem(join(path, key), "required")
        values = {"host": "", "port": 0, **r.fill(s, path, readers)}
        links[name] = LinkSettings(name=name, **values)
    return MappingProxyType(links)


def _endpoint(r: Reader, data: Any, path: str, timeout: float, default: ImapEndpoint):
    readers = {"host": r.string, "port": r.integer, "tls": r.choice(*TLS_MODES),
               "ca_file": r.path}
    values = r.fill(r.section(data, path, tuple(readers)), path, readers)
    return dataclasses.replace(default, timeout=timeout, **values)


def _check(r: Reader, data: Any, links: Mapping[str, LinkSettings]) -> CheckSettings:
    c = r.section(data, "check", ("credentials", "master", "replicas", "timeout", "parallel"))
    values = r.fill(c, "check", {"credentials": r.path, "parallel": r.integer})
    timeout = r.fill(c, "check", {"timeout": r.duration}).get("timeout", ImapEndpoint.timeout)
    master = _endpoint(r, c.get("master"), "check.master", timeout, CheckSettings.master)
    replicas = {}
    raw = c.get("replicas")
    if raw is not None and not isinstance(raw, dict):
        r.problem("check.replicas",
                  f"expected a mapping of link names to endpoints, got {show(raw)}")
        raw = None
    for name, body in (raw or {}).items():
        path = f"check.replicas.{name}"
        if name not in links:
            r.problem(path, f"no such link (links: {', '.join(links) or 'none'})")
            continue
        if not isinstance(body, dict) or "host" not in body:
            r.problem(join(path, "host"), "required")
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
