"""Small persistent state under /var/lib/syncwarden, written atomically.

Operator decisions (holds today; role and quarantine later) must survive daemon restarts and
reboots, so they live here rather than in memory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class Holds:
    """Links an operator has held (``syncwarden hold``): no worker until ``resume``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._held: set[str] = set()
        self.problem: str | None = None
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
                raise ValueError("expected a JSON list of link names")
            self._held = set(data)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            # Holding is the safe reading of a damaged file: say so, and keep the file.
            self.problem = f"{self.path}: {exc}; treating every link as held"
            self._held = {"*"}

    def __contains__(self, link: str) -> bool:
        return link in self._held or "*" in self._held

    def set(self, link: str, held: bool) -> None:
        if "*" in self._held:
            raise ValueError(self.problem)
        changed = (self._held | {link}) if held else (self._held - {link})
        atomic_write(self.path, json.dumps(sorted(changed)).encode() + b"\n")
        self._held = changed
