"""The staff web UI in a real browser: Debian's Chromium, headless, driven by Selenium.

The tests fail, never skip, when Chromium or its driver is missing: `.ci/run` installs
them with apt-get (`chromium`, `chromium-driver`), and `pip install -e '.[test]'`
installs Selenium.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from libs.common.clock import FakeClock
from libs.common.progress import wake_deferred
from local import demo_data
from local.stack import DEMO_CLOUD_ID, Stack
from services.gateway.dashboard import Dashboard
from services.gateway.preview import CampaignPreview
from services.scheduler.recurrence import Rule
from tests.conftest import wait_until

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # reported by the `browser` fixture as a failure with the fix
    webdriver = None

CHROMIUM = os.environ.get("TM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TM_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL_HINT = ("install Chromium and its driver with `apt-get install -y chromium chromium-driver` (Debian; "
                ".ci/run does this) and Selenium with `.venv/bin/pip install -e '.[test]'`, or point TM_CHROMIUM "
                "and TM_CHROMEDRIVER at other binaries")
# Without these flags Chromium tries to reach Google's services and stalls on a closed network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1360,1000")
# Noon in New York, so every text of a run falls on one local day.
START = datetime(2027, 3, 15, 16, 0, tzinfo=timezone.utc)
WAIT_S = 60.0
# Twilio error 30006 (landline or unreachable carrier) ends a text at once. The demo's
# 30003 (unreachable handset) earns new attempts minutes apart on the broker's real-time
# delay queues, longer than these tests wait.
FINAL_DELIVERY_ERROR = 30006


@pytest.fixture(scope="module")
def stack():
    running = Stack(port=0, sender_rate_sps=100, callback_delay_s=0.01, clock=FakeClock(start=START.timestamp()))
    running.start()
    running.twilio.set_undelivered(dict.fromkeys(demo_data.DEMO_UNDELIVERED, FINAL_DELIVERY_ERROR))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """A headless Chromium with a fresh profile; fails the tests when it cannot start."""
    if webdriver is None:
        pytest.fail(f"Selenium is not installed: {INSTALL_HINT}")
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: {INSTALL_HINT}")

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    except WebDriverException as error:
        pytest.fail(f"Chromium did not start: {error.msg}. Check the installation: {INSTALL_HINT}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium, stack):
    """The shared Chromium, signed out, on a blank page, with an empty console log."""
    chromium.get("about:blank")
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
    chromium.get_log("browser")
    return chromium


def wait_for(driver, condition, description: str, timeout_s: float = WAIT_S):
    """Wait until `condition(driver)` is truthy and return it; fail naming what never happened."""
    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        screenshot = Path(tempfile.mkdtemp(prefix="text-manager-ui-")) / "page.png"
        driver.save_screenshot(str(screenshot))
        alerts = [node.text for node in driver.find_elements(By.CSS_SELECTOR, "[role=alert]") if node.text]
        raise AssertionError(f"timed out after {timeout_s} s waiting until {description}; "
                             f"alerts on the page: {alerts}; screenshot: {screenshot}") from None


def text_of(driver, selector: str) -> str:
    """Return the text of the first visible element matching `selector`, or "".

    Pages that refresh every 2 s replace their elements, so a node found a moment ago
    may be gone: it is looked up again.
    """
    for _ in range(10):
        try:
            nodes = driver.find_elements(By.CSS_SELECTOR, selector)
            return nodes[0].text if nodes and nodes[0].is_displayed() else ""
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{selector} kept being replaced while it was read")


def texts_of(driver, selector: str, attribute: str | None = None) -> list[str]:
    """Return the text (or an attribute) of every element matching `selector`, looked up again if replaced."""
    for _ in range(10):
        try:
            nodes = driver.find_elements(By.CSS_SELECTOR, selector)
            return [node.get_attribute(attribute) if attribute else node.text for node in nodes]
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{selector} kept being replaced while it was read")


def sign_in(driver, stack: Stack, password: str = demo_data.DEMO_STAFF_USER[1],
            username: str = demo_data.DEMO_STAFF_USER[0]) -> None:
    driver.get(stack.gateway_url + "/")
    wait_for(driver, lambda d: d.find_element(By.ID, "sign-in-view").is_displayed(), "the sign-in form shows")
    form = driver.find_element(By.ID, "sign-in")
    form.find_element(By.NAME, "username").send_keys(username)
    form.find_element(By.NAME, "password").send_keys(password)
    form.find_element(By.NAME, "cloud_id").send_keys(DEMO_CLOUD_ID)
    driver.find_element(By.ID, "log-in").click()


def signed_in(driver, stack: Stack, user: tuple[str, str] = demo_data.DEMO_STAFF_USER) -> None:
    sign_in(driver, stack, username=user[0], password=user[1])
    wait_for(driver, lambda d: d.find_element(By.ID, "app-view").is_displayed(), "the app shows after sign-in")


def script_errors(driver) -> list[str]:
    """Return the browser console's JavaScript and Content-Security-Policy errors."""
    entries = driver.get_log("browser")
    return [entry["message"] for entry in entries
            if entry["level"] == "SEVERE" and entry["source"] != "network"
            or "Content Security Policy" in entry["message"]]


def create_campaign(driver, name: str, body: str) -> str:
    """Fill in and save the campaign editor; return the new campaign's id from the address."""
    driver.find_element(By.CSS_SELECTOR, "[data-nav=campaigns]").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "new-campaign"), "the campaign list shows").click()
    form = wait_for(driver, lambda d: d.find_element(By.ID, "campaign-form"), "the campaign editor shows")
    form.find_element(By.NAME, "name").send_keys(name)
    form.find_element(By.NAME, "body").send_keys(body)
    form.find_element(By.NAME, "iqa_path").send_keys(demo_data.DEMO_QUERY_PATH)
    driver.find_element(By.ID, "save-campaign").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "send-panel"), "the saved campaign's page shows")
    return driver.current_url.rsplit("/", 1)[-1]


