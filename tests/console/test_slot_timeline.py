"""The job page's fire times (the slot ledger, docs/schedules.md) and pausing the schedule from it."""

from __future__ import annotations

from typing import Any

from playwright.async_api import expect

from tests.console.conftest import api_call, bearer, make_job, no_script_ran, sign_in


async def test_fire_times_and_pause_from_the_job_page(stack: str, page: Any, module: Any, users: Any) -> None:
    operator = await users("operator")
    headers = await bearer(stack, operator.email)
    job = await make_job(stack, headers, "greet", name="Minutely greeting", schedule="* * * * *")
    await sign_in(page, stack, operator.email, path=f"/jobs/{job['id']}")
    await expect(page.get_by_role("heading", name="Fire times")).to_be_visible()
    # The next hour's slots are pending marks, each named by its time and outcome.
    marks = page.get_by_role("list", name="Fire times, oldest first").get_by_role("img")
    await expect(marks.first).to_be_visible()
    assert "pending" in (await marks.first.get_attribute("aria-label") or "")
    await page.get_by_text("Pause the schedule").click()
    await page.get_by_label("Why (shown on the schedule and in the audit log)").fill("quiet hours")
    await page.get_by_role("button", name="Pause schedule").click()
    await expect(page.get_by_role("heading", name="Fire times (schedule paused)")).to_be_visible()
    await expect(page.get_by_text("Paused: quiet hours.")).to_be_visible()
    detail = await api_call(stack, headers, "GET", f"/api/v1/jobs/{job['id']}")
    assert detail["schedule_paused"] is True and detail["pause"]["note"] == "quiet hours"
    await page.get_by_role("button", name="Resume schedule").click()
    await expect(page.get_by_role("heading", name="Fire times", exact=True)).to_be_visible()
    await no_script_ran(page)
