"""One live run per run directory: a lock file naming its owner.

``RUN_DIR/.lock`` holds the owner's host, PID and start time, and the owner holds an exclusive
``flock`` on it for as long as it lives. The kernel drops that lock when the process ends, however it
ends (SIGKILL included), so a lock file whose ``flock`` can be taken belongs to a dead run: it is taken
over, saying whose it was. A second run on a live directory is refused with one line naming the owner.
(``flock`` is per machine: two hosts writing one run directory over a network filesystem are not
detected; a run directory belongs to the driver's machine.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from search.errors import SearchError

LOCK_FILE = ".lock"


class RunLock:
    """The held lock of one run directory; :meth:`release` (or process exit) frees it."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle = handle

    def release(self) -> None:
        """Clear the owner (a later run then has no stale owner to report) and unlock. The file stays:
        unlinking it would let a run that opened it just before lock an orphaned inode."""
        if self._handle.closed:
            return
        try:
            self._handle.truncate(0)
        except OSError:  # a full or read-only disk: the stale owner is reported and taken over next time
            pass
        self._handle.close()


def acquire(run_dir: Path, say: Callable[[str], None] = print) -> RunLock:
    """Take ``run_dir``'s lock, or raise a SearchError naming the live owner."""
    path = run_dir / LOCK_FILE
    try:
        handle = open(path, "a+", encoding="utf-8")
    except OSError as err:
        raise SearchError(f"cannot write in run directory {run_dir}: {err.strerror or err}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _describe(_read(handle))
        handle.close()
        raise in_use(run_dir, owner) from None
    previous = _read(handle)
    if previous:
        say(f"taking over the stale lock of {run_dir}: {_describe(previous)} is no longer running")
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        handle.flush()
    except OSError as err:
        handle.close()
        raise SearchError(f"cannot write in run directory {run_dir}: {err.strerror or err}") from None
    return RunLock(path, handle)


def live_owner(run_dir: Path) -> str | None:
    """Who holds ``run_dir`` now (None when nobody does); reads only."""
    try:
        handle = open(run_dir / LOCK_FILE, encoding="utf-8")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(_read(handle))
        return None


def in_use(run_dir: Path, owner: str) -> SearchError:
    return SearchError(f"run directory {run_dir} is in use by {owner}; wait for that run to end or stop it, or choose another --run-dir")


def _read(handle: IO[str]) -> dict[str, object]:
    handle.seek(0)
    try:
        owner = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "started": "?"}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict[str, object]) -> str:
    return f"PID {owner.get('pid', '?')} on {owner.get('host', '?')} (started {owner.get('started', '?')})"
