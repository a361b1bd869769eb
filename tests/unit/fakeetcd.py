"""An in-memory etcd that answers the JSON gateway's calls (what coord/etcd.py POSTs).

It keeps revisions and leases like etcd does (a lease's keys vanish when it expires, by the
fake clock), and leaves zero-valued fields out of its answers as the gateway does. ``down``
makes every call fail as an unreachable etcd would; ``clients(n)`` gives several daemons their
own client of the one store.
"""

from __future__ import annotations

import base64
import itertools

from supervisor.coord.etcd import Etcd, EtcdError, LeaseGone
from supervisor.coord.settings import EtcdSettings


def _d(s: str) -> str:
    return base64.b64decode(s).decode()


class FakeEtcdStore:
    def __init__(self, clock):
        self.clock = clock
        self.kv: dict[str, dict] = {}          # key -> {value, create, mod, lease}
        self.leases: dict[int, float] = {}     # id -> monotonic expiry
        self.ttls: dict[int, int] = {}
        self.rev = 1
        self.ids = itertools.count(0x1000)
        self.down = False
        self.calls: list[str] = []
        self.history: list[tuple[str, str]] = []     # ("put" | "delete", key), in order

    def _expire(self) -> None:
        now = self.clock.monotonic()
        for lease, until in list(self.leases.items()):
            if now >= until:
                del self.leases[lease]
                gone = [k for k, v in self.kv.items() if v["lease"] == lease]
                for k in gone:
                    del self.kv[k]
                if gone:
                    self.rev += 1

    def call(self, path: str, body: dict) -> dict:
        if self.down:
            raise EtcdError("http://etcd:2379: [Errno 111] Connection refused")
        self.calls.append(path)
        self._expire()
        return getattr(self, path.replace("/v3/", "").replace("/", "_"))(body)

    # -- the calls ------------------------------------------------------------------------
    def kv_range(self, body: dict) -> dict:
        key = _d(body["key"])
        end = _d(body["range_end"]) if "range_end" in body else None
        keys = sorted(k for k in self.kv if (k == key if end is None else key <= k < end))
        kvs = []
        for k in keys:
            v = self.kv[k]
            kv = {"key": body["key"] if end is None else base64.b64encode(k.encode()).decode(),
                  "create_revision": str(v["create"]), "mod_revision": str(v["mod"]),
                  "version": "1", "value": base64.b64encode(v["value"]).decode()}
            if v["lease"]:
                kv["lease"] = str(v["lease"])
            kvs.append(kv)
        return {"header": {"revision": str(self.rev)}, **({"kvs": kvs, "count": str(len(kvs))}
                                                          if kvs else {})}

    def kv_put(self, body: dict) -> dict:
        self._put(body)
        return {"header": {"revision": str(self.rev)}}

    def _put(self, op: dict) -> None:
        lease = int(op.get("lease", 0))
        if lease and lease not in self.leases:
            raise LeaseGone("HTTP 400: etcdserver: requested lease not found")
        key = _d(op["key"])
        self.history.append(("put", key))
        self.rev += 1
        old = self.kv.get(key)
        self.kv[key] = {"value": base64.b64decode(op.get("value", "")),
                        "create": old["create"] if old else self.rev, "mod": self.rev,
                        "lease": lease}

    def kv_txn(self, body: dict) -> dict:
        ok = all(self._compare(c) for c in body.get("compare", []))
        for op in body.get("success" if ok else "failure", []):
            if "request_put" in op:
                self._put(op["request_put"])
            elif "request_delete_range" in op:
                key = _d(op["request_delete_range"]["key"])
                if self.kv.pop(key, None) is not None:
                    self.history.append(("delete", key))
                    self.rev += 1
        return {"header": {"revision": str(self.rev)}, **({"succeeded": True} if ok else {})}

    def _compare(self, c: dict) -> bool:
        v = self.kv.get(_d(c["key"]))
        assert c.get("result", "EQUAL") == "EQUAL"
        if c["target"] == "CREATE":
            return (v["create"] if v else 0) == int(c["create_revision"])
        if c["target"] == "MOD":
            return (v["mod"] if v else 0) == int(c["mod_revision"])
        raise AssertionError(c)

    def lease_grant(self, body: dict) -> dict:
        lease, ttl = next(self.ids), int(body["TTL"])
        self.leases[lease], self.ttls[lease] = self.clock.monotonic() + ttl, ttl
        return {"header": {}, "ID": str(lease), "TTL": str(ttl)}

    def lease_keepalive(self, body: dict) -> dict:
        lease = int(body["ID"])
        if lease not in self.leases:
            return {"result": {"header": {}, "ID": str(lease)}}
        self.leases[lease] = self.clock.monotonic() + self.ttls[lease]
        return {"result": {"header": {}, "ID": str(lease), "TTL": str(self.ttls[lease])}}

    def lease_revoke(self, body: dict) -> dict:
        lease = int(body["ID"])
        self.leases[lease] = float("-inf")
        self._expire()
        return {"header": {}}

    # -- for tests ------------------------------------------------------------------------
    def client(self) -> Etcd:
        c = Etcd(EtcdSettings(endpoints=("http://etcd:2379",)))
        c.call = self.call
        return c

    def value(self, key: str) -> bytes | None:
        self._expire()
        v = self.kv.get(key)
        return v["value"] if v else None
