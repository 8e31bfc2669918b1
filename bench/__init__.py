"""Load benchmarks: real processes on loopback driven by wrk; each run prints its own ratios."""
