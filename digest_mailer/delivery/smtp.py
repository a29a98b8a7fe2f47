"""The SMTP backend: one verified connection reused for the whole run, every wait bounded."""

from __future__ import annotations

import contextlib
import logging
import math
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from digest_mailer.delivery import Receipt
from digest_mailer.delivery.client import (
    Client,
    SmtpMisbehaved,
    SmtpTimeout,
    SslClient,
    Transfer,
    accepted,
    envelope_address,
    hand_over,
    local_hostname,
    offer,
)
from digest_mailer.errors import DeliveryError
from digest_mailer.models import OutgoingMessage
from digest_mailer.text import crlf_throughout

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


def unverified(where: str, e: ssl.SSLCertVerificationError) -> DeliveryError:
    return DeliveryError(f"SMTP {where}: the server's certificate does not verify "
                         f"({e.verify_message})",
                         hint="fix the server's certificate or set delivery.smtp.ca_file",
                         fatal=True)


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
        self.timeout = timeout  # for each reply, and for each whole message
        self._ca_file = ca_file
        self._conn: smtplib.SMTP | None = None
        self.connections = 0
        self._interval = 1.0 / rate_limit if rate_limit > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._next_send = 0.0
        self._on_wire: tuple[OutgoingMessage, Transfer] | None = None  # begun, unsettled
        self._paused: float | None = None  # when the last step of `_on_wire` ended

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def _unverified(self, e: ssl.SSLCertVerificationError) -> DeliveryError:
        return unverified(self.where, e)

    def _unavailable(self, what: str, e: BaseException) -> DeliveryError:
        return DeliveryError(f"SMTP {self.where}: {what} ({e or type(e).__name__})",
                             hint="the messages wait in the outbox; the next run sends them",
                             unavailable=True, tried=False)

    def _connect(self, deadline: float) -> smtplib.SMTP:
        ctx = tls_context(self._ca_file) if self.security != "none" else None
        conn: Client | SslClient
        if self.security == "ssl":
            conn = SslClient(timeout=self.timeout, context=ctx, local_hostname=local_hostname())
        else:
            conn = Client(timeout=self.timeout, local_hostname=local_hostname())
        conn.deadline = deadline
        try:
            code, greeting = conn.connect(self.host, self.port)
            if code != 220:  # smtplib checks this only when it connects in __init__
                raise smtplib.SMTPConnectError(code, greeting)
        except ssl.SSLCertVerificationError as e:
            _drop(conn)
            raise self._unverified(e) from e
        except socket.gaierror as e:
            _drop(conn)
            raise DeliveryError(f"SMTP {self.where}: cannot resolve the host ({e})",
                                hint="check delivery.smtp.host", fatal=True) from e
        except smtplib.SMTPConnectError as e:
            _drop(conn)
            if 400 <= e.smtp_code < 500:
                raise self._unavailable(f"greeting {_reply(e.smtp_code, e.smtp_error)}",
                                        e) from e
            raise DeliveryError(f"SMTP {self.where}: the server refuses us "
                                f"({_reply(e.smtp_code, e.smtp_error)})",
                                hint="check delivery.smtp host and port", fatal=True) from e
        except (OSError, smtplib.SMTPException) as e:
            _drop(conn)
            raise self._unavailable("cannot connect", e) from e
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
        except smtplib.SMTPResponseException as e:
            _drop(conn)
            if 400 <= e.smtp_code < 500:
                raise self._unavailable(f"session setup {_reply(e.smtp_code, e.smtp_error)}",
                                        e) from e
            raise DeliveryError(f"SMTP {self.where}: session setup failed "
                                f"({_reply(e.smtp_code, e.smtp_error)})", fatal=True) from e
        except (OSError, smtplib.SMTPException) as e:
            _drop(conn)
            raise self._unavailable("session setup failed", e) from e
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
        """One message, within `timeout` seconds from here to the server's last reply."""
        self.begin(message)
        self.transfer()
        return self.finish()

    def begin(self, message: OutgoingMessage) -> None:
        """The message's envelope on the wire (with PIPELINING; else nothing yet). The
        deadline of `timeout` seconds runs from here to the server's verdict, counting only
        the time spent in these three steps: what the caller does between them (a commit
        that waits for another writer, building the next message) is not the server's
        delay, and a reply that waits in the socket meanwhile is not lost to it."""
        self._pace()
        deadline = time.monotonic() + self.timeout
        try:
            recipient = envelope_address(message.recipient)
            sender = envelope_address(message.envelope_from)
        except ValueError as e:
            raise DeliveryError(f"{message.recipient}: cannot be written in an SMTP envelope "
                                f"({e})", permanent=True, tried=False) from e
        if self._conn is None:
            try:
                self._conn = self._connect(deadline)
            except DeliveryError as e:
                e.tried = False  # nothing of the message went out
                raise
        conn = self._conn
        conn.deadline = deadline  # type: ignore[attr-defined]
        utf8 = not (recipient + sender).isascii()
        if utf8 and not conn.has_extn("smtputf8"):
            raise DeliveryError(f"{message.recipient}: {self.where} does not offer SMTPUTF8, "
                                "which an address with non-ASCII letters before the @ needs "
                                "(RFC 6531)", permanent=True, tried=False)
        self._on_wire = (message, Transfer(sender, recipient, message.data, utf8,
                                           message.crlf or crlf_throughout(message.data)))
        self._paused = None
        self._step(offer)

    def transfer(self) -> None:
        """The envelope's replies and the content: the verdict is left for `finish`."""
        self._step(hand_over)

    def finish(self) -> Receipt:
        """The server's verdict on the message."""
        try:
            self._step(accepted)
        finally:
            self._on_wire = None
            self._no_deadline()
        return Receipt(location=self.where)

    def _step(self, step: Callable[[smtplib.SMTP, Transfer], None]) -> None:
        assert self._on_wire is not None, "transfer() or finish() without a begin()"
        message, t = self._on_wire
        conn = self._conn
        if conn is None:  # dropped meanwhile (drop(), after another message's trouble)
            self._on_wire = None
            raise DeliveryError(f"{message.recipient}: the connection to {self.where} was "
                                "dropped before the message went out", tried=False)
        if self._paused is not None:  # the caller's time since the last step: not the server's
            conn.deadline += time.monotonic() - self._paused  # type: ignore[attr-defined]
        try:
            with self._mapped(message):
                step(conn, t)
        except BaseException:
            self._on_wire = None
            self._no_deadline()
            raise
        finally:
            self._paused = time.monotonic()

    def _no_deadline(self) -> None:
        if self._conn is not None:
            self._conn.deadline = math.inf  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def _mapped(self, message: OutgoingMessage) -> Iterator[None]:
        """What smtplib raises for one message, as the DeliveryError the senders act on."""
        try:
            yield
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
        except (SmtpTimeout, SmtpMisbehaved) as e:
            self._lost()
            raise DeliveryError(f"SMTP {self.where}: {e}", unavailable=True) from e
        except (smtplib.SMTPServerDisconnected, OSError) as e:
            # The server may have taken the message before it dropped the line, so it is
            # not sent again here: deferred, it is retried later under the same Message-ID.
            self._lost()
            raise DeliveryError(f"{message.recipient}: connection to {self.where} lost "
                                f"({e or type(e).__name__})") from e
        except smtplib.SMTPResponseException as e:
            self._reset()
            raise DeliveryError(f"{message.recipient}: {self.where} answered "
                                f"{_reply(e.smtp_code, e.smtp_error)}",
                                permanent=e.smtp_code >= 500) from e

    def _lost(self) -> None:
        _drop(self._conn)
        self._conn = None

    def _closing(self, code: int) -> None:
        """421: the server is closing the connection; the next message opens a new one."""
        if code == 421:
            self._lost()

    def _reset(self) -> None:
        try:
            if self._conn is not None:
                self._conn.deadline = time.monotonic() + self.timeout  # type: ignore[attr-defined]
                self._conn.rset()
        except (OSError, smtplib.SMTPException):
            self._lost()

    def drop(self) -> None:
        """Forget the connection without a word (after an unexpected error mid-message)."""
        self._lost()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._on_wire is not None:
            # A message half-way (the sender stopped on an error of its own): after its
            # envelope a QUIT would be read as part of it, after its content the server may
            # have taken it. The line is dropped; the message, its fate unrecorded, goes
            # again under its own Message-ID, as one on the wire at a crash does.
            self._on_wire = None
            _drop(conn)
            return
        try:
            conn.deadline = time.monotonic() + min(self.timeout, 5.0)  # type: ignore[attr-defined]
            conn.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            conn.close()


def _drop(conn: smtplib.SMTP | None) -> None:
    if conn is not None:
        with contextlib.suppress(OSError):
            conn.close()
