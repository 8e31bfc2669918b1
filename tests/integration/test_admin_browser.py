"""The status page in a real browser (Debian's chromium driven by Playwright): what a person sees
while a rollout is promoted and another rolled back, both moved by real controller passes over
real window counts in a real Redis, and the page's actions behind the token.

Screenshots are kept in the test's tmp directory (pytest keeps the last three runs):
after-promotion.png, during-rollout.png, after-rollback.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from playwright.async_api import Locator, Page, async_playwright, expect

from lvm_gateway.contract.rollout import Phase
from lvm_gateway.redisconn import open_client
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.agent.recorder import WindowRecorder
from lvm_gateway.rollout.controller import reconcile_rollout
from lvm_gateway.rollout.store import RolloutStore
from tests.integration.admin_env import TOKEN, admin_gateway, traffic

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]


async def history_of_traffic(client: aioredis.Redis, prefix: str, now: float) -> None:
    """Three minutes of past buckets: phase1 fast, phase2 a little slower, slow far slower."""
    for k in range(36):
        recorder = WindowRecorder(prefix, clock=lambda k=k: now - 180 + 5 * k)
        traffic(recorder, "phase1", 60, 1.2 + 0.1 * (k % 4), errors=0, hits=20)
        traffic(recorder, "phase2", 60, 2.2 + 0.2 * (k % 3), errors=k % 7 == 0, hits=22)
        traffic(recorder, "slow", 30, 14 + (k % 4), errors=0, hits=10)
        await recorder.flush(client)


async def controller_pass(store: RolloutStore, name: str, canary_ms: float) -> Phase:
    """Fresh traffic in the current bucket, then one real controller pass over the rollout."""
    recorder = WindowRecorder(store.prefix)
    status = await store.get(name)
    assert status.canary and status.stable
    traffic(recorder, status.canary, 40, canary_ms, errors=0, hits=16)
    traffic(recorder, status.stable, 40, 1.5, errors=0, hits=16)
    await recorder.flush(store.client)
    status, _, _ = await reconcile_rollout(store, name, "test-controller", None, time.time())
    return status.phase


def section(page: Page, name: str) -> Locator:
    return page.locator(f"section[data-rollout='{name}']")


async def test_a_person_sees_a_promotion_and_a_rollback(redis_url: str, tmp_path: Path) -> None:
    with admin_gateway(redis_url, tmp_path) as gw:
        client = open_client(redis_url)
        store = RolloutStore(client, gw.prefix)
        await history_of_traffic(client, gw.prefix, time.time())
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM))
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(gw.url)
            phase2, slow = section(page, "phase2"), section(page, "slow")
            await expect(phase2.get_by_test_id("phase")).to_have_text("Pending")
            # Read-only until the token is entered: every action button is disabled.
            assert await page.locator("button.action").count() == 12  # 6 actions x 2 rollouts
            assert await page.locator("button.action:enabled").count() == 0

            # -- a promotion, walked by the controller step by step --------------------------
            await ops.start(store, "phase2", identity="test")
            phases = [await controller_pass(store, "phase2", 2.5) for _ in range(5)]
            assert phases == [Phase.PROGRESSING] * 4 + [Phase.PROMOTED]
            # The open page follows without a reload (it polls every 2 s).
            await expect(phase2.get_by_test_id("phase")).to_have_text("Promoted", timeout=6000)
            await expect(phase2.get_by_test_id("weight")).to_have_text("weight 100%")
            await expect(phase2.get_by_test_id("reason")).to_have_text("all steps passed: promoted")
            await expect(phase2.locator(".ladder li")).to_have_text(
                ["shadow", "10%", "20%", "50%", "100%"]
            )
            assert await phase2.locator(".ladder li.done").count() == 5
            rows = phase2.locator("table.history tbody tr")
            await expect(rows).to_have_count(6)  # start, 4 advances, the promotion
            await expect(rows.first.locator("td.reason")).to_have_text("all steps passed: promoted")
            await expect(rows.last.locator("td").nth(1)).to_have_text("operator (test)")
            assert "p95_ms=" in await rows.first.locator("td.values").inner_text()
            # The plots: weight, then latency, errors and Hit@5 with canary and stable lines.
            charts = phase2.locator("svg.chart")
            await expect(charts).to_have_count(4)
            latency = charts.nth(1)
            await expect(latency.locator("title").first).to_have_text("p95 latency (ms)")
            assert await latency.locator("polyline.canary").count() >= 1
            assert await latency.locator("polyline.stable").count() >= 1
            assert await latency.locator("line.rule.bad").count() == 1  # the rollback bound
            await page.screenshot(path=tmp_path / "after-promotion.png", full_page=True)

            # -- a rollback: the judge has evidence of harm at the first analysis -------------
            # (40x stable's latency; no failure_limit to wait out: docs/judge.md)
            # (the lane table's numeric order is tests/unit/test_admin_page.py's)
            await ops.start(store, "slow", identity="test")
            await expect(slow.get_by_test_id("phase")).to_have_text("Progressing", timeout=6000)
            await page.screenshot(path=tmp_path / "during-rollout.png", full_page=True)

            assert await controller_pass(store, "slow", 15) == Phase.ROLLED_BACK
            await expect(slow.get_by_test_id("phase")).to_have_text("RolledBack", timeout=6000)
            await expect(slow.get_by_test_id("weight")).to_have_text("weight 0%")
            reason = await slow.get_by_test_id("reason").inner_text()
            assert reason.startswith("rollback: evidence of harm") and "slow_rate" in reason
            await expect(slow.locator(".ladder li.current.rolledback")).to_have_text("shadow")
            newest = slow.locator("table.history tbody tr").first
            await expect(newest.locator("td.reason")).to_have_text(reason)
            await expect(newest.locator("td").first).to_contain_text(" UTC")
            await page.screenshot(path=tmp_path / "after-rollback.png", full_page=True)

            # -- actions: a wrong token is refused, the right one acts -----------------------
            await page.fill("#token", "not-the-token-at-all")
            await page.click("#token-save")
            assert await page.locator("button.action:enabled").count() == 12
            await slow.locator("button[data-action='start']").click()
            await expect(page.locator("#flash")).to_have_text(
                "start slow refused (401): wrong token"
            )
            await page.fill("#token", TOKEN)
            await page.click("#token-save")
            await phase2.locator("button[data-action='pause']").click()
            await expect(page.locator("#flash")).to_have_text(
                "pause phase2 refused (409): cannot pause phase2: it is Promoted"
            )
            await slow.locator("button[data-action='start']").click()
            await expect(page.locator("#flash")).to_contain_text("start slow: now Progressing")
            await expect(slow.get_by_test_id("phase")).to_have_text("Progressing")
            first_row = slow.locator("table.history tbody tr").first
            await expect(first_row.locator("td").nth(1)).to_have_text(
                "operator (admin page (127.0.0.1))"
            )
            await browser.close()
        await client.aclose()