# ------------------------------------------------------------------ sign-in


def test_wrong_password(stack, browser):
    sign_in(browser, stack, password="not-the-password")

    error = wait_for(browser, lambda d: text_of(d, "#sign-in .form-error"), "the sign-in error shows")

    assert "The user name, password or Cloud ID is wrong" in error
    assert browser.find_element(By.NAME, "password").get_attribute("aria-invalid") == "true"
    assert not browser.find_element(By.ID, "app-view").is_displayed()


def test_sign_in_lockout_message(stack, browser):
    """After too many failures the form shows when to try again. The user name exists nowhere."""
    username = "no-such-user"
    limit = stack.runtime.settings.sign_in_max_failures
    errors = []
    for _ in range(limit):
        sign_in(browser, stack, password="not-the-password", username=username)
        errors.append(wait_for(browser, lambda d: text_of(d, "#sign-in .form-error"), "the sign-in error shows"))

    assert all("The user name, password or Cloud ID is wrong" in error for error in errors[:-1])
    assert errors[-1].startswith("Too many failed sign-ins with this user name and Cloud ID: try again in 15 minutes")
    assert "reset it in iMIS" in errors[-1]
    assert not browser.find_element(By.ID, "app-view").is_displayed()


def test_sign_in_form(stack, browser):
    browser.get(stack.gateway_url + "/")
    wait_for(browser, lambda d: d.find_element(By.ID, "sign-in-view").is_displayed(), "the sign-in form shows")
    labels = [label.text for label in browser.find_elements(By.CSS_SELECTOR, "#sign-in label")]
    button = browser.find_element(By.ID, "log-in")

    assert labels == ["iMIS username", "iMIS password", "Cloud ID"]
    assert button.text == "Log In"
    assert button.value_of_css_property("background-color") == "rgba(29, 111, 216, 1)"


def test_navigation(stack, browser):
    signed_in(browser, stack)

    entries = [link.text for link in browser.find_elements(By.CSS_SELECTOR, ".side-nav a")]
    browser.find_element(By.CSS_SELECTOR, "[data-nav=settings]").click()
    current = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".side-nav [aria-current=page]").text == "Settings"
                       and d.find_element(By.CSS_SELECTOR, ".side-nav [aria-current=page]"), "Settings is current")

    assert entries == ["Home", "Campaigns", "Settings"]
    assert current.text == "Settings"


def test_sign_out(stack, browser):
    signed_in(browser, stack)

    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "sign-in-view").is_displayed(), "the sign-in form shows again")
    browser.refresh()

    wait_for(browser, lambda d: d.find_element(By.ID, "sign-in-view").is_displayed(), "the sign-in form shows after reload")
    assert not browser.find_element(By.ID, "app-view").is_displayed()


# ------------------------------------------------------------------ a campaign from start to end


@pytest.mark.slow
def test_campaign_end_to_end(stack, browser):
    signed_in(browser, stack)
    campaign_id = create_campaign(browser, "Spring meeting", "Hello {FirstName|member}, see you at the spring meeting.")

    browser.find_element(By.ID, "send-now").click()
    browser.find_element(By.CSS_SELECTOR, "[data-nav=campaigns]").click()
    row = f"tr[data-campaign-id='{campaign_id}']"
    wait_for(browser, lambda d: text_of(d, f"{row} [data-col=status]") == "completed", "the list shows completed")
    recipients = text_of(browser, f"{row} [data-col=recipients]")

    browser.find_element(By.CSS_SELECTOR, f"{row} a").click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#skipped-rows tbody tr"))
             == demo_data.DEMO_SKIPPED_COUNT + demo_data.DEMO_DUPLICATE_COUNT, "every skipped row shows")
    reasons = set(texts_of(browser, "#skipped-rows td.reason"))
    counts = dict(zip(texts_of(browser, "[data-count]", "data-count"), texts_of(browser, "[data-count]")))
    skipped_summary, undeliverable_summary = text_of(browser, "#skipped-summary"), text_of(browser, "#undeliverable-summary")
    imis_logs, imis_log_texts = texts_panel_after_logging(browser, stack, campaign_id)

    browser.find_element(By.CSS_SELECTOR, "[data-nav=home]").click()
    wait_for(browser, lambda d: text_of(d, "[data-stage=completed]") not in ("", "–"), "the dashboard shows")
    accepted = sum(1 for message in stack.twilio.messages() if message["sid"])
    run_counts = stack.runtime.db.runs.find_one({"campaign_id": campaign_id})["counts"]

    assert recipients == "237"
    assert demo_data.DEMO_RECIPIENT_COUNT == 237
    assert reasons == {"duplicate number", "invalid number", "no number"}
    assert counts == {name: f"{run_counts[name]:,}" for name in counts}
    assert counts["recipients"] == "237"
    undeliverable = len(demo_data.DEMO_UNDELIVERED)
    skipped_rows = demo_data.DEMO_SKIPPED_COUNT + demo_data.DEMO_DUPLICATE_COUNT
    assert counts["undeliverable"] == str(undeliverable)
    assert counts["skipped"] == str(skipped_rows)
    assert counts["cancelled"] == "0"
    assert skipped_summary.startswith(f"{skipped_rows} IQA rows were set aside before sending and not texted (")
    assert undeliverable_summary.startswith(f"Twilio accepted {undeliverable} texts and then reported them "
                                            f"undeliverable (landline or unreachable carrier: {undeliverable}).")
    assert f"{undeliverable} undeliverable" in text_of(browser, "[data-figure=lifetime] + .figure-note")
    assert text_of(browser, "[data-figure=texts_sent_today]") == str(accepted)
    assert text_of(browser, "[data-figure=texts_sent_this_month]") == str(accepted)
    assert text_of(browser, "[data-figure=daily_limit]") == f"{accepted} / 3,000"
    assert text_of(browser, "[data-figure=performance_level]") == "Flex-Pay per text usage"
    assert text_of(browser, "[data-stage=completed]") == "1"
    assert set(imis_logs) == {"written", "none"}
    assert all(text.startswith("Interaction ") for log, text in zip(imis_logs, imis_log_texts) if log == "written")
    assert script_errors(browser) == []


