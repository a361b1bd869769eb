"""A small etcd v3 client over etcd's JSON gateway (POST /v3/kv/range, /v3/kv/txn, ...).

Why not python3-etcd3: it pulls in grpc (tens of MB of resident memory in an otherwise idle
daemon whose target is 40 MB), and it is not in Debian 13. etcd 3.4 and later serve the same v3
API as JSON over HTTP; the few calls syncwarden needs (range, txn, lease grant, keepalive and
revoke) are one POST each with the standard library. Keys and values are base64 on the wire,
int64s are JSON strings, and fields with their zero value are left out of answers.

Only this module knows the wire format. Callers see ``KeyValue`` and ``EtcdError``.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
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


class Etcd:
    def __init__(self, settings: EtcdSettings):
        self.settings = settings
        self._context = None
        if any(u.startswith("https:") for u in settings.endpoints):
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
            except (OSError, http.client.HTTPException, ValueError) as exc:
                errors.append(f"{url}: {exc}")
                continue
            self._first = idx
            return answer
        raise EtcdError("; ".join(errors) or "no endpoints")

    def _post(self, url: str, path: str, body: dict) -> dict:
        u = urllib.parse.urlsplit(url)
        timeout = self.settings.timeout
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout,
                                               context=self._context)
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        doc = json.loads(data or b"{}")
        if resp.status != 200 or "error" in doc and "result" not in doc:
            if "lease not found" in str(doc.get("message") or doc.get("error")):
                raise LeaseGone(f"{url}{path}: {doc.get('message') or doc.get('error')}")
            raise EtcdError(f"{url}{path}: HTTP {resp.status}: "
                            f"{doc.get('message') or doc.get('error') or data[:200]!r}")
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
