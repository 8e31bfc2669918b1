"""The ground floor every part reads: types and rules, no I/O.

    strict    the strict-model base for config types and the error-path formatting
    lvm       the LVM wire contract: dimension, lanes, TMD codes, Hit@K and empty-hit rules
    gate      the TMD gate's encoding, file format and numpy runtime
    rollout   the rollout spec (the YAML's `rollouts:`) and status types
    windows   the window counter names and latency buckets the data plane writes and the
              controller reads
    keys      every Redis key name

The data plane (`gateway/`), the control plane (`rollout/`), the policies, the config loader and
the reference servers (`lvm/`) import from here; nothing here imports them.
"""
