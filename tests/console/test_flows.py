"""Operating the platform from the console, in real Chromium against a real API, worker and Temporal."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from playwright.async_api import expect
from pydantic import SecretStr

from tests.console.conftest import XSS, api_call, bearer, make_job, no_script_ran, sign_in

SECRET = "tok-very-secret-4242"


async def test_create_job_through_the_dropdowns_and_form_then_run_it(stack: str, page: Any, module: Any, users: Any):
    operator = await users("operator")
    await sign_in(page, stack, operator.email, path="/jobs")
    await page.get_by_role("link", name="Create job").click()
    await expect(page.get_by_role("heading", name="Create job")).to_be_visible()
    job_type = page.get_by_label("Job type")
    await expect(job_type).to_be_disabled()
    await page.get_by_label("Module").select_option("demo")
    # The job-type dropdown lists the module's job types, from GET /modules/demo/job-types.
    await expect(job_type.locator("option")).to_have_text(["Choose a job type…", "Greet", "Slow", "Boom"])
    await job_type.select_option("greet")
    # The generated form starts from the schema's defaults.
    name = page.locator("#config_name")
    await expect(name).to_have_value("world")
    await name.fill(XSS)
    times = page.locator("#config_times")
    await times.fill("9")
    await page.locator("#config_api_token").fill(SECRET)
    await page.locator("#job-name").fill("Greeter")
    await page.get_by_label("Preset").select_option(label="Hourly")
    await page.get_by_label("Timezone").select_option("Europe/Paris")
    # The API previews the next runs of the schedule.
    await expect(page.locator(".preview ol.next-runs li")).to_have_count(5)
    await page.get_by_role("button", name="Create job").click()
    # Refused in the browser with the schema's message: nothing was sent.
    await expect(page.locator(".error-detail")).to_contain_text("must be <= 5")
    await times.fill("2")
    # What only the API can check is refused by the API, its message shown at the field.
    await page.get_by_label("Cron expression").fill("61 * * * *")
    await page.get_by_role("button", name="Create job").click()
    await expect(page.locator(".schedule .field-error")).to_contain_text("61")
    await page.get_by_label("Preset").select_option(label="Hourly")
    await expect(page.locator(".preview ol.next-runs li")).to_have_count(5)
    await page.get_by_role("button", name="Create job").click()
    await expect(page.get_by_role("heading", name="Greeter")).to_be_visible()
    await expect(page.get_by_text("0 * * * * (Europe/Paris)")).to_be_visible()
    # The secret is write-only: never shown back.
    assert SECRET not in await page.content()
    await page.get_by_role("button", name="Run now").click()
    await expect(page.get_by_role("heading", name="demo.greet")).to_be_visible()
    await expect(page.locator("h1 .badge")).to_have_text("COMPLETED", timeout=30_000)
    logs = page.get_by_test_id("logs")
    await expect(logs).to_contain_text(f"greeting {XSS}")
    await expect(logs).to_contain_text("token given: True")
    await expect(page.get_by_role("region", name="Result")).to_contain_text("hello")
    assert SECRET not in await page.content()
    # Editing shows the secret field empty (leaving it empty keeps the stored value).
    await page.go_back()
    await page.get_by_role("link", name="Edit").click()
    await expect(page.locator("#config_api_token")).to_have_value("")
    await expect(page.locator("#config_name")).to_have_value(XSS)
    assert SECRET not in await page.content()
    await no_script_ran(page)


async def test_a_long_run_cancelled_from_its_page(stack: str, page: Any, module: Any, users: Any):
    operator = await users("operator")
    headers = await bearer(stack, operator.email)
    job = await make_job(stack, headers, "slow", timeout_seconds=120)
    await sign_in(page, stack, operator.email, path=f"/jobs/{job['id']}")
    await page.get_by_role("button", name="Run now").click()
    await expect(page.locator("h1 .badge")).to_have_text("RUNNING", timeout=30_000)
    # Live log lines while the step runs (SSE).
    await expect(page.get_by_test_id("logs")).to_contain_text("slow starts", timeout=30_000)
    await page.get_by_role("button", name="Cancel run").click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_role("button", name="Cancel run").click()
    await expect(page.locator("h1 .badge")).to_have_text("CANCELLED", timeout=30_000)
    await expect(page.get_by_test_id("logs")).to_contain_text("cancelled")
    await expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    await no_script_ran(page)


async def test_a_failed_run_retried(stack: str, page: Any, module: Any, users: Any):
    operator = await users("operator")
    headers = await bearer(stack, operator.email)
    job = await make_job(stack, headers, "boom", retries=0)
    failed = await api_call(stack, headers, "POST", f"/api/v1/jobs/{job['id']}/execute?wait=true", json={})
    assert failed["status"] == "FAILED"
    await sign_in(page, stack, operator.email, path=f"/executions/{failed['id']}")
    await expect(page.locator("h1 .badge")).to_have_text("FAILED")
    await expect(page.locator(".error-message")).to_contain_text("boom on purpose")
    await expect(page.get_by_test_id("logs")).to_contain_text("about to fail")
    await page.get_by_role("button", name="Retry").click()
    await expect(page).not_to_have_url(f"{stack}/executions/{failed['id']}")
    await expect(page.locator("h1 .badge")).to_have_text("FAILED", timeout=30_000)
    retried = page.url.rsplit("/", 1)[-1]
    assert retried != failed["id"]
    runs = await api_call(stack, headers, "GET", f"/api/v1/jobs/{job['id']}/executions")
    assert {r["id"] for r in runs["items"]} >= {failed["id"], retried}


async def test_module_disabled_enabled_and_its_secret_never_shown(stack: str, page: Any, module: Any, users: Any):
    admin = await users("admin")
    await sign_in(page, stack, admin.email, path="/modules/demo")
    heading = page.get_by_role("heading", level=1)
    await expect(heading.locator(".badge")).to_have_text("ENABLED")
    # Module text is data: the description's markup is shown as text.
    await expect(page.locator("p.description")).to_have_text(f"Demo module {XSS}")
    # Only legal transitions are offered.
    await expect(page.get_by_role("button", name="Install")).to_have_count(0)
    await page.get_by_role("button", name="Disable").click()
    await page.get_by_role("dialog").get_by_role("button", name="Disable").click()
    await expect(heading.locator(".badge")).to_have_text("DISABLED")
    # Someone else enabled it meanwhile: the refusal (409) is shown as the API's message.
    await api_call(stack, await bearer(stack, admin.email), "POST", "/api/v1/modules/demo/enable")
    await page.get_by_role("button", name="Enable").click()
    await expect(page.get_by_role("alert")).to_contain_text("cannot enable module")
    await expect(heading.locator(".badge")).to_have_text("ENABLED")
    await page.get_by_role("button", name="Disable").click()
    await page.get_by_role("dialog").get_by_role("button", name="Disable").click()
    await expect(heading.locator(".badge")).to_have_text("DISABLED")
    await page.get_by_role("button", name="Enable").click()
    await expect(heading.locator(".badge")).to_have_text("ENABLED")
    # The module config form: a secret is written, then never shown back.
    await page.locator("#moduleconfig_region").fill("us")
    await page.locator("#moduleconfig_webhook_secret").fill(SECRET)
    await page.get_by_role("button", name="Save configuration").click()
    await expect(page.get_by_text("Configuration saved.")).to_be_visible()
    await page.reload()
    await expect(page.locator("#moduleconfig_region")).to_have_value("us")
    await expect(page.locator("#moduleconfig_webhook_secret")).to_have_value("")
    await expect(page.get_by_text("Secrets set: webhook_secret")).to_be_visible()
    assert SECRET not in await page.content()
    # Saving again without typing the secret keeps it.
    await page.get_by_role("button", name="Save configuration").click()
    await expect(page.get_by_text("Configuration saved.")).to_be_visible()
    headers = await bearer(stack, admin.email)
    stored = await api_call(stack, headers, "GET", "/api/v1/modules/demo/config")
    assert stored["config"]["webhook_secret"] == "********"
    await no_script_ran(page)


async def test_an_event_posted_is_seen_live(stack: str, page: Any, module: Any, users: Any):
    operator = await users("operator")
    await sign_in(page, stack, operator.email, path="/events?live=1")
    await expect(page.get_by_text("Listening for new events")).to_be_visible()
    await page.get_by_text("Post a test event").click()
    await page.get_by_label("Event name").fill("console.tested")
    await page.get_by_label("Payload (JSON object)").fill(json.dumps({"note": XSS}))
    await page.get_by_role("button", name="Post event").click()
    await expect(page.get_by_text("Posted event")).to_be_visible()
    live = page.get_by_test_id("live-events")
    await expect(live).to_contain_text("console.tested")
    await live.locator("summary").first.click()
    await expect(live.locator("pre.json")).to_contain_text("<script>window.__xss=1</script>")
    # An event posted elsewhere (the API) shows up too.
    headers = await bearer(stack, operator.email)
    await api_call(stack, headers, "POST", "/api/v1/events", json={"name": "console.external", "source": "curl"})
    await expect(live).to_contain_text("console.external")
    await no_script_ran(page)


MUTATING = [
    "Run now",
    "Create job",
    "Edit",
    "Enable",
    "Disable",
    "Delete",
    "Cancel run",
    "Retry",
    "Register module",
    "Post event",
    "Save configuration",
    "Install",
    "Uninstall",
    "Run with override",
]


async def test_a_viewer_sees_no_mutating_control(stack: str, page: Any, module: Any, users: Any):
    operator, viewer = await users("operator"), await users("viewer")
    headers = await bearer(stack, operator.email)
    job = await make_job(stack, headers, "greet")
    run = await api_call(stack, headers, "POST", f"/api/v1/jobs/{job['id']}/execute?wait=true", json={})
    await sign_in(page, stack, viewer.email)
    await expect(page.get_by_role("link", name="Admin")).to_have_count(0)
    for path, heading in [
        ("/", "Dashboard"),
        ("/modules", "Modules"),
        ("/modules/demo", "Demo"),
        ("/jobs", "Jobs"),
        (f"/jobs/{job['id']}", "greet job"),
        ("/executions", "Executions"),
        (f"/executions/{run['id']}", "demo.greet"),
        ("/events", "Events"),
    ]:
        await page.goto(stack + path)
        await expect(page.get_by_role("heading", level=1)).to_contain_text(heading)
        await expect(page.locator("main").get_by_text("Loading…")).to_have_count(0)
        for label in MUTATING:
            controls = page.locator("main").get_by_role("button", name=label, exact=True)
            links = page.locator("main").get_by_role("link", name=label, exact=True)
            assert await controls.count() + await links.count() == 0, f"{label!r} offered to a viewer on {path}"
        assert await page.locator("main input:not([disabled]):not([type=search]), main textarea").count() >= 0
    # The generated config form is read-only for a viewer.
    await page.goto(stack + "/modules/demo")
    await expect(page.locator("#moduleconfig_region")).to_be_disabled()
    await no_script_ran(page)


async def test_expired_session_returns_to_login_and_keeps_the_open_form(
    stack: str, page: Any, module: Any, users: Any, settings: Any
):
    admin = await users("admin")
    await sign_in(page, stack, admin.email, path="/jobs/new?module=demo")
    await page.get_by_label("Job type").select_option("greet")
    await page.locator("#job-name").fill("Kept across sign-in")
    await page.locator("#config_name").fill("still here")
    # The server ends every session: its tokens no longer verify and the refresh sessions are revoked.
    headers = await bearer(stack, admin.email)
    await api_call(stack, headers, "POST", f"/api/v1/users/{admin.id}/revoke-sessions")
    settings.jwt_secret = SecretStr(settings.jwt_secret.get_secret_value() + "-rotated")
    await page.get_by_role("button", name="Create job").click()
    dialog = page.get_by_role("dialog", name="Your session has expired")
    await expect(dialog).to_be_visible()
    await dialog.get_by_label("Email or username").fill(admin.email)
    await dialog.get_by_label("Password").fill("correct-horse-battery-staple")
    await dialog.get_by_role("button", name="Sign in").click()
    await expect(dialog).to_be_hidden()
    # Nothing lost: the form is as it was, and goes through now.
    await expect(page.locator("#job-name")).to_have_value("Kept across sign-in")
    await expect(page.locator("#config_name")).to_have_value("still here")
    await page.get_by_role("button", name="Create job").click()
    await expect(page.get_by_role("heading", name="Kept across sign-in")).to_be_visible()
    # A reload after the session is gone: the login page, then back to the page that was open.
    job_url = page.url
    await page.context.clear_cookies()
    await page.reload()
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    await page.get_by_label("Email or username").fill(admin.email)
    await page.get_by_label("Password").fill("correct-horse-battery-staple")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(job_url)
    await expect(page.get_by_role("heading", name="Kept across sign-in")).to_be_visible()


async def test_register_a_bundle_and_validate_a_manifest(stack: str, page: Any, users: Any, tmp_path: Any):
    import shutil

    from tests.console.conftest import CODE, JOBS
    from tests.jobs.helpers import write_module

    admin = await users("admin")
    folder = write_module(tmp_path, name="uploaded", code=CODE, jobs=JOBS)
    bundle = shutil.make_archive(str(tmp_path / "uploaded"), "zip", folder)
    await sign_in(page, stack, admin.email, path="/modules")
    await page.get_by_role("button", name="Register module").click()
    # A manifest with mistakes: each error at its JSON pointer.
    await page.get_by_label("manifest.json").fill(json.dumps({"name": "Bad Name", "version": "1", "jobs": [{}]}))
    await page.get_by_role("button", name="Validate").click()
    await expect(page.get_by_text("The manifest is invalid.")).to_be_visible()
    await expect(page.locator(".issue-error code").filter(has_text="/name")).to_have_count(1)
    await expect(page.locator(".issue-error code").filter(has_text="/jobs/0")).not_to_have_count(0)
    # A bundle, uploaded: the module page follows.
    await page.get_by_label("Bundle file").set_input_files(bundle)
    await page.get_by_role("button", name="Register", exact=True).click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Uploaded")
    await expect(page.get_by_role("heading", level=1).locator(".badge")).to_have_text("REGISTERED")
    await page.get_by_role("button", name="Install").click()
    await expect(page.get_by_role("heading", level=1).locator(".badge")).to_have_text("INSTALLED", timeout=30_000)
    await no_script_ran(page)


async def test_admin_creates_a_user_changes_its_role_and_deactivates_it(stack: str, page: Any, users: Any):
    admin = await users("admin")
    await sign_in(page, stack, admin.email, path="/admin")
    await page.get_by_text("Create a user").click()
    await page.get_by_label("Email", exact=True).fill("new.operator@example.com")
    await page.get_by_label("Password", exact=True).fill("a-long-enough-passphrase-42")
    await page.get_by_label("Role", exact=True).first.select_option("operator")
    await page.get_by_role("button", name="Create user").click()
    row = page.locator("tr", has_text="new.operator@example.com")
    await expect(row).to_be_visible()
    role = page.get_by_label("Role of new.operator@example.com")
    await expect(role).to_have_value("operator")
    await role.select_option("viewer")
    await row.get_by_role("button", name="Deactivate").click()
    await expect(row.get_by_role("button", name="Activate")).to_be_visible()
    headers = await bearer(stack, admin.email)
    found = await api_call(stack, headers, "GET", "/api/v1/users", params={"search": "new.operator"})
    assert [(u["role"], u["is_active"]) for u in found["items"]] == [("viewer", False)]
    # The audit log shows what was done, filtered in the URL.
    await page.get_by_label("Action").fill("user.*")
    await expect(page).to_have_url(re.compile(r"action=user\.\*"))
    await expect(page.locator("table").last).to_contain_text("user.")


CAPTURE = """
def capture(ctx):
    ctx.browser.navigate(ctx.config["url"])
    ctx.browser.screenshot("page.png")
    ctx.browser.pdf("page.pdf")
    return {"captured": ctx.config["url"]}
