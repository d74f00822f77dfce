"""A real browser: headless Chromium (driven through chromedriver) opens the running app on loopback, waits for each
view to render its content, checks what it shows and saves a screenshot under test-artifacts/. Skips, with the
reason, where Chromium, chromedriver, selenium or Streamlit is not installed."""
import importlib.util
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


needs_browser = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                   reason="Chromium / chromedriver not installed (Debian packages chromium, "
                                          "chromium-driver)")


def shoot(tmp_path, pages: dict[str, tuple[str, str]], env: dict[str, str]) -> dict[str, str]:
    """Serve the app on loopback, open each page (name: (query, text to wait for)) in headless Chromium, save a
    screenshot under test-artifacts/app-<name>.png and return each page's visible text."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless",
                               "true", "--server.address", "127.0.0.1", "--server.port", str(port)],
                              env={**env, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    texts = {}
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
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
        try:
            for name, (query, text) in pages.items():
                driver.get(f"http://127.0.0.1:{port}/{query}")
                WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,)).until(
                    lambda d: text in d.find_element(By.TAG_NAME, "body").text)
                time.sleep(2)  # let the charts finish drawing
                texts[name] = driver.find_element(By.TAG_NAME, "body").text
                out = ARTIFACTS / f"app-{name}.png"
                assert driver.save_screenshot(str(out)) and out.stat().st_size > 20_000
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return texts


@needs_browser
def test_screenshots_of_each_view(published, tmp_path):  # noqa: F811
    import json
    boards = Path(os.environ["HARNESS_LEADERBOARDS_DIR"])
    path = boards / "smoke" / "synthetic.jsonl"
    record = json.loads(path.read_text().splitlines()[0])
    with path.open("a") as handle:  # a record that parses but breaks the schema: a string where a number belongs
        handle.write(json.dumps({**record, "run_id": "hand-edited", "metrics": {"test": {"ndcg@10": "abc"}}}) + "\n")
    texts = shoot(tmp_path, {"leaderboard": ("?view=Leaderboard", "runs · split"),
                             "compare": ("?view=Compare", "Method A"),
                             "run-detail": ("?view=Run%20detail", "split_id")}, dict(os.environ))
    for text in texts.values():
        assert "gr-harness leaderboard" in text
    assert "unreadable" in texts["leaderboard"] and "ndcg@10" in texts["leaderboard"]  # the schema warning names it


@needs_browser
def test_the_published_boards_first_screen_and_cpu_small_with_a_comparison(tmp_path):
    """The README's pictures: the first screen on the published boards, the cpu-small / scientific board and one
    paired comparison on it (opened by the links the app understands)."""
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_LEADERBOARDS_DIR"}
    env["HARNESS_RUNS_DIR"] = str(tmp_path / "no-store")  # the published boards only
    texts = shoot(tmp_path, {
        "first-screen": ("", "runs · split"),
        # waits for the validation-curve legend: scientific's per-seed runs (ml-latest-small has no letter)
        "cpu-small-scientific": ("?track=cpu-small&dataset=scientific", "letter s0"),
        "compare-cpu-small-scientific": ("?view=Compare&board=cpu-small/scientific&a=argus&b=sasrec",
                                         "Per-user difference of")}, env)
    assert "None" not in texts["first-screen"].split("Track")[1].splitlines()[1]  # a real track, not untracked runs
    assert "runs · split" in texts["cpu-small-scientific"]
    if importlib.util.find_spec("cornac_peers"):  # make setup installs the peer plugin: its row beside sasrec's
        assert "sasrec beside its peer cornac-sasrec" in texts["cpu-small-scientific"]
    assert "argus − sasrec" in texts["compare-cpu-small-scientific"]  # the rows the link named, in its order