def texts_panel_after_logging(browser, stack, campaign_id: str) -> tuple[list[str], list[str]]:
    """Wait until iMIS has logged every sent text, refresh the Texts panel, and return its first page.

    Returns the `data-imis-log` status and the text of each row's iMIS log cell.
    """
    run_id = stack.runtime.db.runs.find_one({"campaign_id": campaign_id})["_id"]
    sent = {"run_id": run_id, "sent_at": {"$ne": None}}
    wait_until(lambda: stack.runtime.db.messages.count_documents(sent)
               == stack.runtime.db.messages.count_documents({**sent, "imis_log.status": "written"}),
               "every sent text is logged in iMIS")
    browser.find_element(By.ID, "reload-texts").click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#run-texts tbody tr")) == 100,
             "the first page of texts shows")
    return (texts_of(browser, "#run-texts td[data-imis-log]", "data-imis-log"),
            texts_of(browser, "#run-texts td[data-imis-log]"))


def test_schedule_campaign(stack, browser):
    signed_in(browser, stack)
    campaign_id = create_campaign(browser, "Scheduled reminder", "A reminder for {FirstName|member}.")

    # Later than both the browser's real clock and the stack's fake one, and less than a
    # year after either, the furthest ahead the API takes.
    day = (max(datetime.now(timezone.utc), START) + timedelta(days=60)).date()
    # Typing into a datetime-local input depends on the browser's locale, so the test sets the value.
    browser.execute_script(f"document.getElementById('send-at').value = '{day.isoformat()}T09:30';")
    browser.find_element(By.ID, "schedule").click()
    wait_for(browser, lambda d: text_of(d, ".title-badges .badge") == "scheduled", "the campaign shows scheduled")
    run_id = text_of(browser, "#run-details code")

    run = stack.runtime.db.runs.find_one({"_id": run_id})
    local_due = browser.execute_script(
        f"return new Date({day.year}, {day.month - 1}, {day.day}, 9, 30).toISOString();")
    assert run["campaign_id"] == campaign_id
    assert run["due_at"] == datetime.fromisoformat(local_due.replace("Z", "+00:00"))
    assert texts_of(browser, "#cancel:enabled") == ["Cancel"]
    assert texts_of(browser, "#pause:disabled") == ["Pause"]


def test_preview(stack, browser):
    signed_in(browser, stack)
    create_campaign(browser, "Previewed", "Hello {FirstName|member}, this is a preview.")

    browser.find_element(By.ID, "preview").click()
    wait_for(browser, lambda d: text_of(d, "[data-preview=recipients]") or text_of(d, "#preview-panel .page-error"),
             "the preview or its error shows")
    recipients = text_of(browser, "[data-preview=recipients]")
    samples = texts_of(browser, "#preview-samples tbody tr")

    assert text_of(browser, "#preview-panel .page-error") == ""
    assert recipients.endswith(f" of {demo_data.DEMO_MEMBER_COUNT} IQA rows")
    assert samples
    assert all("this is a preview." in sample for sample in samples)
    assert not any("{FirstName" in sample for sample in samples)


# ------------------------------------------------------------------ sending again, recurring schedules, daily limit


def open_campaign(driver, stack: Stack, campaign_id: str) -> None:
    driver.get(f"{stack.gateway_url}/#/campaigns/{campaign_id}")
    wait_for(driver, lambda d: text_of(d, ".title-badges .badge"), "the campaign page shows")


def badge_is(status: str):
    return lambda driver: text_of(driver, ".title-badges .badge") == status


def accept_confirm_dialogs(driver) -> None:
    """Accept every window.confirm on this page, as staff who click OK would."""
    driver.execute_script("window.confirm = () => true;")


def preview_recipients(stack: Stack, campaign_id: str) -> int:
    runtime = stack.runtime
    preview = CampaignPreview(runtime.db, tenants=runtime.tenants, imis_factory=runtime.imis, clock=runtime.clock)
    return preview.build(DEMO_CLOUD_ID, campaign_id)["recipients"]


def insert_completed_campaign(stack: Stack, name: str, sent: int = 233) -> str:
    """Store a campaign whose one run completed, as the services leave it."""
    campaign_id, run_id = uuid.uuid4().hex, uuid.uuid4().hex
    db = stack.runtime.db
    db.runs.insert_one({"_id": run_id, "tenant_id": DEMO_CLOUD_ID, "campaign_id": campaign_id, "status": "completed",
                        "due_at": START, "expanded": True,
                        "counts": {"recipients": sent, "sent": sent, "delivered": sent, "done": sent}})
    db.campaigns.insert_one({"_id": campaign_id, "tenant_id": DEMO_CLOUD_ID, "name": name, "body": "Hello.",
                             "iqa_path": demo_data.DEMO_QUERY_PATH, "email": "", "phone_column": "Mobile",
                             "id_column": "ID", "smart_encoding": False, "status": "completed", "created_at": START,
                             "updated_at": START, "current_run_id": run_id})
    return campaign_id


