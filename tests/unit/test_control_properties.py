"""Property: whatever bytes a caller sends, the control socket answers one JSON line (an error
or a valid answer), never raises, and the handler only ever sees requests in the schema."""

import json
import os
import selectors

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.control import ControlServer
from supervisor.control_schema import SCHEMA

SETTINGS = settings(max_examples=400, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)

# Requests that get close to valid ones: a known command, known field names, odd values.
field_names = st.sampled_from(sorted({k for c in SCHEMA.values() for k in c.fields}
                                     | {"cmd", "extra"}))
near_requests = st.builds(
    lambda cmd, fields: {"cmd": cmd, **fields},
    st.sampled_from(list(SCHEMA) + ["", "Status", "quarantine "]),
    st.dictionaries(field_names, json_values | st.sampled_from(
        ["list", "retry", "drop", "retyr", "replica1", "bob"]), max_size=4))

payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_requests.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n),
)


def check_validated(req):
    """What the handler is promised: a known command, every declared field, right types."""
    spec = SCHEMA[req["cmd"]]
    assert set(req) == {"cmd", *spec.fields}
    for key, f in spec.fields.items():
        value = req[key]
        assert value is None or type(value) is f.kind
        assert not (f.required and value is None)
        assert not (f.choices and value is not None and value not in f.choices)


@given(data=payloads, admin=st.booleans())
@SETTINGS
def test_any_request_gets_one_json_line(tmp_path, data, admin):
    seen = []

    def handler(req, admin):
        check_validated(req)
        seen.append(req)
        return {"cmd": req["cmd"]}

    sel = selectors.DefaultSelector()
    server = ControlServer(tmp_path / "c.sock", os.getgid(), handler, sel)
    try:
        line = server.dispatch(data, admin)
    finally:
        server.close()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    answer = json.loads(line)
    assert set(answer) in ({"ok", "result"}, {"ok", "error"})
    if answer["ok"]:
        assert answer["result"] == {"cmd": seen[0]["cmd"]}
        assert admin or SCHEMA[seen[0]["cmd"]].read_only
    else:
        assert isinstance(answer["error"], str) and answer["error"] and not seen
