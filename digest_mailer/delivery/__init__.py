"""Backends behind one protocol, chosen from a registry by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from digest_mailer.models import OutgoingMessage


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a backend says about a message it accepted."""

    location: str  # where it went: a file path, or the SMTP server
    detail: str = ""


class Backend(Protocol):
    """Accepts messages one by one. `send` raises DeliveryError when a message was not
    accepted; `close` releases the connection (and writes any index). `begin`, `transfer`
    and `finish` are `send` in three steps, for a sender that works between them while the
    server reads and answers: `begin` writes the envelope, `transfer` the content, `finish`
    reads the verdict; each raises what `send` would."""

    name: str
    dry_run: bool

    def send(self, message: OutgoingMessage) -> Receipt: ...

    def begin(self, message: OutgoingMessage) -> None: ...

    def transfer(self) -> None: ...

    def finish(self) -> Receipt: ...

    def close(self) -> None: ...


class Immediate:
    """`begin`, `transfer` and `finish` for a backend whose `send` is done when it returns."""

    send: Callable[[OutgoingMessage], Receipt]  # the backend's own
    _receipt: Receipt | None = None

    def begin(self, message: OutgoingMessage) -> None:
        self._receipt = None
        self._receipt = self.send(message)

    def transfer(self) -> None:
        pass  # `begin` sent it whole

    def finish(self) -> Receipt:
        receipt, self._receipt = self._receipt, None
        assert receipt is not None, "finish() without a begin() that succeeded"
        return receipt


@dataclass(frozen=True, slots=True)
class BackendOptions:
    out_dir: Path
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_security: str = "starttls"
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_timeout: float = 30.0
    smtp_ca_file: Path | None = None
    smtp_rate_limit: float = 0.0


def _file(options: BackendOptions) -> Backend:
    from digest_mailer.delivery.files import FileBackend

    return FileBackend(options.out_dir)


def _smtp(options: BackendOptions) -> Backend:
    from digest_mailer.delivery.smtp import SmtpBackend

    return SmtpBackend(host=options.smtp_host, port=options.smtp_port,
                       security=options.smtp_security, username=options.smtp_username,
                       password=options.smtp_password, timeout=options.smtp_timeout,
                       ca_file=options.smtp_ca_file, rate_limit=options.smtp_rate_limit)


BACKENDS: dict[str, Callable[[BackendOptions], Backend]] = {"file": _file, "smtp": _smtp}


def open_backend(name: str, options: BackendOptions) -> Backend:
    return BACKENDS[name](options)
