"""End to end in a real headless Chromium: a person signs up on the page a real `digest-mailer
web` serves, the confirmation arrives at a real SMTP server, the click in that email confirms,
a run mails a digest whose "Change your topics" link opens the preferences page, the topics
are changed there, and the next run follows them. Screenshots of each page at 375 and 1024 px
go to test-artifacts/selfservice/."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_signup import site

from conftest import ENV, REPO, SmtpServer, base_config, free_port, go, local_smtp, toml_text
from digest_mailer.web_site import CONFIRM_QUIET_SECONDS

__all__ = ["site"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "test-artifacts" / "selfservice"
WIDTHS = (375, 1024)
PUBLIC = "https://papers.example.org"  # where the digests' links point (a reverse proxy)

if CHROMIUM is None and os.environ.get("CI"):
    pytest.fail("chromium is missing: .ci/run installs Debian's chromium", pytrace=False)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium; .ci/run installs it")


@pytest.fixture
def served(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[tuple[Path, str]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    path = tmp_path / "digest-mailer.toml"
    path.write_text(toml_text(base_config(
        tmp_path, smtp=local_smtp(smtp_server.port), web={"base_url": base},
        subscribers=[{"email": "operator-pick@example.org", "topics": ["agents"]}])))
    go(path)  # yesterday's run: the ledger knows papers, for the live preview
    smtp_server.handler.received.clear()
    exe = Path(sys.executable).with_name("digest-mailer")
    proc = subprocess.Popen([str(exe), "web", "--config", str(path), "--port", str(port)],
                            env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("digest-mailer web did not come up")
        yield path, base
    finally:
        proc.terminate()
        proc.wait(15)


def shots(browser: object, name: str) -> list[Path]:
    from cdp import Browser

    assert isinstance(browser, Browser)
    out = []
    for width in WIDTHS:
        browser.width(width)
        time.sleep(0.2)
        assert browser.js("document.documentElement.scrollWidth") <= width, \
            f"{name} overflows at {width}px"
        shot = ARTIFACTS / f"{name}-{width}px.png"
        browser.screenshot(shot)
        out.append(shot)
    browser.width(WIDTHS[0])
    return out


def test_sign_up_confirm_receive_change_topics_in_a_browser(
        served: tuple[Path, str], smtp_server: SmtpServer, tmp_path: Path,
        record_property: Callable[[str, object], None]) -> None:
    from cdp import Browser

    path, base = served
    assert CHROMIUM is not None
    browser = Browser(CHROMIUM, tmp_path / "profile")
    taken: list[Path] = []
    try:
        browser.width(WIDTHS[0])
        started = time.perf_counter()
        browser.go(f"{base}/")
        print(f"\nsign-up page loaded in the browser in "
              f"{(time.perf_counter() - started) * 1000:.0f} ms")
        assert "Get trending papers in your inbox" in browser.text()
        taken += shots(browser, "1-signup")
        browser.type_into("#email", "reader@example.org")
        browser.type_into("#topics", "diffusion")
        # The live preview (progressive enhancement) follows the typing.
        browser.wait_for("document.getElementById('preview').innerText"
                         ".indexOf('papers in the last') >= 0")
        preview = browser.js("document.getElementById('preview').innerText")
        assert re.search(r"would have received [1-9]\d* papers?", preview), preview
        taken += shots(browser, "2-signup-preview")
        browser.click("button[value=subscribe]")
        browser.wait_for("document.body.innerText.indexOf('Check your inbox') >= 0")
        taken += shots(browser, "3-check-your-inbox")

        (mail,) = smtp_server.handler.to("reader@example.org")
        html = mail.message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        email_page = tmp_path / "confirmation.html"
        email_page.write_text(html, encoding="utf-8")
        browser.go(email_page.as_uri())
        taken += shots(browser, "4-confirmation-email")
        browser.click("a")  # the person's click in the email
        browser.wait_for("document.body.innerText.indexOf('You are subscribed') >= 0")
        taken += shots(browser, "5-subscribed")

        smtp_server.handler.received.clear()
        report = go(path)
        assert {o.email: o.status.value for o in report.outcomes}["reader@example.org"] == \
            "sent"
        (digest,) = smtp_server.handler.to("reader@example.org")
        body = digest.message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert "Diffusion" in body and "Speech Recognition" not in body
        link = re.search(r'href="(https://papers\.example\.org/unsubscribe/[^"]+/topics)"',
                         body)
        assert link, "no 'Change your topics' link in the digest"
        # The reverse proxy's job: the public https URL reaches the local service.
        browser.go(link.group(1).replace(PUBLIC, base))
        browser.wait_for("location.pathname.indexOf('/preferences/') === 0")
        assert "diffusion" in browser.js("document.getElementById('topics').value")
        taken += shots(browser, "6-preferences")
        browser.type_into("#topics", "speech recognition")
        browser.click("button[value=save]")
        browser.wait_for("document.body.innerText.indexOf('Saved') >= 0")
        assert browser.js("document.getElementById('topics').value") == "speech recognition"
        taken += shots(browser, "7-preferences-saved")
    finally:
        browser.close()
    smtp_server.handler.received.clear()
    report = go(path)
    (digest,) = smtp_server.handler.to("reader@example.org")
    body = digest.message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Multilingual Speech Recognition" in body and "Diffusion" not in body
    record_property("log", "screenshots:\n" + "\n".join(f"  {p}" for p in taken))
    assert all(p.stat().st_size > 1000 for p in taken)


def test_a_persons_click_in_another_browser_confirms_and_a_headless_scanner_does_not(
        site: Any, tmp_path: Path) -> None:
    """The sign-up made in one browser (httpx here), the email read elsewhere: a webmail in
    another browser (the link clicked in a page of another site), and a mail app handing the
    link to the default browser (Chromium started with the URL, as the OS does). Both are a
    real Chromium's own requests, with no sign-up cookie. A scanner driving a headless
    Chromium the moment the mail arrives sends the very same Fetch Metadata (DevTools
    navigations count as user-activated), which is why the first seconds get the button."""
    from cdp import FLAGS, Browser
    from test_signup import sign_up, stored_emails

    assert CHROMIUM is not None
    for n, email in enumerate(("webmail@example.org", "mailapp@example.org")):
        sign_up(site, email, headers={"X-Forwarded-For": f"192.0.2.{n}"})
    links = {email: site.confirmations(email)[0]
             for email in ("webmail@example.org", "mailapp@example.org")}

    scanner = Browser(CHROMIUM, tmp_path / "scanner")
    try:  # at once after mailing, as a link scanner's browser opens it
        scanner.go(links["webmail@example.org"])
        scanner.wait_for("document.body.innerText.indexOf('Confirm my subscription') >= 0")
    finally:
        scanner.close()
    assert stored_emails(site) == set()

    site.clock[0] += timedelta(seconds=CONFIRM_QUIET_SECONDS + 1)
    mail = tmp_path / "webmail.html"  # another site's page holding the link
    mail.write_text(f'<p>Your mail</p><a href="{links["webmail@example.org"]}">Confirm</a>',
                    encoding="utf-8")
    person = Browser(CHROMIUM, tmp_path / "person")
    try:
        person.go(mail.as_uri())
        person.click("a")
        person.wait_for("document.body.innerText.indexOf('You are subscribed') >= 0")
    finally:
        person.close()
    assert stored_emails(site) == {"webmail@example.org"}

    opened = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'default'}",
                               links["mailapp@example.org"]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while stored_emails(site) != {"webmail@example.org", "mailapp@example.org"} and \
                time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        opened.terminate()
        opened.wait(15)
    assert stored_emails(site) == {"webmail@example.org", "mailapp@example.org"}
