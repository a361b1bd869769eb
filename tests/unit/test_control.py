"""The control socket: served from a selector loop in a thread, asked by the client."""

import itertools
import json
import os
import resource
import selectors
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from supervisor import control
from supervisor.control import ControlError, ControlPermissionError, ControlServer, request


def serve(tmp_path, handler=None, **kw):
    """A server and a thread running its loop (select, callbacks, expire) until stopped."""
    sel = selectors.DefaultSelector()
    calls = []

    def default(req, admin):
        calls.append((req, admin))
        if req["cmd"] == "hold" and req.get("link") == "nosuch":
            raise KeyError("no link named 'nosuch'")
        return {"echo": req["cmd"]}

    path = tmp_path / "control.sock"
    server = ControlServer(path, os.getgid(), handler or default, sel, **kw)
    stop = threading.Event()
    died = []

    def loop():
        try:
            while not stop.is_set():
                for key, _ in sel.select(0.05):
                    key.data()
                server.expire()
        except BaseException as exc:     # what would kill the daemon
            died.append(exc)

    t = threading.Thread(target=loop, daemon=True)
    t.start()

    def close():
        stop.set()
        t.join()
        server.close()
        assert not died, died
    return path, calls, close


@pytest.fixture
def served(tmp_path):
    path, calls, close = serve(tmp_path)
    yield path, calls
    close()


def ask_raw(path, data: bytes, timeout=5.0) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        try:
            s.sendall(data)
        except BrokenPipeError:
            pass                 # refused at once: the answer is still there to read
        line = s.makefile("rb").readline()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return json.loads(line)


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
    path, _ = served
    answer = ask_raw(path, b"not json\n")
    assert answer["ok"] is False and answer["error"].startswith("bad request")


def test_no_daemon_is_a_clear_error(tmp_path):
    with pytest.raises(ControlError, match="no daemon socket at"):
        request("status", path=tmp_path / "absent.sock")


# --- hostile requests: one error line each, and the loop keeps serving -----------------------

def test_deep_nesting_is_an_error_not_a_recursion_crash(served):
    path, calls = served
    answer = ask_raw(path, b"[" * 50000 + b"\n")
    assert answer["ok"] is False and "bad request" in answer["error"]
    assert request("status", path=path)["ok"] is True       # still serving


@pytest.mark.parametrize("req,error", [
    ({"cmd": "quarantine", "action": "retyr", "user": "bob"},
     "unknown quarantine action 'retyr' (expected one of list, retry, drop)"),
    ({"cmd": "quarantine", "user": "bob"}, "quarantine needs a action"),
    ({"cmd": "quarantine", "action": "drop"}, "quarantine drop needs a user"),
    ({"cmd": "hold", "link": ["replica1"]}, "hold: link must be a string, got a list"),
    ({"cmd": "quarantine", "action": "drop", "user": {"x": 1}},
     "quarantine: user must be a string, got an object"),
    ({"cmd": "hold"}, "hold needs a link"),
    ({"cmd": "hold", "link": "r", "force": True}, "hold: unknown field 'force'"),
    ({"cmd": "drain", "link": "r", "all": True}, "drain needs exactly one of: link, all"),
    ({"cmd": "drain", "all": "yes"}, "drain: all must be true or false, got 'yes'"),
    ({"cmd": "explode"}, "unknown command 'explode' (known: status, hold, resume, release,"
                         " promote, demote, quarantine, drain, reload, seed, retire, freeze,"
                         " thaw)"),
    ({"cmd": ["status"]}, "bad request: 'cmd' must be a string, got a list"),
    ([1, 2], "bad request: expected a JSON object with a 'cmd', got a list"),
])
def test_requests_outside_the_schema_are_refused_never_defaulted(served, req, error):
    path, calls = served
    assert ask_raw(path, json.dumps(req).encode() + b"\n") == {"ok": False, "error": error}
    assert calls == []                                       # the handler never saw it


def test_the_handler_sees_every_declared_field(served):
    path, calls = served
    request("quarantine", path=path, action="list")
    assert calls[0][0] == {"cmd": "quarantine", "action": "list", "user": None, "link": None}


def test_an_oversized_request_is_refused(served):
    path, _ = served
    answer = ask_raw(path, b"x" * (control.MAX_REQUEST + 10))
    assert answer == {"ok": False, "error": f"bad request: longer than {control.MAX_REQUEST}"
                                            " bytes"}


def test_any_handler_exception_is_an_internal_error_answer(tmp_path):
    def handler(req, admin):
        raise TypeError("'NoneType' object is not subscriptable")

    path, _, close = serve(tmp_path, handler)
    try:
        for _ in range(2):
            answer = request("status", path=path)
            assert answer == {"ok": False, "error": "internal error in status: TypeError:"
                              " 'NoneType' object is not subscriptable"}
    finally:
        close()


def test_a_result_json_cannot_encode_is_an_error_answer(tmp_path):
    path, _, close = serve(tmp_path, lambda req, admin: {"x": object()})
    try:
        assert request("status", path=path) == {"ok": False, "error": "internal error: TypeError"}
    finally:
        close()


# --- clients that hog: caps, deadlines, non-reading ------------------------------------------

