"""Sign-up, double opt-in, preferences and re-subscribe through a real HTTP client against the
running service, with a real SMTP server receiving the confirmation emails; and the attacks
on them (CSRF, honeypot, floods, forged, expired and foreign tokens)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from conftest import ENV, SECRET, SmtpServer, base_config, free_port, go, local_smtp, toml_text
from digest_mailer.audience import members
from digest_mailer.config import load_config
from digest_mailer.message import unsubscribe_token
from digest_mailer.store import Ledger
from digest_mailer.web import Tokens
from digest_mailer.web_pages import create_site
from digest_mailer.web_site import CONFIRM_QUIET_SECONDS

LIST_ID = "Daily Papers <daily-papers.example.org>"


@dataclass
class Site:
    client: httpx.Client
    base: str
    path: Path
    smtp: SmtpServer
    clock: list[timedelta]

    def confirmations(self, to: str | None = None) -> list[str]:
        """The confirmation links received so far (for one address)."""
        out = []
        for r in self.smtp.handler.received:
            if to is None or to in r.rcpt_tos:
                text = r.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
                out += re.findall(r"http://127\.0\.0\.1:\d+/confirm/\S+", text)
        return out


def start(path: Path, port: int, clock: list[timedelta], interval: float = 2.0
          ) -> tuple[uvicorn.Server, threading.Thread]:
    app = create_site(Tokens(path, ENV, interval=interval), ENV,
                      now=lambda: datetime.now(UTC) + clock[0])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           proxy_headers=True, forwarded_allow_ips="127.0.0.1"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    return server, thread


@pytest.fixture
def site(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Site]:
    port = free_port()
    doc = base_config(tmp_path, smtp=local_smtp(smtp_server.port),
                      web={"base_url": f"http://127.0.0.1:{port}"})
    path = tmp_path / "digest-mailer.toml"
    path.write_text(toml_text(doc))
    go(path)  # the ledger knows the sample's papers, for the preview
    smtp_server.handler.received.clear()
    clock = [timedelta(0)]
    server, thread = start(path, port, clock)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as client:
        yield Site(client, base, path, smtp_server, clock)
    server.should_exit = True
    thread.join(5)


def csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found, page.text
    return found.group(1)


def sign_up(site: Site, email: str, client: httpx.Client | None = None,
            headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:
    c = client or site.client
    page = c.get("/")
    data = {"csrf": csrf(page), "email": email, "topics": "diffusion\nworld models",
            "frequency": "daily", "weekday": "mon", "website": "", "action": "subscribe",
            **fields}
    return c.post("/", data=data, headers=headers or {})


def stored_emails(site: Site) -> set[str]:
    return {m.subscriber.key for m in members(load_config(site.path)) if m.source == "store"}


def test_the_signup_page_is_self_contained_and_accessible(site: Site) -> None:
    page = site.client.get("/")
    assert page.status_code == 200
    assert "dm_csrf" in page.headers["set-cookie"]
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    # No third-party asset: every src and href is on this site.
    assert not [u for u in re.findall(r'(?:src|href|action)="([^"]+)"', page.text)
                if not u.startswith("/")]
    for field in ("email", "topics", "exclude", "authors", "weekday"):
        assert f'<label for="{field}"' in page.text and f'id="{field}"' in page.text
    assert 'lang="en"' in page.text and 'name="viewport"' in page.text
    script = site.client.get("/assets/preview.js")
    assert script.status_code == 200 and "fetch('/preview'" in script.text
    assert site.client.get("/privacy").status_code == 200


def test_sign_up_confirm_by_the_same_browser(site: Site) -> None:
    done = sign_up(site, "new@example.org")
    assert done.status_code == 200 and "Check your inbox" in done.text
    (link,) = site.confirmations("new@example.org")
    msg = site.smtp.handler.received[0].message
    assert msg["Auto-Submitted"] == "auto-generated" and msg["Message-ID"].endswith(
        "@example.org>")
    assert msg.get_body(("html",)) is not None
    assert stored_emails(site) == set()  # nothing until the click
    page = site.client.get(link.removeprefix(site.base))  # the browser that signed up
    assert page.status_code == 200 and "You are subscribed" in page.text
    assert stored_emails(site) == {"new@example.org"}
    sub = next(m.subscriber for m in members(load_config(site.path))
               if m.subscriber.key == "new@example.org")
    assert sub.topics == ("diffusion", "world models")
    # A second click is harmless: it says so, and changes nothing.
    again = site.client.get(link.removeprefix(site.base))
    assert again.status_code == 200 and "Already confirmed" in again.text
    assert stored_emails(site) == {"new@example.org"}


def test_a_link_scanner_does_not_confirm_but_a_persons_click_does(site: Site) -> None:
    sign_up(site, "scan@example.org")
    (link,) = site.confirmations()
    path = link.removeprefix(site.base)
    with httpx.Client(base_url=site.base) as scanner:  # no cookie, no Fetch Metadata
        for method in ("GET", "HEAD"):
            seen = scanner.request(method, path)
            assert seen.status_code == 200
        assert "Confirm my subscription" in scanner.get(path).text
        clicked = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document",
                   "Sec-Fetch-User": "?1", "Sec-Fetch-Site": "cross-site"}
        # A browser's click, but at once after mailing: scanners that run a browser do that.
        assert "Confirm my subscription" in scanner.get(path, headers=clicked).text
        prefetch = {**clicked, "Sec-Purpose": "prefetch"}
        site.clock[0] = timedelta(seconds=CONFIRM_QUIET_SECONDS + 5)
        assert "Confirm my subscription" in scanner.get(path, headers=prefetch).text
        assert stored_emails(site) == set()
        # The person's click on another device, a little later.
        assert "You are subscribed" in scanner.get(path, headers=clicked).text
    assert stored_emails(site) == {"scan@example.org"}


def test_the_confirm_button_posts_with_its_csrf_field(site: Site) -> None:
    sign_up(site, "button@example.org")
    (link,) = site.confirmations()
    path = link.removeprefix(site.base)
    with httpx.Client(base_url=site.base) as other:
        page = other.get(path)
        assert other.post(path, data={}).status_code == 403
        assert stored_emails(site) == set()
        done = other.post(path, data={"csrf": csrf(page)})
        assert done.status_code == 200 and "You are subscribed" in done.text
    assert stored_emails(site) == {"button@example.org"}


def test_forms_without_csrf_or_with_the_honeypot_send_nothing(site: Site) -> None:
    page = site.client.get("/")
    base = {"email": "x@example.org", "topics": "diffusion", "action": "subscribe"}
    assert site.client.post("/", data=base).status_code == 403
    assert site.client.post("/", data={**base, "csrf": "0" * 64}).status_code == 403
    with httpx.Client(base_url=site.base) as fresh:  # its field, another browser's cookie
        assert fresh.post("/", data={**base, "csrf": csrf(page)}).status_code == 403
    bot = site.client.post("/", data={**base, "csrf": csrf(page), "website": "http://spam"})
    known = sign_up(site, "y@example.org")
    assert bot.status_code == 200 and bot.text == known.text  # the same answer
    assert site.confirmations("x@example.org") == []


def test_floods_from_one_ip_and_for_one_address_are_refused(site: Site) -> None:
    for n in range(50):
        sign_up(site, f"flood{n}@example.org",
                headers={"X-Forwarded-For": "203.0.113.7"})
    assert len(site.confirmations()) == 10
    last = sign_up(site, "flood-last@example.org", headers={"X-Forwarded-For": "203.0.113.7"})
    assert last.status_code == 429
    site.smtp.handler.received.clear()
    answers = set()
    for n in range(10):
        answers.add(sign_up(site, "victim@example.org",
                            headers={"X-Forwarded-For": f"198.51.100.{n}"}).text)
    assert len(site.confirmations("victim@example.org")) == 1  # once an hour at most
    assert len(answers) == 1  # every try is answered alike


def test_forged_expired_foreign_and_other_kind_tokens_are_refused(site: Site) -> None:
    sign_up(site, "t@example.org")
    (link,) = site.confirmations()
    token = link.rsplit("/", 1)[1]
    old = type("Old", (TimestampSigner,), {"get_timestamp": lambda self: int(time.time())
                                           - 3 * 86400})
    expired = URLSafeTimedSerializer(SECRET.encode(), salt="digest-mailer confirm",
                                     signer=old).dumps([LIST_ID, "t@example.org",
                                                        token_nonce(site, "t@example.org")])
    foreign = URLSafeTimedSerializer(SECRET.encode(), salt="digest-mailer confirm").dumps(
        ["Other <other.example.org>", "t@example.org", token_nonce(site, "t@example.org")])
    other_kind = URLSafeTimedSerializer(SECRET.encode(), salt="digest-mailer preferences"
                                        ).dumps([LIST_ID, "t@example.org"])
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    for bad in (forged, expired, foreign, other_kind, "x" * 5000):
        page = site.client.get(f"/confirm/{bad}")
        assert page.status_code == 404, bad
        assert "This link has expired" in page.text
        assert site.client.get(f"/preferences/{bad}").status_code == 404
    assert stored_emails(site) == set()
    # The real one still works: the checks above are the tokens', not the address's.
    assert "You are subscribed" in site.client.get(f"/confirm/{token}").text


def token_nonce(site: Site, email: str) -> str:
    from digest_mailer.store.selfservice import SelfService

    with SelfService.at(load_config(site.path).state_target) as store:
        pending = store.pending(email)
    assert pending is not None
    return pending.nonce


def test_the_same_answer_for_known_and_unknown_addresses(site: Site) -> None:
    known = sign_up(site, "ada@example.org")  # a config subscriber
    unknown = sign_up(site, "nobody-yet@example.org")
    assert known.status_code == unknown.status_code == 200
    assert known.text == unknown.text


def test_bounded_and_escaped_fields(site: Site) -> None:
    long = sign_up(site, "z@example.org", topics="a" * 5000)
    assert long.status_code == 400 and "too long" in long.text
    many = sign_up(site, "z@example.org", topics=",".join(f"t{n}" for n in range(30)))
    assert many.status_code == 400 and "at most 20" in many.text
    bad = sign_up(site, "<script>alert(1)</script>@x", topics="<b>bold</b>")
    assert bad.status_code == 400
    assert "<script>alert(1)" not in bad.text and "&lt;script&gt;" in bad.text
    assert "<b>bold</b>" not in bad.text
    assert site.client.post("/", content=b"x" * 20_000, headers={
        "Content-Type": "application/x-www-form-urlencoded"}).status_code == 413
    assert site.confirmations() == []


def test_the_live_preview_counts_what_the_topics_would_have_sent(site: Site) -> None:
    page = site.client.get("/")
    started = time.perf_counter()
    got = site.client.post("/preview", data={"csrf": csrf(page), "topics": "diffusion"})
    took = time.perf_counter() - started
    print(f"\nPOST /preview: {took * 1000:.0f} ms")
    assert got.status_code == 200
    found = re.search(r"would have received (\d+) paper", got.text)
    assert found and int(found.group(1)) >= 1, got.text
    nothing = site.client.post("/preview", data={"csrf": csrf(page),
                                                 "topics": "zzzqqq nonexistent"})
    assert "would have received 0 papers" in nothing.text
    assert "matched none of the" in nothing.text  # the matcher's warning
    # Without JavaScript: the form's Preview button renders the whole page with it.
    plain = site.client.post("/", data={"csrf": csrf(page), "email": "", "topics": "diffusion",
                                        "action": "preview"})
    assert plain.status_code == 200 and "would have received" in plain.text
    assert site.client.post("/preview", data={"topics": "x"}).status_code == 403


def test_preferences_from_a_digest_link_save_an_override_and_resubscribe(site: Site) -> None:
    token = unsubscribe_token(SECRET.encode(), "ada@example.org", LIST_ID)
    hop = site.client.get(f"/unsubscribe/{token}/topics")
    assert hop.status_code == 303
    page = site.client.get(hop.headers["location"])
    assert page.status_code == 200 and "diffusion" in page.text
    assert site.client.post(hop.headers["location"], data={"topics": "x"}).status_code == 403
    saved = site.client.post(hop.headers["location"], data={
        "csrf": csrf(page), "topics": "robotics, agents", "frequency": "weekly",
        "weekday": "fri", "action": "save"})
    assert saved.status_code == 200 and "Saved" in saved.text
    found = {m.subscriber.key: m for m in members(load_config(site.path))}
    ada = found["ada@example.org"]
    assert ada.source == "config+override"
    assert ada.subscriber.topics == ("robotics", "agents")
    assert (ada.subscriber.frequency, ada.subscriber.weekday) == ("weekly", 4)
    # Unsubscribe, then take it back from the page that says so.
    gone = site.client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert "Subscribe again" in gone.text
    action = re.search(r'action="(/resubscribe/[^"]+)"', gone.text)
    assert action
    with Ledger.open_readonly(load_config(site.path).state_path) as ledger:
        assert ledger.suppressed("ada@example.org") == "unsubscribed"
    assert site.client.post(action.group(1), data={}).status_code == 403
    back = site.client.post(action.group(1), data={"csrf": csrf(gone)})
    assert back.status_code == 200 and "Welcome back" in back.text
    with Ledger.open_readonly(load_config(site.path).state_path) as ledger:
        assert ledger.suppressed("ada@example.org") is None
    assert site.client.get("/unsubscribe/nonsense/topics").status_code == 404


def test_signup_off_keeps_preferences_and_unsubscribe(site: Site, tmp_path: Path) -> None:
    doc: dict[str, Any] = base_config(tmp_path, smtp=local_smtp(site.smtp.port),
                                      web={"base_url": site.base, "signup": False})
    site.path.write_text(toml_text(doc))
    deadline = time.monotonic() + 15
    while site.client.get("/").status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert site.client.get("/").status_code == 404
    assert site.client.post("/", data={"email": "q@example.org"}).status_code == 404
    token = unsubscribe_token(SECRET.encode(), "grace@example.org", LIST_ID)
    hop = site.client.get(f"/unsubscribe/{token}/topics")
    assert site.client.get(hop.headers["location"]).status_code == 200
    assert site.client.get(f"/unsubscribe/{token}").status_code == 200


def test_a_store_subscribers_own_links_work_and_status_counts_them(site: Site) -> None:
    sign_up(site, "own@example.org")
    (link,) = site.confirmations()
    site.client.get(link.removeprefix(site.base))
    token = unsubscribe_token(SECRET.encode(), "own@example.org", LIST_ID)
    # The service's token map follows the store (its watcher looks every 2 s).
    deadline = time.monotonic() + 15
    while site.client.get(f"/unsubscribe/{token}").status_code != 200 and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    hop = site.client.get(f"/unsubscribe/{token}/topics")
    assert hop.status_code == 303
    assert "diffusion" in site.client.get(hop.headers["location"]).text
    sign_up(site, "pending@example.org")
    from click.testing import CliRunner

    from digest_mailer.cli import cli

    def status() -> dict[str, Any]:
        import json

        out = CliRunner().invoke(cli, ["status", "--json", "--config", str(site.path)], env=ENV)
        assert out.exit_code == 0, out.output
        return dict(json.loads(out.stdout))

    before = status()
    assert before["subscribers_by_source"]["store"] == {"active": 1, "paused": 0,
                                                        "unsubscribed": 0, "suppressed": 0}
    assert before["subscribers_by_source"]["config"]["active"] == 3
    assert before["signups"] == {"pending": 1, "requested_last_day": 2,
                                 "requested_last_week": 2, "confirmed_last_day": 1,
                                 "confirmed_last_week": 1}
    gone = site.client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert gone.status_code == 200 and "You are unsubscribed" in gone.text
    assert status()["subscribers_by_source"]["store"]["unsubscribed"] == 1
    text = CliRunner().invoke(cli, ["status", "--config", str(site.path)], env=ENV).stdout
    assert "  store: 0 active, 0 paused, 1 unsubscribed, 0 suppressed" in text
    assert "Sign-ups: 1 pending confirmation; last day 2 requested, 1 confirmed" in text


def test_hostile_bodies_and_tokens_get_a_clear_answer_never_a_crash(site: Site) -> None:
    page = site.client.get("/")
    token = csrf(page)
    form = "application/x-www-form-urlencoded"
    bodies: list[tuple[bytes, str]] = [
        (b"\xff\xfe\x00garbage=%%%&&&==", form),
        (b"csrf=" + token.encode() + b"&email=a%00b@example.org&topics=%0D%0Ax", form),
        (b"csrf=" + token.encode() + b"&csrf=" + token.encode() + b"&email=&email=x", form),
        (b"csrf=" + token.encode() + b"&frequency=hourly&email=a@example.org", form),
        (b"csrf=" + token.encode() + b"&weekday=someday&email=a@example.org", form),
        (b"--x\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n" + token.encode() +
         b"\r\n--x\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\n\xff\xfe@x\r\n--x--",
         "multipart/form-data; boundary=x"),
        (b"not a multipart body", "multipart/form-data; boundary=y"),
    ]
    for body, kind in bodies:
        got = site.client.post("/", content=body, headers={"Content-Type": kind})
        assert got.status_code in (200, 400, 403), (body, got.status_code, got.text[:200])
        assert "Traceback" not in got.text
        for path in ("/preview",):
            assert site.client.post(path, content=body, headers={"Content-Type": kind}
                                    ).status_code in (200, 403)
    for bad in ("%00", "a" * 3000, "e30.YWJj.ZGVm", "%F0%9F%98%80"):
        for path in (f"/confirm/{bad}", f"/preferences/{bad}", f"/unsubscribe/{bad}/topics"):
            assert site.client.get(path).status_code == 404, path
        assert site.client.post(f"/resubscribe/{bad}", data={"csrf": "x"}).status_code == 404
    assert site.confirmations() == []


def test_a_confirmation_that_cannot_be_sent_says_so_and_may_be_tried_again(
        tmp_path: Path) -> None:
    web_port, dead = free_port(), free_port()  # nothing listens on `dead`
    path = tmp_path / "c.toml"
    path.write_text(toml_text(base_config(tmp_path, smtp=local_smtp(dead, timeout=5),
                                          web={"base_url": f"http://127.0.0.1:{web_port}"})))
    server, thread = start(path, web_port, [timedelta(0)])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=30) as c:
            def attempt() -> httpx.Response:
                page = c.get("/")
                return c.post("/", data={"csrf": csrf(page), "email": "later@example.org",
                                         "topics": "diffusion", "action": "subscribe"})

            first = attempt()
            assert first.status_code == 503 and "Please try again later" in first.text
            # Not counted as mailed: the next try within the hour mails again (and fails
            # again here, saying so rather than pretending).
            assert attempt().status_code == 503
    finally:
        server.should_exit = True
        thread.join(5)


def test_a_subscriber_added_elsewhere_has_working_links_at_once(tmp_path: Path) -> None:
    """The watcher looks every `interval`; a token it does not know yet makes it look now."""
    from click.testing import CliRunner

    from digest_mailer.cli import cli

    port = free_port()
    path = tmp_path / "c.toml"
    path.write_text(toml_text(base_config(tmp_path)))
    server, thread = start(path, port, [timedelta(0)], interval=3600)
    try:
        added = CliRunner().invoke(cli, ["subscribers", "add", "--store", "cli@example.org",
                                         "--config", str(path)], env=ENV)
        assert added.exit_code == 0, added.output
        token = unsubscribe_token(SECRET.encode(), "cli@example.org", LIST_ID)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            assert c.get(f"/unsubscribe/{token}").status_code == 200
            assert c.get(f"/unsubscribe/{token}/topics").status_code == 303
            assert c.get("/unsubscribe/not-a-token").status_code == 404
    finally:
        server.should_exit = True
        thread.join(5)