@pytest.mark.slow
def test_send_again_confirms(stack, browser):
    signed_in(browser, stack)
    campaign_id = create_campaign(browser, "Sent twice", "Hello {FirstName|member}, a second reminder.")
    browser.find_element(By.ID, "send-now").click()
    wait_for(browser, badge_is("completed"), "the first run completes", timeout_s=120)
    first_sent = stack.runtime.db.runs.find_one({"campaign_id": campaign_id})["counts"]["sent"]

    wait_for(browser, lambda d: d.find_element(By.ID, "send-now").is_displayed(), "Send again shows")
    hint = text_of(browser, "#send-again-hint")
    browser.find_element(By.ID, "send-now").click()
    wait_for(browser, lambda d: "The query returns" in text_of(d, "#resend-count"), "the confirmation counts")
    question = text_of(browser, "#resend-count")
    button = text_of(browser, "#confirm-resend")
    browser.find_element(By.ID, "cancel-resend").click()
    wait_for(browser, lambda d: not text_of(d, "#resend-confirm"), "the confirmation closes")
    runs_after_no = stack.runtime.db.runs.count_documents({"campaign_id": campaign_id})

    browser.find_element(By.ID, "send-now").click()
    wait_for(browser, lambda d: text_of(d, "#confirm-resend").startswith("Send again to "), "the count shows again")
    browser.find_element(By.ID, "confirm-resend").click()
    wait_for(browser, lambda d: stack.runtime.db.runs.count_documents({"campaign_id": campaign_id}) == 2,
             "a second run starts")
    wait_for(browser, badge_is("completed"), "the second run completes", timeout_s=120)

    expected = preview_recipients(stack, campaign_id)
    assert first_sent > 0
    assert f"{first_sent} texts sent before" in hint
    assert f"The query returns {expected} members who can get a text now" in question
    assert f"Earlier runs of this campaign sent {first_sent} texts." in question
    assert button == f"Send again to {expected} members"
    assert runs_after_no == 1
    assert text_of(browser, "#send-panel .form-error") == ""
    assert script_errors(browser) == []


def test_cancelled_before_send_sends(stack, browser):
    """A campaign cancelled before its send time sent nothing, so it sends again without a confirmation."""
    signed_in(browser, stack)
    campaign_id = insert_completed_campaign(stack, "Cancelled before its time", sent=0)
    stack.runtime.db.runs.update_one({"campaign_id": campaign_id}, {"$set": {"status": "cancelled"}})
    stack.runtime.db.campaigns.update_one({"_id": campaign_id}, {"$set": {"status": "cancelled"}})
    open_campaign(browser, stack, campaign_id)
    banner = text_of(browser, "#campaign-banner")
    hint = text_of(browser, "#send-again-hint")

    browser.find_element(By.ID, "send-now").click()
    wait_for(browser, lambda d: stack.runtime.db.runs.count_documents({"campaign_id": campaign_id}) == 2,
             "a second run starts")
    wait_for(browser, badge_is("completed"), "the second run completes", timeout_s=120)

    assert banner == "This campaign was cancelled before any text went out."
    assert hint.startswith("No text of this campaign went out yet")
    assert text_of(browser, "#resend-confirm") == ""
    assert "already sent" not in text_of(browser, "#send-panel .form-error")
    assert script_errors(browser) == []


def test_repeat_weekly_then_stop(stack, browser):
    signed_in(browser, stack)
    campaign_id = create_campaign(browser, "Weekly reminder", "A weekly reminder for {FirstName|member}.")
    browser.find_element(By.CSS_SELECTOR, "#repeat-option summary").click()
    form = wait_for(browser, lambda d: d.find_element(By.ID, "schedule-form"), "the schedule form shows")
    browser.find_element(By.CSS_SELECTOR, "#schedule-freq option[value=weekly]").click()
    for day in ("mon", "thu"):
        form.find_element(By.CSS_SELECTOR, f"input[name=weekdays][value={day}]").click()
    # Typing into time and date inputs depends on the browser's locale, so the test sets the values.
    browser.execute_script("document.getElementById('schedule-time').value = '09:30';"
                           "document.getElementById('schedule-start').value = '2027-03-15';"
                           "document.getElementById('schedule-form').dispatchEvent(new Event('input'));")
    summary = text_of(browser, "#schedule-summary")
    browser.find_element(By.ID, "set-schedule").click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#schedule-upcoming li")) == 5,
             "the next occurrences show")
    stored = stack.runtime.db.campaigns.find_one({"_id": campaign_id})
    later = (moment for moment in Rule.from_dict(stored["schedule"]).occurrences()
             if moment >= stored["next_occurrence"])
    expected = [moment.isoformat() for moment in itertools.islice(later, 5)]
    shown = texts_of(browser, "#schedule-upcoming li", "data-occurrence")
    rule = text_of(browser, "#schedule-rule")
    buttons = {name: browser.find_element(By.ID, name).is_displayed() for name in ("cancel", "pause", "stop-schedule")}

    accept_confirm_dialogs(browser)
    browser.find_element(By.ID, "stop-schedule").click()
    wait_for(browser, badge_is("draft"), "the campaign is a draft again")
    stopped = stack.runtime.db.campaigns.find_one({"_id": campaign_id})

    assert summary.startswith("Every Monday and Thursday at 9:30")
    assert rule.startswith("Every Monday and Thursday at 9:30")
    assert "(America/New_York), from March 15, 2027, with no end date." in rule
    assert stored["schedule"]["tz"] == "America/New_York"
    assert stored["schedule"]["weekdays"] == ["mon", "thu"]
    assert shown == expected
    assert buttons == {"cancel": False, "pause": False, "stop-schedule": True}
    assert stopped["schedule_active"] is False
    assert stopped["schedule"] == stored["schedule"]
    assert text_of(browser, "#schedule-state") == "Stopped: no more texts go out on this schedule."
    assert not browser.find_element(By.ID, "stop-schedule").is_displayed()
    assert script_errors(browser) == []


