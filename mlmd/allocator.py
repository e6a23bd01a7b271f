"""Keep freed C-heap memory for reuse between force calls (Linux, glibc).

A force call allocates and frees edge tensors of several MB each (N x M x F floats). With glibc's defaults many of
them come from fresh pages (mmap, or heap memory trimmed back to the system after the previous call), so every call
pays the page faults of first touch again: about a fifth of a 300-atom call on a 2-core CPU. Raising the mmap
threshold to glibc's maximum (32 MB) and the trim threshold to 1 GB keeps those blocks in the heap. The peak memory
of a call is unchanged; what a process frees is kept for its next call instead of being handed back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024
# glibc reads these at start-up; the same values there (e.g. for a peer process in a benchmark) give the same effect.
ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set the thresholds once per process; True when they are in effect.

    Does nothing off Linux, without glibc, or when the user set either ``MALLOC_*_THRESHOLD_`` variable (their
    choice stands).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or any(name in os.environ for name in ENVIRONMENT):
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
