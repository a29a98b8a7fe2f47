"""Subscriber edits to the TOML config in place: the operator's comments and layout stay, the
result is validated before it is written, and written atomically, under a lock, to the file a
symlink points at, with its owner, group and mode.

Only the edited `[[subscribers]]` entry is parsed with tomlkit (which keeps comments, but
takes about 25 s and 1 GB to parse a 100,000-subscriber file); the rest of the file is copied
as text. The result is parsed with tomllib and checked to say exactly what was meant, else the
edit is redone the slow way on the whole document."""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import logging
import os
import re
import stat
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Table

from digest_mailer.config import email_address, parse_config, read_config_bytes
from digest_mailer.errors import ConfigError

logger = logging.getLogger(__name__)

LOCK_TIMEOUT = 30.0
LISTS = ("topics", "exclude", "authors")
_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*subscribers[ \t]*\]\][ \t]*(?:#[^\n]*)?$", re.M)
_ANY_HEADER = re.compile(r"^[ \t]*\[", re.M)


@dataclass(frozen=True, slots=True)
class SubscriberChange:
    """The keys to set; None leaves a key as it is. `clear` names lists to empty."""

    name: str | None = None
    topics: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    authors: tuple[str, ...] | None = None
    min_upvotes: int | None = None
    max_papers: int | None = None
    frequency: str | None = None
    weekday: str | None = None
    pause: bool | None = None
    clear: tuple[str, ...] = ()

    def values(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k in self.__slots__ if k != "clear" and (v := getattr(self, k)) is not None}

    def check(self, path: Path, current: dict[str, Any]) -> None:
        """Refuse what would be accepted and then silently ignored."""
        for key in self.clear:
            if key not in LISTS:
                raise ConfigError(f"cannot clear {key!r}: only {', '.join(LISTS)}")
            if getattr(self, key) is not None:
                raise ConfigError(f"--{key.rstrip('s')} and --clear-{key} contradict each other",
                                  hint="give one of them")
        frequency = self.frequency or current.get("frequency", "daily")
        if self.weekday is not None and frequency != "weekly":
            raise ConfigError(f"{path}: --weekday {self.weekday} applies to weekly subscribers "
                              f"only, and this one is {frequency}",
                              hint="add --frequency weekly")


def apply(table: dict[str, Any] | Table, change: SubscriberChange) -> None:
    for key, value in change.values().items():
        table[key] = value
    for key in change.clear:
        if key in table:
            del table[key]
    if change.frequency == "daily" and "weekday" in table:
        del table["weekday"]  # a daily subscriber's weekday would be ignored: say nothing false


@contextlib.contextmanager
def locked(target: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """An exclusive lock on the config file for a read-modify-write. The file is replaced at
    each edit, so after waiting, the lock is taken again if it was on the replaced file."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            # O_NONBLOCK: a FIFO in the config's place must not block the edit for ever.
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError as e:
            raise ConfigError(f"{target}: no such file") from e
        except OSError as e:
            raise ConfigError(f"{target}: cannot open: {e.strerror}") from e
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"{target}: not a regular file",
                                  hint="pass --config the path of the TOML file")
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ConfigError(f"{target}: another edit has held it for "
                                          f"{timeout:.0f}s", hint="try again") from None
                    time.sleep(0.02)
            try:
                same = os.fstat(fd).st_ino == os.stat(target).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield
                return
        finally:
            os.close(fd)


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as e:
        raise ConfigError(f"{path}: cannot edit: {e.strerror}") from e


def _read(path: Path) -> str:
    try:
        return read_config_bytes(path).decode("utf-8")  # line ends kept: CRLF stays CRLF
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot edit: {e}", hint="run `digest-mailer check`") from e


def _spans(text: str) -> list[tuple[int, int]]:
    """Where each `[[subscribers]]` entry starts and ends (at the next table header)."""
    out = []
    for m in _HEADER.finditer(text):
        nxt = _ANY_HEADER.search(text, m.end())
        out.append((m.start(), nxt.start() if nxt else len(text)))
    return out


_COMMENTS_ABOVE = re.compile(r"(?:^[ \t]*#[^\n]*\n)+\Z", re.M)


def _cut(text: str, spans: list[tuple[int, int]], index: int) -> tuple[int, int]:
    """What removing entry `index` removes: its span without the comment lines at its end,
    right above the next header: they are about the next entry (or the next section). Comments
    above its own header stay too: they may be about the whole list."""
    start, end = spans[index]
    if index + 1 < len(spans) or end < len(text):
        below = _COMMENTS_ABOVE.search(text, start, end)
        if below is not None and below.start() > spans[index][0]:
            end = below.start()
    return start, end


def _find(text: str, spans: list[tuple[int, int]], email: str) -> int | None:
    pattern = re.compile(r"^[ \t]*email[ \t]*=[ \t]*[\"']" + re.escape(email) + r"[\"']",
                         re.M | re.I)
    starts = [s for s, _ in spans]
    for m in pattern.finditer(text):
        i = bisect.bisect_right(starts, m.start()) - 1
        if i >= 0 and spans[i][0] <= m.start() < spans[i][1]:
            return i
    return None


def _entry_text(entry: str, change: SubscriberChange) -> str:
    doc = tomlkit.parse(entry)
    table = doc["subscribers"][0]
    apply(table, change)
    return tomlkit.dumps(doc)


class _Fallback(Exception):
    """The text edit did not give what was meant: redo it on the whole document."""


def _parse(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except (ValueError, RecursionError) as e:
        raise _Fallback from e


Edit = Callable[[str], tuple[str, Callable[[list[Any]], bool], str]]


def _edit(path: Path, email: str, edit: Edit, slow: Callable[[AoT], str]) -> str:
    target = Path(os.path.realpath(path))  # a symlink: edit what it points at
    with locked(target):
        read = _stat(target)
        text = _read(target)
        # A file written with CRLF is edited with LF and written back with CRLF: one ending.
        crlf = "\r\n" in text and text.count("\r\n") == text.count("\n")
        if crlf:
            text = text.replace("\r\n", "\n")
        try:
            new_text, meant, message = edit(text)
            data = _parse(new_text)
            subs = data.get("subscribers")
            if not isinstance(subs, list) or len(subs) != len(_HEADER.findall(new_text)) \
                    or not meant(subs):
                raise _Fallback
        except _Fallback:
            logger.info("%s: editing the whole document (layout the text edit cannot follow)",
                        path)
            new_text, message = _slow_edit(path, text, slow)
            data = _parse_or_fail(path, new_text)
        _validate(path, email, data, target.parent)
        _write(target, new_text.replace("\n", "\r\n") if crlf else new_text, read)
    logger.info("%s: %s", path, message)
    return message


def _validate(path: Path, email: str, data: dict[str, Any], base_dir: Path) -> None:
    """As the loader would; a finding in the edited entry is about what was typed."""
    subs = data.get("subscribers")
    index = next((i for i, t in enumerate(subs) if isinstance(t, dict) and str(
        t.get("email", "")).lower() == email.lower()), -1) if isinstance(subs, list) else -1
    try:
        parse_config(data, name=str(path), base_dir=base_dir, consume=True)
    except ConfigError as e:
        mine = all(f": subscribers[{index}]." in p for p in e.problems)
        raise ConfigError(e.message, problems=e.problems,
                          hint="nothing was written; check the values given on the command "
                               "line" if mine else "nothing was written; the file has "
                          "problems of its own: `digest-mailer check` lists them") from e


def typed_address(value: str) -> str:
    """An address typed on the command line, checked before it goes near the file."""
    try:
        return email_address(value)
    except ValueError as e:
        raise ConfigError(str(e), hint="check the address given on the command line") from e


def _parse_or_fail(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: the edit would not be valid TOML: {e}") from e


def _slow_edit(path: Path, text: str, change: Callable[[AoT], str]) -> tuple[str, str]:
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as e:
        raise ConfigError(f"{path}: cannot edit: {e}", hint="run `digest-mailer check`") from e
    subs = doc.get("subscribers")
    if subs is None:
        subs = tomlkit.aot()
        doc.append("subscribers", subs)
    if not isinstance(subs, AoT):
        raise ConfigError(f"{path}: subscribers: expected [[subscribers]] tables",
                          hint="this command edits [[subscribers]] tables only: write the "
                               "`subscribers = [...]` array as tables (see config.example.toml)"
                               ", or edit it by hand; nothing was written")
    message = change(subs)
    return tomlkit.dumps(doc), message


def _write(target: Path, text: str, read: os.stat_result) -> None:
    """Replace the file atomically, keeping its mode, owner and group; refuse when it changed
    since it was read (an edit by hand, which the lock does not stop). A disk that is full or
    read-only leaves the file as it was and says so."""
    try:
        _replace(target, text, read)
    except OSError as e:
        raise ConfigError(f"{target}: cannot write the edited copy beside it: "
                          f"{e.strerror or e}; nothing was changed",
                          hint="free some space or make the folder writable, then try "
                               "again") from e


def _stamp(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def _replace(target: Path, text: str, read: os.stat_result) -> None:
    info = target.stat()
    if _stamp(info) != _stamp(read):
        raise ConfigError(f"{target}: changed while it was being edited; nothing was written",
                          hint="run the command again")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), info.st_mode & 0o7777)
            if (info.st_uid, info.st_gid) != (os.getuid(), os.getgid()):
                try:
                    os.fchown(f.fileno(), info.st_uid, info.st_gid)
                except PermissionError as e:
                    raise ConfigError(f"{target}: cannot keep its owner and group "
                                      f"({info.st_uid}:{info.st_gid}) on the edited copy",
                                      hint="edit it as its owner (or as root)") from e
            os.fsync(f.fileno())
        if _stamp(target.stat()) != _stamp(read):
            raise ConfigError(f"{target}: changed while it was being edited; nothing was "
                              "written", hint="run the command again")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _table_dict(entry: str) -> dict[str, Any]:
    data = _parse(entry).get("subscribers")
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        raise _Fallback
    return data[0]


def _not_found(path: Path, text: str, email: str) -> NoReturn:
    """No entry found in the text: say so if the parsed file agrees, else edit the slow way."""
    subs = _parse(text).get("subscribers", [])
    if isinstance(subs, list) and not any(isinstance(t, dict) and str(
            t.get("email", "")).lower() == email.lower() for t in subs):
        raise ConfigError(f"{path}: {email} is not a subscriber",
                          hint="see `digest-mailer subscribers list`")
    raise _Fallback


def _new_entry(email: str, change: SubscriberChange) -> str:
    table = tomlkit.table()
    table["email"] = email
    apply(table, change)
    doc = tomlkit.document()
    doc["subscribers"] = tomlkit.aot()
    doc["subscribers"].append(table)
    return tomlkit.dumps(doc)


def add_subscriber(path: Path, email: str, change: SubscriberChange) -> str:
    typed_address(email)
    change.check(path, {})
    wanted: dict[str, Any] = {"email": email}
    apply(wanted, change)

    def fast(text: str) -> tuple[str, Callable[[list[Any]], bool], str]:
        if _find(text, _spans(text), email) is not None:
            raise ConfigError(f"{path}: {email} is already a subscriber",
                              hint="use `digest-mailer subscribers set` to change it")
        # One blank line before the new entry, as between the ones an operator writes.
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n")
                                                           else "\n\n")
        return (text + sep + _new_entry(email, change), lambda subs: subs[-1] == wanted,
                f"added {email}")

    def slow(subs: AoT) -> str:
        if any(str(t.get("email", "")).lower() == email.lower() for t in subs):
            raise ConfigError(f"{path}: {email} is already a subscriber",
                              hint="use `digest-mailer subscribers set` to change it")
        table = tomlkit.table()
        table["email"] = email
        apply(table, change)
        subs.append(table)
        return f"added {email}"

    return _edit(path, email, fast, slow)


def remove_subscriber(path: Path, email: str) -> str:
    def fast(text: str) -> tuple[str, Callable[[list[Any]], bool], str]:
        spans = _spans(text)
        index = _find(text, spans, email)
        if index is None:
            _not_found(path, text, email)
        start, end = _cut(text, spans, index)
        count = len(spans)
        return (text[:start] + text[end:],
                lambda subs: len(subs) == count - 1 and all(
                    str(s.get("email", "")).lower() != email.lower() for s in subs),
                f"removed {email}")

    def slow(subs: AoT) -> str:
        index = next((i for i, t in enumerate(subs)
                      if str(t.get("email", "")).lower() == email.lower()), None)
        if index is None:
            raise ConfigError(f"{path}: {email} is not a subscriber")
        del subs[index]
        return f"removed {email}"

    return _edit(path, email, fast, slow)


def set_subscriber(path: Path, email: str, change: SubscriberChange) -> str:
    if not change.values() and not change.clear:
        raise ConfigError("nothing to change", hint="pass --topic, --name, --pause, ...")
    names = [*change.values(), *(f"cleared {k}" for k in change.clear)]
    message = f"updated {email}: {', '.join(names)}"

    def fast(text: str) -> tuple[str, Callable[[list[Any]], bool], str]:
        spans = _spans(text)
        index = _find(text, spans, email)
        if index is None:
            _not_found(path, text, email)
        start, end = spans[index]
        entry = text[start:end]
        current = _table_dict(entry)
        change.check(path, current)
        wanted = dict(current)
        apply(wanted, change)
        new_entry = _entry_text(entry, change)
        return (text[:start] + new_entry + text[end:],
                lambda subs: index < len(subs) and subs[index] == wanted, message)

    def slow(subs: AoT) -> str:
        index = next((i for i, t in enumerate(subs)
                      if str(t.get("email", "")).lower() == email.lower()), None)
        if index is None:
            raise ConfigError(f"{path}: {email} is not a subscriber",
                              hint="use `digest-mailer subscribers add`")
        table: Table = subs[index]
        change.check(path, table.unwrap())
        apply(table, change)
        return message

    return _edit(path, email, fast, slow)