def put_schedule(driver, campaign_id: str, rule: dict) -> None:
    """Set a campaign's recurring schedule through the API, with the signed-in page's session."""
    error = driver.execute_async_script(
        "const [campaignId, rule, done] = arguments;"
        "import('/static/api.js').then((api) => api.callApi('PUT', `/api/campaigns/${campaignId}/schedule`, rule))"
        "  .then(() => done(null), (failure) => done(failure.message));", campaign_id, rule)
    assert error is None


def test_change_schedule_keeps_zone(stack, browser):
    """Changing a rule set in another zone than the organisation's keeps the rule's zone."""
    signed_in(browser, stack)
    campaign_id = create_campaign(browser, "Weekly in London", "A weekly reminder.")
    put_schedule(browser, campaign_id, {"freq": "weekly", "weekdays": ["mon"], "time": "09:00",
                                        "start": "2027-03-15", "tz": "Europe/London"})
    browser.refresh()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#schedule-upcoming li")) == 5,
             "the next occurrences show")
    state = text_of(browser, "#schedule-state")
    first = texts_of(browser, "#schedule-upcoming li")[0]

    browser.find_element(By.ID, "change-schedule").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "schedule-form"), "the schedule form shows")
    zone_note = text_of(browser, "#schedule-zone")
    summary = text_of(browser, "#schedule-summary")
    browser.find_element(By.ID, "set-schedule").click()
    wait_for(browser, lambda d: not d.find_elements(By.ID, "schedule-form"), "the schedule form closes")
    stored = stack.runtime.db.campaigns.find_one({"_id": campaign_id})

    assert stored["schedule"]["tz"] == "Europe/London"
    assert stored["schedule"]["time"] == "09:00"
    assert zone_note == "Times are in the schedule's time zone, Europe/London."
    assert "(Europe/London)" in summary
    assert state == "Next texts go out at these times (Europe/London):"
    assert "9:00" in first
    assert script_errors(browser) == []


def insert_second_run(stack: Stack, campaign_id: str, run_status: str, counts: dict) -> str:
    """Store a new current run of the campaign, with these counts, as Send again leaves it."""
    run_id = uuid.uuid4().hex
    db = stack.runtime.db
    db.runs.insert_one({"_id": run_id, "tenant_id": DEMO_CLOUD_ID, "campaign_id": campaign_id, "status": run_status,
                        "due_at": START, "expanded": True, "counts": counts})
    db.campaigns.update_one({"_id": campaign_id}, {"$set": {"current_run_id": run_id, "status": run_status}})
    return run_id


def test_send_again_shows_current_run(stack, browser):
    signed_in(browser, stack)
    campaign_id = insert_completed_campaign(stack, "Second run under way", sent=236)
    insert_second_run(stack, campaign_id, "paused", {"recipients": 232, "sent": 9, "delivered": 7, "done": 9})
    open_campaign(browser, stack, campaign_id)
    wait_for(browser, lambda d: text_of(d, "[data-count=sent]") not in ("", "–"), "the counts show")

    assert text_of(browser, "#run-progress") == "9 of 232 recipients sent so far."
    assert text_of(browser, "#counts-caption") == "Current run:"
    assert text_of(browser, "[data-count=recipients]") == "232"
    assert text_of(browser, "[data-count=sent]") == "9"
    assert text_of(browser, "[data-count=delivered]") == "7"
    assert text_of(browser, "#all-runs-totals") == (
        "All runs of this campaign together: 468 recipients, 245 sent, 243 delivered.")
    assert script_errors(browser) == []


def test_one_run_shows_no_totals(stack, browser):
    signed_in(browser, stack)
    campaign_id = insert_completed_campaign(stack, "Sent once")
    open_campaign(browser, stack, campaign_id)
    wait_for(browser, lambda d: text_of(d, "[data-count=sent]") == "233", "the counts show")

    assert text_of(browser, "#run-progress") == "233 of 233 recipients were sent a text."
    assert text_of(browser, "#all-runs-totals") == ""


def store_text(stack: Stack, run_id: str, to: str, status: str, **fields) -> None:
    stack.runtime.db.messages.insert_one({"_id": uuid.uuid4().hex, "tenant_id": DEMO_CLOUD_ID, "run_id": run_id,
                                          "member_id": to[-4:], "to": to, "status": status, **fields})


def test_texts_panel_words_and_refresh(stack, browser):
    signed_in(browser, stack)
    campaign_id = insert_completed_campaign(stack, "Texts in words", sent=0)
    run_id = insert_second_run(stack, campaign_id, "paused", {"recipients": 4, "sent": 1})
    store_text(stack, run_id, "+15550000001", "opted_out", reason="the number replied STOP")
    store_text(stack, run_id, "+15550000002", "sending")
    store_text(stack, run_id, "+15550000003", "skipped", sent_at=START, error_code=30006, reason="landline")
    store_text(stack, run_id, "+15550000004", "skipped", reason="no mobile number")
    open_campaign(browser, stack, campaign_id)
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#run-texts tbody tr")) == 4,
             "the texts show")
    statuses = [status.split("\n")[0] for status in texts_of(browser, "#run-texts [data-col=status]")]

    store_text(stack, run_id, "+15550000005", "sent", sent_at=START)
    stack.runtime.db.runs.update_one({"_id": run_id}, {"$set": {"counts.sent": 2}})
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#run-texts tbody tr")) == 5,
             "the new text shows without pressing Refresh", timeout_s=10)

    assert statuses == ["opted out", "sending", "undeliverable", "skipped"]
    assert text_of(browser, "#texts-summary") == "5 texts in this run."
    assert script_errors(browser) == []


