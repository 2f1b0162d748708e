"""A customer's journey through the portal in headless Chromium (Selenium, the system's
chromium and chromedriver), against a real gateway, PostgreSQL and RabbitMQ started by
crates/e2e/tests/portal.rs.

Environment: PORTAL_BASE (the gateway's URL), PORTAL_KEY (a customer key), PORTAL_RECEIVER
(an HTTPS receiver the delivery service trusts), PORTAL_SCREENSHOTS (a directory: the main
pages are saved there as PNG files; optional).

The receiver and the producer are driven by the test that runs this script: a line
"STEP <name>" on stdout asks it to act (receiver-fail: the receiver answers 500 and four
verdicts are published; receiver-ok: it answers 200) and the script waits for "ok" on stdin. Any console
error on any page fails the journey. Exit status 0 only if every step held.
"""

import datetime
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

BASE = os.environ["PORTAL_BASE"].rstrip("/")
KEY = os.environ["PORTAL_KEY"]
RECEIVER = os.environ["PORTAL_RECEIVER"]
SHOTS = os.environ.get("PORTAL_SCREENSHOTS")
PATIENCE = 30.0


def say(text):
    print(text, flush=True)


def step(name):
    """Asks the test to act, and waits until it has."""
    say(f"STEP {name}")
    answer = sys.stdin.readline().strip()
    if answer != "ok":
        raise SystemExit(f"the test did not do {name}: {answer!r}")


def browser(javascript=True):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1700", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


