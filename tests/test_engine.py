"""The engine's promises against real aiosmtpd servers: every address the config takes is sent
or fails alone (IDNA, SMTPUTF8), and the truth at send time wins (unsubscribe, pause, removal
during a run, for leftovers and retries too)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import (
    ENV,
    NOW,
    SmtpHandler,
    base_config,
    free_port,
    local_smtp,
    start_smtp,
    toml_text,
)
from digest_mailer.cli import cli
from digest_mailer.config import load_config
from digest_mailer.models import RunReport, Status
from digest_mailer.pipeline import RunOptions, run
from digest_mailer.store import Ledger, StoreTarget


@pytest.fixture(params=[False, True], ids=["plain", "smtputf8"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[SmtpHandler, int, bool]]:
    handler = SmtpHandler()
    controller, port = start_smtp(handler, enable_SMTPUTF8=request.param)
    try:
        yield handler, port, request.param
    finally:
        controller.stop()


def write(tmp_path: Path, port: int, subscribers: list[dict[str, Any]],
          state: dict[str, Any] | None = None, **delivery: Any) -> Path:
    doc = base_config(tmp_path, smtp=local_smtp(port, **delivery.pop("smtp", {})),
                      subscribers=subscribers, state=state or {})
    doc["delivery"].update({"retry_attempts": 1, "retry_delay": 0.05, **delivery})
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    return path

def run_with_a_server_on(port: int, path: Path) -> tuple[RunReport, SmtpHandler]:
    """A run against a server that comes up on the port the earlier run found closed."""
    from aiosmtpd.controller import Controller

    handler = SmtpHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        return go(path), handler
    finally:
        controller.stop()



def go(path: Path) -> RunReport:
    return run(load_config(path), RunOptions(run_date=NOW.date()), now=NOW, env=ENV)


def by_email(report: RunReport) -> dict[str, Any]:
    return {o.email: o for o in report.outcomes}


def test_international_addresses_are_sent_or_fail_alone(
        tmp_path: Path, server: tuple[SmtpHandler, int, bool]) -> None:
    handler, port, utf8 = server
    path = write(tmp_path, port, [{"email": "ada@exämple.org", "name": "Ada"},
                                  {"email": "zoë@example.org", "name": "Zoë"},
                                  {"email": "grace@example.org"}])
    report = go(path)
    got = by_email(report)
    # The internationalised domain goes as punycode, on any server, in RCPT and in To.
    assert got["ada@exämple.org"].status is Status.SENT
    (ada,) = handler.to("ada@xn--exmple-cua.org")
    assert ada.message["To"] == "Ada <ada@xn--exmple-cua.org>"
    assert got["grace@example.org"].status is Status.SENT
    if utf8:
        assert got["zoë@example.org"].status is Status.SENT
        (zoe,) = handler.to("zoë@example.org")
        assert b"To: \"Zo\xc3\xab\" <zo\xc3\xab@example.org>\r\n" in zoe.data
    else:
        assert got["zoë@example.org"].status is Status.FAILED
        assert "does not offer SMTPUTF8" in got["zoë@example.org"].detail
        assert handler.to("zoë@example.org") == []
    with Ledger.open_readonly(tmp_path / "state.sqlite3") as ledger:
        assert [e for e in ledger.outbox.open_entries() if e.state == "sending"] == []
        assert ledger.runs()[-1].outcome == ("ok" if utf8 else "failures")
    if not utf8:  # the reason is in status and history too
        status = CliRunner().invoke(cli, ["status", "--config", str(path)]).stdout
        assert "zoë@example.org" in status and "SMTPUTF8" in status
        history = CliRunner().invoke(cli, ["history", "--config", str(path)]).stdout
        assert "FAILED  zoë@example.org" in history and "SMTPUTF8" in history
    again = by_email(go(path))  # nothing wedged: the next run goes on
    assert again["grace@example.org"].status is Status.NOTHING_NEW
    assert again["zoë@example.org"].status is (Status.NOTHING_NEW if utf8 else Status.FAILED)


def test_a_message_that_cannot_be_built_fails_alone(tmp_path: Path) -> None:
    port = free_port()
    path = write(tmp_path, port, [{"email": "r0@example.org", "topics": ["diffusion"]},
                                  {"email": "r1@example.org", "topics": ["speech recognition"]},
                                  {"email": "r2@example.org"}])
    go(path)  # no server: all three wait in the outbox
    conn = sqlite3.connect(tmp_path / "state.sqlite3")
    conn.execute("UPDATE outbox_sets SET template = x'00ff' WHERE id = "
                 "(SELECT set_id FROM outbox WHERE recipient = 'r1@example.org')")
    conn.execute("UPDATE outbox SET set_id = set_id + 1000 WHERE recipient = 'r2@example.org'")
    conn.commit()
    conn.close()
    report, handler = run_with_a_server_on(port, path)
    left = {o.email: o for o in report.outcomes[:3]}
    assert [left[f"r{n}@example.org"].status for n in range(3)] == [
        Status.SENT, Status.FAILED, Status.FAILED]
    assert "cannot build the message" in left["r1@example.org"].detail
    assert "stored digest is gone" in left["r2@example.org"].detail
    assert [r.rcpt_tos for r in handler.received] == [["r0@example.org"]]


def test_unsubscribe_pause_and_removal_during_a_run_stop_those_messages(
        tmp_path: Path, store_target: StoreTarget) -> None:
    handler = SmtpHandler(data_delay=0.25)
    controller, port = start_smtp(handler)
    subscribers = [{"email": f"r{n:02d}@example.org"} for n in range(12)]
    handler.rcpt_script["r01@example.org"] = ["451 4.3.0 later"]  # its retry comes later
    state = {"url": store_target.url} if store_target.url else {}
    path = write(tmp_path, port, subscribers, state, retry_delay=2.0)
    config = load_config(path)
    assert config.state_target == store_target

    def meddle() -> None:
        end = time.monotonic() + 60
        while not handler.received:  # the run failed before its first message: it says why
            if time.monotonic() > end:
                return
            time.sleep(0.02)
        with Ledger.open(store_target) as ledger:  # as `digest-mailer web` does
            ledger.suppress("r01@example.org", "unsubscribed", datetime.now(UTC))
            ledger.suppress("r09@example.org", "unsubscribed", datetime.now(UTC))
        edited = [dict(s) for s in subscribers if s["email"] != "r10@example.org"]
        edited[-1]["pause"] = True  # r11
        time.sleep(0.01)
        path.write_text(toml_text(base_config(
            tmp_path, smtp=local_smtp(port),
            subscribers=edited, state=state)))

    helper = threading.Thread(target=meddle)
    helper.start()
    try:
        report = run(config, RunOptions(run_date=NOW.date()), now=NOW, env=ENV)
    finally:
        helper.join(90)
        controller.stop()
    got = by_email(report)
    for email, why in (("r01@example.org", "unsubscribed"), ("r09@example.org", "unsubscribed"),
                       ("r10@example.org", "no longer a subscriber"),
                       ("r11@example.org", "paused")):
        assert got[email].status is Status.CANCELLED, (email, got[email])
        assert why in got[email].detail
        assert handler.to(email) == []
    assert {o.status for e, o in got.items() if e not in
            ("r01@example.org", "r09@example.org", "r10@example.org", "r11@example.org")} \
        == {Status.SENT}
    with Ledger.open_readonly(store_target) as ledger:
        assert ledger.offered_ids("r10@example.org") == frozenset()  # not counted as sent
        assert ledger.outbox.counts()["cancelled"] == 4


def test_a_leftover_for_someone_removed_or_paused_is_cancelled(tmp_path: Path) -> None:
    port = free_port()
    subscribers = [{"email": f"r{n}@example.org"} for n in range(3)]
    path = write(tmp_path, port, subscribers)
    assert [o.status for o in go(path).outcomes] == [Status.PENDING] * 3  # no server
    path.write_text(toml_text(json.loads(json.dumps(base_config(
        tmp_path, smtp=local_smtp(port),
        subscribers=[subscribers[0], {**subscribers[1], "pause": True}])))))
    report, handler = run_with_a_server_on(port, path)
    left = {o.email: o for o in report.outcomes[:3]}
    assert left["r0@example.org"].status is Status.SENT
    assert left["r1@example.org"].status is Status.CANCELLED
    assert left["r2@example.org"].status is Status.CANCELLED
    assert "no longer a subscriber" in left["r2@example.org"].detail
    assert [r.rcpt_tos for r in handler.received] == [["r0@example.org"]]
