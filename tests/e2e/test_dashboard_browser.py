"""The dashboard in a real browser: Debian's headless Chromium driven through chromedriver by selenium, against a
real `gateway serve` (SQLite store, users made with the real CLI) in front of a real recording upstream.

A user logs in with the keyboard, creates a key, reads its value once, uses it through the proxy, reloads (the
value is gone), revokes it and sees it refused within the revocation bound (``cache.ttl_seconds``); a wrong
password is refused; logout ends the session. The pages run their one script under the strict CSP (no violation
reported), label every input and fit a 375 px screen. ``test_screenshots`` (marked ``screenshots``, run only with
GATEWAY_SCREENSHOTS=1) writes the pictures of docs/images/ that the README shows."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.core import bearer
from tests.support.dashboard import PASSWORD, USERS, dashboard_gateway
from tests.support.lifecycle import wait_for
from tests.support.procs import ROOT, Gateway, Upstream

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,900")


def start_chromium(profile: Path) -> WebDriver:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).exists() and shutil.which(Path(binary).name) is None:
            pytest.fail(f"{binary} is missing: install Debian's chromium and chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")  # a new, empty profile
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER if Path(CHROMEDRIVER).exists()
                                              else str(shutil.which("chromedriver"))), options=options)
    driver.set_page_load_timeout(20)
    return driver


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("browser-up"))
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, up: Upstream) -> Iterator[Gateway]:
    g = dashboard_gateway(tmp_path_factory.mktemp("browser-gw"), up.url)
    yield g
    g.stop()


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture
def page(chrome: WebDriver, gw: Gateway) -> Iterator[WebDriver]:
    """The browser with no session (its cookies cleared) at its usual size."""
    chrome.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    chrome.get(gw.url + "/dashboard/login")
    chrome.delete_all_cookies()
    chrome.get_log("browser")  # drop what earlier tests left
    yield chrome


def wait(driver: WebDriver, css: str, timeout: float = 10) -> Any:
    return WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.CSS_SELECTOR, css))


def log_in_by_keyboard(driver: WebDriver, gw: Gateway, email: str, password: str) -> None:
    driver.get(gw.url + "/dashboard")
    wait(driver, "#email")
    # The e-mail field has the focus (autofocus); Tab goes to the password, Enter submits.
    driver.switch_to.active_element.send_keys(email, Keys.TAB, password, Keys.ENTER)


def csp_violations(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def test_create_use_reload_revoke_logout_in_a_real_browser(page: WebDriver, gw: Gateway, up: Upstream) -> None:
    # Not logged in: the dashboard sends the browser to its login form.
    page.get(gw.url + "/dashboard/keys")
    assert page.current_url == gw.url + "/dashboard/login"

    # A wrong password: the catalogue's words, still on the login page, no session cookie.
    log_in_by_keyboard(page, gw, USERS["admin"], "not-the-password")
    alert = wait(page, "p.error[role=alert]")
    assert alert.text
    assert page.current_url == gw.url + "/dashboard/login"
    assert page.get_cookie("gateway_session") is None

    # The right one: Settings -> API Keys.
    log_in_by_keyboard(page, gw, USERS["admin"], PASSWORD)
    WebDriverWait(page, 10).until(lambda d: d.current_url.endswith("/dashboard/keys"))
    assert "API Keys" in page.find_element(By.TAG_NAME, "h1").text
    session = page.get_cookie("gateway_session")
    assert session is not None and session["httpOnly"] and session["sameSite"] == "Strict"

    # Create: name, a permission checkbox (value = the scope), environment live, an expiry date.
    page.find_element(By.LINK_TEXT, "Generate New API Key").click()
    wait(page, "#name").send_keys("browser-key")
    page.find_element(By.CSS_SELECTOR, 'input[name=permissions][value="servers:read"]').click()
    page.find_element(By.CSS_SELECTOR, 'input[name=environment][value="live"]').click()
    expiry = (datetime.now(UTC) + timedelta(days=30)).date()
    # A date input takes the date as typed in the browser's locale (en-US: month, day, year).
    page.find_element(By.ID, "expires_at").send_keys(expiry.strftime("%m%d%Y"))
    page.find_element(By.CSS_SELECTOR, "button.primary[type=submit]").click()

    # The value, once, with the seed's warning and a working copy button (the script runs under the CSP).
    field = wait(page, "#key-value")
    value = field.get_attribute("value")
    assert value and value.startswith("dep_live_") and len(value) == len("dep_live_") + 32
    assert "API keys are shown only once" in page.find_element(By.ID, "once").text
    assert value not in page.current_url
    copy = page.find_element(By.CSS_SELECTOR, "button.copy")
    assert copy.text == "Copy"
    copy.click()
    WebDriverWait(page, 5).until(lambda d: copy.text == "Copied")

    # The key works through the proxy, to the real upstream.
    up.clear()
    used = httpx.get(f"{gw.url}/v1/servers/42", headers=bearer(value))
    assert used.status_code == 200
    assert [r["path"] for r in up.records()] == ["/v1/servers/42"]

    # Reload: the value is gone (the page at this URL is the list), and the key is listed by its hint only.
    page.get(page.current_url)
    assert value not in page.page_source
    row = page.find_element(By.XPATH, "//tr[td/a[text()='browser-key']]")
    assert value[-4:] in row.text and "servers:read" in row.text and "active" in row.text
    assert expiry.isoformat() in row.text

    # The key's page: its usage chart counts the request made above (once the usage recorder has flushed).
    row.find_element(By.LINK_TEXT, "browser-key").click()
    wait(page, "svg.chart")
    detail_url = page.current_url

    def counted() -> bool:
        page.get(detail_url)
        bars = page.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar")
        return len(bars) == 30 and bars[-1].get_attribute("data-count") == "1"

    assert wait_for(counted, timeout=10)
    assert "create" in page.find_element(By.CSS_SELECTOR, "table.audit").text

    # Revoke, confirmed with the keyboard; refused through the proxy within the revocation bound.
    page.find_element(By.LINK_TEXT, "Revoke key").click()
    confirm = wait(page, "button.danger[type=submit]")
    confirm.send_keys(Keys.ENTER)
    wait(page, "p.notice[role=status]")
    revoked_at = time.monotonic()
    assert "revoked" in page.find_element(By.CSS_SELECTOR, ".status").text

    def refused() -> bool:
        return httpx.get(f"{gw.url}/v1/servers", headers=bearer(value)).status_code == 401

    assert wait_for(refused, timeout=5)
    assert time.monotonic() - revoked_at <= 1.0 + 1.0  # cache.ttl_seconds, and a second's slack for the poll

    # Log out: the session ends; the pages send the browser back to the login.
    page.find_element(By.CSS_SELECTOR, "form.logout button").click()
    WebDriverWait(page, 10).until(lambda d: d.current_url.endswith("/dashboard/login"))
    page.get(gw.url + "/dashboard/keys")
    assert page.current_url == gw.url + "/dashboard/login"
    assert csp_violations(page) == []
    assert value not in gw.log() and PASSWORD not in gw.log()


_UNLABELLED = """
return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea, button'))
  .filter(e => e.tagName === 'BUTTON' ? !e.textContent.trim() : e.labels.length === 0)
  .map(e => e.outerHTML);
