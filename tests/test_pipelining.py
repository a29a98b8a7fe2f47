"""A server that offers PIPELINING (RFC 2920), as Postfix and smtp-sink do: the envelope of a
message goes in one write, and the sender works (commits the last message's fate, builds the
next) while the server reads and answers. Refusals at each step still fail their message
alone, and a message's content goes out only once the one before it is recorded as sent."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from conftest import SmtpHandler, SmtpServer, config_for, go, start_smtp
from digest_mailer.delivery.smtp import SmtpBackend
from digest_mailer.errors import DeliveryError
from digest_mailer.models import OutgoingMessage, Status


def message(to: str, n: int) -> OutgoingMessage:
    data = (f"From: p@example.org\r\nTo: {to}\r\nSubject: hi\r\nMessage-ID: <{n}@example.org>"
            f"\r\n\r\n.a line with a leading dot\r\nmessage {n}\r\n").encode()
    return OutgoingMessage(recipient=to, envelope_from="p@example.org",
                           message_id=f"<{n}@example.org>", subject="hi", data=data, html="",
                           run_date=date(2025, 6, 2))


@pytest.fixture
def pipelining_server() -> Iterator[SmtpServer]:
    handler = SmtpHandler(pipelining=True)
    controller, port = start_smtp(handler)
    try:
        yield SmtpServer(handler, port)
    finally:
        controller.stop()


def test_each_step_of_a_pipelined_message_and_refusals_at_each(
        pipelining_server: SmtpServer) -> None:
    h = pipelining_server.handler
    h.refuse = {"full@example.org": "452 4.2.2 Mailbox full",
                "gone@example.org": "550 5.1.1 No such user"}
    backend = SmtpBackend(host="127.0.0.1", port=pipelining_server.port, security="none",
                          timeout=5)
    outcomes: dict[str, str] = {}
    for n, to in enumerate(["ada@example.org", "full@example.org", "gone@example.org",
                            "grace@example.org", "rejected@example.org", "edsger@example.org"]):
        if to == "rejected@example.org":
            h.data_script = ["554 5.7.1 content rejected"]
        try:
            backend.begin(message(to, n))
            backend.transfer()
            backend.finish()
            outcomes[to] = "sent"
        except DeliveryError as e:
            outcomes[to] = "permanent" if e.permanent else "temporary"
    backend.close()
    assert outcomes == {"ada@example.org": "sent", "full@example.org": "temporary",
                        "gone@example.org": "permanent", "grace@example.org": "sent",
                        "rejected@example.org": "permanent", "edsger@example.org": "sent"}
    got = {r.rcpt_tos[0]: r.data for r in h.received}
    assert set(got) == {"ada@example.org", "grace@example.org", "edsger@example.org"}
    assert all(b"\r\n.a line with a leading dot\r\n" in data for data in got.values())
    assert len(h.sessions) == 1  # refusals did not cost the connection


@dataclass
class RecordedFirst(SmtpHandler):
    """Checks, as each message's content arrives, that every message it took before is
    already recorded as sent in the ledger: a sender commits a message's fate before it
    writes the next one's content."""

    ledger: Path | None = None
    unrecorded: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.ledger is not None and self.received:
            conn = sqlite3.connect(f"{self.ledger.as_uri()}?mode=ro", uri=True)
            try:
                sent = {r[0] for r in conn.execute(
                    "SELECT recipient FROM outbox WHERE state = 'sent'")}
            finally:
                conn.close()
            self.unrecorded += [r.rcpt_tos[0] for r in self.received
                                if r.rcpt_tos[0] not in sent]
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.parametrize("connections", [0, 1])
def test_a_run_through_a_pipelining_server(tmp_path: Path, connections: int) -> None:
    handler = RecordedFirst(pipelining=True, ledger=tmp_path / "state.sqlite3")
    handler.refuse = {"r3@example.org": "550 5.1.1 No such user"}
    controller, port = start_smtp(handler)
    try:
        readers = [{"email": f"r{n}@example.org", "topics": []} for n in range(12)]
        path = config_for(tmp_path, SmtpServer(handler, port), subscribers=readers,
                          delivery={"smtp": {"host": "127.0.0.1", "port": port,
                                             "security": "none",
                                             "connections": connections}})
        report = go(path)
    finally:
        controller.stop()
    statuses = {o.email: o.status for o in report.outcomes}
    assert statuses.pop("r3@example.org") is Status.FAILED
    assert set(statuses.values()) == {Status.SENT}, statuses
    assert sorted(r.rcpt_tos[0] for r in handler.received) == sorted(statuses)
    assert handler.unrecorded == []


def test_the_senders_own_work_between_the_steps_is_not_the_servers_delay(
        pipelining_server: SmtpServer) -> None:
    """The deadline counts the time in the three steps, not the caller's work between them
    (a commit that waits for another writer, building the next message): an accepted
    message is not taken for a timeout, nor a healthy server for a silent one."""
    h = pipelining_server.handler
    backend = SmtpBackend(host="127.0.0.1", port=pipelining_server.port, security="none",
                          timeout=1)
    backend.begin(message("ada@example.org", 1))
    time.sleep(1.5)  # between the envelope and the content
    backend.transfer()
    end = time.monotonic() + 5
    while not h.received and time.monotonic() < end:
        time.sleep(0.05)
    assert [r.rcpt_tos[0] for r in h.received] == ["ada@example.org"]  # the server took it
    time.sleep(1.5)  # between the content and the verdict
    backend.finish()
    backend.close()


@dataclass
class LedgerBusy(SmtpHandler):
    """At the first RCPT, another process takes the ledger's write lock for 2.5 s (a `send`
    worker, `db prune`, a backup), so the sender's next claim waits that long."""

    ledger: Path | None = None
    taken: bool = False

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if not self.taken and self.ledger is not None:
            self.taken = True
            conn = sqlite3.connect(self.ledger, isolation_level=None, check_same_thread=False)
            conn.execute("BEGIN IMMEDIATE")

            def release() -> None:
                time.sleep(2.5)
                conn.execute("COMMIT")
                conn.close()

            threading.Thread(target=release, daemon=True).start()
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


def test_a_ledger_busy_for_longer_than_the_smtp_timeout_sends_nothing_twice(
        tmp_path: Path) -> None:
    handler = LedgerBusy(pipelining=True, ledger=tmp_path / "state.sqlite3")
    controller, port = start_smtp(handler)
    try:
        # Three digests, so the sender claims again after the first message.
        readers = [{"email": f"r{n}@example.org", "topics": topics} for n, topics in
                   enumerate([["diffusion"], ["speech recognition"], []])]
        path = config_for(tmp_path, SmtpServer(handler, port), subscribers=readers,
                          delivery={"smtp": {"host": "127.0.0.1", "port": port,
                                             "security": "none", "timeout": 1,
                                             "connections": 0}})
        report = go(path)
    finally:
        controller.stop()
    got = [r.rcpt_tos[0] for r in handler.received]
    assert handler.taken and sorted(got) == sorted(set(got)), f"sent twice: {got}"
    assert {o.email: o.status for o in report.outcomes} == {
        f"r{n}@example.org": Status.SENT for n in range(3)}
