"""TOML -> a validated, frozen Config. Every setting's default and help live here, once."""

from __future__ import annotations

import re
import tomllib
import unicodedata
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from digest_mailer.config_errors import describe_error, problems_hint
from digest_mailer.config_errors import settings_table as _settings_table
from digest_mailer.constants import SOURCE_KIND_HELP, SOURCE_KINDS, WEEKDAYS, SourceKindName
from digest_mailer.errors import ConfigError
from digest_mailer.models import Subscriber
from digest_mailer.text import CONTROL as _CONTROL

__all__ = ["SOURCE_KINDS", "WEEKDAYS", "Config", "load_config", "parse_config",
           "settings_table"]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _one_line(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(f"{value!r} contains a line break or control character")
    return value


def _address(value: str) -> str:
    """A bare address, checked for syntax only: deliverability needs DNS, which a check must not.
    A non-ASCII local part needs SMTPUTF8, which the email package cannot write in a header:
    a run would stop on it with a traceback."""
    _one_line(value)
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as e:
        raise ValueError(f"{value!r} is not an email address ({e})") from e
    if checked.smtputf8:
        raise ValueError(f"{value!r}: the part before the @ is not ASCII, which email headers "
                         "cannot carry (it needs SMTPUTF8)")
    return checked.normalized


def _ascii_address(value: str) -> str:
    """An address of ours (From, Reply-To, envelope, mailto): it goes into headers and the
    SMTP envelope as is, so an international domain is written in its ASCII (xn--) form."""
    address = _address(value)
    if not address.isascii():
        ascii_form = validate_email(address, check_deliverability=False).ascii_email
        raise ValueError(f"{value!r}: write the domain in its ASCII form ({ascii_form!r}): "
                         "headers and the SMTP envelope carry it as is")
    return address


def email_address(value: str) -> str:
    """A bare address, normalised; ValueError saying what is wrong with it otherwise."""
    return _address(value)


def _mailboxes(value: str) -> list[str]:
    """The addresses of `Name <addr@host>, ...`, each checked; ValueError for anything the
    header parser reads differently (a group, a stray comma, a missing address)."""
    _one_line(value)
    from email.errors import NonASCIILocalPartDefect
    from email.headerregistry import HeaderRegistry

    try:
        header = HeaderRegistry()("reply-to", value)
    except (ValueError, IndexError) as e:
        raise ValueError(f"{value!r} is not an address like "
                         "'Daily Papers <papers@example.org>'") from e
    groups = header.groups  # type: ignore[attr-defined]
    addresses = [a.addr_spec for a in header.addresses]  # type: ignore[attr-defined]
    # A non-ASCII local part is a defect to the parser; _ascii_address says it better.
    defects = [d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)]
    if defects or any(g.display_name for g in groups) or not addresses or any(
            "@" not in a for a in addresses):
        raise ValueError(f"{value!r} is not an address like "
                         "'Daily Papers <papers@example.org>' (quote a name with a comma: "
                         "'\"Papers, Inc\" <papers@example.org>')")
    for address in addresses:
        _ascii_address(address)
    return addresses


def _mailbox(value: str) -> str:
    """`Name <addr@host>` or a bare address: exactly one (a From with two needs a Sender)."""
    if len(_mailboxes(value)) != 1:
        raise ValueError(f"{value!r} holds several addresses; From takes one")
    return value


def _reply_to(value: str) -> str:
    _mailboxes(value)
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


def _list_id(value: str) -> str:
    if len(value) > 255 or not _LIST_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a list id like 'papers.example.org' (ASCII letters, "
                         "digits and dots, no spaces or angle brackets)")
    return value


def _list_name(value: str) -> str:
    """The name goes unquoted before the id in List-Id (`Name <id>`): an angle bracket in it
    makes receivers read the wrong id."""
    if "<" in value or ">" in value:
        raise ValueError(f"{value!r} has an angle bracket, which breaks the List-Id header "
                         "(receivers would read the list's id from inside the name)")
    return value


def _dns_name(value: str) -> str:
    """A DKIM domain or selector: DNS labels; a ';' or '=' would add tags to the signature."""
    if len(value) > 253 or not _LABELS.fullmatch(value):
        raise ValueError(f"{value!r} is not a DNS name like 'example.org' (ASCII letters, "
                         "digits, '-', '_' and dots)")
    return value


def _mailto(value: str) -> str:
    address = _ascii_address(value)
    if not _MAILTO_LOCAL.fullmatch(address.rpartition("@")[0]):
        raise ValueError(f"{value!r}: '?', '&', '%', '#' or '/' before the @ would change the "
                         "mailto: link; use a plain address")
    return address


