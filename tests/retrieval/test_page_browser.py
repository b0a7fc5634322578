"""The search page in headless Chromium (Selenium) against a real server over a real index.

Set DML_PAGE_SCREENSHOT=docs/retrieval_page.png to keep the screenshot of the page with its results.
"""
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager

import pytest
from served_index import exact_top_k, served_index

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "page-test-token"
TOP_K = 6

pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                reason="needs chromium and chromedriver (apt-get install -y chromium chromium-driver; "
                                       ".ci/run installs them)")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_dataset, tiny_checkpoint):
    return served_index(tmp_path_factory, tiny_dataset, tiny_checkpoint)


@contextmanager
def server_thread(app):
    """uvicorn serving app on a free 127.0.0.1 port in a thread of this process; yields the base URL."""
    import uvicorn

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        listening.close()


@contextmanager
def chromium(user_data_dir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 f"--user-data-dir={user_data_dir}", "--window-size=1200,760"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))  # never downloads a driver
    try:
        yield driver
    finally:
        driver.quit()


def shown_matches(driver):
    """(item id, label text) of each result thumbnail, read in one go (the page may be redrawing)."""
    shown = driver.execute_script("return [...document.querySelectorAll('#results .match')].map("
                                  "e => [Number(e.dataset.id), e.querySelector('.label').textContent])")
    return [tuple(match) for match in shown]


def test_the_page_shows_exact_search_top_k_and_adds_an_image(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from retrieval.gallery import Gallery
    from retrieval.service import create_app

    index_dir = shutil.copytree(served["index_dir"], tmp_path / "index")
    gallery = Gallery.open(index_dir)
    query, _ = served["queries"][2]
    (want_ids, want_similarities), = [answer for (path, _), answer in zip(served["queries"], exact_top_k(served, TOP_K))
                                      if path == query]
    want = [(item_id, str(gallery.item(item_id).label)) for item_id in want_ids]

    with server_thread(create_app(gallery, TOKEN)) as url, chromium(tmp_path / "chromium") as driver:
        wait = WebDriverWait(driver, 30)
        driver.get(url + "/")
        wait.until(lambda d: "40 images, Flat index" in d.find_element(By.ID, "gallery-info").text)
        top_k = driver.find_element(By.ID, "top-k")
        top_k.clear()
        top_k.send_keys(str(TOP_K))
        driver.find_element(By.ID, "query-file").send_keys(query)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")
        assert shown_matches(driver) == want
        shown_similarities = [float(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "#results .similarity")]
        assert shown_similarities == [round(s, 3) for s in want_similarities]
        assert driver.find_element(By.ID, "no-match").is_displayed() is False
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
        driver.execute_script("document.activeElement.blur()")
        driver.save_screenshot(str(tmp_path / "page.png"))
        if os.environ.get("DML_PAGE_SCREENSHOT"):
            shutil.copyfile(tmp_path / "page.png", os.environ["DML_PAGE_SCREENSHOT"])

        threshold = driver.find_element(By.ID, "threshold")
        threshold.send_keys(f"{want_similarities[0] + 0.001:.4f}", Keys.TAB)
        wait.until(lambda d: d.find_element(By.ID, "no-match").is_displayed())
        assert shown_matches(driver) == []
        threshold.clear()
        threshold.send_keys(Keys.TAB)
        wait.until(lambda d: len(shown_matches(d)) == TOP_K)

        driver.find_element(By.CSS_SELECTOR, "#add-panel summary").click()
        driver.find_element(By.ID, "add-label").send_keys("77")
        driver.find_element(By.ID, "add-token").send_keys("wrong")
        driver.find_element(By.ID, "add-button").click()
        wait.until(lambda d: "not added" in d.find_element(By.ID, "status").text)
        driver.find_element(By.ID, "add-token").clear()
        driver.find_element(By.ID, "add-token").send_keys(TOKEN)
        driver.find_element(By.ID, "add-button").click()
        wait.until(lambda d: shown_matches(d)[:1] == [(40, "77")])
        assert "added as item 40 with label 77" in driver.find_element(By.ID, "status").text
    assert Gallery.open(index_dir).stats()["items"] == 41
