"""The value checks the config's keys use: addresses, ids, URLs, durations, cron, time zones.
Each raises ValueError saying what is wrong, which pydantic turns into the key's Error line."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BeforeValidator

from digest_mailer.text import CONTROL as _CONTROL

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def single_line(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(f"{value!r} contains a line break or control character")
    return value


def bare_address(value: str) -> str:
    """A subscriber's address, checked for syntax only: deliverability needs DNS, which a check
    must not. An international domain goes out as IDNA; a non-ASCII local part goes out over
    SMTPUTF8 where the server offers it, and fails alone, with that reason, where it does not."""
    single_line(value)
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as e:
        raise ValueError(f"{value!r} is not an email address ({e})") from e
    return checked.normalized


def ascii_address(value: str) -> str:
    """An address of ours (From, Reply-To, envelope, mailto): it goes into headers and the
    SMTP envelope of every message as is, so it must be ASCII: an international domain is
    written in its ASCII (xn--) form, and a non-ASCII local part would need SMTPUTF8 on every
    message."""
    address = bare_address(value)
    if not address.partition("@")[0].isascii():
        raise ValueError(f"{value!r}: the part before the @ is not ASCII, which every message "
                         "would then need SMTPUTF8 for; use an ASCII address")
    if not address.isascii():
        ascii_form = validate_email(address, check_deliverability=False).ascii_email
        raise ValueError(f"{value!r}: write the domain in its ASCII form ({ascii_form!r}): "
                         "headers and the SMTP envelope carry it as is")
    return address


def email_address(value: str) -> str:
    """A bare address, normalised; ValueError saying what is wrong with it otherwise."""
    return bare_address(value)


def mailboxes(value: str) -> list[str]:
    """The addresses of `Name <addr@host>, ...`, each checked; ValueError for anything the
    header parser reads differently (a group, a stray comma, a missing address)."""
    single_line(value)
    from email.errors import NonASCIILocalPartDefect
    from email.headerregistry import HeaderRegistry

    try:
        header = HeaderRegistry()("reply-to", value)
    except (ValueError, IndexError) as e:
        raise ValueError(f"{value!r} is not an address like "
                         "'Daily Papers <papers@example.org>'") from e
    groups = header.groups  # type: ignore[attr-defined]
    addresses = [a.addr_spec for a in header.addresses]  # type: ignore[attr-defined]
    # A non-ASCII local part is a defect to the parser; ascii_address says it better.
    defects = [d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)]
    if defects or any(g.display_name for g in groups) or not addresses or any(
            "@" not in a for a in addresses):
        raise ValueError(f"{value!r} is not an address like "
                         "'Daily Papers <papers@example.org>' (quote a name with a comma: "
                         "'\"Papers, Inc\" <papers@example.org>')")
    for address in addresses:
        ascii_address(address)
    return addresses


def mailbox(value: str) -> str:
    """`Name <addr@host>` or a bare address: exactly one (a From with two needs a Sender)."""
    if len(mailboxes(value)) != 1:
        raise ValueError(f"{value!r} holds several addresses; From takes one")
    return value


def reply_to_value(value: str) -> str:
    mailboxes(value)
    return value


# RFC 2919: the id is a dot-atom with at least one dot; anything else breaks the List-Id header
# (a space, an angle bracket) or the token bound to it.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LIST_ID = re.compile(rf"{_ATOM}(?:\.{_ATOM})+")
# RFC 3986 characters: a URL goes into List-Unsubscribe inside <...> as is.
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_LABELS = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*")
_MAILTO_LOCAL = re.compile(r"[A-Za-z0-9._+'!$*=~-]+")


def list_ident_value(value: str) -> str:
    if len(value) > 255 or not _LIST_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a list id like 'papers.example.org' (ASCII letters, "
                         "digits and dots, no spaces or angle brackets)")
    return value


def list_name(value: str) -> str:
    """The name goes unquoted before the id in List-Id (`Name <id>`): an angle bracket in it
    makes receivers read the wrong id."""
    if "<" in value or ">" in value:
        raise ValueError(f"{value!r} has an angle bracket, which breaks the List-Id header "
                         "(receivers would read the list's id from inside the name)")
    return value


def dns_name(value: str) -> str:
    """A DKIM domain or selector: DNS labels; a ';' or '=' would add tags to the signature."""
    if len(value) > 253 or not _LABELS.fullmatch(value):
        raise ValueError(f"{value!r} is not a DNS name like 'example.org' (ASCII letters, "
                         "digits, '-', '_' and dots)")
    return value


def mailto_address(value: str) -> str:
    address = ascii_address(value)
    if not _MAILTO_LOCAL.fullmatch(address.rpartition("@")[0]):
        raise ValueError(f"{value!r}: '?', '&', '%', '#' or '/' before the @ would change the "
                         "mailto: link; use a plain address")
    return address


def composed(value: str) -> str:
    """NFC: an accent typed as a separate combining mark (as macOS often sends it) becomes
    the one character it means. mjml-python writes a combining mark inside an attribute as
    a backslash-u escape, so a name typed with one showed mangled in a title or a link."""
    return unicodedata.normalize("NFC", value)


def time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"{value!r} is not an IANA time zone like 'UTC' or 'Europe/Berlin'") from e
    return value


def terms(values: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        v = " ".join(v.split())
        if not v:
            raise ValueError("an empty string matches nothing; remove it")
        if v.casefold() not in {o.casefold() for o in out}:
            out.append(v)
    return tuple(out)


def http_url(value: str) -> str:
    single_line(value)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in value:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


def duration(value: object) -> float:
    """'90s', '15m', '1h', '2d' or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        try:
            return float(value)
        except OverflowError:  # an integer past what a float holds
            raise ValueError("a number of seconds far too large for a duration") from None
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{value!r} is not a duration like '90s', '15m', '1h' or '2d'")
    return float(m.group(1)) * _UNIT[m.group(2)]


