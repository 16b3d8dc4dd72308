"""Operating-system names for plexserve's threads, so that top, /proc/PID/task/*/comm and the
benchmarks' per-thread CPU figures say which thread is the event loop and which runs a model.

Linux only (prctl PR_SET_NAME); elsewhere a no-op. Names are cut to the kernel's 15 bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_PR_SET_NAME = 15
_libc = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform == "linux" else None


def name_thread(name: str) -> None:
    """Name the calling thread, as the OS sees it."""
    if _libc is not None:
        _libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
