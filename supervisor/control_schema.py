"""What the control socket accepts: one table of commands, their fields and allowed values.

The daemon's handler only ever sees a request that passed ``validate``: every declared field
present (None when not given), of its declared type, and any value with a fixed set of
choices one of them. Anything else is refused with a one-line reason, never defaulted: an
unknown quarantine action must not fall through to "drop".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping


class QuarantineAction(enum.Enum):
    """What the operator may do with a quarantined user (link/operator.py carries it out)."""
    RETRY = "retry"
    DROP = "drop"


class Refused(ValueError):
    """The request does not fit the schema; the message is the answer's error line."""


@dataclass(frozen=True)
class Field:
    kind: type                           # str, bool or int
    required: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    fields: Mapping[str, Field] = field(default_factory=dict)
    read_only: bool = False              # open to the control group; the rest needs root
    # field -> the actions that need it (quarantine retry/drop name a user, list does not)
    needed_for: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    one_of: tuple[str, ...] = ()         # exactly one of these is given (drain LINK | --all)


_LINK = Field(str, required=True)
QUARANTINE_ACTIONS = ("list", *(a.value for a in QuarantineAction))

SCHEMA: Mapping[str, Command] = {
    "status": Command(read_only=True),
    "hold": Command({"link": _LINK}),
    "resume": Command({"link": _LINK}),
    "release": Command({"link": _LINK}),
    "promote": Command(),
    "demote": Command(),
    "quarantine": Command({"action": Field(str, True, QUARANTINE_ACTIONS), "user": Field(str),
                           "link": Field(str)},
                          needed_for={"user": ("retry", "drop")}),
    "drain": Command({"link": Field(str), "all": Field(bool)}, one_of=("link", "all")),
    "reload": Command(),
    "seed": Command({"link": _LINK, "parallel": Field(int)}),
    "retire": Command({"link": _LINK, "force": Field(bool)}),
    "freeze": Command({"link": _LINK, "until": Field(int), "exec": Field(str),
                       "exec_user": Field(str)}),
    "thaw": Command({"link": _LINK}),
}

_KIND = {str: "a string", bool: "true or false", int: "an integer"}


def show(value: Any, limit: int = 60) -> str:
    """A value for an error line: short, and never a line break (repr escapes them)."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def validate(request: Any) -> dict:
    """The request as the handler sees it, or Refused naming what is wrong."""
    if not isinstance(request, dict):
        raise Refused(f"bad request: expected a JSON object with a 'cmd', got {show(request)}")
    cmd = request.get("cmd")
    if not isinstance(cmd, str):
        raise Refused(f"bad request: 'cmd' must be a string, got {show(cmd)}")
    spec = SCHEMA.get(cmd)
    if spec is None:
        raise Refused(f"unknown command {show(cmd)} (known: {', '.join(SCHEMA)})")
    out: dict = {"cmd": cmd}
    for key, value in request.items():
        if key != "cmd" and key not in spec.fields:
            raise Refused(f"{cmd}: unknown field {show(key)}")
    for key, f in spec.fields.items():
        value = request.get(key)
        if value is not None:
            if type(value) is not f.kind:
                raise Refused(f"{cmd}: {key} must be {_KIND[f.kind]}, got {show(value)}")
            if f.kind is str and not value:
                raise Refused(f"{cmd}: {key} must not be empty")
            if f.choices and value not in f.choices:
                raise Refused(f"unknown {cmd} {key} {show(value)} (expected one of"
                              f" {', '.join(f.choices)})")
        elif f.required:
            raise Refused(f"{cmd} needs a {key}")
        out[key] = value
    action = out.get("action")
    for key, actions in spec.needed_for.items():
        if action in actions and out[key] is None:
            raise Refused(f"{cmd} {action} needs a {key}")
    if spec.one_of and sum(out[k] not in (None, False) for k in spec.one_of) != 1:
        raise Refused(f"{cmd} needs exactly one of: {', '.join(spec.one_of)}")
    return out
