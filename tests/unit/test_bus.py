"""The systemd edge's bus: pystemd's low-level module alone, and transient-unit properties
typed as pystemd itself types them."""

import subprocess
import sys

from supervisor.systemd.bus import PROPERTY_TYPES, Bus


def test_the_daemon_loads_pystemds_bus_without_its_high_level_proxies():
    code = ("import sys, supervisor.daemon; from supervisor.systemd.bus import dbuslib;"
            " lib = dbuslib(); lib.DBus; print(sorted(m for m in sys.modules"
            " if m.split('.')[0] in ('lxml', 'pystemd')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "lxml" not in out and "pystemd.base" not in out and "pystemd.dbuslib" in out


def test_transient_unit_properties_are_typed_as_pystemd_types_them():
    from pystemd.dbuslib import apply_signature
    from pystemd.systemd1.unit_signatures import KNOWN_UNIT_SIGNATURES, signature_array

    props = {b"Description": b"d", b"Type": b"exec", b"User": b"cyrus", b"Group": b"mail",
             b"DynamicUser": True, b"NoNewPrivileges": True,
             b"ExecStart": [(b"/bin/true", [b"/bin/true", b"x"], False)],
             b"RuntimeMaxUSec": 5_000_000, b"StandardOutputFile": b"/tmp/o",
             b"Environment": [b"A=1"], b"CollectMode": b"inactive-or-failed",
             b"SyslogIdentifier": b"syncwarden-hook"}
    assert set(props) == set(PROPERTY_TYPES)
    assert all(KNOWN_UNIT_SIGNATURES[k] == v for k, v in PROPERTY_TYPES.items())

    calls = []

    class Raw:
        def call_method(self, *args):
            calls.append(args)
            return type("Reply", (), {"body": None})()

    bus = Bus.__new__(Bus)
    bus._lib = type("Lib", (), {"apply_signature": staticmethod(apply_signature)})()
    bus._raw = Raw()
    bus.start_transient("u.service", b"replace", props)
    expected = (apply_signature(b"ss", [b"u.service", b"replace"]) + signature_array(props)
                + [(ord("a"), b"(sa(sv))"), (-1, None)])
    assert calls[0][3] == b"StartTransientUnit" and calls[0][4] == expected
