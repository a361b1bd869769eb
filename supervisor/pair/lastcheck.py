"""Where the last full check of a link is kept, and reading it back (``status``, metrics).

A module of its own, without the IMAP machinery, so that the daemon's metrics can read the
result without loading what ``check`` needs to run one. check.py writes it.
"""

from __future__ import annotations

import json
from pathlib import Path


def result_path(link: str, state_dir: Path) -> Path:
    return Path(state_dir) / "check" / f"{link}.json"


def load_last(link: str, state_dir: Path) -> dict | None:
    try:
        doc = json.loads(result_path(link, state_dir).read_text())
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError, RecursionError):
        return None
