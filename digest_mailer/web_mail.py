"""The web pages' templates (Jinja2, autoescaped) and the one email a sign-up sends: its
confirmation, built with the same header discipline as a digest (the email package, CRLF,
quoted-printable, a Message-ID at our domain, DKIM when configured) and sent through the
configured backend."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import jinja2

from digest_mailer.config import Config
from digest_mailer.delivery import open_backend
from digest_mailer.message import POLICY, ascii_domain, fold, make_message_id, to_header
from digest_mailer.models import OutgoingMessage
from digest_mailer.pipeline import Envelope, backend_options
from digest_mailer.render import shipped_templates
from digest_mailer.signup import CONFIRM_DAYS


@functools.cache
def pages() -> jinja2.Environment:
    """The shipped page templates; every value is escaped in the HTML ones."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(shipped_templates() / "web")),
        autoescape=lambda name: (name or "").endswith(".html.j2"),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_page(name: str, **values: Any) -> str:
    return pages().get_template(name).render(**values)


def asset(name: str) -> bytes:
    return (shipped_templates() / "web" / name).read_bytes()


def confirmation(config: Config, secret: bytes, *, to: str, link: str, now: datetime
                 ) -> OutgoingMessage:
    envelope = Envelope.of(config, secret)
    values = {"newsletter": config.newsletter.name, "email": to, "link": link,
              "days": CONFIRM_DAYS}
    subject = f"Confirm your subscription to {config.newsletter.name}"
    msg = EmailMessage(policy=POLICY)
    msg["From"] = envelope.sender
    address = ascii_domain(to)
    probe = None if address.isascii() else Address(addr_spec="probe@example.invalid")
    msg["To"] = probe or Address(addr_spec=address)
    if envelope.reply_to:
        msg["Reply-To"] = envelope.reply_to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    message_id = make_message_id(envelope.domain, now)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to it
    msg.set_content(render_page("confirm_email.txt.j2", **values), subtype="plain",
                    charset="utf-8", cte="quoted-printable")
    html = render_page("confirm_email.html.j2", **values)
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    for part in msg.iter_parts():
        del part["MIME-Version"]
    data = msg.as_bytes(policy=POLICY)
    if probe is not None:  # a UTF-8 local part: the header as the digests write it
        data = data.replace(fold("To", probe), to_header("", address), 1)
    if envelope.signer is not None:
        data = envelope.signer.sign(data)
    return OutgoingMessage(recipient=to, envelope_from=envelope.envelope_from,
                           message_id=message_id, subject=subject, data=data, html=html,
                           run_date=now.date())


def send(config: Config, env: Mapping[str, str], message: OutgoingMessage) -> None:
    """Through the configured backend, within its deadlines; DeliveryError when refused."""
    backend = open_backend(config.delivery.backend, backend_options(config, env, None))
    try:
        backend.send(message)
    finally:
        backend.close()
