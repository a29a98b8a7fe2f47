"""`subscribers import` and `export`: the store's subscribers as CSV.

Columns (a header row first; only `email` is required, the others may be left out or empty):
email, name, topics, exclude, authors (each a list: items separated by `;`), min_upvotes,
max_papers (empty: the newsletter's), frequency (daily | weekly), weekday (mon..sun), paused
(true | false). The same checks as a `[[subscribers]]` entry of the config."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from digest_mailer.config import SubscriberSettings
from digest_mailer.constants import WEEKDAYS
from digest_mailer.errors import DigestMailerError
from digest_mailer.store.selfservice import SelfService, StoredSubscriber

COLUMNS = ("email", "name", "topics", "exclude", "authors", "min_upvotes", "max_papers",
           "frequency", "weekday", "paused")
LISTS = ("topics", "exclude", "authors")
MAX_CSV_BYTES = 200_000_000
MAX_PROBLEMS = 20  # shown; all are counted


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: int
    updated: int
    skipped: tuple[tuple[int, str, str], ...] = field(default=())  # (line, email, why)


# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...),
# =cmd|...): an export writes such a cell with a leading apostrophe, which spreadsheets show
# as text, and an import takes that apostrophe off again, so a round trip changes nothing.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        return ""
    if value.startswith("'") and value[1:2] in FORMULA_START and value[1:2]:
        value = value[1:]
    return value.strip()


def _inert(value: object) -> object:
    text = str(value)
    return f"'{text}" if text[:1] in FORMULA_START and text[:1] else value


def _parse_row(row: dict[str, Any]) -> StoredSubscriber:
    data: dict[str, Any] = {"email": _cell(row, "email")}
    if _cell(row, "name"):
        data["name"] = _cell(row, "name")
    for name in LISTS:
        cell = _cell(row, name)
        if cell:
            data[name] = [t for t in (x.strip() for x in cell.split(";")) if t]
    for name in ("min_upvotes", "max_papers"):
        if _cell(row, name):
            data[name] = _cell(row, name)
    for name in ("frequency", "weekday"):
        if _cell(row, name):
            data[name] = _cell(row, name).lower()
    paused = _cell(row, "paused").lower()
    if paused:
        if paused not in ("true", "false", "yes", "no", "1", "0"):
            raise ValueError(f"paused: {paused!r} is not true or false")
        data["pause"] = paused in ("true", "yes", "1")
    try:
        s = SubscriberSettings.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "row"
        raise ValueError(f"{where}: {err['msg']}") from None
    return StoredSubscriber(email=s.email, kind="store", origin="import", name=s.name,
                            topics=tuple(s.topics), exclude=tuple(s.exclude),
                            authors=tuple(s.authors), min_upvotes=s.min_upvotes,
                            max_papers=s.max_papers, frequency=s.frequency,
                            weekday=WEEKDAYS.index(s.weekday), paused=s.pause)


def read_rows(path: Path) -> list[tuple[int, StoredSubscriber]]:
    """Every row, checked; one DigestMailerError naming each bad row by its line number."""
    name = str(path)
    try:
        raw = path.read_bytes() if path.stat().st_size <= MAX_CSV_BYTES else None
    except OSError as e:
        raise DigestMailerError(f"{name}: cannot read: {e.strerror}",
                                hint="give the path of a CSV file") from e
    if raw is None:
        raise DigestMailerError(f"{name}: over {MAX_CSV_BYTES:,} bytes",
                                hint="split it into several files")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DigestMailerError(f"{name}: not UTF-8 text (byte {e.start})",
                                hint="save the file as UTF-8 CSV") from e
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader, [])]
    except csv.Error as e:
        raise DigestMailerError(f"{name}: line 1: {e}", hint="the first row names the "
                                f"columns: {', '.join(COLUMNS)}") from e
    if "email" not in header:
        raise DigestMailerError(f"{name}: line 1: no 'email' column in the header row",
                                hint=f"the first row names the columns: {', '.join(COLUMNS)}")
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise DigestMailerError(f"{name}: line 1: unknown column(s) {', '.join(unknown)}",
                                hint=f"the columns are: {', '.join(COLUMNS)}")
    rows: list[tuple[int, StoredSubscriber]] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    try:
        ended = reader.line_num  # the header's last line
        for cells in reader:
            # A quoted cell may span lines: a row is named by the line it starts on.
            line, ended = ended + 1, reader.line_num
            if not cells:
                continue  # a blank line
            if len(cells) > len(header):
                problems.append(f"{name}: line {line}: more cells than the header has")
                continue
            row = dict(zip(header, cells, strict=False))
            try:
                sub = _parse_row(row)
            except ValueError as e:
                problems.append(f"{name}: line {line}: {e}")
                continue
            if sub.key in seen:
                problems.append(f"{name}: line {line}: {sub.email} is already on line "
                                f"{seen[sub.key]}")
                continue
            seen[sub.key] = line
            rows.append((line, sub))
    except csv.Error as e:
        problems.append(f"{name}: line {reader.line_num}: {e}")
    if problems:
        more = len(problems) - MAX_PROBLEMS
        shown = problems[:MAX_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
        from digest_mailer.errors import ConfigError

        raise ConfigError(shown[0], problems=tuple(shown),
                          hint=f"{len(problems)} bad row(s): nothing was imported; fix them "
                               "and import again (importing twice changes nothing)")
    return rows


def import_rows(store: SelfService, rows: list[tuple[int, StoredSubscriber]], *,
                config_keys: frozenset[str], suppressed: dict[str, tuple[str, str, str]],
                now: datetime) -> ImportResult:
    """Add the new, update the changed, skip the rest with why; in one transaction."""
    existing = {s.key: s for s in store.all()}
    new: list[StoredSubscriber] = []
    changed: list[StoredSubscriber] = []
    skipped: list[tuple[int, str, str]] = []
    for line, sub in rows:
        if sub.key in config_keys:
            skipped.append((line, sub.email, "in the config: the operator's entry is kept "
                                             "(edit it with `subscribers set`)"))
            continue
        if sub.key in suppressed:
            reason, since, _ = suppressed[sub.key]
            skipped.append((line, sub.email, f"{reason} on {since[:10]}: not subscribed "
                                             "again (`subscribers unsuppress` first)"))
            continue
        old = existing.get(sub.key)
        if old is None:
            new.append(sub)
            continue
        if old.kind == "override":
            skipped.append((line, sub.email, "their own override of a config entry"))
            continue
        merged = replace(sub, origin=old.origin, created_at=old.created_at,
                         updated_at=old.updated_at)
        if merged == old:
            skipped.append((line, sub.email, "unchanged"))
        else:
            changed.append(merged)
    store.put_many(new, changed, now)
    return ImportResult(len(new), len(changed), tuple(skipped))


def write_rows(subs: Iterable[StoredSubscriber], out: io.TextIOBase | Any) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    n = 0
    for s in subs:
        writer.writerow([_inert(v) for v in (
            s.email, s.name, ";".join(s.topics), ";".join(s.exclude), ";".join(s.authors),
            s.min_upvotes, "" if s.max_papers is None else s.max_papers, s.frequency,
            WEEKDAYS[s.weekday], "true" if s.paused else "false")])
        n += 1
    return n