def test_one_time_send_names_zone(stack, browser):
    signed_in(browser, stack)
    create_campaign(browser, "Once, with its zone", "A reminder.")
    zone = browser.execute_script("return Intl.DateTimeFormat().resolvedOptions().timeZone;")
    label = text_of(browser, "label[for=send-at]") or text_of(browser, "#send-panel .send-later label")

    day = (max(datetime.now(timezone.utc), START) + timedelta(days=60)).date()
    browser.execute_script(f"document.getElementById('send-at').value = '{day.isoformat()}T09:30';")
    browser.find_element(By.ID, "schedule").click()
    wait_for(browser, badge_is("scheduled"), "the campaign shows scheduled")
    banner = text_of(browser, "#campaign-banner")
    due = texts_of(browser, "#run-details dd")[1]

    assert zone
    assert label == f"Send once at ({zone})"
    assert banner.startswith("Scheduled to send at ")
    assert banner.endswith(f" ({zone}).")
    assert due.endswith(f" ({zone})")
    assert "9:30" in due


def test_repeat_form_checks_weekdays(stack, browser):
    signed_in(browser, stack)
    campaign_id = create_campaign(browser, "No weekday", "Hello.")
    browser.find_element(By.CSS_SELECTOR, "#repeat-option summary").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "schedule-form"), "the schedule form shows")
    browser.find_element(By.CSS_SELECTOR, "#schedule-freq option[value=weekly]").click()

    browser.find_element(By.ID, "set-schedule").click()
    error = wait_for(browser, lambda d: text_of(d, "[data-field=weekdays] .field-error"), "the weekday error shows")

    assert error == "Tick at least one day of the week."
    assert stack.runtime.db.campaigns.find_one({"_id": campaign_id}).get("schedule") is None


def test_stop_repeating_keeps_completed(stack, browser):
    """Repeating a completed campaign and stopping again leaves it completed, with its counts."""
    signed_in(browser, stack)
    campaign_id = insert_completed_campaign(stack, "Completed, then repeated")
    open_campaign(browser, stack, campaign_id)
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#repeat-option summary"), "Send again shows").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "set-schedule"), "the schedule form shows").click()
    wait_for(browser, badge_is("scheduled"), "the campaign repeats")
    repeats = text_of(browser, "#repeats-tag")

    accept_confirm_dialogs(browser)
    browser.find_element(By.ID, "stop-schedule").click()
    wait_for(browser, badge_is("completed"), "the campaign is completed again")

    assert repeats == "repeats"
    assert text_of(browser, "[data-count=sent]") == "233"
    assert stack.runtime.db.campaigns.find_one({"_id": campaign_id})["status"] == "completed"
    assert script_errors(browser) == []


def deferred_banner(driver, stack: Stack, campaign_id: str) -> tuple[int, str] | None:
    """Return the texts waiting for the daily limit and the banner, once every other text is final and the banner shows them."""
    db = stack.runtime.db
    run = db.runs.find_one({"campaign_id": campaign_id})
    if run is None or not run.get("expanded"):
        return None
    deferred = db.messages.count_documents({"run_id": run["_id"], "status": "deferred"})
    if deferred + run["counts"].get("done", 0) < run["counts"]["recipients"]:
        return None
    banner = text_of(driver, "#deferred-banner")
    return (deferred, banner) if banner.startswith(f"{deferred} texts wait") else None


@pytest.mark.slow
def test_daily_limit_wait_shown(stack, browser):
    tenant = stack.runtime.tenants.get(DEMO_CLOUD_ID)
    used = Dashboard(stack.runtime.db, stack.runtime.clock).summary(tenant)["daily_limit"]["used"]
    stack.runtime.tenants.update(DEMO_CLOUD_ID, {"daily_limit": used + 5})
    try:
        signed_in(browser, stack)
        campaign_id = create_campaign(browser, "Over the limit", "Hello {FirstName|member}.")
        browser.find_element(By.ID, "send-now").click()
        deferred, banner = wait_for(browser, lambda d: deferred_banner(d, stack, campaign_id),
                                    "every text is sent or waits, and the page says how many wait")
        waiting_row = text_of(browser, "#run-details")
    finally:
        stack.runtime.tenants.update(DEMO_CLOUD_ID, {"daily_limit": 3000})
        wake_deferred(stack.runtime.db, DEMO_CLOUD_ID)
    wait_for(browser, badge_is("completed"), "the held texts go out after the limit is raised", timeout_s=120)

    assert deferred > 0
    assert banner.startswith(f"{deferred} texts wait for the daily limit; they go out after midnight "
                             "(America/New_York time) or when an administrator raises the limit in Settings.")
    assert f"Waiting for the daily limit\n{deferred}" in waiting_row
    assert not browser.find_element(By.ID, "deferred-banner").is_displayed()
    assert script_errors(browser) == []


# ------------------------------------------------------------------ editor


