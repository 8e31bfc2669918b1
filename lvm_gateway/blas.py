"""One place that sizes numpy's BLAS thread pool, for every command that does numpy work.

numpy's OpenBLAS starts a thread per core for a product as small as lvm-serve's neighbour search
(4,000 x 768 by 768). When the model servers, the gateway and the load generator share the
cores, those threads contend with every event loop on the machine: one lvm-serve answer took
8.2 ms of CPU with two BLAS threads under load against 1.8 ms with one (1.4 ms on a quiet
machine), and a shadow step that mirrors every request to the canary tipped the canary's server
into 250 ms timeouts. The work is per request and small, so one thread per process is the
default of every command; an operator's `OPENBLAS_NUM_THREADS` (or `OMP_`, `MKL_`) is kept, as
`allocator.py` keeps an operator's malloc settings, and `lvm-serve --threads N` overrides both.
"""

from __future__ import annotations

import os

from threadpoolctl import threadpool_limits

# Read by numpy's BLAS when a process (a worker this one spawns) first imports it.
_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads(n: int | None = None) -> int:
    """The BLAS threads of this process and of the processes it starts: `n` when given, else the
    first of the environment's settings, else 1. Returns the number set."""
    if n is None:
        n = next((int(os.environ[v]) for v in _ENV if os.environ.get(v, "").isdigit()), 0) or 1
    for var in _ENV:
        os.environ[var] = str(n)
    threadpool_limits(n)
    return n
