"""The replica probe against small fake socket servers on loopback."""

import socket
import threading
import time

import pytest

from supervisor.cyrus.probe import Prober, probe

BANNER = (b"* SASL PLAIN\r\n* COMPRESS DEFLATE\r\n* SIEVE-MAILBOX\r\n"
          b"* OK lab-replica Cyrus sync server 3.6.1-Debian-3.6.1-4+deb12u5\r\n")


class Server:
    """Accepts connections and runs ``behaviour(conn)`` for each, in a thread."""

    def __init__(self, behaviour):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.behaviour = behaviour
        self.received = []
        self.conns = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self.behaviour, args=(self, conn), daemon=True).start()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def sync_server(srv, conn):
    conn.sendall(BANNER)
    f = conn.makefile("rb")
    for line in f:
        srv.received.append(line)
        if line.startswith(b"NOOP"):
            conn.sendall(b"OK Noop completed\r\n")
        elif line.startswith(b"EXIT"):
            conn.sendall(b"OK Finished\r\n")
            break


def hang(srv, conn):
    time.sleep(10)


@pytest.fixture
def server(request):
    srv = Server(request.param)
    yield srv
    srv.close()


@pytest.mark.parametrize("server", [sync_server], indirect=True)
def test_real_looking_sync_server_is_reachable(server):
    found = probe("127.0.0.1", server.port, 2.0)
    assert found.reachable and not found.refused
    assert found.detail.startswith("lab-replica Cyrus sync server 3.6.1")
    time.sleep(0.05)
    assert server.received[0] == b"NOOP\r\n"


def test_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    found = probe("127.0.0.1", port, 1.0)
    assert not found.reachable and found.refused
    assert "Connection refused" in found.detail and str(port) in found.detail


@pytest.mark.parametrize("server", [hang], indirect=True)
def test_silent_server_times_out_within_deadline(server):
    start = time.monotonic()
    found = probe("127.0.0.1", server.port, 0.3)
    assert not found.reachable and "did not answer within 0.3s" in found.detail
    assert not found.refused        # the port accepted: knocking would not help
    assert time.monotonic() - start < 1.0


def imap_server(srv, conn):
    conn.sendall(b"* OK [CAPABILITY IMAP4rev1] lab-master Cyrus IMAP 3.6.1 server ready\r\n")


def http_server(srv, conn):
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def refuses_noop(srv, conn):
    conn.sendall(BANNER)
    conn.recv(100)
    conn.sendall(b"NO Permission denied\r\n")


@pytest.mark.parametrize("server,expect", [
    (imap_server, "is not a Cyrus sync server: banner"),
    (http_server, "is not a Cyrus sync server: it said 'HTTP/1.1 400 Bad Request'"),
    (refuses_noop, "sync server refused NOOP: 'NO Permission denied'"),
], indirect=["server"])
def test_other_protocols_are_named(server, expect):
    found = probe("127.0.0.1", server.port, 1.0)
    assert not found.reachable and not found.refused
    assert expect in found.detail and f"127.0.0.1:{server.port}" in found.detail


@pytest.mark.parametrize("server", [hang], indirect=True)
def test_hanging_replica_does_not_delay_other_links(server):
    good = Server(sync_server)
    woken = []
    prober = Prober(lambda: woken.append(1))
    try:
        prober.request("stuck", "127.0.0.1", server.port, 2.0)
        prober.request("fine", "127.0.0.1", good.port, 2.0)
        assert not prober.request("stuck", "127.0.0.1", server.port, 2.0)  # one in flight
        deadline = time.monotonic() + 1.5
        results = {}
        while "fine" not in results and time.monotonic() < deadline:
            results.update(prober.results())
            time.sleep(0.01)
        assert results["fine"].reachable and "stuck" not in results
        assert prober.in_flight("stuck") and woken
    finally:
        prober.close()
        good.close()


def closed_port():
    """A bound socket that does not listen yet: connects to it are refused until listen()."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def wait_results(prober, want, timeout=5.0):
    results = {}
    deadline = time.monotonic() + timeout
    while not want <= set(results) and time.monotonic() < deadline:
        results.update(prober.results())
        time.sleep(0.01)
    return results


def test_watched_port_is_probed_over_the_knock_that_connected():
    sock, port = closed_port()
    woken = []
    prober = Prober(lambda: woken.append(1))
    try:
        prober.watch("r1", "127.0.0.1", port, 0.02, 2.0)
        prober.watch("r2", "127.0.0.1", port, 0.05, 2.0)     # the same replica: one knock
        time.sleep(0.2)
        assert woken == [] and prober.results() == {}        # refused knocks wake nobody
        assert prober.watching() == {"r1": 0.02, "r2": 0.05}
        srv = Server(sync_server)
        srv.sock.close()
        srv.sock, srv.port = sock, port                      # it listens on the watched port
        sock.listen(8)
        threading.Thread(target=srv._serve, daemon=True).start()
        results = wait_results(prober, {"r1", "r2"})
        assert results["r1"].reachable and results["r2"].reachable and woken
        assert prober.watching() == {}                       # the port answered: watch over
        # r1's probe used the knock's connection; r2 (no socket left) made its own
        assert len(srv.conns) == 2 and srv.received.count(b"NOOP\r\n") == 2
    finally:
        prober.close()
        sock.close()


def test_unwatched_port_is_not_knocked_on():
    sock, port = closed_port()
    prober = Prober(lambda: None)
    try:
        prober.watch("r1", "127.0.0.1", port, 0.02, 2.0)
        time.sleep(0.1)
        prober.unwatch("r1")
        time.sleep(0.1)
        sock.listen(8)
        time.sleep(0.2)
        assert prober.results() == {} and prober.watching() == {}
        sock.settimeout(0)
        with pytest.raises(BlockingIOError):
            sock.accept()                  # nobody connected once it listened
    finally:
        prober.close()
        sock.close()


@pytest.mark.parametrize("server", [sync_server], indirect=True)
def test_only_news_wakes_the_loop(server):
    woken = []
    prober = Prober(lambda: woken.append(1))
    sock, closed = closed_port()
    try:
        for port, wakes in ((server.port, 1), (server.port, 1), (closed, 2), (closed, 3),
                            (server.port, 4)):
            assert prober.request("r", "127.0.0.1", port, 2.0)
            wait_results(prober, {"r"})
            time.sleep(0.05)             # the callback runs after the result is there
            assert len(woken) == wakes   # a success after a success waits for the tick
    finally:
        prober.close()
        sock.close()
