"""glibc malloc settings for the gateway, a process that moves large request bodies.

A body arrives in pieces of up to 256 KB (uvloop's read size), each a new bytes object. glibc
serves allocations that large with mmap by default: every piece cost a fresh mapping, a page
fault per 4 KB page on first write and an munmap when freed. Served from the heap instead, the
gateway's CPU per 950 KB request at 8 connections was 603-738 us in five runs against 772-881 us
in four without, req/s 1,336-1,647 against 1,127-1,295 (`bench/payload_bench.py --sizes 100`,
2026-12-02, two of the pairs interleaved). The trim threshold bounds how much freed heap the
process keeps.
"""

from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024  # larger allocations are still mapped (a joined body)
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
# Read by glibc when a process (this one, a worker this one spawns) starts; the mallopt parameter.
_SETTINGS = (
    ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
    ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
)


def keep_body_pieces_on_the_heap() -> bool:
    """Set this process's thresholds and, through the environment, its workers', except those
    an operator set in the environment (glibc applied them at start). False where the C library
    has no mallopt (not glibc): nothing changes there."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = True
    for var, param, value in _SETTINGS:
        if var not in os.environ:
            os.environ[var] = str(value)
            ok = bool(mallopt(param, value)) and ok
    return ok