def test_editor_counter(stack, browser):
    signed_in(browser, stack)
    browser.get(stack.gateway_url + "/#/campaigns/new")
    body = wait_for(browser, lambda d: d.find_element(By.NAME, "body"), "the editor shows")

    body.send_keys("x" * 161)
    wait_for(browser, lambda d: "161 characters" in text_of(d, "#body-counter"), "the GSM-7 count shows")
    gsm = text_of(browser, "#body-counter")
    body.send_keys("\u00e7")
    wait_for(browser, lambda d: "UCS-2" in text_of(d, "#body-counter"), "the UCS-2 count shows")
    ucs2 = text_of(browser, "#body-counter")

    assert gsm.startswith("161 characters · 2 segments · GSM-7")
    assert ucs2.startswith("162 characters · 3 segments · UCS-2")


def test_editor_field_errors(stack, browser):
    signed_in(browser, stack)
    browser.get(stack.gateway_url + "/#/campaigns/new")
    wait_for(browser, lambda d: d.find_element(By.ID, "campaign-form"), "the editor shows")
    browser.find_element(By.NAME, "name").send_keys("No recipients")
    browser.find_element(By.NAME, "body").send_keys("Hello.")
    browser.find_element(By.NAME, "iqa_path").send_keys("TextManager/Members")

    browser.find_element(By.ID, "save-campaign").click()
    summary = wait_for(browser, lambda d: text_of(d, "#campaign-form .form-error"), "the error summary shows")
    field_error = text_of(browser, "[data-field=iqa_path] .field-error")

    assert "Some fields are invalid" in summary
    assert "Must be an IQA path starting with $/" in field_error
    assert browser.find_element(By.NAME, "iqa_path").get_attribute("aria-invalid") == "true"
    assert browser.find_elements(By.CSS_SELECTOR, "[data-field=name] .field-error") == []


def open_editor_of(driver, campaign_id: str, name: str):
    """Click Edit on the campaign's page; return the form once it shows the saved campaign."""
    wait_for(driver, lambda d: d.find_element(By.ID, "edit-campaign").is_displayed(), "the Edit button shows")
    driver.find_element(By.ID, "edit-campaign").click()
    wait_for(driver, lambda d: d.current_url.endswith(f"#/campaigns/{campaign_id}/edit")
             and d.find_element(By.NAME, "name").get_attribute("value") == name, "the editor shows the campaign")
    return driver.find_element(By.ID, "campaign-form")


def test_edit_campaign(stack, browser):
    changed = "Hi {FirstName|friend}, the meeting moved to Friday."
    signed_in(browser, stack)
    campaign_id = create_campaign(browser, "Draft to edit", "Hello {FirstName|member}.")

    form = open_editor_of(browser, campaign_id, "Draft to edit")
    title = text_of(browser, ".page-header h1")
    body = form.find_element(By.NAME, "body")
    body.clear()
    body.send_keys(changed)
    browser.find_element(By.ID, "save-campaign").click()
    wait_for(browser, lambda d: d.current_url.endswith(f"#/campaigns/{campaign_id}")
             and text_of(d, ".message-body") == changed, "the campaign page shows the changed text")

    assert title == "Edit campaign"
    assert stack.runtime.db.campaigns.find_one({"_id": campaign_id})["body"] == changed
    assert browser.find_element(By.ID, "edit-campaign").is_displayed()
    assert script_errors(browser) == []


def test_edit_shows_merge_field_error(stack, browser):
    signed_in(browser, stack)
    campaign_id = create_campaign(browser, "Broken merge field", "Hello {FirstName|member}.")

    form = open_editor_of(browser, campaign_id, "Broken merge field")
    body = form.find_element(By.NAME, "body")
    body.clear()
    body.send_keys("Hi {FirstName, welcome.")
    browser.find_element(By.ID, "save-campaign").click()
    field_error = wait_for(browser, lambda d: text_of(d, "[data-field=body] .field-error"), "the body's error shows")

    assert "The merge field opened at character 4 is not closed" in field_error
    assert stack.runtime.db.campaigns.find_one({"_id": campaign_id})["body"] == "Hello {FirstName|member}."


# ------------------------------------------------------------------ names


def test_names_shown_as_text(stack, browser):
    """A campaign name full of markup shows as typed and adds no element to the page."""
    name = '<img src=x id=injected onerror="document.title=1">'
    signed_in(browser, stack)
    create_campaign(browser, name, "Hello.")

    browser.find_element(By.CSS_SELECTOR, "[data-nav=campaigns]").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#campaigns tbody a"), "the list shows")
    names = texts_of(browser, "#campaigns tbody a")

    assert name in names
    assert browser.find_elements(By.ID, "injected") == []
    assert browser.title == "Text Manager"


# ------------------------------------------------------------------ settings


def test_settings_secrets_write_only(stack, browser):
    signed_in(browser, stack)
    browser.find_element(By.CSS_SELECTOR, "[data-nav=settings]").click()
    wait_for(browser, lambda d: text_of(d, "[data-secret=imis_password]") in ("set", "not set"), "the settings show")

    secrets = {name: browser.find_element(By.NAME, name) for name in ("imis_password", "twilio_auth_token")}

    for name, field in secrets.items():
        assert field.get_attribute("type") == "password", name
        assert field.get_attribute("value") == "", name
        assert text_of(browser, f"[data-secret={name}]") == "set", name
    assert browser.find_element(By.NAME, "timezone").get_attribute("value") == "America/New_York"


def test_settings_save(stack, browser):
    signed_in(browser, stack)
    browser.find_element(By.CSS_SELECTOR, "[data-nav=settings]").click()
    daily_limit = wait_for(browser, lambda d: d.find_element(By.NAME, "daily_limit").get_attribute("value")
                           and d.find_element(By.NAME, "daily_limit"), "the settings show")
    try:
        daily_limit.clear()
        daily_limit.send_keys("2500")
        browser.find_element(By.ID, "save-settings").click()
        wait_for(browser, lambda d: text_of(d, "#settings-status") == "Settings saved.", "the settings are saved")

        tenant = stack.runtime.tenants.get(DEMO_CLOUD_ID)
        assert tenant.daily_limit == 2500
        assert tenant.imis_password == "svc-secret"
    finally:
        stack.runtime.tenants.update(DEMO_CLOUD_ID, {"daily_limit": 3000})


