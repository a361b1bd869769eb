"""Where a move's state lives: one JSON file per user under the instance's state directory,
``moves/USER.json``, written atomically (state.py) after every phase, so that ``move`` run again
resumes and ``status`` shows it; and a lock file per user, so two moves of one user never run
at once (flock: released by the kernel when the process ends, so it cannot go stale)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from ..state import atomic_write, ensure_dir

DIR = "moves"


def check_user(user: str) -> str | None:
    """Why ``user`` cannot be a Cyrus userid to move (one line), or None."""
    if not user or len(user) > 255 or not user.isprintable() or any(c in user for c in "/ \t"):
        return f"{user!r}: not a userid (printable, no spaces or '/', at most 255 characters)"
    if user.startswith(".") or user.startswith("-"):
        return f"{user!r}: not a userid (starts with {user[0]!r})"
    return None


def state_path(state_dir: Path, user: str) -> Path:
    return Path(state_dir) / DIR / f"{user}.json"


def load(state_dir: Path, user: str) -> dict | None:
    try:
        return json.loads(state_path(state_dir, user).read_text())
    except FileNotFoundError:
        return None


def save(state_dir: Path, state: dict) -> None:
    atomic_write(state_path(state_dir, state["user"]),
                 json.dumps(state, sort_keys=True).encode() + b"\n", mode=0o600)


def every(state_dir: Path) -> list[dict]:
    """Every recorded move (finished ones too, until the user is moved again), by user."""
    out = []
    folder = Path(state_dir) / DIR
    try:
        names = sorted(os.listdir(folder))
    except OSError:          # none yet; or status asked by a non-root member of control.group
        return []
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            try:
                out.append(json.loads((folder / name).read_text()))
            except (OSError, ValueError):
                continue
    return out


class UserLock:
    """Held while one process moves the user."""

    def __init__(self, state_dir: Path, user: str):
        folder = ensure_dir(Path(state_dir) / DIR, mode=0o700)
        self.fd = os.open(folder / f".{user}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                          | os.O_NOFOLLOW, 0o600)

    def acquire(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.fd)
