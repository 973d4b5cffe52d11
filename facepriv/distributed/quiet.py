"""Keep a normal run's terminal to facepriv's own lines.

Ray's INFO lines (local instance started, dataset finished) and Ray Data's notice that its
progress bars are off (facepriv draws its own) are silenced at their loggers. One line cannot
be fixed from here: Ray's C++ core worker logs at ERROR level, for every Ray Data actor, that it
"has constructor arguments in the object store and max_restarts > 0" - Ray Data itself puts the
map function in the object store and enables actor restarts (which facepriv relies on when a
worker dies). `filtered_stderr` drops exactly that line from this process's stderr while the
dataset runs; everything else passes through.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

UNFIXABLE = (b"has constructor arguments in the object store and max_restarts > 0",)
QUIET_LOGGERS = ("ray", "ray.data", "ray._private.worker", "ray.data._internal.execution.streaming_executor",
                 "ray.data._internal.progress")


def quiet_loggers(level: int = logging.WARNING) -> None:
    """Ray's own INFO lines off; Ray Data's 'progress bars disabled' warning off."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


@contextlib.contextmanager
def filtered_stderr(drop: tuple[bytes, ...] = UNFIXABLE):
    """Drop lines containing any of `drop` from file descriptor 2 (C++ logs bypass Python).
    Start it after Ray's own processes are up, so none of them inherits the pipe."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # pytest's capture, a closed stream: nothing to filter
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            for line in iter(pipe.readline, b""):
                if not any(d in line for d in drop):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="facepriv-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)  # closes the pipe's last write end: the pump reads to EOF and stops
        thread.join(timeout=5)
        os.close(saved)
