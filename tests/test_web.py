"""One-click unsubscribe through a real HTTP client against the running service."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

from conftest import ENV, NOW, SECRET, SmtpServer, base_config, free_port, toml_text
from digest_mailer.cli import cli
from digest_mailer.config import load_config
from digest_mailer.message import unsubscribe_token
from digest_mailer.models import Status
from digest_mailer.pipeline import RunOptions, run
from digest_mailer.store import Ledger
from digest_mailer.web import Tokens, create_app

ONE_CLICK = {"content": b"List-Unsubscribe=One-Click",
             "headers": {"Content-Type": "application/x-www-form-urlencoded"}}


@pytest.fixture
def config_path(tmp_path: Path, smtp_server: SmtpServer) -> Path:
    doc = base_config(tmp_path, smtp={"host": "127.0.0.1", "port": smtp_server.port,
                                      "security": "none"})
    path = tmp_path / "digest-mailer.toml"
    path.write_text(toml_text(doc))
    return path


@pytest.fixture
def web(config_path: Path) -> Iterator[httpx.Client]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Tokens(config_path, ENV)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=False) as client:
        yield client
    server.should_exit = True
    thread.join(5)


def token(email: str) -> str:
    return unsubscribe_token(SECRET.encode(), email)


def suppressed(config_path: Path) -> dict[str, Any]:
    with Ledger.open_readonly(load_config(config_path).state_path) as ledger:
        return ledger.suppressions()


def test_get_shows_a_button_and_never_unsubscribes(web: httpx.Client,
                                                   config_path: Path) -> None:
    page = web.get(f"/unsubscribe/{token('ada@example.org')}")
    assert page.status_code == 200
    assert '<form method="post">' in page.text and "a••@example.org" in page.text
    assert "ada@example.org" not in page.text
    assert "set-cookie" not in page.headers and page.headers["cache-control"] == "no-store"
    assert suppressed(config_path) == {}


def test_one_click_post_unsubscribes_idempotently(web: httpx.Client, config_path: Path) -> None:
    url = f"/unsubscribe/{token('grace@example.org')}"
    first = web.post(url, **ONE_CLICK)
    assert first.status_code == 200 and "You are unsubscribed" in first.text
    assert "location" not in first.headers and "set-cookie" not in first.headers
    again = web.post(url, **ONE_CLICK)
    assert again.status_code == 200
    assert list(suppressed(config_path)) == ["grace@example.org"]
    assert suppressed(config_path)["grace@example.org"][0] == "unsubscribed"


def test_bad_requests_change_nothing(web: httpx.Client, config_path: Path) -> None:
    assert web.post(f"/unsubscribe/{token('ada@example.org')}").status_code == 400
    forged = unsubscribe_token(b"another secret entirely!", "ada@example.org")
    assert web.post(f"/unsubscribe/{forged}", **ONE_CLICK).status_code == 404
    assert web.post("/unsubscribe/not-a-token", **ONE_CLICK).status_code == 404
    assert web.get(f"/unsubscribe/{forged}").status_code == 404
    assert web.post(f"/unsubscribe/{token('nobody@example.org')}", **ONE_CLICK).status_code == 404
    assert suppressed(config_path) == {}


def test_the_link_in_the_email_works_and_is_honoured(web: httpx.Client, config_path: Path,
                                                     smtp_server: SmtpServer) -> None:
    run(load_config(config_path), RunOptions(dry_run=True, run_date=NOW.date()), now=NOW,
        env=ENV)
    eml = (config_path.parent / "out" / "2025-06-02" / "ada_at_example.org.eml").read_bytes()
    header = message_from_bytes(eml, policy=policy.default)["List-Unsubscribe"]
    url = header.split("<", 1)[1].split(">", 1)[0]
    assert url.startswith("https://papers.example.org/unsubscribe/")
    assert web.post(url.removeprefix("https://papers.example.org"), **ONE_CLICK).status_code == 200
    report = run(load_config(config_path), RunOptions(run_date=NOW.date()), now=NOW, env=ENV)
    assert {o.email: o.status for o in report.outcomes}["ada@example.org"] is Status.SUPPRESSED
    assert smtp_server.handler.to("ada@example.org") == []


def test_an_unsubscribe_in_the_middle_of_a_run_counts_from_the_next_message(
        web: httpx.Client, config_path: Path, smtp_server: SmtpServer) -> None:
    clicked: list[str] = []

    def after_each(outcome: Any) -> None:
        if not clicked:
            clicked.append(outcome.email)
            web.post(f"/unsubscribe/{token('grace@example.org')}", **ONE_CLICK)

    report = run(load_config(config_path), RunOptions(run_date=NOW.date()), now=NOW, env=ENV,
                 on_progress=after_each)
    assert [o.status for o in report.outcomes] == [Status.SENT, Status.SUPPRESSED,
                                                   Status.NO_MATCH]
    assert smtp_server.handler.to("grace@example.org") == []


def test_unsuppress_by_the_operator(web: httpx.Client, config_path: Path) -> None:
    web.post(f"/unsubscribe/{token('ada@example.org')}", **ONE_CLICK)
    runner = CliRunner()
    listed = runner.invoke(cli, ["subscribers", "list", "--config", str(config_path)])
    assert "SUPPRESSED: unsubscribed" in listed.stdout
    done = runner.invoke(cli, ["subscribers", "unsuppress", "ADA@example.org", "--config",
                               str(config_path)])
    assert done.exit_code == 0 and "no longer suppressed (was: unsubscribed)" in done.stdout
    assert suppressed(config_path) == {}
    again = runner.invoke(cli, ["subscribers", "unsuppress", "ada@example.org", "--config",
                                str(config_path)])
    assert again.exit_code == 1 and "is not suppressed" in again.stderr


def test_web_command_refuses_to_start_without_the_secret(config_path: Path,
                                                         write_config: Callable[..., Path]
                                                         ) -> None:
    result = CliRunner().invoke(cli, ["web", "--config", str(config_path)],
                                env={"DIGEST_UNSUBSCRIBE_SECRET": ""})
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: $DIGEST_UNSUBSCRIBE_SECRET is not set")
