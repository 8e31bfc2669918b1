"""Webhook entries of the policy file and what a history entry becomes on the wire. Pure."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from pydantic import ValidationError

from lvm_gateway.config.spec import NOTIFY_EVENTS, NotificationSpec
from lvm_gateway.rollout.notify import Entry, event_of, payload, render, sign


def test_defaults_every_event_json_unsigned() -> None:
    spec = NotificationSpec(url="https://hooks.slack.com/services/T0/B0/SECRET")
    assert spec.events == NOTIFY_EVENTS and spec.format == "json" and spec.secret_env is None
    assert spec.label == "https://hooks.slack.com"  # the path (a Slack hook's secret) is not shown
    assert NotificationSpec(url="http://h:8080/x").label == "http://h:8080"


def test_a_changed_entry_is_a_new_target() -> None:
    one = NotificationSpec(url="http://h/x")
    assert one.key == NotificationSpec(url="http://h/x").key
    assert one.key != NotificationSpec(url="http://h/x", events=["promoted"]).key


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"url": "hooks.internal/lvm"}, "not an http"),
        ({"url": "http://h", "events": []}, "at least one event"),
        ({"url": "http://h", "events": ["deployed"]}, "Input should be"),
        ({"url": "http://h", "format": "xml"}, "Input should be"),
        ({"url": "http://h", "secret_env": "$SECRET"}, "pattern"),
        ({"url": "http://h", "token": "x"}, "Extra inputs"),
    ],
)
def test_a_bad_entry_says_what_is_wrong(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        NotificationSpec.model_validate(doc)


@pytest.mark.parametrize(
    ("action", "phase", "event"),
    [
        ("start", "Progressing", "started"),
        ("advance", "Progressing", "advanced"),
        ("advance", "Promoted", "promoted"),  # advance --full
        ("promote", "Promoted", "promoted"),
        ("pause", "Paused", "paused"),
        ("resume", "Progressing", "resumed"),
        ("rollback", "RolledBack", "rolled_back"),
        ("abort", "RolledBack", "aborted"),
        ("failure", "Progressing", None),
        ("align", "Pending", None),
        ("thresholds", "Progressing", None),
        ("notify", "Progressing", None),
    ],
)
def test_history_actions_map_to_events(action: str, phase: str, event: str | None) -> None:
    assert event_of(action, phase) == event


def test_the_body_counts_steps_from_one_and_the_signature_is_hmac_sha256() -> None:
    entry = Entry("1764624912345-0", {
        "action": "rollback", "phase": "RolledBack", "step": "1", "weight": "0.0",
        "reason": "[lane 3] p95", "at": "1764624912.345", "actor": "controller",
        "identity": "gw:1", "stable": "phase1", "canary": "phase2", "version": "4",
    })  # fmt: skip
    body = payload("phase2", entry, 4)
    assert body["id"] == "phase2/1764624912345-0"
    assert (body["event"], body["step"], body["steps"]) == ("rolled_back", 2, 4)
    assert body["at"] == "2025-12-01T21:35:12.345Z"
    raw = render(NotificationSpec(url="http://h"), body)
    assert json.loads(raw) == body
    expected = hmac.new(b"k", raw, hashlib.sha256).hexdigest()
    assert sign("k", raw) == f"sha256={expected}"
    slack = json.loads(render(NotificationSpec(url="http://h", format="slack"), body))
    assert slack == {"text": "rollout phase2 rolled_back: RolledBack, 0% on phase2 ([lane 3] p95)"}
