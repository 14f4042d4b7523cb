"""State file of the simulator: sessions and their status, saved atomically."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from router.sim.model import Status

log = logging.getLogger(__name__)
VERSION = 1


def save(path: str | os.PathLike[str], instance: str, sessions: dict[str, str]) -> None:
    """Write ``{"version", "instance", "sessions": {name: status}}`` via temp file + rename."""
    target = Path(path)
    data = json.dumps(
        {"version": VERSION, "instance": instance, "sessions": sessions}, sort_keys=True
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike[str]) -> list[tuple[str, Status]]:
    """Sessions saved in ``path``; empty when the file is missing or unreadable."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        data = json.loads(raw)
        sessions = data["sessions"]
        return [(str(name), Status(status)) for name, status in sessions.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return []