"""


async def test_artifacts_previewed_and_downloaded(
    stack: str, page: Any, users: Any, sessions: Any, settings: Any, tmp_path: Path
):
    from tests.jobs.helpers import put_module, write_module

    extra = {"permissions": {"hosts": ["127.0.0.1"], "services": ["browser"]}}
    jobs = [{"name": "capture", "description": "screenshot and PDF of a page", "handler": "capture"}]
    folder = write_module(tmp_path, name="shots", code=CAPTURE, jobs=jobs, extra=extra)
    await put_module(sessions, settings.state_dir, folder)
    operator = await users("operator")
    headers = await bearer(stack, operator.email)
    body = {"module": "shots", "job_type": "capture", "name": "capture", "schedule": None}
    job = await api_call(stack, headers, "POST", "/api/v1/jobs", json=body | {"config": {"url": f"{stack}/login"}})
    run = await api_call(stack, headers, "POST", f"/api/v1/jobs/{job['id']}/execute?wait=true", json={})
    assert run["status"] == "COMPLETED", run
    await sign_in(page, stack, operator.email, path=f"/executions/{run['id']}")
    preview = page.get_by_role("img", name="Artifact page.png")
    await expect(preview).to_be_visible()
    assert await preview.evaluate("img => img.naturalWidth") > 100
    pdf = page.locator(".artifacts li", has_text="page.pdf")
    async with page.expect_download() as download:
        await pdf.get_by_role("button", name="Download").click()
    saved = await (await download.value).path()
    assert Path(saved).read_bytes().startswith(b"%PDF")
