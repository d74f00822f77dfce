"""A real browser: headless Chromium (driven through chromedriver) opens the running app on loopback, waits for each
view to render its content, checks what it shows and saves a screenshot under test-artifacts/. Skips, with the
reason, where Chromium, chromedriver, selenium or Streamlit is not installed."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the `app` extra is not installed")
from test_app import published  # noqa: E402,F401
from test_boards import board  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="Chromium / chromedriver not installed (Debian packages chromium, chromium-driver)")
def test_screenshots_of_each_view(published, tmp_path):  # noqa: F811
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    port = _free_port()
    env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless",
                               "true", "--server.address", "127.0.0.1", "--server.port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        ARTIFACTS.mkdir(exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1400,1800", f"--user-data-dir={tmp_path / 'chrome'}"):
            options.add_argument(flag)
        service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
        driver = webdriver.Chrome(options=options, service=service)
        expected = {"Leaderboard": "runs · split", "Compare": "Method A", "Run detail": "split_id"}
        try:
            for view, text in expected.items():
                driver.get(f"http://127.0.0.1:{port}/?view={view.replace(' ', '%20')}")
                WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,)).until(
                    lambda d: text in d.find_element(By.TAG_NAME, "body").text)
                time.sleep(2)  # let the charts finish drawing
                body = driver.find_element(By.TAG_NAME, "body").text
                assert "gr-harness leaderboard" in body
                if view == "Leaderboard":
                    assert "broken" in body or "unreadable" in body, "the broken record's warning is visible"
                out = ARTIFACTS / f"app-{view.lower().replace(' ', '-')}.png"
                assert driver.save_screenshot(str(out)) and out.stat().st_size > 20_000
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
