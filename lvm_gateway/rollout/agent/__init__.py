"""The rollout agent: what the control plane runs inside every gateway process.

    dataplane.py  RolloutDataPlane, the one object the gateway is handed (the serve CLI wires
                  it): weights for routing, the window recorder, Redis health, registration of
                  the config's rollouts, and optionally the controller
    snapshot.py   the in-process copy of the rollout weights, read per request, never awaited
    recorder.py   per-request window counts, flushed to Redis in pipelines

The gateway never imports this package; it sees it through the protocols in gateway/app.py and
gateway/dispatch.py.
"""
