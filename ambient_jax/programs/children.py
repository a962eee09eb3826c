"""Programs a program starts (ambient-sweep's ambient-train, -sample, -eval, ...) end with it: a
sweep stopped by SIGTERM or Ctrl-C passes SIGTERM on to the programs it is running, which save
what they have (ambient-train a checkpoint at its current step) and exit, waits for them, and
exits; a re-run of the sweep resumes. Without this the children, in the sweep's process group
but not signalled by `kill PID`, would run on alone."""

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Iterable, Iterator, Sequence


class ChildFailed(RuntimeError):
    """Programs a grid ran failed (each named); the others ran to their end."""


_live: set[subprocess.Popen] = set()
_lock = threading.Lock()
_stopping = threading.Event()


def stopping() -> bool:
    """Whether a stop has been asked: a child that ended since may have stopped early (a clean
    stop exits 0), so its work is not done."""
    return _stopping.is_set()


def run(argv: Sequence[str], **popen_kwargs: Any) -> int:
    """subprocess.run(argv, ...).returncode, the child known while it runs; once the parent is
    stopping no new child starts (-SIGTERM is returned for it)."""
    with _lock:
        if _stopping.is_set():
            return -signal.SIGTERM
        child = subprocess.Popen(list(argv), **popen_kwargs)
        _live.add(child)
    try:
        return child.wait()
    finally:
        with _lock:
            _live.discard(child)


def forward_signals() -> None:
    """From now on SIGTERM and SIGINT stop the running children (SIGTERM, then a wait for each)
    and end this process with status 128 + the signal's number."""

    def stop(signum, _frame):
        with _lock:
            _stopping.set()
            children = list(_live)
        print(
            f"{signal.Signals(signum).name}: stopping {len(children)} running program(s)",
            file=sys.stderr,
            flush=True,
        )
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait()
        sys.stdout.flush()
        os._exit(128 + signum)  # the worker threads would otherwise wait for their next step

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def as_completed(
    futures: Iterable[concurrent.futures.Future],
) -> Iterator[concurrent.futures.Future]:
    """concurrent.futures.as_completed that wakes the calling (main) thread twice a second.
    Python runs a signal's handler in the main thread only, when it next runs: a signal the
    kernel hands to another thread (as it does after SIGSTOP and SIGCONT) would otherwise wait,
    with the children running on, until a run ends."""
    pending = set(futures)
    while pending:
        done, pending = concurrent.futures.wait(
            pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED
        )
        yield from done
