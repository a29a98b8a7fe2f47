"""smtplib with deadlines instead of per-read timeouts, capped replies, and one message's
commands in one round trip where the server offers PIPELINING (RFC 2920).

smtplib's own timeout applies to each socket read, so a server dripping a byte a second never
trips it, and it reads a multi-line reply for as long as the server sends one. Here every reply
must arrive whole within `timeout` seconds and within the current message's deadline, and a
reply is capped in lines and bytes."""

from __future__ import annotations

import contextlib
import functools
import math
import smtplib
import socket
import time
from dataclasses import dataclass
from typing import Any

import idna

MAX_LINE = 8192  # what smtplib allows for one reply line
MAX_LINES = 100
MAX_REPLY = 64 * 1024


class SmtpTimeout(smtplib.SMTPException):
    """The server did not answer (or take our data) before the deadline."""


class SmtpMisbehaved(smtplib.SMTPException):
    """A reply over the caps, or not SMTP at all."""


@functools.lru_cache(maxsize=1)
def local_hostname() -> str:
    return socket.getfqdn()


class _Deadlines:
    """Mixed into smtplib.SMTP and SMTP_SSL; `deadline` is a time.monotonic() value."""

    sock: Any
    timeout: float
    command_encoding: str
    deadline: float = math.inf
    _buf: bytes = b""

    def _left(self, late: str = "no whole reply") -> float:
        now = time.monotonic()
        left = min(self.deadline, now + self.timeout) - now
        if left <= 0:
            self.close()
            raise SmtpTimeout(f"{late} within {self.timeout:g}s")
        return left

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(  # type: ignore[misc]
            host, port, self._left("no connection"))
        return sock

    def connect(self, host: str = "localhost", port: int = 0,
                source_address: Any = None) -> tuple[int, bytes]:
        self._buf = b""
        self._host = host  # what TLS checks the certificate against (smtplib sets it in __init__)
        reply: tuple[int, bytes] = super().connect(  # type: ignore[misc]
            host, port, source_address)
        return reply

    def starttls(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        reply = super().starttls(*args, **kwargs)  # type: ignore[misc]
        self._buf = b""
        return reply  # type: ignore[no-any-return]

    def close(self) -> None:
        self._buf = b""
        super().close()  # type: ignore[misc]

    def send(self, s: str | bytes) -> None:
        if not getattr(self, "sock", None):
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        data = s.encode(self.command_encoding) if isinstance(s, str) else s
        self.sock.settimeout(self._left("the server did not take our data"))
        try:
            self.sock.sendall(data)  # a total deadline for the whole buffer since Python 3.5
        except TimeoutError as e:
            self.close()
            raise SmtpTimeout(f"the server did not take our data within {self.timeout:g}s"
                              ) from e
        except OSError as e:
            self.close()
            raise smtplib.SMTPServerDisconnected(f"connection lost while sending ({e})") from e

    def _line(self) -> bytes:
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line, self._buf = self._buf[:end + 1], self._buf[end + 1:]
                return line
            if len(self._buf) > MAX_LINE:
                self.close()
                raise SmtpMisbehaved(f"a reply line longer than {MAX_LINE} bytes")
            self.sock.settimeout(self._left())
            try:
                chunk = self.sock.recv(16384)
            except TimeoutError as e:
                self.close()
                raise SmtpTimeout(f"no whole reply within {self.timeout:g}s") from e
            except OSError as e:
                self.close()
                raise smtplib.SMTPServerDisconnected(f"connection lost ({e})") from e
            if not chunk:
                self.close()
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            self._buf += chunk

    def getreply(self) -> tuple[int, bytes]:
        if not getattr(self, "sock", None):
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        lines: list[bytes] = []
        size = 0
        code = -1
        while True:
            line = self._line()
            size += len(line)
            lines.append(line[4:].strip(b" \t\r\n"))
            if len(lines) > MAX_LINES or size > MAX_REPLY:
                self.close()
                raise SmtpMisbehaved(f"a reply of more than {MAX_LINES} lines or "
                                     f"{MAX_REPLY // 1024} KB")
            try:
                code = int(line[:3])
            except ValueError:
                code = -1
                break
            if line[3:4] != b"-":
                break
        return code, b"\n".join(lines)


class Client(_Deadlines, smtplib.SMTP):  # type: ignore[misc]  # send takes bytes only
    pass


class SslClient(_Deadlines, smtplib.SMTP_SSL):  # type: ignore[misc]
    pass


def envelope_address(address: str) -> str:
    """The address as it goes into MAIL or RCPT: an internationalised domain as IDNA
    (punycode), which every server takes; a local part as it is. ValueError when it cannot be
    written there at all."""
    if any(c in address for c in "\r\n<>\0"):
        raise ValueError("it holds a line break or angle bracket")
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise ValueError("it is not local@domain")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as e:
            raise ValueError(f"its domain is not a valid international name ({e})") from e
    return f"{local}@{domain}"


def _refused(conn: smtplib.SMTP, code: int) -> None:
    """After a refusal: 421 means the server is closing; anything else, reset the session."""
    if code == 421:
        conn.close()
    else:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            conn.rset()


@dataclass(slots=True)
class Transfer:
    """One message on its way through a connection: `offer` writes its envelope, `hand_over`
    its content, `accepted` reads the verdict. Between the three the caller is free to do
    other work while the server reads and answers (the replies wait in the socket)."""

    sender: str
    recipient: str
    data: bytes
    utf8: bool = False
    ours: bool = True  # CRLF throughout, as every message we build is (else smtplib's path)
    offered: bool = False  # MAIL, RCPT and DATA written, their replies not read yet
    pending: bool = False  # the content written, the verdict not read yet

    @property
    def options(self) -> list[str]:
        return ["SMTPUTF8"] if self.utf8 else []

    def commands(self, conn: smtplib.SMTP) -> tuple[str, str]:
        options = self.options
        if self.utf8 and conn.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        return (f"MAIL FROM:<{self.sender}>{''.join(' ' + o for o in options)}\r\n",
                f"RCPT TO:<{self.recipient}>\r\n")


def offer(conn: smtplib.SMTP, t: Transfer) -> None:
    """With PIPELINING (RFC 2920), the envelope in one write; its replies are read by
    `hand_over`. Without, nothing yet."""
    if not conn.has_extn("pipelining") or not t.ours:
        return
    conn.ehlo_or_helo_if_needed()
    if t.utf8:
        conn.command_encoding = "utf-8"
    mail, rcpt = t.commands(conn)
    conn.send(mail + rcpt + "DATA\r\n")
    t.offered = True


def hand_over(conn: smtplib.SMTP, t: Transfer) -> None:
    """The envelope's replies, then the content up to its last line; the verdict is left
    for `accepted`. Our messages are already CRLF throughout, so the content only needs its
    dots stuffed: a byte replace instead of sendmail's two regular expressions over the
    whole message."""
    sender, recipient, data = t.sender, t.recipient, t.data
    if not t.ours:
        conn.sendmail(sender, [recipient], data, mail_options=t.options)  # not our bytes
        return
    if t.offered:
        replies = []
        for _ in range(3):
            try:
                replies.append(conn.getreply())
            except smtplib.SMTPServerDisconnected:
                if replies and replies[-1][0] == 421:
                    break  # the server said it is closing
                raise
        replies += [(-2, b"")] * (3 - len(replies))
        (mcode, mmsg), (rcode, rmsg), (dcode, dmsg) = replies
        if dcode == 354 and (mcode != 250 or rcode not in (250, 251)):
            conn.send(b".\r\n")  # RFC 2920: the server opened DATA anyway; close it empty
            conn.getreply()
    else:
        conn.ehlo_or_helo_if_needed()
        if t.utf8:
            conn.command_encoding = "utf-8"
        mail, rcpt = t.commands(conn)
        mcode, mmsg = conn.docmd(mail[:-2])
        rcode = dcode = -2
        if mcode == 250:
            rcode, rmsg = conn.docmd(rcpt[:-2])
            if rcode in (250, 251):
                dcode, dmsg = conn.docmd("DATA")
    if mcode != 250:
        _refused(conn, mcode)
        raise smtplib.SMTPSenderRefused(mcode, mmsg, sender)
    if rcode not in (250, 251):
        _refused(conn, rcode)
        raise smtplib.SMTPRecipientsRefused({recipient: (rcode, rmsg)})
    if dcode != 354:
        _refused(conn, dcode)
        raise smtplib.SMTPDataError(dcode, dmsg)
    body = (b"." if data.startswith(b".") else b"") + data.replace(b"\r\n.", b"\r\n..")
    conn.send(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
    t.pending = True


def accepted(conn: smtplib.SMTP, t: Transfer) -> None:
    """The server's verdict on the content `hand_over` wrote (smtplib's sendmail, for bytes
    not our own, read it already)."""
    if not t.pending:
        return
    t.pending = False
    code, reply = conn.getreply()
    if code != 250:
        _refused(conn, code)
        raise smtplib.SMTPDataError(code, reply)
