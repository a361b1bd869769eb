"""A scripted IMAP server on a real loopback socket, to drive imapclient through imaplib.

It greets, answers CAPABILITY, accepts any AUTHENTICATE PLAIN, and answers each other command
from ``answers`` (command name -> bytes, ``{tag}`` replaced by the command's tag) or with a
plain tagged OK. An answer may be a callable taking (socket, tag) for servers that stall or
drip; a callable taking (socket, tag, line) gets the command line too. After ``close_after``
(a command name) is answered, the connection is closed. Each connection is served in a thread
of its own.
"""

from __future__ import annotations

import inspect
import socket
import threading

GREETING = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake ready\r\n"
CAPABILITY = b"* CAPABILITY IMAP4rev1 AUTH=PLAIN NAMESPACE UIDPLUS\r\n{tag} OK done\r\n"
NAMESPACE = b'* NAMESPACE (("INBOX." ".")) NIL NIL\r\n{tag} OK done\r\n'
EXAMINE = b"* 1 EXISTS\r\n* OK [UIDVALIDITY 5] ok\r\n{tag} OK [READ-ONLY] done\r\n"


class FakeImapServer:
    def __init__(self, answers: dict, close_after: str | None = None):
        self.answers = {"CAPABILITY": CAPABILITY, "NAMESPACE": NAMESPACE, "EXAMINE": EXAMINE,
                        **answers}
        self.close_after = close_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def endpoint(self, timeout: float = 5.0):
        from supervisor.config import ImapEndpoint
        return ImapEndpoint("127.0.0.1", self.port, "none", timeout=timeout)

    def close(self) -> None:
        self.stop.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)    # wakes the thread blocked in accept
        except OSError:
            pass
        self.listener.close()
        self.thread.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn) -> None:
        with conn:
            try:
                self._session(conn, conn.makefile("rb"))
            except OSError:
                pass

    def _session(self, conn, rfile) -> None:
        conn.sendall(GREETING)
        while not self.stop.is_set():
            line = rfile.readline()
            if not line:
                return
            tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
            words = rest.split()
            name = words[0].decode().upper() if words else ""
            if name == "UID" and len(words) > 1:
                name = words[1].decode().upper()
            if name == "AUTHENTICATE":
                conn.sendall(b"+ \r\n")
                rfile.readline()
                conn.sendall(tag + b" OK logged in\r\n")
                continue
            if name == "LOGOUT":
                conn.sendall(b"* BYE\r\n" + tag + b" OK bye\r\n")
                return
            answer = self.answers.get(name, b"{tag} OK done\r\n")
            if callable(answer) and len(inspect.signature(answer).parameters) == 3:
                answer(conn, tag, line)
            elif callable(answer):
                answer(conn, tag)
            else:
                conn.sendall(answer.replace(b"{tag}", tag))
            if name == self.close_after:
                return
