"""Keeping a long-running worker's resident memory flat.

glibc's malloc raises its mmap threshold as large blocks are freed, so the big, short-lived
tensors of later batches come from the heap, whose freed pages it keeps: a worker's peak RSS
then creeps up with the number of photos it has processed. `trim()` after each batch hands
the heap's free pages back to the system (malloc_trim). A no-op where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = None


def _load():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib if hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc


def trim() -> bool:
    """Return free heap pages to the OS (set FACEPRIV_MALLOC_TRIM=0 to skip); True if done."""
    if os.environ.get("FACEPRIV_MALLOC_TRIM", "1") == "0":
        return False
    lib = _load()
    if not lib:
        return False
    lib.malloc_trim(0)
    return True
