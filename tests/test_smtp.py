"""The SMTP backend against real aiosmtpd servers: STARTTLS, implicit TLS, login, refusals."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from conftest import ENV, NOW, SmtpHandler, base_config, start_smtp, toml_text
from digest_mailer.config import load_config
from digest_mailer.delivery.smtp import SmtpBackend
from digest_mailer.errors import DeliveryError, DigestMailerError
from digest_mailer.models import OutgoingMessage, Status
from digest_mailer.pipeline import RunOptions, run


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


def message(to: str = "ada@example.org") -> OutgoingMessage:
    data = (f"From: p@example.org\r\nTo: {to}\r\nSubject: hi\r\n"
            "Message-ID: <1@example.org>\r\n\r\nhello\r\n").encode()
    return OutgoingMessage(recipient=to, envelope_from="p@example.org",
                           message_id="<1@example.org>", subject="hi", data=data,
                           html="", run_date=date(2025, 6, 2))


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                  auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and \
        (auth_data.login, auth_data.password) == (b"mailer", b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[tuple[SmtpHandler, int]]:
    handler = SmtpHandler()
    controller, port = start_smtp(handler, tls_context=server_context(ca),
                                  require_starttls=True, authenticator=authenticator,
                                  auth_required=False)
    try:
        yield handler, port
    finally:
        controller.stop()


def test_starttls_with_a_verified_certificate(tls_server: tuple[SmtpHandler, int],
                                              ca_file: Path) -> None:
    handler, port = tls_server
    backend = SmtpBackend(host="127.0.0.1", port=port, security="starttls", ca_file=ca_file,
                          timeout=5)
    try:
        backend.send(message("a@example.org"))
        backend.send(message("b@example.org"))
    finally:
        backend.close()
    assert [r.rcpt_tos for r in handler.received] == [["a@example.org"], ["b@example.org"]]
    assert backend.connections == 1


def test_login_over_starttls(tls_server: tuple[SmtpHandler, int], ca_file: Path) -> None:
    handler, port = tls_server
    good = SmtpBackend(host="127.0.0.1", port=port, security="starttls", ca_file=ca_file,
                       username="mailer", password="s3cret", timeout=5)
    good.send(message())
    good.close()
    assert len(handler.received) == 1
    bad = SmtpBackend(host="127.0.0.1", port=port, security="starttls", ca_file=ca_file,
                      username="mailer", password="wrong", timeout=5)
    with pytest.raises(DeliveryError, match="login as 'mailer' refused") as info:
        bad.send(message())
    assert info.value.fatal
    assert len(handler.received) == 1


def test_an_unverifiable_certificate_stops_before_sending(
        tls_server: tuple[SmtpHandler, int]) -> None:
    handler, port = tls_server
    backend = SmtpBackend(host="127.0.0.1", port=port, security="starttls", timeout=5)
    with pytest.raises(DeliveryError, match="certificate does not verify") as info:
        backend.send(message())
    assert info.value.fatal and handler.received == []


def test_a_server_without_starttls_is_refused(smtp_server: Any) -> None:
    backend = SmtpBackend(host="127.0.0.1", port=smtp_server.port, security="starttls",
                          username="mailer", password="s3cret", timeout=5)
    with pytest.raises(DeliveryError, match="does not offer STARTTLS") as info:
        backend.send(message())
    assert info.value.fatal and smtp_server.handler.received == []


def test_implicit_tls(ca: trustme.CA, ca_file: Path) -> None:
    handler = SmtpHandler()
    controller, port = start_smtp(handler, ssl_context=server_context(ca))
    try:
        backend = SmtpBackend(host="127.0.0.1", port=port, security="ssl", ca_file=ca_file,
                              timeout=5)
        backend.send(message())
        backend.close()
    finally:
        controller.stop()
    assert len(handler.received) == 1


def test_temporary_and_permanent_refusals(smtp_server: Any) -> None:
    smtp_server.handler.refuse = {"full@example.org": "452 4.2.2 Mailbox full",
                                  "gone@example.org": "550 5.1.1 No such user"}
    backend = SmtpBackend(host="127.0.0.1", port=smtp_server.port, security="none", timeout=5)
    with pytest.raises(DeliveryError) as temp:
        backend.send(message("full@example.org"))
    with pytest.raises(DeliveryError) as perm:
        backend.send(message("gone@example.org"))
    backend.send(message("ok@example.org"))  # the connection is still good
    backend.close()
    assert not temp.value.permanent and not temp.value.fatal
    assert perm.value.permanent and "550 5.1.1 No such user" in perm.value.message
    assert [r.rcpt_tos for r in smtp_server.handler.received] == [["ok@example.org"]]


def test_a_run_with_a_bad_login_sends_nothing(tls_server: tuple[SmtpHandler, int],
                                              ca_file: Path, tmp_path: Path) -> None:
    handler, port = tls_server
    doc = base_config(tmp_path, smtp={"host": "127.0.0.1", "port": port,
                                      "security": "starttls", "username": "mailer",
                                      "ca_file": str(ca_file)})
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    with pytest.raises(DigestMailerError, match=r"\$DIGEST_SMTP_PASSWORD is not set"):
        run(load_config(path), RunOptions(), now=NOW, env=ENV)
    env = {**ENV, "DIGEST_SMTP_PASSWORD": "wrong"}
    report = run(load_config(path), RunOptions(run_date=NOW.date()), now=NOW, env=env)
    assert report.stopped and "login as 'mailer' refused" in report.stopped
    assert report.delivered == 0 and handler.received == []
    statuses = {o.email: o.status for o in report.outcomes}
    assert statuses["ada@example.org"] is Status.PENDING
    assert statuses["grace@example.org"] is Status.PENDING
    env["DIGEST_SMTP_PASSWORD"] = "s3cret"
    report = run(load_config(path), RunOptions(run_date=NOW.date()), now=NOW, env=env)
    assert report.delivered == 2 and len(handler.received) == 2


def test_lines_starting_with_dots_arrive_intact(smtp_server: Any) -> None:
    body = (b"Subject: dots\r\n\r\n.starts with a dot\r\n..two\r\n.\r\nend\r\n"
            + b"x" * 70 + b"=\r\n.continued after a soft break\r\n")
    backend = SmtpBackend(host="127.0.0.1", port=smtp_server.port, security="none", timeout=5)
    for data in (body, b"." + body, body.rstrip(b"\r\n")):
        backend.send(OutgoingMessage(recipient="ada@example.org", envelope_from="p@example.org",
                                     message_id="<1@x>", subject="dots", data=data, html="",
                                     run_date=date(2025, 6, 2)))
    backend.close()
    got = [r.data for r in smtp_server.handler.received]
    assert got[0] == body and got[1] == b"." + body
    assert got[2].rstrip(b"\r\n") == body.rstrip(b"\r\n")


def test_bare_line_ends_take_smtplibs_own_path(smtp_server: Any) -> None:
    from digest_mailer.delivery.client import Transfer, accepted, hand_over, offer
    from digest_mailer.text import crlf_throughout

    conn = __import__("smtplib").SMTP("127.0.0.1", smtp_server.port, timeout=5)
    conn.ehlo()
    data = b"Subject: a\n\nbare line ends\n"
    t = Transfer("p@example.org", "ada@example.org", data, ours=crlf_throughout(data))
    for step in (offer, hand_over, accepted):
        step(conn, t)
    conn.quit()
    got = smtp_server.handler.received[0].data.replace(b"\r\n", b"\n")
    assert got.rstrip(b"\n") == b"Subject: a\n\nbare line ends"
