"""The policy document: read by both planes, so it belongs to neither.

spec.py   the document's shape (pydantic, strict)
load.py   YAML -> Config: policy trees built through the registry, rollout bindings,
          every error with its path; the JSON Schema for editors
"""
