"""The reference LVM side: synthetic world, predictors, model server, traffic generator."""

import os

# Before numpy loads: OpenBLAS's worker threads spin on every small matmul and starve the event
# loops of lvm-serve and lvm-traffic on small machines (p95 40 ms -> 1.8 s at 200 req/s on 2 cores).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
