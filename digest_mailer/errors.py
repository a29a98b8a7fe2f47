"""The few exceptions a user can cause; each carries a one-line message and a hint."""

from __future__ import annotations


class DigestMailerError(Exception):
    """An error the operator can act on: the CLI prints it as one `Error:` line, no traceback."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    @property
    def hints(self) -> tuple[str, ...]:
        return (self.hint,) if self.hint else ()


class ConfigError(DigestMailerError):
    """The config file is missing, unreadable, invalid or cannot run; `problems` lists every
    finding and `hints` what to do about them (several findings may share one hint)."""

    def __init__(self, message: str, hint: str | None = None,
                 problems: tuple[str, ...] = (), hints: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint)
        self.problems = problems or (message,)
        self._hints = tuple(dict.fromkeys(hints)) or ((hint,) if hint else ())

    @property
    def hints(self) -> tuple[str, ...]:
        return self._hints


class SourceError(DigestMailerError):
    """The feed could not be fetched or parsed."""


class StoreError(DigestMailerError):
    """The ledger could not be opened or written."""


class RenderError(DigestMailerError):
    """A template failed to load or render."""


class DeliveryError(DigestMailerError):
    """A backend could not deliver a message.

    `permanent` separates a refusal of this one recipient (the run goes on) from a failure of
    the backend itself (the run stops, since every further message would fail the same way).
    `unavailable`: the server, not this message, is the trouble for now (refused or reset at
    connect, 421 at greeting, a deadline missed): every message waits, and the run tries the
    server again later or leaves the rest for the next run. `tried`: the message may have
    reached the server before the trouble.
    """

    def __init__(self, message: str, hint: str | None = None, *, permanent: bool = False,
                 fatal: bool = False, unavailable: bool = False, tried: bool = True) -> None:
        super().__init__(message, hint)
        self.permanent = permanent
        self.fatal = fatal
        self.unavailable = unavailable
        self.tried = tried
