"""The control socket: served from a selector loop in a thread, asked by the client."""

import json
import os
import selectors
import threading

import pytest

from supervisor.control import ControlError, ControlServer, request


@pytest.fixture
def served(tmp_path):
    sel = selectors.DefaultSelector()
    calls = []

    def handler(req, admin):
        calls.append((req, admin))
        if req["cmd"] == "hold" and req.get("link") == "nosuch":
            raise KeyError("no link named 'nosuch'")
        return {"echo": req["cmd"]}

    path = tmp_path / "control.sock"
    server = ControlServer(path, os.getgid(), handler, sel)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            for key, _ in sel.select(0.05):
                key.data()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield path, calls
    stop.set()
    t.join()
    server.close()


def test_status_round_trip(served):
    path, calls = served
    assert request("status", path=path) == {"ok": True, "result": {"echo": "status"}}
    assert calls[0][1] is (os.geteuid() == 0)
    assert oct(os.stat(path).st_mode & 0o777) == "0o660"


def test_errors_are_answered_not_raised(served):
    path, _ = served
    answer = request("hold", path=path, link="nosuch")
    if os.geteuid() == 0:
        assert answer == {"ok": False, "error": "no link named 'nosuch'"}
    else:
        assert "needs root" in answer["error"]


def test_garbage_request(served):
    import socket

    path, _ = served
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(b"not json\n")
        answer = json.loads(s.makefile().readline())
    assert answer["ok"] is False and answer["error"].startswith("bad request")


def test_no_daemon_is_a_clear_error(tmp_path):
    with pytest.raises(ControlError, match="no daemon socket at"):
        request("status", path=tmp_path / "absent.sock")
