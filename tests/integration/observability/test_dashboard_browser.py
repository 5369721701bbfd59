"""The live dashboard in a real headless chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium).

A gateway process with a management listener proxies to two real uvicorn backends while a thread
sends traffic; the page must load, its numbers must move, a killed instance must show unhealthy
within 2 s, and it must work from the keyboard and on a phone-sized screen. Screenshots are kept
in ``test-artifacts/`` at the repository root (ignored by git): ``dashboard-desktop.png``,
``dashboard-phone.png``.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.backend import BackendProcess, running_backends
from tests.support.gateway import GatewayProcess
from tests.support.procs import REPO, find_binary, free_port, wait_port

ARTIFACTS = REPO / "test-artifacts"
TOKEN = "dashboard-test-token"
UNHEALTHY_WITHIN = 2.0  # seconds from the kill to "unhealthy" on the page (the bound)


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    """One headless chromium for the module (desktop-sized; tests may resize it)."""
    options = webdriver.ChromeOptions()
    options.binary_location = find_binary("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(find_binary("chromedriver")))
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[GatewayProcess, str, list[BackendProcess]]]:
    """A gateway (management listener with ADMIN_READ_TOKEN) in front of backends ``a`` and ``b``."""
    with running_backends("a", "b") as backends:
        check = {"path": "/health", "interval": 0.2, "timeout": 0.5, "unhealthy_threshold": 1}
        config = {
            "services": {
                "api": {
                    "instances": [{"id": b.name, "host": "127.0.0.1", "port": b.port} for b in backends],
                    "health_check": check,
                }
            }
        }
        admin_port = free_port()
        gw = GatewayProcess(config, None, ADMIN_PORT=str(admin_port), ADMIN_READ_TOKEN=TOKEN)
        try:
            gw.start()
            wait_port(admin_port, proc=gw.proc)
            yield gw, f"http://127.0.0.1:{admin_port}", backends
        finally:
            gw.close()


@pytest.fixture
def traffic(stack: tuple[GatewayProcess, str, list[BackendProcess]]) -> Iterator[None]:
    """Requests through the gateway from a thread, paced at about 50/s, while the test runs."""
    gw = stack[0]
    stop = threading.Event()

    def send() -> None:
        while not stop.wait(0.02):
            try:
                with urllib.request.urlopen(f"{gw.url}/api/items", timeout=5) as resp:
                    resp.read()
            except (urllib.error.URLError, OSError):
                pass  # a 502/503 while an instance is being killed is part of the scenario

    thread = threading.Thread(target=send, name="dashboard-traffic", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def cell(browser: WebDriver, row: str, field: str) -> str:
    """Return the text of ``field`` in the table row whose ``data-service``/``data-instance`` is ``row``."""
    selector = (
        f'tr[data-service="{row}"] [data-field="{field}"], tr[data-instance="{row}"] [data-field="{field}"]'
    )
    # Read in the page in one step: the tables are re-rendered every tick, so an element handle goes stale.
    text = browser.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", selector
    )
    return str(text)


def number(text: str) -> float | None:
    try:
        return float(text.split(maxsplit=1)[0])
    except (ValueError, IndexError):
        return None


@pytest.fixture
def page(driver: WebDriver, stack: tuple[GatewayProcess, str, list[BackendProcess]]) -> WebDriver:
    """The browser on ``/dashboard?token=...``, once its event stream is live."""
    driver.get(f"{stack[1]}/dashboard?token={TOKEN}")
    WebDriverWait(driver, 10).until(lambda b: b.find_element(By.ID, "conn").text == "live")
    return driver


def screenshot(browser: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert browser.save_screenshot(str(path)), f"could not write {path}"
    return path


@pytest.mark.usefixtures("traffic")
def test_page_loads_with_the_token_and_its_numbers_move(page: WebDriver) -> None:
    driver = page
    assert driver.title == "msa-gateway dashboard"
    assert "token" not in driver.current_url  # moved into the HttpOnly cookie, out of the address bar
    assert driver.find_element(By.ID, "config-hash").text.startswith("sha256:")
    assert driver.find_element(By.ID, "discovery").text == "static: up"
    wait = WebDriverWait(driver, 10, poll_frequency=0.05)
    wait.until(lambda b: (number(cell(b, "api", "rps")) or 0) > 0)
    wait.until(lambda b: number(cell(b, "api", "p99")) is not None)
    assert cell(driver, "api", "errors") == "0.0 %"
    assert cell(driver, "api", "healthy") == "2/2"
    updated = driver.find_element(By.ID, "updated").text
    wait.until(lambda b: b.find_element(By.ID, "updated").text != updated)  # a new tick came and rendered
    screenshot(driver, "dashboard-desktop.png")


def test_keyboard_reaches_the_controls_and_they_work(page: WebDriver) -> None:
    driver = page
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    focused = driver.switch_to.active_element
    assert focused.get_attribute("id") == "filter"
    focused.send_keys("nomatch")
    WebDriverWait(driver, 5).until(lambda b: not b.find_elements(By.CSS_SELECTOR, "tr[data-service]"))
    focused.send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)
    WebDriverWait(driver, 5).until(lambda b: b.find_elements(By.CSS_SELECTOR, 'tr[data-service="api"]'))
    focused.send_keys(Keys.TAB)
    pause = driver.switch_to.active_element
    assert pause.get_attribute("id") == "pause" and pause.get_attribute("aria-pressed") == "false"
    pause.send_keys(Keys.ENTER)
    assert pause.get_attribute("aria-pressed") == "true" and pause.text == "Resume updates"
    pause.send_keys(Keys.SPACE)
    assert pause.get_attribute("aria-pressed") == "false"


def test_phone_sized_screen_needs_no_horizontal_scrolling(page: WebDriver) -> None:
    driver = page
    driver.set_window_size(390, 844)
    try:
        WebDriverWait(driver, 5).until(lambda b: cell(b, "api", "healthy") != "")
        width = driver.execute_script("return document.documentElement.scrollWidth")
        viewport = driver.execute_script("return window.innerWidth")
        assert width <= viewport
        label = driver.execute_script(
            "return getComputedStyle(document.querySelector('[data-field=rps]'), '::before').content"
        )
        assert label == '"req/s"'  # each cell says what it is once the table becomes cards
        screenshot(driver, "dashboard-phone.png")
    finally:
        driver.set_window_size(1280, 900)


@pytest.mark.usefixtures("traffic")
def test_a_killed_instance_shows_unhealthy_within_two_seconds(
    page: WebDriver, stack: tuple[GatewayProcess, str, list[BackendProcess]]
) -> None:
    driver, backends = page, stack[2]
    wait = WebDriverWait(driver, 10, poll_frequency=0.02)
    wait.until(lambda b: cell(b, "api/b", "health") == "healthy")
    victim = backends[1]
    killed = time.monotonic()
    victim.kill()
    try:
        WebDriverWait(driver, UNHEALTHY_WITHIN, poll_frequency=0.02).until(
            lambda b: cell(b, "api/b", "health") == "unhealthy"
        )
        took = time.monotonic() - killed
        print(f"instance b shown unhealthy {took:.2f} s after the kill")
        assert took <= UNHEALTHY_WITHIN
        assert cell(driver, "api/a", "health") == "healthy"
        wait.until(lambda b: cell(b, "api", "healthy") == "1/2")
        screenshot(driver, "dashboard-instance-down.png")
    finally:
        victim.restart()
    wait.until(lambda b: cell(b, "api/b", "health") == "healthy")
