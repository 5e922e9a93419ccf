"""The dashboard in a real browser: plotly.js draws every chart with data, every page opens
without a console error, and the pages keep themselves up to date without a reload.

Screenshots go to var/test-artifacts/ (printed at the end of each test)."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from tests.factories import call_create, calls_create

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(settings.BASE_DIR) / "var" / "test-artifacts"
PAGES = {
    "overview": ("/dashboard/", ("qps", "latency", "ttft", "errors", "cache", "tps", "money")),
    "routes": ("/dashboard/routes/", ("savings", "route-requests", "route-p99")),
    "backends": ("/dashboard/backends/", ("backend-share", "backend-p99", "backend-errors")),
    "calls": ("/dashboard/calls/", ()),
    "alerts": ("/dashboard/alerts/", ()),
}


def staff_browser_login(browser, live_server):
    """Sign in through the real admin login form as a staff superuser, landing on /dashboard/."""
    from django.contrib.auth import get_user_model
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    get_user_model().objects.create_superuser("ops", "ops@example.com", "pw-ops-123456")
    browser.get(f"{live_server.url}/dashboard/")
    WebDriverWait(browser, 10).until(lambda d: "/admin/login/" in d.current_url)
    browser.find_element(By.NAME, "username").send_keys("ops")
    browser.find_element(By.NAME, "password").send_keys("pw-ops-123456")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/dashboard/"))
    return browser


def kpi(driver, key: str) -> str:
    return driver.execute_script(f"return document.getElementById('kpi-{key}').textContent")


def charts_with_data(names):
    """Every chart drawn by plotly.js, each with at least one non-empty value."""
    def check(driver) -> bool:
        return all(driver.execute_script(
            "const el = document.getElementById(arguments[0]);"
            "if (!el || !el.classList.contains('js-plotly-plot')) return false;"
            "if (!el.querySelectorAll('svg.main-svg').length) return false;"
            "return (el.data || []).some(t => (t.y || []).some(v => v !== null && v !== 0));",
            f"chart-{name}") for name in names)
    return check


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    driver.save_screenshot(str(path))
    return path


def test_it_draws_the_charts_and_refreshes_the_numbers_without_a_reload(live_server, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    calls_create(3, stream=True, ttft_ms=30.0, cache="exact")
    calls_create(1, status_code=503, error_type="upstream_unavailable", latency_ms=900.0)
    driver = staff_browser_login(browser, live_server)

    WebDriverWait(driver, 15).until(charts_with_data(PAGES["overview"][1]))
    assert kpi(driver, "requests") == "4"
    driver.execute_script("window.__sameDocument = true")  # gone if the page reloads

    calls_create(5, route="summarise", latency_ms=300.0, seconds_ago=1)
    WebDriverWait(driver, 10, poll_frequency=0.2).until(lambda d: kpi(d, "requests") == "9")
    assert driver.execute_script("return window.__sameDocument === true")
    assert "summarise" in driver.find_element("id", "calls-body").text
    assert console_errors(driver) == []
    print("screenshot:", screenshot(driver, "overview-refreshed"))


def test_every_page_opens_with_charts_with_data_and_no_console_errors(live_server, browser):
    from decimal import Decimal

    from django.utils import timezone
    from selenium.webdriver.support.ui import WebDriverWait

    from alerts.models import AlertEvent, AlertRule, State

    calls_create(4, route="chat", backend="sim-1", stream=True, ttft_ms=20.0,
                 saved_routing_usd=Decimal("0.0002"))
    calls_create(2, route="summarise", backend="sim-2", cache="semantic", latency_ms=40.0,
                 saved_cache_usd=Decimal("0.0003"))
    call_create(route="chat", backend="sim-2", status_code=502, error_type="upstream_error")
    rule = AlertRule.objects.create(name="chat errors", metric="error_rate", threshold=0.01,
                                    route="chat", state=State.FIRING, since=timezone.now(),
                                    last_value=0.2)
    AlertEvent.objects.create(rule=rule, kind="fired", at=timezone.now(),
                              started_at=timezone.now(), value=0.2, threshold=0.01,
                              condition=rule.condition_text)
    driver = staff_browser_login(browser, live_server)
    driver.get_log("browser")  # the login page's messages are not the dashboard's

    for name, (path, charts) in PAGES.items():
        driver.get(f"{live_server.url}{path}?range=1h")
        WebDriverWait(driver, 15).until(charts_with_data(charts))
        WebDriverWait(driver, 10).until(
            lambda d: "updated" in d.find_element("id", "refresh-status").text)
        assert "chat errors" in driver.find_element("id", "firing").text
        assert console_errors(driver) == [], name
        print("screenshot:", screenshot(driver, name))

    driver.get(f"{live_server.url}/dashboard/backends/")
    WebDriverWait(driver, 10).until(
        lambda d: "loading" not in d.find_element("id", "live-body").text)
    driver.get(f"{live_server.url}/dashboard/calls/?status=5xx")
    link = driver.find_element("css selector", "#calls-body a")
    link.click()
    WebDriverWait(driver, 10).until(lambda d: "/dashboard/calls/" in d.current_url
                                    and "not stored" in d.page_source)
    assert "upstream_error" in driver.page_source
    assert console_errors(driver) == []
    print("screenshot:", screenshot(driver, "call-detail"))
