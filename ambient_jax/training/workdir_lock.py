"""One writer per work dir: a lock file held for a training run's lifetime.

<workdir>/LOCK holds {"pid", "host", "started"} of the trainer that writes the work dir. On a
local disk it is created with O_CREAT | O_EXCL, which is atomic, so of two trainers started
together exactly one gets it. A lock whose process is gone (same host, pid not running: a crash
or kill -9) is stale and is taken over with a warning. A live process's lock, or one held from
another host (whose processes cannot be checked from here), is refused with one message that
names pid, host and start time and how to clear it.

On a bucket (gs://...) there is no exclusive create through this path, so the lock is advisory:
it is written, then read back, and a second trainer that starts before the first one's write is
visible can slip past. There, run one trainer per work dir (as the launchers in launch/ do) and
treat the lock as a guard against mistakes, not a mutex.
"""

import datetime
import json
import os
import socket

from etils import epath

from ambient_jax import files
from ambient_jax.types import Log

LOCK_NAME = "LOCK"


class WorkdirLocked(RuntimeError):
    """Another trainer holds the work dir."""


def _owner():
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read(path):
    try:
        return json.loads(files.read_text(path))
    except (OSError, ValueError):
        return None  # half-written or unreadable: treated as stale


def live_holder(workdir: str) -> dict | None:
    """Who holds the work dir now ({"pid", "host", "started"}): a live process on this host, or
    any holder on another host (whose liveness this host cannot see); None when free or stale."""
    path = os.path.join(workdir, LOCK_NAME)
    held = _read(path) if files.exists(path) else None
    if held is None:
        return None
    if held.get("host") != socket.gethostname() or _alive(int(held.get("pid", -1))):
        return held
    return None


def held_by_leftover(workdir: str) -> str | None:
    """For a runner about to start a run (ambient-sweep): the line that skips a work dir another
    process still holds (e.g. an ambient-train left running by a sweep killed with -9), else
    None."""
    held = live_holder(workdir)
    if not held:
        return None
    return (
        f"skip {workdir}: pid {held.get('pid')} on {held.get('host')} still holds it (since "
        f"{held.get('started')}; a program left running by an earlier sweep?): wait for it or "
        f"stop it (kill {held.get('pid')}), then re-run the sweep"
    )


def acquire(workdir: str, log: Log = print) -> str:
    """Take <workdir>/LOCK (the work dir is created if needed); returns its path."""
    files.makedirs(workdir)
    path = os.path.join(workdir, LOCK_NAME)
    me = _owner()
    for _ in range(2):  # a second try after clearing a stale lock
        if files.is_remote(path):
            held = _read(path) if files.exists(path) else None
            if held is None:
                files.write_text_atomic(path, json.dumps(me))
                if _read(path) == me:
                    return path
                held = _read(path)
        else:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = _read(path)
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(me))
                return path
        if held is not None and held.get("host") != me["host"]:
            raise WorkdirLocked(
                f"work dir {workdir} is locked by pid {held.get('pid')} on host "
                f"{held.get('host')} (since "
                f"{held.get('started')}): another trainer writes it. If that trainer is gone, "
                f"delete {path} and re-run."
            )
        if held is not None and _alive(int(held.get("pid", -1))):
            raise WorkdirLocked(
                f"work dir {workdir} is in use by pid {held['pid']} on this host (since "
                f"{held.get('started')}): one "
                f"trainer per work dir. Wait for it or stop it, or use another --workdir."
            )
        log(
            f"warning: taking over the stale lock of pid {held.get('pid') if held else '?'} in "
            f"{workdir} "
            "(that trainer is no longer running)"
        )
        try:
            os.remove(path) if not files.is_remote(path) else None
        except FileNotFoundError:
            pass
        if files.is_remote(path):
            files.write_text_atomic(path, json.dumps(me))
            return path
    raise WorkdirLocked(
        f"could not take the lock {path}: another trainer took it at the same moment"
    )


def release(path: str) -> None:
    """Remove the lock if it is still ours."""
    held = _read(path) if files.exists(path) else None
    if held and held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
        if files.is_remote(path):
            epath.Path(path).unlink()
        else:
            os.remove(path)
