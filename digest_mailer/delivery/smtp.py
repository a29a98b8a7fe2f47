"""The SMTP backend: one verified connection reused for the whole run."""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from digest_mailer.delivery import Receipt
from digest_mailer.errors import DeliveryError
from digest_mailer.models import OutgoingMessage

logger = logging.getLogger(__name__)


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Certificates and host names always checked; `ca_file` adds a CA, it never removes any."""
    ctx = ssl.create_default_context()
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as e:
            raise DeliveryError(f"{ca_file}: cannot load CA certificates ({e})",
                                hint="fix delivery.smtp.ca_file", fatal=True) from e
    return ctx


def _reply(code: int, text: bytes | str) -> str:
    body = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return f"{code} {' '.join(body.split())}"[:300]


class SmtpBackend:
    name = "smtp"
    dry_run = False

    def __init__(self, *, host: str, port: int, security: str = "starttls", username: str = "",
                 password: str = "", timeout: float = 30.0, ca_file: Path | None = None,
                 rate_limit: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.host, self.port, self.security = host, port, security
        self._username, self._password = username, password
        self._timeout = timeout
        self._ca_file = ca_file
        self._conn: smtplib.SMTP | None = None
        self.connections = 0
        self._interval = 1.0 / rate_limit if rate_limit > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._next_send = 0.0

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def _unverified(self, e: ssl.SSLCertVerificationError) -> DeliveryError:
        return DeliveryError(f"SMTP {self.where}: the server's certificate does not verify "
                             f"({e.verify_message})",
                             hint="fix the server's certificate or set delivery.smtp.ca_file",
                             fatal=True)

    def _connect(self) -> smtplib.SMTP:
        ctx = tls_context(self._ca_file) if self.security != "none" else None
        try:
            if self.security == "ssl":
                conn: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self._timeout,
                                                      context=ctx)
            else:
                conn = smtplib.SMTP(self.host, self.port, timeout=self._timeout)
        except ssl.SSLCertVerificationError as e:
            raise self._unverified(e) from e
        except (OSError, smtplib.SMTPException) as e:
            raise DeliveryError(f"SMTP {self.where}: cannot connect ({e})",
                                hint="check delivery.smtp host, port and security",
                                fatal=True) from e
        try:
            conn.ehlo()
            if self.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise DeliveryError(f"SMTP {self.where}: the server does not offer STARTTLS",
                                        hint="use security = 'ssl' (port 465) if it speaks TLS "
                                             "from the start; nothing was sent", fatal=True)
                conn.starttls(context=ctx)
                conn.ehlo()
            if self._username:
                conn.login(self._username, self._password)
        except DeliveryError:
            _drop(conn)
            raise
        except ssl.SSLCertVerificationError as e:
            _drop(conn)
            raise self._unverified(e) from e
        except smtplib.SMTPAuthenticationError as e:
            _drop(conn)
            raise DeliveryError(f"SMTP {self.where}: login as {self._username!r} refused "
                                f"({_reply(e.smtp_code, e.smtp_error)})",
                                hint="check delivery.smtp.username and the password variable",
                                fatal=True) from e
        except (OSError, smtplib.SMTPException) as e:
            _drop(conn)
            raise DeliveryError(f"SMTP {self.where}: session setup failed ({e})",
                                fatal=True) from e
        self.connections += 1
        logger.info("connected to %s (%s)", self.where, self.security)
        return conn

    def _pace(self) -> None:
        if self._interval:
            now = self._clock()
            if now < self._next_send:
                self._sleep(self._next_send - now)
            self._next_send = max(now, self._next_send) + self._interval

    def send(self, message: OutgoingMessage) -> Receipt:
        self._pace()
        if self._conn is None:
            self._conn = self._connect()
        try:
            transmit(self._conn, message.envelope_from, message.recipient, message.data)
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
            self._closing(code)
            raise DeliveryError(f"{message.recipient}: refused by {self.where} "
                                f"({_reply(code, text)})", permanent=code >= 500) from e
        except smtplib.SMTPSenderRefused as e:
            self._closing(e.smtp_code)
            raise DeliveryError(f"SMTP {self.where}: sender {message.envelope_from} refused "
                                f"({_reply(e.smtp_code, e.smtp_error)})",
                                hint="check newsletter.from or delivery.smtp.envelope_from",
                                fatal=e.smtp_code >= 500) from e
        except smtplib.SMTPDataError as e:
            self._closing(e.smtp_code)
            self._reset()
            raise DeliveryError(f"{message.recipient}: message refused by {self.where} "
                                f"({_reply(e.smtp_code, e.smtp_error)})",
                                permanent=e.smtp_code >= 500) from e
        except (smtplib.SMTPServerDisconnected, OSError) as e:
            # The server may have taken the message before it dropped the line, so it is
            # not sent again here: deferred, it is retried later under the same Message-ID.
            _drop(self._conn)
            self._conn = None
            raise DeliveryError(f"{message.recipient}: connection to {self.where} lost "
                                f"({e or type(e).__name__})") from e
        except smtplib.SMTPResponseException as e:
            self._reset()
            raise DeliveryError(f"{message.recipient}: {self.where} answered "
                                f"{_reply(e.smtp_code, e.smtp_error)}",
                                permanent=e.smtp_code >= 500) from e
        return Receipt(location=self.where)

    def _closing(self, code: int) -> None:
        """421: the server is closing the connection; the next message opens a new one."""
        if code == 421:
            _drop(self._conn)
            self._conn = None

    def _reset(self) -> None:
        try:
            if self._conn is not None:
                self._conn.rset()
        except (OSError, smtplib.SMTPException):
            _drop(self._conn)
            self._conn = None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            conn.close()


def transmit(conn: smtplib.SMTP, sender: str, recipient: str, data: bytes) -> None:
    """MAIL, RCPT and DATA for one message, raising what smtplib's sendmail raises. Our
    messages are already CRLF throughout, so the body only needs its dots stuffed: a byte
    replace instead of sendmail's two regular expressions over the whole message, which cost
    more than everything else a send does."""
    if not (sender + recipient).isascii() or data.count(b"\n") != data.count(b"\r\n"):
        conn.sendmail(sender, [recipient], data)  # SMTPUTF8, or not our own bytes: the long way
        return
    conn.ehlo_or_helo_if_needed()
    code, reply = conn.mail(sender)
    if code != 250:
        _refused(conn, code)
        raise smtplib.SMTPSenderRefused(code, reply, sender)
    code, reply = conn.rcpt(recipient)
    if code not in (250, 251):
        _refused(conn, code)
        raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
    conn.putcmd("data")
    code, reply = conn.getreply()
    if code != 354:
        _refused(conn, code)
        raise smtplib.SMTPDataError(code, reply)
    body = (b"." if data.startswith(b".") else b"") + data.replace(b"\r\n.", b"\r\n..")
    conn.send(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
    code, reply = conn.getreply()
    if code != 250:
        _refused(conn, code)
        raise smtplib.SMTPDataError(code, reply)


def _refused(conn: smtplib.SMTP, code: int) -> None:
    """After a refusal: 421 means the server is closing; anything else, reset the session."""
    if code == 421:
        conn.close()
    else:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            conn.rset()


def _drop(conn: smtplib.SMTP | None) -> None:
    if conn is not None:
        with contextlib.suppress(OSError):
            conn.close()
