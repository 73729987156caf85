"""Writes that leave nothing half-done when the disk fills, and one run per directory.

    DiskFullError     an OSError (errno ENOSPC) whose one-line message names the directory that ran out of space
    disk_full(e)      does an exception (or anything it was raised from) say "no space left on device"?
    write_text        temp file + rename: the old content or the new, never a torn file; the temp is removed on error
    append_text       one append; on error the file is cut back to its old length (no partial line is left)
    CheckpointError   a checkpoint or adapter exists but cannot be used (raised by rlsd.checkpoint and rlsd.model)
    RunLock           <dir>/run.lock holding {pid, host, started}: a second train/benchmark on the directory is refused
                      naming the holder; a lock whose holder is gone (kill -9) is taken over

The lock is advisory and local: a lock from another host cannot be checked, so it is refused naming the host (delete
run.lock once that run is known to be gone).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "run.lock"


class CheckpointError(RuntimeError):
    """A checkpoint or adapter exists but cannot be used; the message names the file. (Here, not in rlsd.checkpoint,
    so that rlsd.model can raise it without importing the checkpoint module, which imports the config.)"""


class DiskFullError(OSError):
    """Out of space while writing under a directory; the message says what is intact and how to go on."""

    def __str__(self):
        return self.strerror  # the one-line message, without "[Errno 28]"


class RunLockedError(RuntimeError):
    """Another live process holds the run directory's lock; the message names it (PID, host, start time)."""


def disk_full(e: BaseException | None) -> bool:
    """True if `e`, or an exception it was raised from, is ENOSPC (torch and safetensors wrap the OSError)."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def disk_full_error(directory: Path, what: str, kept: str) -> DiskFullError:
    return DiskFullError(errno.ENOSPC, f"{directory}: no space left on device while writing {what}; {kept}; free "
                                       "space and rerun the same command")


def write_text(path: Path, text: str):
    """Replace `path` with `text` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_text(path: Path, text: str, fsync: bool = False):
    """Append `text` in one write; if the write fails the file is cut back to its previous length."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    except BaseException:
        try:
            os.truncate(path, size)
        except OSError:
            pass
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class RunLock:
    """`with RunLock(out, "train"):` -- the only process writing `out` (created if needed) until the block ends."""

    def __init__(self, directory: Path, command: str):
        self.path = Path(directory) / LOCK_NAME
        self.command = command
        self.held = False

    def holder(self) -> dict | None:
        """The lock's record if another live process holds it, else None (free, stale, or ours)."""
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = int(record["pid"]), str(record["host"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # torn by a kill while it was written: its writer is gone
        if host == socket.gethostname() and (pid == os.getpid() or not _alive(pid)):
            return None
        return record

    def check(self):
        """Raise RunLockedError if another live process holds the lock (reads only)."""
        record = self.holder()
        if record is not None:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started", 0))))
            raise RunLockedError(
                f"{self.path.parent}: in use by another {record.get('command', 'run')} (PID {record['pid']} on "
                f"{record['host']}, started {started}); wait for it to end or choose another directory"
                + ("" if record["host"] == socket.gethostname() else f" (delete {self.path} if that run is gone)"))

    def acquire(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                             "command": self.command})
        for _ in range(2):
            self.check()
            self.path.unlink(missing_ok=True)  # free, stale or ours
            try:  # O_EXCL: of two processes starting at once, one wins
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(record)
            self.held = True
            return self
        self.check()
        raise RunLockedError(f"{self.path.parent}: another process took the lock while this one started; retry")

    def release(self):
        if self.held:
            try:
                if json.loads(self.path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                    self.path.unlink()
            except (OSError, ValueError):
                pass
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