def test_client_cap_per_uid_and_roots_own_allowance(tmp_path):
    # Who is calling comes from SO_PEERCRED; here the first callers say uid 1000, the rest root.
    uids = itertools.chain([1000] * (control.MAX_PER_UID + 1), itertools.repeat(0))
    path, _, close = serve(tmp_path, peer=lambda conn: (next(uids), {os.getgid()}))
    idle = []
    try:
        for _ in range(control.MAX_PER_UID):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(path))
            idle.append(s)
        extra = ask_raw(path, b"")                           # the member's ninth connection
        assert extra == {"ok": False, "error": f"busy: uid 1000 has {control.MAX_PER_UID}"
                         " clients connected; try again later"}
        assert request("status", path=path)["ok"] is True    # root is still served
    finally:
        for s in idle:
            s.close()
        close()


def test_idle_clients_are_dropped_at_their_deadline(tmp_path):
    path, _, close = serve(tmp_path, deadline=0.3)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(path))
            s.sendall(b'{"cmd": "sta')                       # and never finishes
            assert s.recv(100) == b""                        # closed by the server
    finally:
        close()


def test_clients_that_never_read_stall_nobody(tmp_path):
    big = "x" * (8 << 20)           # far more than a socket buffer takes
    path, _, close = serve(tmp_path, lambda req, admin: big if req["cmd"] == "hold" else "ok",
                           deadline=1.0)
    stuck = [socket.socket(socket.AF_UNIX) for _ in range(10)]
    try:
        for s in stuck:
            s.connect(str(path))
            s.sendall(b'{"cmd": "hold", "link": "r"}\n')      # ... and never read the answer
        # A blocking write to each would hold the loop for seconds; the answer comes at once.
        assert request("status", path=path, timeout=2) == {"ok": True, "result": "ok"}
        time.sleep(2.0)                                      # past their deadline
        for s in stuck:
            s.settimeout(10)
            got = b""
            while data := s.recv(1 << 20):
                got += data
            assert 0 < len(got) < len(big)                   # dropped at its deadline
    finally:
        for s in stuck:
            s.close()
        close()


def test_running_out_of_descriptors_pauses_accepting_then_recovers(tmp_path):
    sel = selectors.DefaultSelector()
    path = tmp_path / "control.sock"
    server = ControlServer(path, os.getgid(), lambda req, admin: "ok", sel)
    clients = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = []
    try:
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        try:
            while True:                                      # fill the holes below it too
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        for c in clients:
            c.connect(str(path))                             # waits in the backlog
            c.sendall(b'{"cmd": "status"}\n')
        for key, _ in sel.select(0):
            key.data()                                       # accept: EMFILE, not a crash
        assert sel.select(0) == []                           # paused, not spinning
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
    server.expire(time.monotonic() + control.ACCEPT_PAUSE)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(c.fileno() >= 0 for c in clients):
        for key, _ in sel.select(0.05):
            key.data()
        for c in clients:
            c.setblocking(False)
            try:
                line = c.recv(4096)
            except BlockingIOError:
                continue
            assert json.loads(line) == {"ok": True, "result": "ok"}
            c.close()
    assert all(c.fileno() < 0 for c in clients)              # every one answered
    server.close()


# --- who may ask -----------------------------------------------------------------------------

def test_non_members_are_told_the_group(tmp_path):
    path, _, close = serve(tmp_path, peer=lambda conn: (1000, {1000}))
    try:
        answer = request("status", path=path)
        group = control.group_name(os.getgid())
        assert answer == {"ok": False,
                          "error": f"permission denied: you are not root or in group {group}"}
    finally:
        close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play a non-member")
def test_a_socket_the_caller_may_not_open_names_the_group():
    """What the CLI sees as a non-member: EACCES on connect, explained."""
    where = Path(tempfile.mkdtemp())
    where.chmod(0o755)
    path, _, close = serve(where)
    try:
        os.chown(path, 0, 4)
        pid = os.fork()
        if pid == 0:                                         # a non-root caller, not in adm
            code = 1
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                request("status", path=path)
            except ControlPermissionError as exc:
                code = 0 if str(exc) == (f"permission denied on {path}: you are not root or"
                                         f" in group {control.group_name(4)}") else 2
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        close()
        shutil.rmtree(where)


def test_a_full_backlog_is_waited_out_not_taken_for_a_dead_daemon(tmp_path):
    """A flood of connections fills the listen backlog; the client waits for room."""
    path = tmp_path / "c.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    fillers = []
    while True:
        c = socket.socket(socket.AF_UNIX)
        c.setblocking(False)
        try:
            c.connect(str(path))
        except BlockingIOError:
            c.close()
            break
        fillers.append(c)

    def serve_later():
        time.sleep(0.3)
        for _ in fillers:
            srv.accept()[0].close()
        conn, _ = srv.accept()
        conn.recv(100)
        conn.sendall(b'{"ok": true, "result": 1}\n')
        conn.close()

    t = threading.Thread(target=serve_later)
    t.start()
    try:
        assert request("status", path=path, timeout=5) == {"ok": True, "result": 1}
    finally:
        t.join()
        srv.close()
        for c in fillers:
            c.close()
