"""Every user and shared mailbox of an instance, in the forms ``sync_client -u`` and ``-m`` take.

The list comes from ``ctl_mboxlist -d`` (imap/ctl_mboxlist.c ``do_dump``, 3.6.1 and 3.10.0):
one JSON object keyed by internal mailbox name, each entry with an ``mbtype`` of a type letter
and flag letters (``mboxlist_mbtype_to_string``: d deleted, i intermediate, r remote,
z reserved, m moving). It runs as the cyrus user (Cyrus's tools refuse root without
CAP_SETUID, which the daemon does not have), so the daemon runs it as a one-shot unit and reads
its output file.

What a full sync needs (imap/sync_client.c, ``cb_allmbox`` for ``-A``):
- users: ``sync_do_user`` per userid covers every mailbox of the user, its DELETED.* copies,
  seen state, subscriptions and sieve scripts;
- shared (non-user) mailboxes, DELETED ones included, each on its own: ``-m`` takes admin
  external names (``mboxname_from_external`` with the standard namespace, isadmin): the
  internal name with the hierarchy separator of imapd.conf's ``unixhierarchysep`` (``^`` in
  internal names stands for a dot) and ``@domain`` for a virtual domain's ``domain!name``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .failures import mailbox_user
from .imapdconf import ImapdConf

_SKIP_FLAGS = set("dirzm")      # tombstones, intermediates, remote, reserved, moving


class MailboxListError(ValueError):
    pass


@dataclass(frozen=True)
class Inventory:
    users: list[str] = field(default_factory=list)       # userids, sorted
    shared: list[str] = field(default_factory=list)      # external names for -m, sorted


def ctl_mboxlist(sync_client: str | os.PathLike) -> str:
    """Cyrus's tools live beside sync_client (Debian: /usr/lib/cyrus/bin)."""
    return os.path.join(os.path.dirname(os.fspath(sync_client)), "ctl_mboxlist")


def list_argv(sync_client, imapd_conf) -> list[str]:
    return [ctl_mboxlist(sync_client), "-C", str(imapd_conf), "-d"]


def external(name: str, unixhierarchysep: bool) -> str:
    """An internal shared mailbox name as ``sync_client -m`` reads it."""
    domain, sep, rest = name.rpartition("!")
    if unixhierarchysep:
        rest = "/".join(part.replace("^", ".") for part in rest.split("."))
    return f"{rest}@{domain}" if sep and domain else rest


def parse(data: bytes, imapd: ImapdConf) -> Inventory:
    """The dump's users and shared mailboxes; MailboxListError if it is not a whole dump."""
    try:
        dump = json.loads(data)
    except ValueError as exc:
        raise MailboxListError(f"ctl_mboxlist -d printed no complete JSON: {exc}") from None
    if not isinstance(dump, dict):
        raise MailboxListError("ctl_mboxlist -d printed no JSON object")
    unixsep = imapd.flag("unixhierarchysep", False)
    users, shared = set(), set()
    for name, entry in dump.items():
        mbtype = entry.get("mbtype", "") if isinstance(entry, dict) else ""
        if not isinstance(mbtype, str) or _SKIP_FLAGS & set(mbtype):
            continue
        user = mailbox_user(_undeleted(name, imapd))
        if user:
            users.add(user)
        else:
            shared.add(external(name, unixsep))
    return Inventory(sorted(users), sorted(shared))


def _undeleted(name: str, imapd: ImapdConf) -> str:
    """DELETED.user.bob.x.5F3A... belongs to bob (``mboxname_to_userid``): strip the
    ``deletedprefix`` so that the user sync covers it."""
    prefix = (imapd.options.get("deletedprefix") or "DELETED") + "."
    domain, sep, rest = name.rpartition("!")
    if rest.startswith(prefix) and rest[len(prefix):].startswith("user."):
        return f"{domain}{sep}{rest[len(prefix):]}"
    return name
