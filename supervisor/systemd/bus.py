"""systemd's D-Bus API as the daemon uses it: Manager methods, single unit properties, and
transient units, over pystemd's low-level bus (``pystemd.dbuslib``).

Only the low-level module is loaded. pystemd's package ``__init__`` imports its high-level
proxies eagerly (lxml, inspect, ast: ~6 MB that would stay in the daemon for its lifetime),
and the proxies introspect every object before the first call (the Manager's XML and a class
of ~400 members). The daemon calls a handful of methods whose signatures systemd has kept
since version 236, so it names them itself; the property types are systemd's
(org.freedesktop.systemd1(5)).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

DEST = b"org.freedesktop.systemd1"
PATH = b"/org/freedesktop/systemd1"
MANAGER = b"org.freedesktop.systemd1.Manager"

# The D-Bus types of the transient-unit properties the daemon sets.
PROPERTY_TYPES = {
    b"Description": b"s", b"Type": b"s", b"User": b"s", b"Group": b"s",
    b"DynamicUser": b"b", b"NoNewPrivileges": b"b", b"ExecStart": b"a(sasb)",
    b"RuntimeMaxUSec": b"t", b"StandardOutputFile": b"s", b"Environment": b"as",
    b"CollectMode": b"s", b"SyslogIdentifier": b"s",
}


def dbuslib():
    """pystemd.dbuslib, without running pystemd/__init__.py when pystemd is not loaded yet.
    (Anything that imports pystemd's high-level modules later still gets them: they are
    submodules of the same package path.)"""
    if "pystemd" not in sys.modules:
        spec = importlib.util.find_spec("pystemd")
        if spec is not None and spec.submodule_search_locations:
            package = types.ModuleType("pystemd")
            package.__path__ = list(spec.submodule_search_locations)
            package.__spec__, package.__file__ = spec, spec.origin
            sys.modules["pystemd"] = package
            try:
                return importlib.import_module("pystemd.dbuslib")
            except ImportError:      # laid out otherwise: the package as it wants
                del sys.modules["pystemd"]
    return importlib.import_module("pystemd.dbuslib")


class Bus:
    """One long-lived system bus connection."""

    def __init__(self):
        self._lib = lib = dbuslib()
        self._raw = lib.DBus()
        self._raw.open()

    def call(self, method: bytes, signature: bytes, *args, tail=()):
        """A Manager method; ``tail``: arguments already typed (arrays of structs)."""
        typed = self._lib.apply_signature(signature, list(args)) + list(tail)
        return self._raw.call_method(DEST, PATH, MANAGER, method, typed).body

    def unit_property(self, unit: str, interface: bytes, name: bytes, signature: bytes):
        path = self._lib.path_encode(PATH + b"/unit", unit.encode())
        return self._raw.get_property(DEST, path, b"org.freedesktop.systemd1." + interface,
                                      name, signature)

    def start_transient(self, name: str, mode: bytes, props: dict[bytes, object]) -> None:
        typed = [(ord("a"), b"(sv)")]              # properties a(sv) ...
        for key, value in props.items():
            sig = PROPERTY_TYPES[key]
            typed += [(ord("r"), b"sv"), (ord("s"), key), (ord("v"), sig)]
            typed += self._lib.apply_signature(sig, [value]) + [(-1, None), (-1, None)]
        typed += [(-1, None), (ord("a"), b"(sa(sv))"), (-1, None)]   # ... no auxiliary units
        self.call(b"StartTransientUnit", b"ss", name.encode(), mode, tail=typed)

    def close(self) -> None:
        self._raw.close()
