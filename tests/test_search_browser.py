"""The search page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): upload a database image, get it back at distance 0 with k rendered thumbnails.

Skips when no chromium is installed (developer machines); ``.ci/run`` installs it and sets
HASHCONDENSE_REQUIRE_BROWSER=1, which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from search_fixtures import train_digits_model, write_png_index  # noqa: E402


def find_browser() -> tuple[str, str]:
    """(chromium binary, chromedriver binary), or skip / fail with the reason."""
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                  "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    reason = ("no chromium/chromedriver on PATH (apt-get install chromium chromium-driver; "
              ".ci/run does this)")
    if os.environ.get("HASHCONDENSE_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def server(tmp_path):
    from hashcondense.serve.app import create_app

    model = train_digits_model(tmp_path / "model")
    index_dir, paths = write_png_index(tmp_path, model, per_class=2, upscale=4)
    port = free_port()
    config = uvicorn.Config(create_app(index_dir), host="127.0.0.1", port=port,
                            log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the search server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", paths
    srv.should_exit = True
    thread.join(timeout=10)


def test_upload_finds_the_image_at_distance_zero(server) -> None:
    browser, driver_path = find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, paths = server
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(url)
        wait.until(lambda d: "images" in d.find_element(By.ID, "info").text)
        k = len(paths)  # every item fits, so all ties at distance 0 are shown
        box = driver.find_element(By.ID, "k")
        box.clear()
        box.send_keys(str(k))
        target = 7
        driver.find_element(By.ID, "file").send_keys(str(paths[target]))
        wait.until(lambda d: d.find_element(By.ID, "results").get_attribute("data-state")
                   in ("done", "error"))
        assert driver.find_element(By.ID, "error").text == ""
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .result")
        assert len(cards) == k
        distances = [int(c.get_attribute("data-distance")) for c in cards]
        ids = [int(c.get_attribute("data-id")) for c in cards]
        assert distances[0] == 0
        assert distances == sorted(distances)
        assert target in [i for i, d in zip(ids, distances, strict=True) if d == 0]
        loaded = ("return Array.from(document.querySelectorAll('#results img'))"
                  ".filter(i => i.complete && i.naturalWidth > 0).length")
        wait.until(lambda d: d.execute_script(loaded) == k)
        # Clicking a result searches by id and reports precision@k for its label.
        cards[0].find_element(By.TAG_NAME, "img").click()
        wait.until(lambda d: "%" in d.find_element(By.ID, "precision").text)
        browse = "return document.querySelectorAll('#browse img').length"
        assert driver.execute_script(browse) > 0
        shot = os.environ.get("HASHCONDENSE_SCREENSHOT")
        if shot:
            driver.save_screenshot(str(Path(shot)))
    finally:
        driver.quit()