class Journey:
    def __init__(self, driver, name):
        self.d = driver
        self.name = name
        self.documents = set()

    def console_clean(self):
        # Chromium logs a page that answers 4xx (a refused form, shown in words) as a failed
        # load of the document itself: that is the page's status, not an error on it. Any
        # other failure (a stylesheet, the script, the icon, a CSP violation) counts.
        # The log may say so a moment later, so every document the journey was on counts.
        self.documents.add(self.d.current_url.split("?")[0])
        errors = [e for e in self.d.get_log("browser") if e.get("level") == "SEVERE"
                  and not (e.get("source") == "network"
                           and e.get("message", "").split(" ")[0].split("?")[0]
                           in self.documents)]
        if errors:
            raise AssertionError(f"{self.name}: console errors on {self.d.current_url}: {errors}")

    def get(self, path):
        self.d.get(BASE + path)
        self.console_clean()

    def find(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def has(self, css):
        try:
            self.find(css)
            return True
        except NoSuchElementException:
            return False

    def click(self, css, navigates=True):
        """Clicks; a click that navigates returns once the next page has replaced this one."""
        page = self.find("html")
        self.find(css).click()
        if navigates:
            WebDriverWait(self.d, PATIENCE).until(expected_conditions.staleness_of(page))
        self.console_clean()

    def text(self, css):
        return self.find(css).text

    def shot(self, name):
        if SHOTS:
            os.makedirs(SHOTS, exist_ok=True)
            self.d.save_screenshot(os.path.join(SHOTS, f"{name}.png"))

    def until(self, what, check, reload=True):
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                if check():
                    return
            except (NoSuchElementException, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {what} never happened on {self.d.current_url}")
            time.sleep(0.5)
            if reload:
                self.d.refresh()
                self.console_clean()

    def sign_in(self, key):
        self.get("/portal")
        field = self.find("#api_key")
        field.clear()
        field.send_keys(key)
        self.click("#sign-in")


def statuses(j):
    return [row.get_attribute("data-status") for row in
            j.d.find_elements(By.CSS_SELECTOR, "#deliveries tbody tr")]


def main():
    d = browser()
    j = Journey(d, "journey")
    try:
        # Sign-in: a wrong key is refused in words, the right one opens the webhooks.
        j.get("/portal")
        j.shot("sign-in")
        j.sign_in("aioka_live_not_a_key")
        assert "invalid or revoked" in j.text("#error"), j.text("#error")
        assert "/portal/sign-in" in d.current_url and KEY not in d.current_url
        j.sign_in(KEY)
        assert d.current_url.endswith("/portal/webhooks"), d.current_url
        assert j.has("#no-webhooks")
        say("signed in")

        # A bad registration is refused in words and nothing is registered.
        j.find("#url").send_keys("https://example.com/hook")
        j.click("#register")
        assert "event" in j.text("#error").lower(), j.text("#error")
        assert j.has("#no-webhooks")

        # Registration: the secret once, with its warning and a copy button.
        j.find("#url").clear()
        j.find("#url").send_keys(RECEIVER)
        j.click("#event-verdict\\.new", navigates=False)
        j.click("#register")
        secret = j.text("#secret")
        assert secret.startswith("whsec_"), secret
        assert "shown only once" in j.text(".warning")
        copy = j.find("#copy")
        assert copy.is_displayed(), "the copy button did not appear with JavaScript on"
        copy.click()
        j.until("the copy button answering", lambda: j.text("#copied") != "", reload=False)
        j.console_clean()
        j.shot("secret")
        j.click("#to-webhook")
        webhook_url = d.current_url
        say("registered")

        # A test event arrives: the log shows the delivery and its attempt.
        j.click("#send-test")
        assert "test event is on its way" in j.text("#notice")
        j.until("the test delivery succeeding", lambda: "succeeded" in statuses(j))
        assert "HTTP 200" in j.text("#deliveries .outcome")
        j.shot("webhook")
        say("test delivered")

        # The receiver fails while verdicts are published: failures count up in the log and
        # the webhook ends disabled.
        step("receiver-fail")
        d.get(webhook_url)
        j.until("the webhook being disabled",
                lambda: "disabled" in j.text("#state") and int(j.text("#failures")) >= 10)
        assert "HTTP 500" in j.text("#deliveries"), "no failed attempt in the log"
        j.shot("webhook-disabled")
        j.get("/portal/webhooks")
        assert "disabled" in j.text("#webhooks .state")
        assert j.text("#webhooks .last") != "none yet", "the list shows no last delivery"
        j.shot("webhooks")
        say("disabled after failures")

        # Fixed: enable, then recover the window.
        step("receiver-ok")
        d.get(webhook_url)
        j.click("#enable")
        assert "active" in j.text("#state"), j.text("#state")
        since = (datetime.datetime.now(datetime.timezone.utc)
                 - datetime.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S")
        d.execute_script("document.getElementById('since').value = arguments[0]", since)
        j.click("#recover")
        assert j.has("#notice") and "Recovery queued" in j.text("#notice"), j.text("main")
        queued = int(j.text("#notice").split("queued ")[1].split(" ")[0])
        assert queued >= 1, j.text("#notice")
        j.until("the recovered deliveries succeeding",
                lambda: statuses(j) and all(s == "succeeded" for s in statuses(j)))
        say(f"recovered {queued}")

        # Sending a succeeded delivery again is refused, and the page says why in the API's
        # words.
        j.click("#deliveries .resend")
        assert "only failed or skipped deliveries can be re-sent" in j.text("#error"), \
            j.text("main")
        say("re-send refused in words")

        # Rotation: a new secret, once.
        j.click("#rotate")
        rotated = j.text("#secret")
        assert rotated.startswith("whsec_") and rotated != secret
        assert "old secret too" in j.text(".warning")
        say("rotated")

        # Reading works with JavaScript off.
        plain = Journey(browser(javascript=False), "no-javascript")
        try:
            plain.sign_in(KEY)
            assert plain.has("#webhooks"), "the list did not show without JavaScript"
            plain.click("#webhooks a")
            assert plain.has("#deliveries"), "the log did not show without JavaScript"
        finally:
            plain.d.quit()
        say("read without JavaScript")

        # Delete, confirmed.
        d.get(webhook_url)
        j.click("#delete")
        j.click("#confirm-delete")
        assert "deleted" in j.text("#notice")
        assert j.has("#no-webhooks")

        # Sign out forgets the key.
        j.click("#sign-out")
        assert j.has("#api_key")
        j.get("/portal/webhooks")
        assert j.has("#api_key"), "a signed-out browser still reached the webhooks"
        assert not any(c["name"] == "aioka_portal" and c["value"] for c in d.get_cookies())
        say("signed out")
    finally:
        d.quit()
    say("journey complete")


if __name__ == "__main__":
    main()
