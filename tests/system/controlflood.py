"""A hostile member of control.group, run inside a test container by test_control_socket.py.

    python3 controlflood.py SOCKET OUT STOPFILE

1. Garbage, one payload per connection, each answer read: what the daemon said is kept.
2. Then, until STOPFILE exists, rounds of 1,000 connections that never read a byte: a quarter
   send nothing, the others a status request, a deeply nested array or random bytes. Each
   round closes the previous one's connections and opens 1,000 more.

OUT is rewritten as JSON after the first round (``ready``) and at the end (``done``).
"""

import json
import os
import random
import resource
import socket
import sys
import time

PAYLOADS = [
    b"[" * 50000 + b"\n",
    b'{"cmd": "quarantine", "action": "retyr", "user": "bob"}\n',
    b'{"cmd": "hold", "link": ["replica1"]}\n',
    b'{"cmd": "status", "extra": {"a": [1, 2, 3]}}\n',
    b"\xff\xfe\x00garbage\n",
    b"x" * 100_000,                       # no line end, over the size limit
    b'{"cmd": "drain", "all": true}\n',    # needs root
    b"",                                   # connect and say nothing, then close our side
]
ROUND = 1000


def ask(path: str, payload: bytes) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass                           # answered and closed before we finished sending
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data.decode("utf-8", "replace")


def main(path: str, out: str, stop: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    summary = {"answers": [ask(path, p) for p in PAYLOADS], "rounds": 0, "connected": 0,
               "failed": 0, "state": "ready"}
    held: list[socket.socket] = []
    rng = random.Random(1)
    while not os.path.exists(stop):
        for s in held:
            s.close()
        held = []
        for i in range(ROUND):
            s = socket.socket(socket.AF_UNIX)    # blocking: waits while the backlog is full
            held.append(s)                 # never read
            try:
                s.connect(path)
            except OSError:
                summary["failed"] += 1
                continue
            summary["connected"] += 1
            try:
                if i % 4 == 1:
                    s.send(b'{"cmd": "status"}\n')
                elif i % 4 == 2:
                    s.send(b"[" * 50000)
                elif i % 4 == 3:
                    s.send(rng.randbytes(200))
            except OSError:
                pass                       # refused at once (busy): the daemon hung up
        summary["rounds"] += 1
        if summary["rounds"] == 1:
            write(out, summary)
        time.sleep(0.5)
    summary["state"] = "done"
    write(out, summary)


def write(out: str, summary: dict) -> None:
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f)
    os.replace(tmp, out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
