"""What `rolloutctl status` and the demo's panel render, at 80 columns, from a status document."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from lvm_gateway.rollout.cli import status_table, step_text
from lvm_gateway.termout import Out


def doc(**changes: Any) -> dict[str, Any]:
    lanes = [
        {"lane": f"lane_{i}", "requests": 10 * i, "errors": 0, "feedback": 5, "hit5": 0.6,
         "stable_hit5": 0.65, "delta": 0.01 * i}
        for i in range(16)
    ]  # fmt: skip
    base = {
        "name": "phase2", "stable": "phase1", "canary": "phase2", "phase": "Progressing",
        "reason": "[lane 3] p95 spike [bold]x[/]", "steps": ["shadow", 10, 20, 50, 100],
        "step": 1, "weight": 10.0, "mirror": 0.0, "time_in_step": 12.0, "failures": 0,
        "thresholds": {"failure_limit": 2}, "version": 3, "next": "hold: [waiting]",
        "metrics": [{"metric": "p95_ms", "kind": "max", "value": 3.2, "samples": 40,
                     "needed": 20, "success": 5.0, "rollback": 10.0, "verdict": "pass"}],
        "lanes": lanes,
    }  # fmt: skip
    return {**base, **changes}


def render(renderable: Any, width: int = 80) -> str:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_user_text_is_never_markup_and_steps_count_from_one() -> None:
    text = render(status_table(doc()))
    assert "[lane 3] p95 spike [bold]x[/]" in text
    assert "hold: [waiting]" in text
    assert "2/5 (10%) of shadow -> 10 -> 20 -> 50 -> 100" in text
    assert step_text(0, ["shadow", 10]) == "1/2 (shadow)" and step_text(-1, [10]) == "-"


def test_the_demo_panel_keeps_the_worst_lanes_in_lane_order_within_80_columns() -> None:
    full = render(status_table(doc(), lanes=True)).splitlines()
    short = render(status_table(doc(), lanes=True, lane_limit=4)).splitlines()
    assert len(full) - len(short) == 12  # 16 lane rows down to 4
    rows = [line.split()[0] for line in short if line.startswith("lane_")]
    assert rows == ["lane_12", "lane_13", "lane_14", "lane_15"]  # the worst, numerically
    assert "the 4 worst of 16" in "\n".join(short)
    numeric = [line.split()[0] for line in full if line.startswith("lane_")]
    assert numeric[:3] == ["lane_0", "lane_1", "lane_2"] and numeric[-1] == "lane_15"
    assert all(len(line) <= 80 for line in full + short)


def test_a_pipe_gets_long_lines_unwrapped(monkeypatch: Any) -> None:
    import io

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    buf = io.StringIO()
    out = Out(file=buf, highlight=False)
    line = "reason " * 40
    out.print(line)
    assert buf.getvalue() == line + "\n"
