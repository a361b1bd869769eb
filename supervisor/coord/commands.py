"""``syncwarden fleet status`` and ``syncwarden switchover``: commands that talk to etcd.

Neither asks a daemon: both read (and switchover writes one request into) etcd, so they work
from any host with the coordination settings. What the daemons then do is switchover.py.
"""

from __future__ import annotations

import json
import time
import uuid

from . import etcd as E
from . import fleet
from .etcd import Etcd, EtcdError
from .keys import Keys, decode, encode

class Refused(Exception):
    """The switchover cannot be asked for as given; the message says why."""


def _settings(cfg):
    if cfg.coordination is None:
        raise Refused(f"{cfg.source}: no coordination: section (etcd), so there is no fleet")
    return cfg.coordination


def fleet_status(cfg, as_json: bool, out) -> int:
    c = _settings(cfg)
    doc = fleet.read(Etcd(c.etcd), c.etcd.prefix, time.time())
    print(json.dumps(doc, indent=2) if as_json else fleet.render(doc), file=out)
    return 0


def write_request(etcd, keys: Keys, frm: str, to: str, stop_cyrus: bool, rid: str) -> dict:
    """Write a switchover request, unless one is in progress; the request written."""
    old = etcd.get(keys.switchover)
    d = decode(old.value) if old is not None else {}
    # in progress: asked of the key's holder. One asked of a host that no longer holds it
    # (the key expired meanwhile, or went by hand) is dead, and replaced.
    if d.get("phase") == "requested" and d.get("from") == frm:
        raise Refused(f"a switchover from {d.get('from')} to {d.get('to')} is in progress"
                      f" ({d.get('phase')})")
    doc = {"id": rid, "from": frm, "to": to, "stop_cyrus": stop_cyrus, "phase": "requested",
           "at": time.time()}
    guard = E.absent(keys.switchover) if old is None else E.unchanged(keys.switchover,
                                                                      old.mod_revision)
    if not etcd.txn([guard], [E.put(keys.switchover, encode(doc))]):
        raise Refused("another switchover was asked for at the same moment")
    return doc


def _retarget(etcd, keys: Keys, hand, to: str) -> None:
    """A released key whose target never took it: name another (``--to``)."""
    doc = {**decode(hand.value), "to": to}
    ops = [E.put(keys.handover, encode(doc))]
    req = etcd.get(keys.switchover)
    if req is not None:
        ops.append(E.put(keys.switchover, encode({**decode(req.value), "to": to})))
    if not etcd.txn([E.unchanged(keys.handover, hand.mod_revision)], ops):
        raise Refused("the handover changed meanwhile: run switchover again")


def switchover(cfg, to: str | None, stop_cyrus: bool, out, timeout: float | None = None,
               sleep=time.sleep, clock=time.monotonic) -> int:
    c = _settings(cfg)
    etcd, keys = Etcd(c.etcd), Keys(c.etcd.prefix, c.pair)
    kvs = {kv.key: kv for kv in etcd.get_prefix(keys.pair_dir)}
    holder = decode(kvs[keys.master].value).get("host") if keys.master in kvs else None
    members = sorted(k[len(keys.member("")):] for k in kvs if k.startswith(keys.member("")))
    hand = kvs.get(keys.handover)
    if holder is None and hand is not None:
        if to is None:
            raise Refused(f"pair {c.pair}: the master key was released to"
                          f" {decode(hand.value).get('to')}, which has not taken it: wait,"
                          " or name another host with --to")
        _retarget(etcd, keys, hand, to)
        print(f"switchover: the released key of pair {c.pair} goes to {to}", file=out)
    else:
        if holder is None:
            raise Refused(f"pair {c.pair}: no host holds the master key (syncwarden fleet"
                          " status): nothing to switch over from; promote a host instead")
        others = [m for m in members if m != holder]
        if to is None:
            if len(others) != 1:
                raise Refused(f"pair {c.pair}: name the new master with --to (registered:"
                              f" {', '.join(others) or 'no other host'})")
            to = others[0]
        if to == holder:
            raise Refused(f"{to} already holds the master key of pair {c.pair}")
        if to not in members:
            raise Refused(f"no daemon of pair {c.pair} is registered as {to} (registered:"
                          f" {', '.join(members)})")
        write_request(etcd, keys, holder, to, stop_cyrus, uuid.uuid4().hex)
        print(f"switchover: asked {holder} to hand pair {c.pair} over to {to}", file=out,
              flush=True)
    limit = clock() + (timeout if timeout is not None else cfg.drain.timeout + 4 * c.ttl)
    said = None
    while clock() < limit:
        try:
            req = etcd.get(keys.switchover)
            master = etcd.get(keys.master)
        except EtcdError as exc:
            req, master, phase = None, None, f"etcd unreachable: {exc}"
        doc = decode(req.value) if req else {}
        phase = doc.get("phase")
        if phase != said:
            print(f"switchover: {phase}", file=out, flush=True)
            said = phase
        if phase == "refused":
            print(f"switchover refused: {doc.get('detail')}", file=out)
            return 1
        if phase == "done" and master and decode(master.value).get("host") == to:
            print(f"switchover: {to} is the master of pair {c.pair}", file=out)
            return 0
        sleep(0.2)
    print(f"switchover: not finished in time (last phase: {said}); it goes on: see"
          " syncwarden fleet status", file=out)
    return 1