def test_settings_text_log_choice(stack, browser):
    signed_in(browser, stack)
    browser.find_element(By.CSS_SELECTOR, "[data-nav=settings]").click()
    choice = wait_for(browser, lambda d: d.find_element(By.NAME, "imis_text_log").get_attribute("value")
                      and d.find_element(By.NAME, "imis_text_log"), "the settings show")
    options = texts_of(browser, "select[name=imis_text_log] option", "value")
    selected = choice.get_attribute("value")
    try:
        browser.find_element(By.CSS_SELECTOR, "select[name=imis_text_log] option[value=activity]").click()
        browser.find_element(By.ID, "save-settings").click()
        wait_for(browser, lambda d: text_of(d, "#settings-status") == "Settings saved.", "the settings are saved")

        assert stack.runtime.tenants.get(DEMO_CLOUD_ID).imis_text_log == "activity"
    finally:
        stack.runtime.tenants.update(DEMO_CLOUD_ID, {"imis_text_log": "interaction"})
    assert options == ["interaction", "activity", "off"]
    assert selected == "interaction"


def test_settings_invalid(stack, browser):
    signed_in(browser, stack)
    browser.find_element(By.CSS_SELECTOR, "[data-nav=settings]").click()
    timezone_field = wait_for(browser, lambda d: d.find_element(By.NAME, "timezone").get_attribute("value")
                              and d.find_element(By.NAME, "timezone"), "the settings show")

    timezone_field.clear()
    timezone_field.send_keys("Mars/Olympus")
    browser.find_element(By.ID, "save-settings").click()
    field_error = wait_for(browser, lambda d: text_of(d, "[data-field=timezone] .field-error"), "the field error shows")

    assert "IANA time zone" in field_error
    assert stack.runtime.tenants.get(DEMO_CLOUD_ID).timezone == "America/New_York"


def test_settings_admin_list(stack, browser):
    signed_in(browser, stack)
    browser.find_element(By.CSS_SELECTOR, "[data-nav=settings]").click()
    admins = wait_for(browser, lambda d: d.find_element(By.NAME, "admins").get_attribute("value")
                      and d.find_element(By.NAME, "admins"), "the administrators show")

    assert admins.get_attribute("value") == "\n".join(demo_data.DEMO_ADMINS)
    assert admins.is_enabled()
    assert browser.find_element(By.ID, "save-settings").is_displayed()
    assert not browser.find_element(By.ID, "settings-access").is_displayed()


def test_settings_read_only_for_non_admin(stack, browser):
    signed_in(browser, stack, demo_data.DEMO_NON_ADMIN_USER)
    browser.find_element(By.CSS_SELECTOR, "[data-nav=settings]").click()
    note = wait_for(browser, lambda d: text_of(d, "#settings-access"), "the read-only note shows")

    controls = browser.find_elements(By.CSS_SELECTOR, "#settings-form input, #settings-form select, "
                                                      "#settings-form textarea")
    number = browser.find_element(By.CSS_SELECTOR, "#number-check [name=number]")

    assert "Ask an administrator of your organisation (demo)" in note
    assert browser.find_element(By.NAME, "daily_limit").get_attribute("value") == "3000"
    assert browser.find_element(By.NAME, "admins").get_attribute("value") == "demo"
    assert len(controls) > 10
    assert [control.get_attribute("name") for control in controls if control.is_enabled()] == []
    assert not browser.find_element(By.ID, "save-settings").is_displayed()
    assert number.is_enabled()
    assert script_errors(browser) == []


def test_number_checker(stack, browser):
    signed_in(browser, stack)
    browser.find_element(By.CSS_SELECTOR, "[data-nav=settings]").click()
    number = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#number-check [name=number]"),
                      "the number checker shows")

    number.send_keys("(202) 555-0100")
    browser.find_element(By.CSS_SELECTOR, "#number-check button[type=submit]").click()
    result = wait_for(browser, lambda d: text_of(d, "#number-result"), "the check result shows")

    assert result == "sendable +12025550100"


@pytest.fixture
def opted_out_number(stack):
    """An opt-out of a number outside the demo query, removed after the test."""
    number = "+15145550177"
    optout_id = f"{DEMO_CLOUD_ID}:{number}"
    stack.runtime.db.optouts.insert_one({"_id": optout_id, "tenant_id": DEMO_CLOUD_ID, "number": number,
                                         "opted_out_at": START, "source": "inbound-stop", "member_ids": ["99001"]})
    yield number
    stack.runtime.db.optouts.delete_one({"_id": optout_id})


def test_opt_outs_listed(stack, browser, opted_out_number):
    signed_in(browser, stack)
    browser.find_element(By.CSS_SELECTOR, "[data-nav=settings]").click()
    wait_for(browser, lambda d: "********0177" in text_of(d, "#opt-outs"), "the opt-out shows")
    rows = texts_of(browser, "#opt-outs tbody tr")

    assert any(row.startswith("********0177") and "replied STOP" in row for row in rows)
    assert opted_out_number.lstrip("+") not in text_of(browser, "#opt-outs")
    assert "numbers opted out" in text_of(browser, "#opt-outs-summary")
    assert script_errors(browser) == []


def test_page_served_with_csp(stack):
    response = requests.get(stack.gateway_url + "/")

    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert "<script>" not in response.text
    assert " style=" not in response.text
