"""A real browser: headless Chromium (Debian's, driven by Selenium through Debian's chromedriver)
logs in, sees a multi-turn comparison, chooses, and the vote is in the database; the same on a
phone-sized screen. Screenshots go to the test's folder, and into docs/images/ (the annotator
guide's pictures) when ALIGNLAB_UPDATE_SCREENSHOTS=1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from feedback_servers import ROOT, Server
from sqlalchemy import select

from alignlab.feedback import store
from alignlab.feedback.db import Vote, open_database

PROMPT = [{"role": "user", "content": "I have eggs, spinach and feta. Any dinner idea?"},
          {"role": "assistant", "content": "A spinach and feta omelette is quick and tasty."},
          {"role": "user", "content": "How do I make it fluffy?"}]
RESPONSES = ["Whisk the eggs well with a splash of milk, cook on medium-low heat, and fold gently once the "
             "edges set. Add the spinach and feta just before folding.",
             "Just cook it longer on high heat."]


@pytest.fixture
def browser(chromium, tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not download a browser or driver
    binary, driver = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1200,1250"):
        options.add_argument(arg)
    try:
        chrome = webdriver.Chrome(options=options, service=Service(driver))
    except Exception as exc:  # a browser that is installed but cannot start here
        pytest.skip(f"headless Chromium could not start: {str(exc).splitlines()[0]}")
    chrome.implicitly_wait(10)  # find_element waits for the next page after a click
    yield chrome
    chrome.quit()


def shoot(chrome, tmp_path: Path, name: str) -> None:
    chrome.execute_script("window.scrollTo(0, 0)")
    path = tmp_path / name
    assert chrome.save_screenshot(str(path))
    if os.environ.get("ALIGNLAB_UPDATE_SCREENSHOTS") == "1":
        (ROOT / "docs" / "images").mkdir(exist_ok=True)
        shutil.copy(path, ROOT / "docs" / "images" / name)


def test_an_annotator_votes_in_a_real_browser_on_desktop_and_phone(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = f"sqlite:///{tmp_path / 'browser.db'}"
    sessions = open_database(url)
    with sessions() as db:
        project = store.create_project(db, "recipes", "pairwise", title="Cooking help",
                                       instructions="Pick the more helpful answer to the last message.")
        store.add_items(db, project, [{"prompt": PROMPT, "responses": RESPONSES}] * 2)
        ann = store.create_user(db, "ann", "ann-password")
        store.add_member(db, project, ann)
        db.commit()
    server = Server(url, tmp_path / "server.log").start()
    try:
        browser.get(server.url + "/p/recipes")  # not logged in: sent to the login page
        assert browser.current_url.endswith("/login")
        browser.find_element(By.ID, "username").send_keys("ann")
        browser.find_element(By.ID, "password").send_keys("ann-password")
        shoot(browser, tmp_path, "feedback-login.png")
        browser.find_element(By.ID, "login").click()
        browser.find_element(By.CLASS_NAME, "start").click()

        context = browser.find_element(By.ID, "context").text
        assert "How do I make it fluffy?" in context and "spinach and feta omelette" in context
        shown_a = browser.find_element(By.ID, "response-A").text
        assert shown_a.startswith("Response A") and any(r[:40] in shown_a for r in RESPONSES)
        browser.find_element(By.CSS_SELECTOR, "input[name=choice][value=A]").click()
        browser.find_element(By.CSS_SELECTOR, "input[name=strength][value='2']").click()
        browser.find_element(By.NAME, "critique").send_keys("Concrete steps.")
        shoot(browser, tmp_path, "feedback-annotate.png")
        browser.find_element(By.ID, "submit").click()
        assert browser.find_element(By.ID, "saved").is_displayed()
        with sessions() as db:
            votes = db.scalars(select(Vote)).all()
        assert len(votes) == 1 and votes[0].payload["critique"] == "Concrete steps."
        assert votes[0].payload["strength"] == 2
        chosen = RESPONSES.index(next(r for r in RESPONSES if r[:40] in shown_a))
        assert votes[0].payload["choice"] == "ab"[chosen]

        browser.set_window_size(390, 844)  # a phone
        browser.refresh()
        fits = browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        a, b = (browser.find_element(By.ID, f"response-{x}").rect for x in "AB")
        assert fits and b["y"] >= a["y"] + a["height"]  # no sideways scrolling; responses stacked
        browser.find_element(By.CSS_SELECTOR, "input[name=choice][value=tie]").click()
        shoot(browser, tmp_path, "feedback-phone.png")
        submit = browser.find_element(By.ID, "submit")
        browser.execute_script("arguments[0].scrollIntoView()", submit)
        submit.click()
        WebDriverWait(browser, 10).until(lambda d: "all done" in d.page_source)
        with sessions() as db:
            assert [v.payload["choice"] for v in db.scalars(select(Vote).order_by(Vote.id))][1] == "tie"
    finally:
        server.stop()
