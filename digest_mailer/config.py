"""TOML -> a validated, frozen Config. Every setting's default and help live here, once."""

from __future__ import annotations

import os
import stat
import tomllib
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from digest_mailer.config_errors import describe_error, problems_hint
from digest_mailer.config_errors import settings_table as _settings_table
from digest_mailer.config_values import (
    DAY,
    Duration,
    OneLine,
    Terms,
    ascii_address,
    bare_address,
    composed,
    cron_expression,
    dns_name,
    email_address,
    http_url,
    list_ident_value,
    list_name,
    mailbox,
    mailto_address,
    reply_to_value,
    single_line,
    terms,
    time_zone,
    unsubscribe_url,
    web_base_url,
)
from digest_mailer.constants import SOURCE_KIND_HELP, SOURCE_KINDS, WEEKDAYS, SourceKindName
from digest_mailer.errors import ConfigError
from digest_mailer.models import Subscriber

if TYPE_CHECKING:
    from digest_mailer.store_target import StoreTarget

__all__ = ["SOURCE_KINDS", "WEEKDAYS", "Config", "email_address", "load_config",
           "parse_config", "settings_table"]
MAX_ALIAS_CHARS = 100


def _alias_name(value: str) -> str:
    value = " ".join(value.split())
    if not any(c.isalnum() for c in value):
        raise ValueError(f"{value!r} has no letters or digits, so it matches nothing")
    if len(value) > MAX_ALIAS_CHARS:
        raise ValueError(f"longer than {MAX_ALIAS_CHARS} characters")
    return value


def _alias_names(values: list[str]) -> tuple[str, ...]:
    if not values:
        raise ValueError("an empty list adds nothing; give the other names, or remove the key")
    return terms([_alias_name(v) for v in values])


AliasName = Annotated[str, AfterValidator(_alias_name)]
AliasNames = Annotated[list[str], Field(max_length=50), AfterValidator(_alias_names)]


class _Section(BaseModel):
    # No inf or nan anywhere: each number below has bounds, and inf would pass a `ge`.
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True,
                              allow_inf_nan=False)


