"""Screenshot of the search page for the docs: serve an index, search one of its images in
headless Chromium (Debian's chromium + chromium-driver, via selenium), save a PNG.

    python tools/search_screenshot.py --index outputs/cifar10-index --out docs/search-page.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from hashcondense.serve.app import create_app

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--out", default=str(ROOT / "docs" / "search-page.png"))
    parser.add_argument("--id", type=int, default=0, help="indexed item to search with")
    parser.add_argument("-k", type=int, default=16)
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(args.index), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: "images" in d.find_element(By.ID, "info").text)
        box = driver.find_element(By.ID, "k")
        box.clear()
        box.send_keys(str(args.k))
        driver.execute_script(f"searchId({args.id})")
        wait.until(lambda d: d.find_element(By.ID, "results").get_attribute("data-state")
                   == "done")
        loaded = ("return Array.from(document.images).every(i => i.complete && "
                  "i.naturalWidth > 0)")
        wait.until(lambda d: d.execute_script(loaded))
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
