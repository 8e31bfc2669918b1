"""The status page and its JSON API, served on the admin port (`lvm-gateway serve --admin-port`).

A reader of the control plane: it imports `rollout/` (store, ops, windows, analysis), never
`gateway/`. Actions go through `rollout.ops`, the same verbs as `rolloutctl`, behind a bearer
token; without a configured token the page and the API are read-only.
"""
