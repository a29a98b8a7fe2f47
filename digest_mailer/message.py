"""One subscriber's email: headers built with the email package, serialised with CRLF."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from urllib.parse import quote

from digest_mailer.errors import DigestMailerError
from digest_mailer.models import OutgoingMessage, RenderedDigest, Subscriber

# SMTP policy: CRLF line ends, headers folded at 78. Raw headers set with `set_raw` are kept as
# given, which is how List-Unsubscribe stays out of an encoded word (RFC 8058 clients need the
# URL as is).
POLICY = policy.SMTP.clone(refold_source="none")
_SLUG = re.compile(r"[^a-z0-9]+")


def unsubscribe_token(secret: bytes, email: str) -> str:
    """HMAC-SHA256 over the lower-cased address: reveals nothing, cannot be forged."""
    digest = hmac.new(secret, email.lower().encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def unsubscribe_url(template: str, secret: bytes, email: str) -> str:
    return template.replace("{token}", unsubscribe_token(secret, email))


def list_unsubscribe(url: str, mailto: str | None, token: str) -> str:
    """`<https://...>, <mailto:...>`; folded between the two URIs, never inside one."""
    uris = [f"<{url}>"]
    if mailto:
        uris.append(f"<mailto:{mailto}?subject={quote('unsubscribe ' + token)}>")
    return ",\r\n ".join(uris) if sum(map(len, uris)) > 60 else ", ".join(uris)


def make_message_id(domain: str, when: datetime) -> str:
    return f"<{when:%Y%m%d%H%M%S}.{secrets.token_hex(8)}@{domain}>"


def list_id(newsletter: str, domain: str, explicit: str | None) -> str:
    ident = explicit or f"{_SLUG.sub('-', newsletter.lower()).strip('-') or 'digest'}.{domain}"
    return f"{newsletter} <{ident}>"


# Signed when present: what a receiver shows, threads by, or acts on for an unsubscribe.
DKIM_HEADERS = (b"From", b"To", b"Subject", b"Date", b"Message-ID", b"Reply-To", b"List-Id",
                b"List-Unsubscribe", b"List-Unsubscribe-Post", b"MIME-Version", b"Content-Type")


@dataclass(frozen=True, slots=True)
class DkimSigner:
    domain: str
    selector: str
    key: bytes  # PEM

    def sign(self, data: bytes) -> bytes:
        import dkim  # only operators who sign pay for the import

        try:
            header = dkim.sign(data, self.selector.encode(), self.domain.encode(), self.key,
                               include_headers=list(DKIM_HEADERS))
        except dkim.DKIMException as e:
            raise DigestMailerError(f"DKIM signing failed: {e}",
                                    hint="check delivery.dkim.key_file") from e
        return header + data


def build_message(rendered: RenderedDigest, *, subscriber: Subscriber, sender: str,
                  envelope_from: str, reply_to: str | None, list_id_header: str,
                  unsubscribe: str, message_id: str, when: datetime, run_date: date,
                  signer: DkimSigner | None = None) -> OutgoingMessage:
    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender
    msg["To"] = Address(display_name=subscriber.name, addr_spec=subscriber.email)
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = message_id
    msg["List-Id"] = list_id_header
    msg.set_raw("List-Unsubscribe", unsubscribe)
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    for part in msg.iter_parts():
        del part["MIME-Version"]  # the email package repeats it on converted parts
    return OutgoingMessage(
        recipient=subscriber.email,
        envelope_from=envelope_from or parseaddr(sender)[1],
        message_id=message_id,
        subject=rendered.subject,
        data=signer.sign(msg.as_bytes(policy=POLICY)) if signer else msg.as_bytes(policy=POLICY),
        html=rendered.html,
        run_date=run_date,
    )
