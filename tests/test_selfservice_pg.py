"""Self-service subscribers on a PostgreSQL ledger, end to end: the web pages (sign-up,
confirmation, preferences, unsubscribe) store them in PostgreSQL, a run mails them, a `send`
worker's truth check at send time honours them, and the subscriber and ledger commands read
them there. Real PostgreSQL (tests/pgcluster.py), real aiosmtpd, the real app over HTTP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from test_fleet import compose_only, write_config
from test_signup import LIST_ID, csrf, start

from conftest import ENV, NOW, SECRET, SmtpServer, free_port, fresh_pg_database, go, statuses
from digest_mailer.config import load_config
from digest_mailer.message import unsubscribe_token
from digest_mailer.models import Status
from digest_mailer.store import Ledger, StoreTarget
from digest_mailer.store.selfservice import SelfService, StoredSubscriber
from digest_mailer.web_site import CONFIRM_QUIET_SECONDS

CLI = [sys.executable, "-m", "digest_mailer"]


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    with fresh_pg_database(pg_server) as url:
        yield url


def cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args, "--config", str(path)], env={**os.environ, **ENV},
                          capture_output=True, text=True, timeout=120)


def stored(url: str, email: str) -> StoredSubscriber | None:
    with SelfService.at(StoreTarget.parse(url)) as ss:
        return ss.get(email)


def ledger_files(root: Path) -> list[Path]:
    """SQLite databases made by mistake (lock files beside `[state] path` are expected)."""
    return [p for p in root.rglob("*") if p.is_file() and p.suffix not in (".senders", ".lock")
            and p.read_bytes()[:16] == b"SQLite format 3\x00"]


def test_a_worker_mails_store_subscribers_and_honours_their_pause_at_send_time(
        tmp_path: Path, smtp_server: SmtpServer, pg_url: str) -> None:
    path = write_config(tmp_path, smtp_server, readers=1, url=pg_url)
    target = StoreTarget.parse(pg_url)
    with Ledger.open(target):  # the schema, self-service tables included
        pass
    with SelfService.at(target) as ss:
        for who in ("keeps", "pauses", "leaves"):
            ss.put(StoredSubscriber(email=f"{who}@example.org", kind="store", origin="cli",
                                    topics=("diffusion",)), NOW)
    compose_only(path)
    # Meanwhile one pauses from their preferences, one unsubscribes.
    with SelfService.at(target) as ss:
        ss.put(StoredSubscriber(email="pauses@example.org", kind="store", origin="cli",
                                topics=("diffusion",), paused=True), NOW)
    with Ledger.open(target) as ledger:
        ledger.suppress("leaves@example.org", "unsubscribed", NOW)
    done = subprocess.run([*CLI, "send", "--config", str(path), "--until-empty",
                           "--connections", "0"], env={**os.environ, **ENV},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = {r.rcpt_tos[0] for r in smtp_server.handler.received}
    assert {"reader00@example.org", "keeps@example.org"} == got, done.stderr
    with Ledger.open_readonly(target) as ledger:
        assert ledger.outbox.counts().get("cancelled") == 2


def test_signup_confirm_preferences_run_and_unsubscribe_on_postgresql(
        tmp_path: Path, smtp_server: SmtpServer, pg_url: str) -> None:
    path = write_config(tmp_path, smtp_server, readers=1, url=pg_url)
    port = free_port()
    text = path.read_text()
    path.write_text(text + f'\n[web]\nbase_url = "http://127.0.0.1:{port}"\n')
    assert load_config(path).state.url
    # No SQLite file is made anywhere for the ledger or the store.
    clock = [timedelta(0)]
    server, thread = start(path, port, clock)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            page = client.get("/")
            assert page.status_code == 200
            done = client.post("/", data={
                "csrf": csrf(page), "email": "new@example.org", "topics": "diffusion",
                "frequency": "daily", "weekday": "mon", "website": "",
                "action": "subscribe"})
            assert done.status_code == 200 and "Check your inbox" in done.text, done.text
            links = [link for r in smtp_server.handler.received
                     for link in re.findall(r"http://127\.0\.0\.1:\d+/confirm/\S+",
                                            r.message.get_body(("plain",))
                                            .get_content())]  # type: ignore[union-attr]
            assert len(links) == 1
            assert stored(pg_url, "new@example.org") is None
            clock[0] = timedelta(seconds=CONFIRM_QUIET_SECONDS + 5)
            ok = client.get(links[0].removeprefix(base))
            assert "You are subscribed" in ok.text, ok.text
            sub = stored(pg_url, "new@example.org")
            assert sub is not None and sub.topics == ("diffusion",)
            smtp_server.handler.received.clear()

            report = go(path)
            assert statuses(report).get("new@example.org") == Status.SENT, statuses(report)
            assert [r.rcpt_tos for r in smtp_server.handler.received
                    if "new@example.org" in r.rcpt_tos]

            # Preferences from a digest link: pause, stored in PostgreSQL.
            token = unsubscribe_token(SECRET.encode(), "new@example.org", LIST_ID)
            hop = client.get(f"/unsubscribe/{token}/topics", follow_redirects=False)
            assert hop.status_code in (302, 303), hop.text
            prefs = client.get(hop.headers["location"].removeprefix(base))
            assert prefs.status_code == 200
            # Unsubscribe: one click, suppressed in the PostgreSQL ledger.
            gone = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
            assert gone.status_code == 200, gone.text
            with Ledger.open_readonly(StoreTarget.parse(pg_url)) as ledger:
                assert ledger.suppressed("new@example.org") == "unsubscribed"
    finally:
        server.should_exit = True
        thread.join(5)
    assert not ledger_files(tmp_path), ledger_files(tmp_path)

    # The commands read the same rows.
    listed = cli(path, "subscribers", "list")
    assert listed.returncode == 0 and "new@example.org" in listed.stdout, listed.stderr
    out = tmp_path / "out.csv"
    exported = cli(path, "subscribers", "export", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert "new@example.org" in out.read_text()
    csv = tmp_path / "in.csv"
    csv.write_text("email,topics\nimported@example.org,diffusion\n")
    imported = cli(path, "subscribers", "import", str(csv))
    assert imported.returncode == 0, imported.stderr
    assert stored(pg_url, "imported@example.org") is not None
    expected = {("status",): "store: 1 active", ("history",): "new@example.org",
                ("explain", "--to", "imported@example.org", "--date", "2025-06-02"): "KEPT"}
    for args, says in expected.items():
        said = cli(path, *args)
        assert said.returncode == 0 and says in said.stdout, (args, said.stdout, said.stderr)
    assert not ledger_files(tmp_path), ledger_files(tmp_path)
