"""What the daemon keeps on disk about each link's replica: seeded or not, frozen, retired.

``lifecycle.json`` (state directory) holds, per link, whether its replica ever received a full
copy (``seeded``), a freeze in force, and a retirement. A link first seen in the configuration
after this file existed has a replica that was never seeded: rolling replication sends only
what changes from then on, so such a link never claims ``live`` until ``syncwarden seed``
finished. On the very first start (no file yet: a new install, or an upgrade from a version
without seeding) every configured link is taken as seeded, as before.

A running seed keeps its plan (``seed/LINK.plan``, written once) and its progress
(``seed/LINK.json``, rewritten as batches finish) beside it, so that it resumes after a daemon
restart without starting over. Every file is written with state.atomic_write. A damaged
``lifecycle.json`` reads the safe way: every link unseeded (none claims ``live``), no freeze,
no retirement; the problem is reported and the file is left for the operator until a change
rewrites it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..state import atomic_write, unlink


class LifecycleStore:
    def __init__(self, path: Path | None = None, seed_dir: Path | None = None):
        """Without a path (tests of other parts) nothing is written and every link counts as
        configured at the first start."""
        self.path = Path(path) if path else None
        self.seed_dir = Path(seed_dir) if seed_dir else None
        self.links: dict[str, dict] = {}
        self.freezes: dict[str, dict] = {}
        self.retired: dict[str, dict] = {}
        self.problem: str | None = None
        self._first = True
        self._damaged = False
        if self.path is not None:
            self._read()

    def _read(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
            if not isinstance(doc, dict):
                raise ValueError("expected a JSON object")
            parts = [doc.get(k, {}) for k in ("links", "freezes", "retired")]
            if not all(isinstance(p, dict) and all(isinstance(v, dict) for v in p.values())
                       for p in parts):
                raise ValueError("links, freezes and retired must map names to objects")
            self.links, self.freezes, self.retired = parts
            self._first = False
        except FileNotFoundError:
            pass
        except (OSError, ValueError, RecursionError) as exc:
            why = getattr(exc, "strerror", None) or exc
            self.problem = (f"{self.path} is unreadable ({why}): every link is taken as never"
                            " seeded (none goes live until `syncwarden seed LINK`), none frozen")
            self._first, self._damaged = False, True

    def adopt(self, configured, wall: float) -> list[str]:
        """Record links of the configuration seen for the first time; returns those that were
        never seeded (new since the file existed)."""
        new = [n for n in configured if n not in self.links]
        if not new:
            return []
        how = "configured before syncwarden seeded replicas" if self._first else None
        for name in new:
            self.links[name] = {"seeded": how is not None, "since": wall,
                                "how": how or "added to the configuration"}
        self._first = False
        if not self._damaged:
            self._save()
        return [] if how else new

    def seeded(self, link: str) -> bool:
        return bool(self.links.get(link, {}).get("seeded"))

    def set_seeded(self, link: str, seeded: bool, wall: float, how: str) -> None:
        self.links[link] = {"seeded": seeded, "since": wall, "how": how}
        self._save()

    def set_freeze(self, link: str, record: dict | None) -> None:
        if record is None:
            self.freezes.pop(link, None)
        else:
            self.freezes[link] = record
        self._save()

    def set_retired(self, link: str, record: dict | None) -> None:
        if record is None:
            self.retired.pop(link, None)
        else:
            self.retired[link] = record
            self.links.pop(link, None)      # added again later, it is a new replica
            self.freezes.pop(link, None)
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        doc = {"links": self.links, "freezes": self.freezes, "retired": self.retired}
        atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n",
                     0o600)
        self._damaged = False
        self.problem = None

    # -- a seed's plan and progress ------------------------------------------------------------
    def _seed_file(self, link: str, suffix: str) -> Path | None:
        return self.seed_dir / f"{link}.{suffix}" if self.seed_dir else None

    def load_seed(self, link: str) -> tuple[dict | None, dict | None, str | None]:
        """(progress, plan, problem) of the link's seed; (None, None, None) when there is none."""
        out = []
        for suffix in ("json", "plan"):
            path = self._seed_file(link, suffix)
            try:
                doc = json.loads(path.read_text()) if path else None
                if doc is not None and not isinstance(doc, dict):
                    raise ValueError("expected a JSON object")
                out.append(doc)
            except FileNotFoundError:
                out.append(None)
            except (OSError, ValueError, RecursionError) as exc:
                why = getattr(exc, "strerror", None) or exc
                return None, None, f"{path} is unreadable ({why}): the seed of {link} starts over"
        return out[0], out[1], None

    def save_seed(self, link: str, progress: dict, plan: dict | None = None) -> None:
        if self.seed_dir is None:
            return
        if plan is not None:
            atomic_write(self._seed_file(link, "plan"), json.dumps(plan).encode(), 0o600)
        atomic_write(self._seed_file(link, "json"), json.dumps(progress).encode(), 0o600)

    def drop_seed(self, link: str, keep_progress: bool = False) -> None:
        if self.seed_dir is None:
            return
        unlink(self._seed_file(link, "plan"))
        if not keep_progress:
            unlink(self._seed_file(link, "json"))
