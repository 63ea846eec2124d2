"""GET /dashboard: the page as served (strict CSP, no inline code, nothing from elsewhere), and
driven by a person's actions in headless Chromium: paste a key, see the batches, open one,
watch its counts rise to `completed`, download its output, cancel another; no console errors.

Chromium and its driver come from Debian's packages (`apt-get install chromium chromium-driver`,
which .ci/run does); where they are not installed the browser test is skipped, saying so."""

from __future__ import annotations

import io
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import chat_line, jsonl, wait_status

DASHBOARD_FILES = Path(__file__).resolve().parents[2] / "eventbatch" / "dashboard"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1400"]


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def root(server) -> str:
    return server.base_url.removesuffix("/v1")


def test_the_page_is_static_with_a_strict_policy(server):
    status, headers, body = get(root(server) + "/dashboard")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    html = body.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline script"
    assert "style=" not in html and "<style" not in html, "inline style"
    assert not re.search(r"\son[a-z]+=", html), "an inline event handler"
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"),
                       ("favicon.svg", "image/svg+xml")):
        status, headers, _ = get(root(server) + "/dashboard/" + name)
        assert status == 200 and headers["Content-Type"].startswith(kind), name
    status, headers, body = get(root(server) + "/dashboard/nothing.js")
    assert status == 404 and b'"error"' in body
    # nothing from elsewhere: no absolute URL in any of the files, and no key in them
    for path in DASHBOARD_FILES.iterdir():
        text = path.read_text()
        urls = [u for u in re.findall(r"https?://[^\s\"')]+", text) if "www.w3.org/2000/svg" not in u]
        assert not urls, f"{path.name} refers to {urls}"
        assert "eb-" not in text.replace('placeholder="eb-…"', "")
    js = (DASHBOARD_FILES / "dashboard.js").read_text()
    assert "sessionStorage" in js and "localStorage" not in js and "innerHTML" not in js
    assert "new EventSource" not in js   # it cannot send the key as a header; fetch() streams instead


def chromium(tmp_path: Path):
    """A headless Chromium driven by chromedriver, or a skip that says what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("headless Chromium is not installed here (apt-get install chromium chromium-driver, "
                    "as .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    return driver


def wait_for(what, check, timeout: float = 30.0, every: float = 0.1):
    deadline = time.time() + timeout
    while True:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - the element may be between renders
            value = None
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def test_a_person_follows_a_batch_in_the_browser(server, new_key, tmp_path):
    from selenium.webdriver.common.by import By

    key = new_key("dashboard-demo")
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)

    def create(lines, **metadata):
        f = client.files.create(file=("requests.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
        return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                     metadata=metadata or None)
    quick = create([chat_line(i) for i in range(12)], job="warm-up")
    wait_status(client, quick.id, {"completed"})

    driver = chromium(tmp_path)
    try:
        driver.get(root(server) + "/dashboard")
        assert key not in driver.page_source
        field = wait_for("the key field", lambda: driver.find_element(By.ID, "key"))
        field.send_keys(key)
        driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        # the list, with the finished batch and its full bar
        row = wait_for("the first batch in the list", lambda: (r := driver.find_element(
            By.CSS_SELECTOR, f'tr[data-batch="{quick.id}"]')) and (r.get_attribute("data-status"), r.text))
        assert row[0] == "completed" and "12 / 12 done" in row[1]

        # a batch whose answers come back over several seconds; it appears in the list by itself
        lines = [chat_line(i, mock={"latency_ms": 1500 + 150 * i}) for i in range(40)]
        lines[5] = chat_line(5, mock={"status": 400})
        slow = create(lines, job="nightly", team="search")
        link = wait_for("the new batch in the list",
                        lambda: driver.find_element(By.CSS_SELECTOR, f'tr[data-batch="{slow.id}"] a'), timeout=20)
        driver.save_screenshot(str(tmp_path / "dashboard-list.png"))
        link.click()
        wait_for("the batch page", lambda: driver.find_element(By.ID, "d-id").text == slow.id)

        def text(selector: str) -> str | None:
            # read in one step in the page: the page re-renders its lists as the batch moves
            return driver.execute_script("const e = document.querySelector(arguments[0]);"
                                         "return e ? e.textContent : null;", selector)

        def status() -> str | None:
            return driver.execute_script("return document.getElementById('d-status').dataset.status || null;")

        seen: list[int] = []
        deadline = time.time() + 90
        while time.time() < deadline:
            done = (text('dd[data-count="done"]') or "").replace(",", "")
            if done.isdigit() and (not seen or int(done) != seen[-1]):
                seen.append(int(done))
            if status() == "completed":
                break
            time.sleep(0.15)
        assert status() == "completed", seen
        assert text('dd[data-count="done"]') == "40" and seen == sorted(seen) and len(seen) >= 3, \
            f"counts seen: {seen}"
        assert text('dd[data-count="failed"]') == "1"
        assert text('dd[data-usage="total"]') not in ("", "0", None)
        assert text('dd[data-time="completed"]') != "—"
        assert "metadata team" in text("#d-info")
        # the live feed: every event of the batch, up to its end
        wait_for("the end of the feed",
                 lambda: driver.find_elements(By.CSS_SELECTOR, '#feed li[data-type="batch_completed"]'))
        # read in one step in the page (the lists re-render as the page refreshes)
        types = driver.execute_script(
            "return Array.from(document.querySelectorAll('#feed li')).map(li => li.dataset.type);")
        assert sum(t.startswith("request_") for t in types) == 40
        assert types[0] == "batch_created" and types[-1] == "batch_completed"
        screenshot = tmp_path / "dashboard-batch.png"
        driver.save_screenshot(str(screenshot))
        print(f"\nscreenshots: {screenshot} and {tmp_path / 'dashboard-list.png'}")

        # download the output file: fetched with the key, saved by the browser
        # found and clicked in one try, again if the file buttons were re-rendered in between
        wait_for("a click on the output download",
                 lambda: driver.find_element(By.CSS_SELECTOR, 'button[data-file="output"]').click() or True)
        saved = driver.downloads / f"{slow.id}_output.jsonl"
        wait_for("the downloaded output file", lambda: saved.exists() and saved.stat().st_size > 0)
        assert len(saved.read_text().splitlines()) == 39

        # cancel a running batch: two clicks (the first arms the button)
        running = create([chat_line(i, mock={"latency_ms": 60_000}) for i in range(5)])
        driver.get(root(server) + f"/dashboard#/batches/{running.id}")
        cancel = wait_for("the cancel button", lambda: (b := driver.find_element(By.ID, "d-cancel")).is_displayed()
                          and b)
        cancel.click()
        assert "again" in cancel.text
        cancel.click()
        wait_for("the batch cancelling", lambda: status() in ("cancelling", "cancelled"), timeout=20)

        # the key: in this tab's session storage only, never in a URL
        assert driver.execute_script("return sessionStorage.getItem('eventbatch.apiKey')") == key
        assert driver.execute_script("return localStorage.length") == 0
        assert key not in driver.current_url
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, f"console errors: {errors}"

        # a refused key: back to the form, with the server's reason
        driver.execute_script("sessionStorage.setItem('eventbatch.apiKey', 'eb-not-a-key')")
        driver.refresh()
        alert = wait_for("the refusal", lambda: (a := driver.find_element(By.ID, "alert")).is_displayed() and a)
        assert "Incorrect API key" in alert.text and driver.find_element(By.ID, "login").is_displayed()
    finally:
        driver.quit()
