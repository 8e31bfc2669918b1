"""The status page's pure parts: SVG charts, the step ladder, value formatting."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from lvm_gateway.admin.charts import Line, Rule, line_chart
from lvm_gateway.admin.model import Detail, LaneRow, MetricRow
from lvm_gateway.admin.page import _metric, charts, ladder, render
from lvm_gateway.contract.lvm import lane_order

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(str(svg).replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1))


def test_a_gap_in_the_data_breaks_the_line_instead_of_drawing_zero() -> None:
    points = [(0.0, 1.0), (5.0, 2.0), (10.0, None), (15.0, 3.0), (20.0, 4.0), (25.0, None)]
    root = parse(line_chart("p95", [Line("canary", points, "canary")], 0, 25))
    lines = root.findall(f"{SVG}polyline")
    assert [len(p.get("points", "").split()) for p in lines] == [2, 2]
    assert root.find(f"{SVG}title").text == "p95"


def test_a_lone_bucket_is_a_dot_and_no_data_says_so() -> None:
    root = parse(line_chart("e", [Line("c", [(0, None), (5, 0.5), (10, None)], "canary")], 0, 10))
    assert len(root.findall(f"{SVG}circle")) == 1 and not root.findall(f"{SVG}polyline")
    empty = parse(line_chart("e", [Line("c", [(0, None)], "canary")], 0, 10))
    assert any(t.text == "no data in this period" for t in empty.iter(f"{SVG}text"))


def test_a_step_line_holds_each_value_until_the_next_and_to_the_end() -> None:
    root = parse(line_chart("w", [Line("w", [(0, 0.0), (50, 100.0)], "c", step=True)], 0, 100,
                            y_max=100))  # fmt: skip
    xs_ys = [
        tuple(map(float, p.split(","))) for p in root.find(f"{SVG}polyline").get("points").split()
    ]
    # (0,0) -> (50,0) -> (50,100) -> (100,100): horizontal, vertical, horizontal
    assert [y for _, y in xs_ys] == [xs_ys[0][1], xs_ys[0][1], xs_ys[2][1], xs_ys[2][1]]
    assert xs_ys[1][0] == xs_ys[2][0] and xs_ys[3][0] > xs_ys[2][0]


def test_bounds_are_rules_on_the_same_scale_and_labels_are_escaped() -> None:
    svg = line_chart(
        "<b>p95</b>",
        [Line("canary <x>", [(0, 5.0), (1, 5.0)], "canary")],
        0,
        1,
        rules=[Rule("rollback bound", 10.0, "bad")],
        y_max=20,
    )
    assert "<b>" not in svg and "&lt;b&gt;p95&lt;/b&gt;" in svg and "canary &lt;x&gt;" in svg
    root = parse(svg)
    rule = root.find(f"{SVG}line[@class='rule bad']")
    line_y = float(root.find(f"{SVG}polyline").get("points").split()[0].split(",")[1])
    rule_y = float(rule.get("y1"))
    top, bottom = 24, 180 - 22
    assert rule_y == (top + bottom) / 2  # 10 of 20
    assert line_y == top + 0.75 * (bottom - top)  # 5 of 20


def _detail(phase: str, step: int) -> Detail:
    return Detail.model_validate(
        {
            "name": "r", "phase": phase, "step": step, "steps": ["shadow", 10, 50, 100],
            "weight": 0, "mirror": 0, "stable": "a", "canary": "b", "reason": "", "version": 1,
            "updated_at": None, "started_at": None, "step_started_at": None, "failures": 0,
            "time_in_step": None, "thresholds": {}, "metrics": [], "lanes": [], "next": "",
            "series": [],
        }
    )  # fmt: skip


def test_the_ladder_marks_done_current_and_todo_steps() -> None:
    assert [s["state"] for s in ladder(_detail("Paused", 1))] == [
        "done", "current paused", "todo", "todo",
    ]  # fmt: skip
    assert [s["label"] for s in ladder(_detail("Pending", -1))] == ["shadow", "10%", "50%", "100%"]
    assert {s["state"] for s in ladder(_detail("Promoted", 3))} == {"done"}
    assert ladder(_detail("RolledBack", 2))[2]["state"] == "current rolledback"


def test_metric_values_are_shown_in_their_units() -> None:
    assert _metric(4.25, "p95_ms") == "4.25 ms"
    assert _metric(0.0123, "error_rate") == "1.23%"
    assert _metric(None, "hit5") == "-"
    assert re.fullmatch(r"\d+%", _metric(0.6, "hit5"))


def test_lanes_sort_numerically_and_none_comes_last() -> None:
    lanes = ["none", "lane_10", "lane_2", "lane_0", "lane_15"]
    assert sorted(lanes, key=lane_order) == ["lane_0", "lane_2", "lane_10", "lane_15", "none"]


def test_the_lane_the_analysis_judged_is_marked_in_the_lane_table() -> None:
    doc = _detail("Progressing", 0).model_copy(
        update={
            "lanes": [
                LaneRow(lane=lane, requests=1, errors=0, feedback=1, hit5=0.5, stable_feedback=1,
                        stable_hit5=0.5, delta=0.0)
                for lane in ("lane_2", "lane_10", "lane_15")
            ],
            "metrics": [
                MetricRow(metric="lane_delta", kind="max", value=0.45, samples=300, needed=60,
                          success=0.15, rollback=0.2, verdict="breach", where="lane_15")
            ],
        }
    )  # fmt: skip
    html = render("rollouts.html", rollouts=[{
        "doc": doc, "ladder": ladder(doc), "charts": charts(doc, [], 1000.0), "history": [],
        "history_total": 0,
    }])  # fmt: skip
    rows = re.findall(r"<tr( class=\"worst\"[^>]*)?><td>(lane_\d+)</td>", html)
    assert [(lane, bool(worst)) for worst, lane in rows] == [
        ("lane_2", False), ("lane_10", False), ("lane_15", True),
    ]  # fmt: skip
    assert "45% (lane_15)" in html and html.count("<svg") == 4