def _composed(value: str) -> str:
    """NFC: an accent typed as a separate combining mark (as macOS often sends it) becomes
    the one character it means. mjml-python writes a combining mark inside an attribute as
    a backslash-u escape, so a name typed with one showed mangled in a title or a link."""
    return unicodedata.normalize("NFC", value)


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"{value!r} is not an IANA time zone like 'UTC' or 'Europe/Berlin'") from e
    return value


def _terms(values: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        v = " ".join(v.split())
        if not v:
            raise ValueError("an empty string matches nothing; remove it")
        if v.casefold() not in {o.casefold() for o in out}:
            out.append(v)
    return tuple(out)


def _http_url(value: str) -> str:
    _one_line(value)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in value:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


def _duration(value: object) -> float:
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


def _cron(value: str) -> str:
    from datetime import UTC, datetime

    from digest_mailer.cron import next_fire, parse_cron

    # A date the calendar never has (30 February) parses, and then `serve` idles forever.
    if next_fire(parse_cron(value, "UTC"), datetime(2000, 1, 1, tzinfo=UTC)) is None:
        raise ValueError(f"{value!r} never fires (no such date in any year)")
    return value


DAY = 86400.0


OneLine = Annotated[str, AfterValidator(_one_line)]
Duration = Annotated[float, BeforeValidator(_duration)]
Terms = Annotated[list[str], AfterValidator(_terms)]


class _Section(BaseModel):
    # No inf or nan anywhere: each number below has bounds, and inf would pass a `ge`.
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True,
                              allow_inf_nan=False)


class NewsletterSettings(_Section):
    name: Annotated[str, AfterValidator(_one_line), AfterValidator(_list_name)] = Field(
        "Daily Papers", min_length=1,
        description="shown in the email header, the subject and List-Id")
    from_: Annotated[str, AfterValidator(_mailbox)] = Field(
        alias="from", description="the From header: 'Name <address>'")
    reply_to: Annotated[str, AfterValidator(_reply_to)] | None = Field(
        None, description="an optional Reply-To address")
    max_papers: int = Field(20, ge=1, le=100, description="default cap of papers per email")
    timezone: Annotated[str, AfterValidator(_timezone)] = Field(
        "UTC", description="IANA zone: decides the run date and the Date header")
    subject: OneLine | None = Field(
        None, description="a Jinja template for the subject; variables: newsletter, count, "
                          "topics, more_topics, authors, date, name")
    list_id: Annotated[str, AfterValidator(_list_id)] | None = Field(
        None, description="the List-Id header's id; default: the name's slug at the From domain")
    templates_dir: str | None = Field(
        None, description="a folder whose templates override the shipped ones, file by file")


class SourceSettings(_Section):
    kind: SourceKindName = Field("huggingface", description=SOURCE_KIND_HELP)
    location: str = Field(
        "https://huggingface.co/api/daily_papers",
        description="a URL or a local file path; '{date}' in a URL is replaced by each day",
    )
    lookback_days: int = Field(2, ge=1, le=31,
                               description="days to pull, ending with the run date")
    timeout: float = Field(30.0, gt=0, le=600, description="seconds per HTTP request")
    retries: int = Field(3, ge=0, le=10, description="retries on 429, 5xx and network errors")
    max_bytes: int = Field(20_000_000, ge=1_000, le=1_000_000_000,
                           description="largest response accepted")

    @field_validator("location")
    @classmethod
    def _location(cls, v: str) -> str:
        _one_line(v)
        if not v:
            raise ValueError("'' is neither a URL nor a file path")
        if "://" in v:
            _http_url(v.replace("{date}", "2000-01-01"))
        return v


class ScheduleSettings(_Section):
    cron: Annotated[str, AfterValidator(_cron)] = Field(
        "0 7 * * *", description="when `serve` runs: 5 fields (minute hour day month weekday), "
                                 "or 6 with seconds first")
    timezone: Annotated[str, AfterValidator(_timezone)] | None = Field(
        None, description="the cron's IANA zone; default: newsletter.timezone")
    misfire_grace: Duration = Field(
        3600.0, ge=0, le=7 * DAY,
        description="a run missed by less than this (asleep, restarted) still runs, once")
    source_attempts: int = Field(
        3, ge=1, le=20, description="tries per scheduled run when the source is down or empty")
    source_retry_delay: Duration = Field(
        300.0, ge=0, le=DAY,
        description="wait before the second try; doubles for each further one")

    @model_validator(mode="after")
    def _bounded_wait(self) -> ScheduleSettings:
        total = self.source_retry_delay * (2 ** (self.source_attempts - 1) - 1)
        if total > DAY:
            raise ValueError(f"schedule.source_attempts = {self.source_attempts} with "
                             f"source_retry_delay = {self.source_retry_delay:g}s waits "
                             f"{total / 3600:.0f}h in all (doubling); keep it under a day")
        return self


