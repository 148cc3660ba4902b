"""The web console in a real browser: Debian's headless Chromium driven by
Selenium, against one real broker (2 workers, authentication and ACL on) for
the whole module, with paho-mqtt as the devices.

Nothing is downloaded: Chromium and chromedriver are the system's
(/usr/bin/chromium, /usr/bin/chromedriver; `.ci/run` installs them). A
screenshot of every page is saved under the tests' temporary directory
(the path is printed); with BWFAST_CONSOLE_SHOTS=DIR they are copied there
too (that is how docs/console-*.png were made).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mqtt_helpers import PahoClient
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select
from test_api_support import ADMIN, ADMIN_PASSWORD, ApiBroker

pytestmark = pytest.mark.bwfast_only

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1366,900")
TAG = uuid.uuid4().hex[:6]
DEVICE_USER, DEVICE_PASSWORD = f"dev-{TAG}", "dev-pass-1"
BAD_CREDENTIALS = 0x86  # paho 2 reports the v3.1.1 refusal as its v5 reason code
SUBACK_FAILURE = 0x80


class Console:
    """The broker, the browser, and where the screenshots go."""

    def __init__(self, api: ApiBroker, driver: WebDriver, shots: Path) -> None:
        self.api, self.driver, self.shots = api, driver, shots
        self.clients: list[PahoClient] = []
        self.named: dict[str, PahoClient] = {}

    # -- browser
    def open(self, page: str = "") -> None:
        self.driver.get(f"{self.api.url}/#/{page}")

    def el(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def wait(self, check: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except WebDriverException:
                last = None
            if last:
                return last
            time.sleep(0.05)
        raise AssertionError(f"not within {timeout}s: {what} (last: {last!r})")

    def text(self, css: str) -> str:
        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""

    def fill(self, css: str, value: str) -> None:
        box = self.el(css)
        box.clear()
        box.send_keys(value)

    def accept_confirm(self) -> None:
        def alert() -> bool:
            try:
                self.driver.switch_to.alert.accept()
                return True
            except NoAlertPresentException:
                return False
        self.wait(alert, what="a confirm dialog")

    def flash(self) -> str:
        return self.wait(lambda: self.el("#flash").is_displayed() and self.el("#flash").text,
                         what="the outcome message")

    def shot(self, name: str) -> None:
        path = self.shots / f"console-{name}.png"
        self.driver.save_screenshot(str(path))
        extra = os.environ.get("BWFAST_CONSOLE_SHOTS")
        if extra:
            shutil.copy(path, Path(extra) / path.name)

    def login(self, password: str = ADMIN_PASSWORD) -> None:
        self.fill("#login-user", ADMIN)
        self.fill("#login-pass", password)
        self.el("#login-submit").click()

    def token(self) -> str | None:
        return self.driver.execute_script(
            "return sessionStorage.getItem('bwfast.console.token')")

    # -- devices
    def device(self, name: str, username: str | None = DEVICE_USER,
               password: str | None = DEVICE_PASSWORD) -> PahoClient:
        c = PahoClient("127.0.0.1", self.api.port, f"{TAG}-{name}")
        if username is not None:
            c.client.username_pw_set(username, password)
        self.clients.append(c)
        self.named[name] = c
        return c

    def close_clients(self) -> None:
        for c in self.clients:
            try:
                c.client.disconnect()
                c.client.loop_stop()
            except Exception:  # noqa: BLE001 - already gone (kicked, refused)
                pass


def _driver(profile: str) -> WebDriver:
    for path in (CHROMIUM, CHROMEDRIVER):
        assert os.access(path, os.X_OK), (
            f"{path} is missing: apt-get install chromium chromium-driver (see .ci/run)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # explicit: Selenium Manager downloads nothing
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    api = ApiBroker(tmp_path_factory.mktemp("console"), 2, **{
        "authentication.enabled": True, "acl.enabled": True, "acl.default": "allow"}).start()
    profile = tempfile.mkdtemp(prefix="bwfast-chromium-")
    shots = tmp_path_factory.mktemp("console_screenshots")
    print(f"console screenshots in {shots}")
    driver = None
    try:
        driver = _driver(profile)
        driver.set_page_load_timeout(20)
        c = Console(api, driver, shots)
        yield c
        c.close_clients()
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        api.stop()


@pytest.fixture
def logged_in(console: Console) -> Console:
    """The console with a live login (tests run in file order; a test that
    logged out leaves the login page)."""
    console.open()
    if console.token() is None or console.driver.find_elements(By.ID, "page-login"):
        console.login()
    console.wait(lambda: console.driver.find_elements(By.ID, "page-overview"), what="overview")
    return console


# ------------------------------------------------------------------ the tests, in order


def test_login_fails_then_succeeds(console: Console) -> None:
    console.open()
    console.wait(lambda: console.el("#login-form").is_displayed(), what="the login form")
    console.login("wrong-password")
    error = console.wait(lambda: console.el("#login-error").is_displayed()
                         and console.el("#login-error").text, what="the login error")
    assert "Invalid Login" in error
    console.shot("login")
    console.login()
    console.wait(lambda: console.el("#page-overview").is_displayed(), what="the overview")
    assert console.token()


def test_credentials_added_in_the_ui_take_effect_on_connect(logged_in: Console) -> None:
    c = logged_in
    refused = c.device("early")
    assert refused.connect()[1] == BAD_CREDENTIALS
    c.open("credentials")
    c.fill("#cred-user", DEVICE_USER)
    c.fill("#cred-pass", DEVICE_PASSWORD)
    c.el("#cred-add").click()
    assert c.flash().startswith("✓")
    c.wait(lambda: c.driver.find_elements(By.CSS_SELECTOR, f'tr[data-user="{DEVICE_USER}"]'),
           what="the new username in the list")
    c.shot("credentials")
    assert c.device("late").connect()[1] == 0


def test_client_appears_on_overview_and_devices_within_2s(logged_in: Console) -> None:
    c = logged_in
    before = int(c.wait(lambda: c.text("#stat-connected").replace(",", "").isdigit()
                        and c.text("#stat-connected"), what="the connected count"))
    dev = c.device("sensor")
    assert dev.connect()[1] == 0
    connected_at = time.monotonic()
    c.wait(lambda: int(c.text("#stat-connected") or 0) > before, timeout=2.0,
           what="the client counted on the overview")
    assert time.monotonic() - connected_at <= 2.0
    assert dev.subscribe(f"cmd/{TAG}/#", 1) == [1]
    for k in range(30):  # some traffic on the charts of the screenshot
        dev.client.publish(f"cmd/{TAG}/load", b"x" * (k * 10), qos=k % 2)
        time.sleep(0.05)
    c.wait(lambda: int(c.text("#stat-messages-in").replace(",", "") or 0) >= 30,
           what="the messages counted")
    time.sleep(1.1)
    c.shot("overview")

    c.open("devices")
    c.fill("#dev-search", f"{TAG}-sensor")
    row = f'tr[data-id="{TAG}-sensor"]'
    c.wait(lambda: c.driver.find_elements(By.CSS_SELECTOR, row), timeout=2.0,
           what="the client listed on Devices")
    assert "active" in c.text(row) and DEVICE_USER in c.text(row)
    Select(c.el("#dev-status")).select_by_value("inactive")
    c.wait(lambda: not c.driver.find_elements(By.CSS_SELECTOR, row), what="filtered out")
    Select(c.el("#dev-status")).select_by_value("all")
    c.fill("#dev-search", "")
    c.wait(lambda: c.driver.find_elements(By.CSS_SELECTOR, row), what="listed again")
    c.shot("devices")


def test_device_page_shows_its_subscription_and_sends_a_message(logged_in: Console) -> None:
    c = logged_in
    dev = c.named["sensor"]
    dev.drain(0.3)  # its own traffic from the overview test
    c.open(f"device/{TAG}-sensor")
    subs = c.wait(lambda: "QoS" in c.text("#device-subs") and c.text("#device-subs"),
                  what="the subscriptions table")
    assert f"cmd/{TAG}/#" in subs and subs.rstrip().endswith("1")
    assert "active" in c.text("#device-status")
    c.fill("#send-topic", f"cmd/{TAG}/reboot")
    c.fill("#send-message", "hello from the console")
    Select(c.el("#send-qos")).select_by_value("1")
    c.el("#send-submit").click()
    got = dev.get(timeout=3)
    assert (got.topic, got.payload, got.qos) == (f"cmd/{TAG}/reboot",
                                                 b"hello from the console", 1)
    assert c.flash().startswith("✓")
    c.wait(lambda: "hello from the console" in c.text("#device-commands"), timeout=4,
           what="the command in the device's history")
    c.shot("device")


def test_acl_rule_added_in_the_ui_takes_effect_on_connect(logged_in: Console) -> None:
    c = logged_in
    before = c.device("acl-before")
    assert before.connect()[1] == 0
    assert before.subscribe(f"secret/{TAG}/x", 0) == [0]
    c.open("acl")
    Select(c.el("#acl-kind")).select_by_value("username")
    c.fill("#acl-who", DEVICE_USER)
    c.fill("#acl-topic", f"secret/{TAG}/#")
    Select(c.el("#acl-access")).select_by_value("deny")
    c.el("#acl-add").click()
    assert c.flash().startswith("✓")
    c.wait(lambda: f"secret/{TAG}/#" in c.text("#acl-table"), what="the rule in the list")
    c.shot("acl")
    after = c.device("acl-after")
    assert after.connect()[1] == 0
    assert after.subscribe(f"secret/{TAG}/x", 0) == [SUBACK_FAILURE]
    assert after.subscribe(f"open/{TAG}/x", 0) == [0]


def test_live_view_shows_a_paho_message_and_publishes_one(logged_in: Console) -> None:
    c = logged_in
    c.open("live")
    c.fill("#live-filter", f"live/{TAG}/#")
    c.el("#live-start").click()
    c.wait(lambda: "subscribed" in c.text("#live-state") and "✓" in c.text("#live-state"),
           what="the live subscription")
    pub = c.device("live-pub")
    assert pub.connect()[1] == 0
    assert pub.subscribe(f"live/{TAG}/from-ui", 1) == [1]
    pub.client.publish(f"live/{TAG}/temp", b"21.5", qos=1).wait_for_publish(3)
    row = c.wait(lambda: c.text("#live-rows tr"), what="the message in the live view")
    assert f"live/{TAG}/temp" in row and "21.5" in row
    cells = [td.text for td in c.driver.find_elements(By.CSS_SELECTOR, "#live-rows tr td")]
    assert cells[2:5] == ["1", "no", "21.5"]
    Select(c.el("#live-mode")).select_by_value("hex")
    c.wait(lambda: "32 31 2e 35" in c.text("#live-rows tr"), what="the payload in hex")
    c.fill("#pub-topic", f"live/{TAG}/from-ui")
    c.fill("#pub-message", "set 22")
    c.el("#pub-submit").click()
    got = pub.get(timeout=3)
    assert (got.topic, got.payload) == (f"live/{TAG}/from-ui", b"set 22")
    c.wait(lambda: f"live/{TAG}/from-ui" in c.text("#live-rows"), what="the UI's own message")
    c.shot("live")


def test_retained_browse_view_delete(logged_in: Console) -> None:
    c = logged_in
    pub = c.device("ret-pub")
    assert pub.connect()[1] == 0
    pub.client.publish(f"ret/{TAG}/a", b"kept value", qos=1, retain=True).wait_for_publish(3)
    pub.client.publish(f"ret/{TAG}/b", b"\x00\xff", qos=1, retain=True).wait_for_publish(3)
    c.open("retained")
    c.fill("#ret-prefix", f"ret/{TAG}/")
    c.el("#ret-browse").click()
    row_a = f'tr[data-topic="ret/{TAG}/a"]'
    c.wait(lambda: c.driver.find_elements(By.CSS_SELECTOR, f'tr[data-topic="ret/{TAG}/b"]'),
           what="the retained messages")
    assert "kept value" in c.text(row_a) and "hex: 00 ff" in c.text(f'tr[data-topic="ret/{TAG}/b"]')
    c.el(f"{row_a} a").click()
    c.wait(lambda: c.text("#ret-payload") == "kept value", what="the payload view")
    c.shot("retained")
    c.el(f"{row_a} button").click()
    c.accept_confirm()
    assert c.flash().startswith("✓")
    c.wait(lambda: not c.driver.find_elements(By.CSS_SELECTOR, row_a), what="the row gone")
    r = c.api.get("retained_message", topic=f"ret/{TAG}/a")
    assert r.status_code == 404


def test_kick_disconnects_the_client(logged_in: Console) -> None:
    c = logged_in
    victim = c.device("victim")
    assert victim.connect()[1] == 0
    c.open(f"device/{TAG}-victim")
    c.wait(lambda: "active" in c.text("#device-status") and c.el("#kick").is_enabled(),
           what="the device connected")
    c.el("#kick").click()
    c.accept_confirm()
    assert victim.disconnected.wait(2), "the kicked client is still connected"
    c.wait(lambda: "inactive" in c.text("#device-status"), what="shown as inactive")


def test_logout_returns_to_login_and_the_old_token_is_refused(logged_in: Console) -> None:
    c = logged_in
    old = c.token()
    assert old
    c.el("#logout").click()
    c.wait(lambda: c.el("#login-form").is_displayed(), what="the login page")
    assert c.token() is None
    r = httpx.get(f"{c.api.url}/bwiot/api/v1/devices/",
                  headers={"Authorization": f"Bearer {old}"})
    assert r.status_code == 401
    assert r.json()["bwapi-status-reason"] == "Invalid Access Token"
