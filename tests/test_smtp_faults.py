"""SMTP faults injected by a real aiosmtpd server: deferrals, drops, refusals, suppression."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from conftest import SmtpServer, go, statuses
from conftest import config_for as shared_config_for
from digest_mailer.delivery.smtp import SmtpBackend
from digest_mailer.models import OutgoingMessage, Status
from digest_mailer.store import Ledger


def config_for(tmp_path: Path, smtp: SmtpServer, **delivery: Any) -> Path:
    """Two subscribers, quick retries."""
    return shared_config_for(
        tmp_path, smtp, name="c.toml", delivery={"retry_attempts": 2, "retry_delay": 0.05,
                                                 **delivery},
        subscribers=[{"email": "ada@example.org", "topics": ["diffusion"]},
                     {"email": "grace@example.org", "topics": ["speech recognition"]}])


@pytest.mark.parametrize("reply", ["421 4.3.2 Shutting down", "450 4.2.1 Mailbox busy",
                                   "451 4.3.0 Try again later", "452 4.2.2 Mailbox full"])
def test_temporary_refusals_are_retried_within_the_run(tmp_path: Path, smtp_server: SmtpServer,
                                                       reply: str) -> None:
    smtp_server.handler.rcpt_script["ada@example.org"] = [reply]
    report = go(config_for(tmp_path, smtp_server))
    assert statuses(report) == {"ada@example.org": Status.SENT,
                                "grace@example.org": Status.SENT}
    assert len(smtp_server.handler.to("ada@example.org")) == 1
    with Ledger.open_readonly(tmp_path / "state.sqlite3") as ledger:
        assert ledger.outbox.open_entries() == []


def test_a_dropped_connection_is_retried_on_a_new_one(tmp_path: Path,
                                                      smtp_server: SmtpServer) -> None:
    smtp_server.handler.data_script = ["DROP"]
    report = go(config_for(tmp_path, smtp_server))
    assert report.delivered == 2 and report.failed == 0
    assert len(smtp_server.handler.sessions) >= 2  # reconnected
    assert sorted(r.rcpt_tos[0] for r in smtp_server.handler.received) == \
        ["ada@example.org", "grace@example.org"]


def test_still_deferred_at_the_end_goes_out_next_run_as_the_same_message(
        tmp_path: Path, smtp_server: SmtpServer) -> None:
    smtp_server.handler.rcpt_script["ada@example.org"] = ["451 4.3.0 Later"] * 3
    path = config_for(tmp_path, smtp_server)
    first = go(path)
    assert statuses(first)["ada@example.org"] is Status.DEFERRED
    assert first.failed == 1
    with Ledger.open_readonly(tmp_path / "state.sqlite3") as ledger:
        (waiting,) = ledger.outbox.open_entries()
        assert waiting.state == "deferred" and waiting.attempts == 3
        assert ledger.offered_ids("ada@example.org")  # its papers are not offered again
    second = go(path)
    assert [o.status for o in second.outcomes] == [Status.SENT, Status.NOTHING_NEW,
                                                   Status.NOTHING_NEW]
    (ada,) = smtp_server.handler.to("ada@example.org")
    assert ada.message["Message-ID"] == waiting.message_id


def test_hard_failures_are_recorded_and_then_suppress(tmp_path: Path,
                                                      smtp_server: SmtpServer) -> None:
    smtp_server.handler.refuse["ada@example.org"] = "550 5.1.1 No such user"
    path = config_for(tmp_path, smtp_server, max_hard_failures=2)
    first = go(path)
    assert statuses(first)["ada@example.org"] is Status.FAILED
    assert statuses(go(path))["ada@example.org"] is Status.FAILED
    third = go(path)
    assert statuses(third)["ada@example.org"] is Status.SUPPRESSED
    with Ledger.open_readonly(tmp_path / "state.sqlite3") as ledger:
        assert ledger.suppressed("ada@example.org") == "bounced"
        assert ledger.outbox.counts()["failed"] == 2
    from click.testing import CliRunner

    from digest_mailer.cli import cli

    status = CliRunner().invoke(cli, ["status", "--config", str(path)]).stdout
    assert "suppressed ada@example.org: bounced" in status and "550 5.1.1" in status


@pytest.mark.parametrize("reply", ["551 5.1.6 User moved", "553 5.1.3 Bad address"])
def test_other_permanent_refusals_fail_alone(tmp_path: Path, smtp_server: SmtpServer,
                                             reply: str) -> None:
    smtp_server.handler.refuse["ada@example.org"] = reply
    report = go(config_for(tmp_path, smtp_server))
    assert statuses(report) == {"ada@example.org": Status.FAILED,
                                "grace@example.org": Status.SENT}
    assert reply in report.outcomes[0].detail


def test_a_data_refusal(tmp_path: Path, smtp_server: SmtpServer) -> None:
    smtp_server.handler.data_script = ["554 5.7.1 Rejected as spam"]
    report = go(config_for(tmp_path, smtp_server))
    assert [o.status for o in report.outcomes] == [Status.FAILED, Status.SENT]


def test_rate_limit(smtp_server: SmtpServer) -> None:
    clock = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        clock[0] += seconds

    backend = SmtpBackend(host="127.0.0.1", port=smtp_server.port, security="none",
                          rate_limit=4, clock=lambda: clock[0], sleep=sleep)
    for n in range(3):
        backend.send(OutgoingMessage(recipient=f"r{n}@example.org",
                                     envelope_from="p@example.org", message_id=f"<{n}@x>",
                                     subject="s", data=b"Subject: s\r\n\r\nhi\r\n", html="",
                                     run_date=date(2025, 6, 2)))
    backend.close()
    assert slept == [0.25, 0.25] and len(smtp_server.handler.received) == 3