"""
_OVERFLOW = "return [document.documentElement.scrollWidth, window.innerWidth];"


def test_every_input_is_labelled_and_every_page_fits_375_px(page: WebDriver, gw: Gateway) -> None:
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                         {"width": 375, "height": 812, "deviceScaleFactor": 2, "mobile": True})
    page.get(gw.url + "/dashboard/login")
    assert page.execute_script(_UNLABELLED) == []
    log_in_by_keyboard(page, gw, USERS["admin"], PASSWORD)
    WebDriverWait(page, 10).until(lambda d: d.current_url.endswith("/dashboard/keys"))
    page.get(gw.url + "/dashboard/keys/new")
    page.find_element(By.ID, "name").send_keys("phone-key")
    page.find_element(By.CSS_SELECTOR, 'input[name=permissions][value="servers:read"]').click()
    page.find_element(By.CSS_SELECTOR, "button.primary[type=submit]").click()
    wait(page, "#key-value")
    pages = ["/login", "/keys", "/keys/new"]
    page.get(gw.url + "/dashboard/keys")
    detail = page.find_element(By.LINK_TEXT, "phone-key").get_attribute("href")
    for url in [gw.url + "/dashboard" + p for p in pages] + [str(detail)]:
        page.get(url)
        assert page.execute_script(_UNLABELLED) == [], url
        scroll_width, inner = page.execute_script(_OVERFLOW)
        assert inner == 375 and scroll_width <= 375, (url, scroll_width)
    assert csp_violations(page) == []


@pytest.mark.screenshots
@pytest.mark.skipif(os.environ.get("GATEWAY_SCREENSHOTS") != "1",
                    reason="writes docs/images/: run with GATEWAY_SCREENSHOTS=1 to remake the pictures")
def test_screenshots(page: WebDriver, gw: Gateway) -> None:
    """docs/images/dashboard-*.png, as the README shows them."""
    out = ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    page.set_window_size(1200, 900)
    page.get(gw.url + "/dashboard/login")
    page.find_element(By.ID, "email").send_keys(USERS["admin"])
    page.save_screenshot(str(out / "dashboard-login.png"))
    page.find_element(By.ID, "password").send_keys(PASSWORD, Keys.ENTER)
    WebDriverWait(page, 10).until(lambda d: d.current_url.endswith("/dashboard/keys"))
    for name, perms in (("billing-export", ["billing:read"]), ("backup-cron", ["backups:read", "backups:write"]),
                        ("ci-pipeline", ["servers:read", "instances:read"])):
        page.get(gw.url + "/dashboard/keys/new")
        page.find_element(By.ID, "name").send_keys(name)
        for p in perms:
            page.find_element(By.CSS_SELECTOR, f'input[name=permissions][value="{p}"]').click()
        page.find_element(By.CSS_SELECTOR, "button.primary[type=submit]").click()
        value = wait(page, "#key-value").get_attribute("value")
    page.save_screenshot(str(out / "dashboard-key-created.png"))
    for _ in range(7):
        httpx.get(f"{gw.url}/v1/servers", headers=bearer(str(value)))
    time.sleep(0.5)  # the usage recorder flushes every 0.2 s here
    # A month of made-up history for the picture only (no test reads it): the usage table of the real file.
    key_id = json.loads(gw.cli("keys", "list", "--json").stdout)[-1]["id"]
    today = datetime.now(UTC).date()
    with closing(sqlite3.connect(gw.work / "keys.db")) as db, db:
        db.executemany("INSERT INTO usage_daily (key_id, day, count) VALUES (?, ?, ?)",
                       [(key_id, (today - timedelta(days=d)).isoformat(), 40 + (d * 37) % 90 - 25 * (d % 7 in (0, 6)))
                        for d in range(1, 30)])
    page.get(gw.url + "/dashboard/keys")
    page.save_screenshot(str(out / "dashboard-keys.png"))
    page.find_element(By.LINK_TEXT, "ci-pipeline").click()
    wait(page, "svg.chart")
    page.set_window_size(1200, 1500)
    page.save_screenshot(str(out / "dashboard-key-detail.png"))
