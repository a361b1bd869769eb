"""A small etcd v3 client over etcd's JSON gateway (POST /v3/kv/range, /v3/kv/txn, ...).

Why not python3-etcd3: it pulls in grpc (tens of MB of resident memory in an otherwise idle
daemon whose target is 40 MB), and it is not in Debian 13. etcd 3.4 and later serve the same v3
API as JSON over HTTP; the few calls syncwarden needs (range, txn, lease grant, keepalive and
revoke) are one POST each. Keys and values are base64 on the wire, int64s are JSON strings, and
fields with their zero value are left out of answers.

Why not http.client: it imports ssl, which alone costs the daemon ~4 MB of RSS; a POST of
HTTP/1.0 (one request per connection, so the answer ends where the connection does, never
chunked) is a dozen lines over a socket, and ssl is loaded only for https endpoints.

Only this module knows the wire format. Callers see ``KeyValue`` and ``EtcdError``.
"""

from __future__ import annotations

import base64
import json
import socket
import urllib.parse
from dataclasses import dataclass

from .settings import EtcdSettings


class EtcdError(Exception):
    """No endpoint answered, or one answered with an error."""


class LeaseGone(EtcdError):
    """etcd says the lease named in a request does not exist (any more)."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def prefix_end(prefix: str) -> str:
    """The range end that makes [prefix, end) every key starting with prefix."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


# Compares and operations for txn(): plain dicts in the gateway's JSON, built here only.
def absent(key: str) -> dict:
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def unchanged(key: str, mod_revision: int) -> dict:
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL",
            "mod_revision": str(mod_revision)}


def put(key: str, value: bytes | str, lease: int = 0) -> dict:
    op = {"key": _b64(key), "value": _b64(value)}
    if lease:
        op["lease"] = str(lease)
    return {"request_put": op}


def delete(key: str) -> dict:
    return {"request_delete_range": {"key": _b64(key)}}


MAX_ANSWER = 16 << 20     # a fleet's keys are kilobytes; anything near this is not etcd


def _parse(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of an HTTP/1.0 answer read to its end."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].split()
    if not sep or len(line) < 2 or not line[0].startswith(b"HTTP/") or not line[1].isdigit():
        raise ValueError(f"not an HTTP answer: {raw[:80]!r}")
    return int(line[1]), body


class Etcd:
    def __init__(self, settings: EtcdSettings):
        self.settings = settings
        self._context = None
        if any(u.startswith("https:") for u in settings.endpoints):
            import ssl      # only then: see above

            ctx = ssl.create_default_context(cafile=str(settings.ca) if settings.ca else None)
            if settings.cert:
                ctx.load_cert_chain(str(settings.cert), str(settings.key))
            self._context = ctx
        self._first = 0     # the endpoint that answered last is asked first

    def call(self, path: str, body: dict) -> dict:
        """POST to the first endpoint that answers; EtcdError when none does."""
        errors = []
        n = len(self.settings.endpoints)
        for i in range(n):
            idx = (self._first + i) % n
            url = self.settings.endpoints[idx]
            try:
                answer = self._post(url, path, body)
            except LeaseGone:
                raise                     # an answer, not a failed endpoint
            except (OSError, ValueError) as exc:     # ssl.SSLError is an OSError
                errors.append(f"{url}: {exc}")
                continue
            self._first = idx
            return answer
        raise EtcdError("; ".join(errors) or "no endpoints")

    def _post(self, url: str, path: str, body: dict) -> dict:
        u = urllib.parse.urlsplit(url)
        data = json.dumps(body).encode()
        request = (f"POST {path} HTTP/1.0\r\nHost: {u.netloc}\r\n"
                   "Content-Type: application/json\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n").encode() + data
        conn = socket.create_connection((u.hostname, u.port), timeout=self.settings.timeout)
        parts: list[bytes] = []
        try:
            if u.scheme == "https":
                conn = self._context.wrap_socket(conn, server_hostname=u.hostname)
            conn.sendall(request)
            while True:
                got = conn.recv(65536)
                if not got:
                    break
                parts.append(got)
                if sum(map(len, parts)) > MAX_ANSWER:
                    raise ValueError(f"answer larger than {MAX_ANSWER} bytes")
        finally:
            conn.close()
        status, answer = _parse(b"".join(parts))
        doc = json.loads(answer or b"{}")
        if status != 200 or "error" in doc and "result" not in doc:
            if "lease not found" in str(doc.get("message") or doc.get("error")):
                raise LeaseGone(f"{url}{path}: {doc.get('message') or doc.get('error')}")
            why = doc.get("message") or doc.get("error") or repr(answer[:200])
            raise EtcdError(f"{url}{path}: HTTP {status}: {why}")
        return doc

    # -- keys ------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        kvs = self._range({"key": _b64(key)})
        return kvs[0] if kvs else None

    def get_prefix(self, prefix: str) -> list[KeyValue]:
        return self._range({"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})

    def _range(self, body: dict) -> list[KeyValue]:
        doc = self.call("/v3/kv/range", body)
        return [KeyValue(base64.b64decode(kv["key"]).decode(),
                         base64.b64decode(kv.get("value", "")),
                         int(kv.get("create_revision", 0)), int(kv.get("mod_revision", 0)),
                         int(kv.get("lease", 0)))
                for kv in doc.get("kvs", [])]

    def put(self, key: str, value: bytes | str, lease: int = 0) -> None:
        self.call("/v3/kv/put", put(key, value, lease)["request_put"])

    def txn(self, compare: list[dict], success: list[dict], failure: list[dict] = ()) -> bool:
        """All of ``compare`` true: ``success`` is applied, else ``failure``; whether it was."""
        doc = self.call("/v3/kv/txn", {"compare": compare, "success": success,
                                       "failure": list(failure)})
        return bool(doc.get("succeeded", False))

    # -- leases ----------------------------------------------------------------------------
    def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, ttl granted)."""
        doc = self.call("/v3/lease/grant", {"TTL": str(ttl)})
        if "ID" not in doc:
            raise EtcdError(f"lease grant answered without an ID: {doc}")
        return int(doc["ID"]), int(doc.get("TTL", ttl))

    def keepalive(self, lease: int) -> int:
        """Renews a lease; its TTL from now, 0 when it has expired (or never was)."""
        doc = self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(doc.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self.call("/v3/lease/revoke", {"ID": str(lease)})