def cron_expression(value: str) -> str:
    from datetime import UTC, datetime

    from digest_mailer.cron import next_fire, parse_cron

    # A date the calendar never has (30 February) parses, and then `serve` idles forever.
    if next_fire(parse_cron(value, "UTC"), datetime(2000, 1, 1, tzinfo=UTC)) is None:
        raise ValueError(f"{value!r} never fires (no such date in any year)")
    return value


DAY = 86400.0


OneLine = Annotated[str, AfterValidator(single_line)]
Duration = Annotated[float, BeforeValidator(duration)]
Terms = Annotated[list[str], AfterValidator(terms)]


def unsubscribe_url(v: str) -> str:
    """The one-click URL: https, {token} in its path or query, characters a header carries."""
    if "{token}" not in v:
        raise ValueError(f"{v!r} has no {{token}} placeholder")
    filled = v.replace("{token}", "t")
    http_url(filled)
    parts = urlsplit(v)
    if parts.scheme != "https":
        raise ValueError(f"{v!r} is not https: one-click unsubscribe (RFC 8058) needs an "
                         "https URL, and mail providers ignore it otherwise")
    if "{token}" in parts.netloc or "{token}" in parts.fragment:
        raise ValueError(f"{v!r}: {{token}} belongs in the path or the query (a browser "
                         "sends neither the host's nor the fragment's part as the token)")
    if not _URL_CHARS.fullmatch(filled):
        raise ValueError(f"{v!r} has characters a URL cannot carry as is (spaces, <, >, "
                         "quotes, non-ASCII): percent-encode them")
    return v


def web_base_url(v: str) -> str:
    """https, or http on this machine only (a local try-out): links in emails go there."""
    http_url(v)
    parts = urlsplit(v)
    local = (parts.hostname or "") in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not local:
        raise ValueError(f"{v!r} is not https (plain http only for 127.0.0.1 or localhost)")
    if parts.query or parts.fragment:
        raise ValueError(f"{v!r}: the base URL takes no query or fragment")
    return v.rstrip("/")