class StateSettings(_Section):
    path: str = Field("digest-state.sqlite3",
                      description="the ledger (SQLite); relative to the config file")


class SmtpSettings(_Section):
    host: OneLine = Field("localhost", min_length=1, description="the SMTP server")
    port: int | None = Field(None, ge=1, le=65535,
                             description="default: 587 for starttls, 465 for ssl, 25 for none")
    security: Literal["starttls", "ssl", "none"] = Field(
        "starttls", description="starttls | ssl | none; certificates are always verified")
    username: OneLine = Field("", description="login name; empty: no login")
    password_env: OneLine = Field("DIGEST_SMTP_PASSWORD",
                                  description="the environment variable holding the password")
    timeout: float = Field(30.0, gt=0, le=600, description="seconds per SMTP command")
    ca_file: str | None = Field(None, description="extra CA certificates (PEM) to trust")
    envelope_from: Annotated[str, AfterValidator(_ascii_address)] | None = Field(
        None, description="the envelope sender (bounces); default: the From address")
    password_file: str | None = Field(
        None, description="a file holding the password, readable by its owner only; "
                          "instead of password_env")
    rate_limit: float = Field(0.0, ge=0, le=100_000, description="messages per second at most, per "
                                                     "connection; 0: no limit")
    connections: int = Field(1, ge=0, le=16, description="sender processes, one connection "
                                                        "each; 0: send from the run's process")

    @property
    def effective_port(self) -> int:
        return self.port or {"starttls": 587, "ssl": 465, "none": 25}[self.security]


class DkimSettings(_Section):
    domain: Annotated[str, AfterValidator(_dns_name)] = Field(
        min_length=1, description="the signing domain (d=)")
    selector: Annotated[str, AfterValidator(_dns_name)] = Field(
        min_length=1,
        description="the selector (s=): its public key is at <selector>._domainkey.<domain>")
    key_file: str = Field(description="the private key (PEM), readable by its owner only")


class DeliverySettings(_Section):
    backend: Literal["smtp", "file"] = Field("smtp", description="smtp | file")
    out_dir: str = Field("preview", description="where the file backend writes; relative to "
                                                "the config file")
    retry_attempts: int = Field(3, ge=0, le=10, description="retries of a deferred message "
                                                           "(4xx, dropped connection) in a run")
    retry_delay: Duration = Field(30.0, ge=0, le=DAY,
                                  description="before the first retry; doubles after")
    max_hard_failures: int = Field(3, ge=1, le=1000, description="permanent refusals in a "
                                                                 "row before an address is "
                                                                 "suppressed")
    smtp: SmtpSettings = Field(default_factory=SmtpSettings, description="the SMTP server")
    dkim: DkimSettings | None = Field(None, description="DKIM signing; off when absent")

    @model_validator(mode="after")
    def _bounded_wait(self) -> DeliverySettings:
        total = self.retry_delay * (2 ** self.retry_attempts - 1)
        if total > DAY:
            raise ValueError(f"delivery.retry_attempts = {self.retry_attempts} with "
                             f"retry_delay = {self.retry_delay:g}s waits {total / 3600:.0f}h "
                             "in all (doubling); keep it under a day")
        return self


class UnsubscribeSettings(_Section):
    url: str = Field(description="the one-click unsubscribe URL; must contain {token}")
    mailto: Annotated[str, AfterValidator(_mailto)] | None = Field(
        None, description="an address that takes unsubscribe requests by email")
    secret_env: OneLine = Field("DIGEST_UNSUBSCRIBE_SECRET",
                                description="the environment variable holding the HMAC secret")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if "{token}" not in v:
            raise ValueError(f"{v!r} has no {{token}} placeholder")
        filled = v.replace("{token}", "t")
        _http_url(filled)
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


class SubscriberSettings(_Section):
    email: Annotated[str, AfterValidator(_address)] = Field(description="the address")
    name: Annotated[str, AfterValidator(_one_line), AfterValidator(_composed)] = Field(
        "", description="used in the greeting and the To header")
    topics: Terms = Field(default_factory=list,
                          description="words or phrases; a paper matching any of them is sent")
    exclude: Terms = Field(default_factory=list, description="a paper matching any is never sent")
    authors: Terms = Field(default_factory=list, description="a paper by any of them is sent")
    min_upvotes: int = Field(0, ge=0, le=1_000_000_000,
                             description="papers with fewer upvotes are left out")
    max_papers: int | None = Field(None, ge=1, le=100,
                                   description="cap per email; default: newsletter.max_papers")
    frequency: Literal["daily", "weekly"] = Field(
        "daily", description="daily: every run; weekly: one email a week with the week's best")
    weekday: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = Field(
        "mon", description="the day a weekly subscriber's email goes out")
    pause: bool = Field(False, description="true: kept in the config, sent nothing")