class NewsletterSettings(_Section):
    name: Annotated[str, AfterValidator(single_line), AfterValidator(list_name)] = Field(
        "Daily Papers", min_length=1,
        description="shown in the email header, the subject and List-Id")
    from_: Annotated[str, AfterValidator(mailbox)] = Field(
        alias="from", description="the From header: 'Name <address>'")
    reply_to: Annotated[str, AfterValidator(reply_to_value)] | None = Field(
        None, description="an optional Reply-To address")
    max_papers: int = Field(20, ge=1, le=100, description="default cap of papers per email")
    timezone: Annotated[str, AfterValidator(time_zone)] = Field(
        "UTC", description="IANA zone: decides the run date and the Date header")
    subject: OneLine | None = Field(
        None, description="a Jinja template for the subject; variables: newsletter, count, "
                          "topics, more_topics, authors, date, name")
    list_id: Annotated[str, AfterValidator(list_ident_value)] | None = Field(
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
        single_line(v)
        if not v:
            raise ValueError("'' is neither a URL nor a file path")
        if "://" in v:
            http_url(v.replace("{date}", "2000-01-01"))
        return v


class ScheduleSettings(_Section):
    cron: Annotated[str, AfterValidator(cron_expression)] = Field(
        "0 7 * * *", description="when `serve` runs: 5 fields (minute hour day month weekday), "
                                 "or 6 with seconds first")
    timezone: Annotated[str, AfterValidator(time_zone)] | None = Field(
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
    url: OneLine | None = Field(
        None, description="a PostgreSQL ledger instead: postgresql://user@host:5432/dbname "
                          "(no password in it)")
    password_env: OneLine = Field("DIGEST_STATE_PASSWORD",
                                  description="the environment variable holding the "
                                              "PostgreSQL password")
    password_file: str | None = Field(
        None, description="a file holding the PostgreSQL password; instead of password_env")
    keep_history: Duration = Field(
        365 * DAY, ge=DAY, le=100 * 365 * DAY,
        description="how long sent emails (when, to whom, which papers) and failures are "
                    "kept for history and explain (runs are kept for ever)")
    offer_margin: Duration = Field(
        14 * DAY, ge=DAY, le=365 * DAY,
        description="how long past the feed window (a week at least) sent emails are kept "
                    "at the least, and kept while a paper they offered was in a feed within "
                    "that window: a paper is never offered to a subscriber again while its "
                    "email is kept")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from digest_mailer.errors import StoreError
        from digest_mailer.store_target import StoreTarget

        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"{v!r} is not a PostgreSQL URL (write "
                             "postgresql://user@host:5432/dbname; a SQLite ledger is "
                             "[state] path)")
        try:
            StoreTarget.parse(v)
        except StoreError as e:
            raise ValueError(f"{e.message} ({e.hint})") from None
        return v


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
    envelope_from: Annotated[str, AfterValidator(ascii_address)] | None = Field(
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
    domain: Annotated[str, AfterValidator(dns_name)] = Field(
        min_length=1, description="the signing domain (d=)")
    selector: Annotated[str, AfterValidator(dns_name)] = Field(
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
    lease: Duration = Field(60.0, ge=2, le=DAY,
                            description="how long a sender's claim on messages holds unless "
                                        "renewed (every third of it, while the sender lives): "
                                        "the messages of a dead sender or host go back to the "
                                        "queue after it")
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
    mailto: Annotated[str, AfterValidator(mailto_address)] | None = Field(
        None, description="an address that takes unsubscribe requests by email")
    secret_env: OneLine = Field("DIGEST_UNSUBSCRIBE_SECRET",
                                description="the environment variable holding the HMAC secret")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return unsubscribe_url(v)


class WebSettings(_Section):
    signup: bool = Field(True, description="false: no sign-up page (preferences and "
                                           "unsubscribe links keep working)")
    base_url: Annotated[str, AfterValidator(web_base_url)] | None = Field(
        None, description="where `digest-mailer web` is reached, for the links in "
                          "confirmation emails; default: unsubscribe.url up to /unsubscribe/")
    privacy_file: str | None = Field(
        None, description="a text file shown at /privacy (paragraphs split by blank lines)")


class SubscriberSettings(_Section):
    email: Annotated[str, AfterValidator(bare_address)] = Field(description="the address")
    name: Annotated[str, AfterValidator(single_line), AfterValidator(composed)] = Field(
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
    web: WebSettings = Field(default_factory=WebSettings)
    subscribers: list[SubscriberSettings] = Field(default_factory=list)
    aliases: dict[AliasName, AliasNames] = Field(
        default_factory=dict, max_length=1000,
        description='other names for a topic, beside the built-in ones (LLM, RAG, MoE...): '
                    '"world model" = ["world models", "WM"]; a topic that is any of them '
                    'matches papers that use another')
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
    def state_target(self) -> StoreTarget:
        """Where the ledger lives: `[state] url` (PostgreSQL) or else `[state] path`."""
        from digest_mailer.store_target import StoreTarget

        st = self.state
        if st.url:
            return StoreTarget.parse(st.url, password_env=st.password_env,
                                     password_file=str(self.resolve(st.password_file))
                                     if st.password_file else None)
        return StoreTarget.sqlite(self.state_path)

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


def _member(s: SubscriberSettings, cap: int,
            aliases: tuple[tuple[str, ...], ...] = ()) -> Subscriber:
    return Subscriber(email=s.email, name=s.name, topics=tuple(s.topics),
                      exclude=tuple(s.exclude), authors=tuple(s.authors),
                      min_upvotes=s.min_upvotes, max_papers=s.max_papers or cap,
                      frequency=s.frequency, weekday=WEEKDAYS.index(s.weekday), paused=s.pause,
                      aliases=aliases)


MAX_CONFIG_BYTES = 200_000_000  # about a million subscribers


def read_config_bytes(path: Path) -> bytes:
    """The file's bytes; ConfigError unless it is a regular file of a sane size: a FIFO (or
    /dev/zero) given as --config blocked check, run and the editor for ever."""
    # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file ({stat.filemode(info.st_mode)})",
                              hint="pass --config the path of the TOML file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {info.st_size:,} bytes, over the {MAX_CONFIG_BYTES:,} "
                              "a config may have", hint="is it the right file?")
        return f.read(MAX_CONFIG_BYTES + 1)


def load_config(path: Path) -> Config:
    name = str(path)
    try:
        raw = read_config_bytes(path)
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
    aliases = tuple((k, *v) for k, v in config.aliases.items()) if config else ()
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        if consume:
            raw[i] = None
        try:
            member = _member(SubscriberSettings.model_validate(item), cap, aliases)
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
