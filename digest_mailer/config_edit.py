"""Subscriber edits to the TOML config in place: the operator's comments and layout stay
(tomlkit), the result is validated before it is written, and written atomically."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Table

from digest_mailer.config import Config, parse_config
from digest_mailer.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SubscriberChange:
    """The keys to set; None leaves a key as it is."""

    name: str | None = None
    topics: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    authors: tuple[str, ...] | None = None
    min_upvotes: int | None = None
    max_papers: int | None = None
    frequency: str | None = None
    weekday: str | None = None
    pause: bool | None = None

    def values(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k in self.__slots__ if (v := getattr(self, k)) is not None}


def _read(path: Path) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such file") from e
    except (OSError, UnicodeDecodeError, TOMLKitError) as e:
        raise ConfigError(f"{path}: cannot edit: {e}", hint="run `digest-mailer check`") from e


def _subscribers(doc: tomlkit.TOMLDocument) -> AoT:
    subs = doc.get("subscribers")
    if subs is None:
        subs = tomlkit.aot()
        doc.append("subscribers", subs)
    if not isinstance(subs, AoT):
        raise ConfigError("subscribers: expected [[subscribers]] tables")
    return subs


def _find(subs: AoT, email: str) -> int | None:
    for i, table in enumerate(subs):
        if str(table.get("email", "")).lower() == email.lower():
            return i
    return None


def _write(path: Path, doc: tomlkit.TOMLDocument) -> Config:
    """Validate the edited document as the loader would, then replace the file atomically."""
    text = tomlkit.dumps(doc)
    config = parse_config(tomlkit.parse(text).unwrap(), name=str(path),
                          base_dir=path.resolve().parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return config


def _edit(path: Path, change: Callable[[AoT], str]) -> str:
    doc = _read(path)
    message = change(_subscribers(doc))
    _write(path, doc)
    logger.info("%s: %s", path, message)
    return message


def add_subscriber(path: Path, email: str, change: SubscriberChange) -> str:
    def apply(subs: AoT) -> str:
        if _find(subs, email) is not None:
            raise ConfigError(f"{path}: {email} is already a subscriber",
                              hint="use `digest-mailer subscribers set` to change it")
        table = tomlkit.table()
        table["email"] = email
        for key, value in change.values().items():
            table[key] = value
        subs.append(table)
        return f"added {email}"

    return _edit(path, apply)


def remove_subscriber(path: Path, email: str) -> str:
    def apply(subs: AoT) -> str:
        index = _find(subs, email)
        if index is None:
            raise ConfigError(f"{path}: {email} is not a subscriber")
        del subs[index]
        return f"removed {email}"

    return _edit(path, apply)


def set_subscriber(path: Path, email: str, change: SubscriberChange) -> str:
    values = change.values()
    if not values:
        raise ConfigError("nothing to change", hint="pass --topic, --name, --pause, ...")

    def apply(subs: AoT) -> str:
        index = _find(subs, email)
        if index is None:
            raise ConfigError(f"{path}: {email} is not a subscriber",
                              hint="use `digest-mailer subscribers add`")
        table: Table = subs[index]
        for key, value in values.items():
            table[key] = value
        return f"updated {email}: {', '.join(values)}"

    return _edit(path, apply)
