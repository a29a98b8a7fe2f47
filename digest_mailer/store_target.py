"""Where the ledger lives: a SQLite file or a PostgreSQL database. Plain values, so a target
travels to spawned senders, and importing it costs no database library (`check` imports
none)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from digest_mailer.errors import StoreError

PASSWORD_ENV = "DIGEST_STATE_PASSWORD"
_URL_HINT = "write postgresql://user@host:5432/dbname"


@dataclass(frozen=True, slots=True)
class StoreTarget:
    """A SQLite file (`path`), or a PostgreSQL database (`url`, without a password)."""

    kind: str  # a key of store.engines.ENGINES
    path: str | None = None
    url: str | None = None
    password_env: str = PASSWORD_ENV
    password_file: str | None = None

    @classmethod
    def sqlite(cls, path: Path | str) -> StoreTarget:
        return cls("sqlite", path=str(path))

    @classmethod
    def parse(cls, where: str, *, password_env: str = PASSWORD_ENV,
              password_file: str | None = None) -> StoreTarget:
        """A `postgresql://user@host:port/db` URL, or else a SQLite file's path."""
        if "://" not in where:
            return cls.sqlite(where)
        try:
            parts = urlsplit(where)
            parts.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError as e:
            raise StoreError(f"{where}: not a database URL ({e})", hint=_URL_HINT) from e
        if parts.scheme not in ("postgresql", "postgres"):
            raise StoreError(f"{where}: not a PostgreSQL URL",
                             hint=f"{_URL_HINT}, or a SQLite file's path in [state] path")
        if parts.password is not None:
            shown = parts._replace(netloc=f"{parts.username}:***@{parts.hostname}"
                                   + (f":{parts.port}" if parts.port else ""))
            raise StoreError(f"{urlunsplit(shown)}: the URL carries a password",
                             hint=f"take it out of the URL and put it in ${password_env} or "
                                  "[state] password_file")
        if not parts.path.strip("/") or not parts.hostname:
            raise StoreError(f"{where}: the URL names no host or no database", hint=_URL_HINT)
        return cls("postgresql", url=urlunsplit(parts._replace(scheme="postgresql")),
                   password_env=password_env, password_file=password_file)

    @property
    def label(self) -> str:
        """What messages name: the file, or the URL."""
        return self.path if self.path is not None else str(self.url)

    @property
    def sqlite_path(self) -> Path | None:
        return Path(self.path) if self.kind == "sqlite" and self.path is not None else None
