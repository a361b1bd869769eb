"""Reading a YAML config strictly: the loader that refuses duplicate keys, durations, the
value readers, and every problem collected with its path (``links.replica1.port``).

config.py (and the sections kept beside it) say *what* a setting is; this module says how a
value is read and what the one-line error for a wrong one says. The ranges of bounded
settings are config.py's, handed to the reader.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@\\-]{1,240}\.service$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


class ConfigError(Exception):
    """One or more problems in a config file; ``problems`` holds "path: message" lines."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        n = len(problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''}")

    def report(self) -> str:
        return "\n".join([str(self)] + [f"  {p}" for p in self.problems])


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
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


BAD = object()   # a value that was reported: the dataclass default stands in for it


class Reader:
    """Walks the parsed YAML, converting values and collecting problems with their paths.
    Each value reader takes (path, value) and returns the converted value or BAD."""

    def __init__(self, ranges: Mapping[str, tuple[float, float]]) -> None:
        self.ranges = ranges     # the bounds of every bounded setting, by path
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        if not path.isprintable():   # a key with a line break must not break the report
            path = path.encode("unicode_escape").decode("ascii")
        self.problems.append(f"{path}: {message}")

    def section(self, data: Any, path: str, keys: tuple[str, ...]) -> dict:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.problem(path, f"expected a mapping, got {show(data)}")
            return {}
        for key in data:
            if key not in keys:
                self.unknown(path, key, keys)
        return data

    def unknown(self, path: str, key: Any, known: tuple[str, ...]) -> None:
        hint = difflib.get_close_matches(str(key), known, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(known)})"
        self.problem(join(path, key), f"unknown key{suggestion}")

    def fill(self, data: dict, path: str, readers: Mapping[str, Any]) -> dict:
        """{key: converted value} for the keys given and valid; missing keys are left to the
        dataclass defaults (the one place defaults are written)."""
        values = {}
        for key, read in readers.items():
            if key in data:
                value = read(join(path, key), data[key])
                if value is not BAD:
                    values[key] = value
        return values

    def duration(self, path: str, value: Any):
        seconds = parse_duration(value)
        lo, hi = self.ranges[_range_key(path)]
        if seconds is None:
            self.problem(path, f"expected a duration such as 2s, 10m or 1h (from"
                         f" {show_duration(lo)} to {show_duration(hi)}), got {show(value)}")
            return BAD
        if not lo <= seconds <= hi:
            self.problem(path, f"expected a duration from {show_duration(lo)} to"
                         f" {show_duration(hi)}, got {show(value)}")
            return BAD
        return seconds

    def integer(self, path: str, value: Any):
        lo, hi = self.ranges[_range_key(path)]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.problem(path, f"expected an integer {lo}-{hi}, got {show(value)}")
            return BAD
        return value

    def boolean(self, path: str, value: Any):
        if not isinstance(value, bool):
            self.problem(path, f"expected true or false, got {show(value)}")
            return BAD
        return value

    def string(self, path: str, value: Any, choices: tuple[str, ...] = ()):
        if not isinstance(value, str) or not value.strip():
            self.problem(path, f"expected a non-empty string, got {show(value)}")
            return BAD
        if choices and value not in choices:
            self.problem(path, f"expected one of {', '.join(choices)}, got {show(value)}")
            return BAD
        return value

    def path(self, path: str, value: Any):
        value = self.string(path, value)
        if value is BAD:
            return BAD
        if not value.startswith("/") or "\0" in value:
            self.problem(path, f"expected an absolute path, got {show(value)}")
            return BAD
        return Path(value)

    def listen(self, path: str, value: Any):
        """PORT (on 127.0.0.1: metrics stay on this host unless an address is given), or
        ADDR:PORT with an IPv4 address, a [bracketed] IPv6 address or a host name."""
        found = _listen(value)
        if found is None:
            self.problem(path, "expected PORT or ADDR:PORT (9747 for 127.0.0.1:9747,"
                         f" 0.0.0.0:9747, [::1]:9747), got {show(value)}")
            return BAD
        return found

    def textfile(self, path: str, value: Any):
        value = self.path(path, value)
        if value is not BAD and (value.suffix != ".prom" or value.name.startswith(".")):
            self.problem(path, "expected a file name ending in .prom (node_exporter's textfile"
                         f" collector reads no other), got {show(str(value))}")
            return BAD
        return value

    def unit(self, path: str, value: Any):
        value = self.string(path, value)
        if value is not BAD and not UNIT_NAME.match(value):
            self.problem(path, f"expected a systemd service name such as cyrus-imapd.service,"
                         f" got {show(value)}")
            return BAD
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


def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def show(value: Any) -> str:
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



def load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}not valid YAML: {what}"]) from None
    except RecursionError:
        raise ConfigError(source, ["not valid YAML: nested too deeply"]) from None