class Config(_Section):
    newsletter: NewsletterSettings
    source: SourceSettings = Field(default_factory=SourceSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    unsubscribe: UnsubscribeSettings
    subscribers: list[SubscriberSettings] = Field(default_factory=list)
    # Where the file was read from: relative paths in it are relative to this folder.
    base_dir: Path = Field(default=Path("."), exclude=True)
    path: str = Field(default="", exclude=True)
    # The subscribers, validated one by one and kept as light frozen values: a config with
    # 100,000 of them must not hold 100,000 pydantic models. `subscribers` above is the
    # schema (and stays empty); read them with subscribers_view().
    _members: tuple[Subscriber, ...] = PrivateAttr(default=())

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def state_path(self) -> Path:
        return self.resolve(self.state.path)

    @property
    def out_dir(self) -> Path:
        return self.resolve(self.delivery.out_dir)

    @property
    def templates_dir(self) -> Path | None:
        d = self.newsletter.templates_dir
        return self.resolve(d) if d else None

    @property
    def source_location(self) -> str:
        loc = self.source.location
        return loc if "://" in loc else str(self.resolve(loc))

    @property
    def schedule_timezone(self) -> str:
        return self.schedule.timezone or self.newsletter.timezone

    @property
    def from_address(self) -> str:
        return parseaddr(self.newsletter.from_)[1]

    @property
    def from_domain(self) -> str:
        return Address(addr_spec=self.from_address).domain

    def subscribers_view(self) -> tuple[Subscriber, ...]:
        return self._members


def _member(s: SubscriberSettings, cap: int) -> Subscriber:
    return Subscriber(email=s.email, name=s.name, topics=tuple(s.topics),
                      exclude=tuple(s.exclude), authors=tuple(s.authors),
                      min_upvotes=s.min_upvotes, max_papers=s.max_papers or cap,
                      frequency=s.frequency, weekday=WEEKDAYS.index(s.weekday), paused=s.pause)


def load_config(path: Path) -> Config:
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"{name}: no such file",
                          hint="pass --config PATH, set $DIGEST_MAILER_CONFIG, or copy "
                               "config.example.toml to ./digest-mailer.toml") from e
    except OSError as e:
        raise ConfigError(f"{name}: cannot read: {e.strerror}") from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name}: not UTF-8 text (byte {e.start})") from e
    except (ValueError, RecursionError) as e:  # TOMLDecodeError, and the int-digit limit
        raise ConfigError(f"{name}: invalid TOML: {e}",
                          hint="see config.example.toml for the syntax") from e
    return parse_config(data, name=name, base_dir=path.resolve().parent, consume=True)


def parse_config(data: dict[str, Any], *, name: str, base_dir: Path,
                 consume: bool = False) -> Config:
    """`consume=True` drops each subscriber's table from `data` once it is validated, so a
    large list is never held twice."""
    rest = {k: v for k, v in data.items() if k != "subscribers"}
    raw = data.get("subscribers", [])
    problems: list[str] = []
    config = None
    try:
        config = Config.model_validate(rest)
    except ValidationError as e:
        problems += [p for err in e.errors() for p in describe_error(err, name, Config)]
    members: list[Subscriber] = []
    if not isinstance(raw, list):
        problems.append(f"{name}: subscribers: expected [[subscribers]] tables, got "
                        f"{type(raw).__name__}")
        raw = []
    cap = config.newsletter.max_papers if config else 20
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        if consume:
            raw[i] = None
        try:
            member = _member(SubscriberSettings.model_validate(item), cap)
        except ValidationError as e:
            problems += [p for err in e.errors()
                         for p in describe_error({**err, "loc": ("subscribers", i, *err["loc"])},
                                                 name, Config)]
            continue
        key = member.email.lower()
        if key in seen:
            problems.append(f"{name}: subscribers[{i}].email: {member.email!r} duplicates "
                            f"subscribers[{seen[key]}].email (addresses are case-insensitive)")
        seen.setdefault(key, i)
        members.append(member)
    if problems or config is None:
        raise ConfigError(problems[0], hint=problems_hint(len(problems)), problems=tuple(problems))
    config = config.model_copy(update={"base_dir": base_dir, "path": name})
    config._members = tuple(members)
    return config


def settings_table() -> dict[str, str]:
    """Every documented key path -> its help."""
    return _settings_table(Config)
