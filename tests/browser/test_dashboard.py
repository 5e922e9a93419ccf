"""The dashboard in a real browser: plotly.js draws every chart and the page keeps itself
up to date without a reload."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from tests.factories import calls_create

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHARTS = ("qps", "latency", "ttft", "errors", "tokens", "savings")
SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"


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


def charts_drawn(driver) -> bool:
    return all(driver.execute_script(
        "const el = document.getElementById(arguments[0]);"
        "return !!el && el.classList.contains('js-plotly-plot')"
        "  && el.querySelectorAll('svg.main-svg').length > 0;", f"chart-{name}")
        for name in CHARTS)


def test_it_draws_the_charts_and_refreshes_the_numbers_without_a_reload(live_server, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    calls_create(3, stream=True, ttft_ms=30.0)
    calls_create(1, status_code=503, error_type="upstream_unavailable", latency_ms=900.0)
    driver = staff_browser_login(browser, live_server)

    WebDriverWait(driver, 15).until(charts_drawn)
    assert kpi(driver, "requests") == "4"
    driver.execute_script("window.__sameDocument = true")  # gone if the page reloads

    calls_create(5, route="summarise", latency_ms=300.0, seconds_ago=1)
    WebDriverWait(driver, 10, poll_frequency=0.2).until(lambda d: kpi(d, "requests") == "9")
    assert driver.execute_script("return window.__sameDocument === true")
    assert "summarise" in driver.find_element("id", "routes-body").text
    assert charts_drawn(driver)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / "dashboard.png"))
