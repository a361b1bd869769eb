"""The recorded moves in ``status`` (field ``moves``, and its lines): the state files alone,
without the move's machinery, so that ``status`` starts quickly."""

from __future__ import annotations

from pathlib import Path

from . import files, workflow


def add_moves(doc: dict, state_dir: Path) -> None:
    """The recorded moves (field ``moves``) in a status document."""
    doc["moves"] = [{"user": st["user"], "source": st["source"], "target": st["target"],
                     "phase": st["phase"], "result": st.get("result"),
                     "locked": st.get("locked_at") is not None and st.get("unlocked_at") is None,
                     "critical_path_seconds": workflow.critical_path(st),
                     "error": st.get("error")} for st in files.every(state_dir)]


def move_lines(doc: dict) -> list[str]:
    """Unfinished moves one line each; finished ones counted."""
    moves = doc.get("moves") or []
    lines = []
    for m in moves:
        if m["result"] in workflow.FINISHED:
            continue
        lock = ", user locked" if m["locked"] else ""
        err = f": {m['error']}" if m.get("error") else ""
        lines.append(f"move {m['user']} {m['source']} -> {m['target']}: {m['phase']}{lock}{err}")
    done = sum(m["result"] == workflow.DONE for m in moves)
    back = sum(m["result"] == workflow.ROLLED_BACK for m in moves)
    if done or back:
        lines.append(f"moves: {done} done, {back} rolled back")
    return lines
