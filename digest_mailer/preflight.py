"""Is this config runnable? One answer, for `check`, for `run` (before anything is fetched or
sent) and for `serve` (at start and at each reload): every template compiled and one email
rendered in memory with sample data, the DKIM key loaded, secret files checked, paths
resolved. Loading the config has already bounded every number and checked the cron.

Imports stay light (no HTTP client, no HTML parser, no database): `check` is a quick command.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from digest_mailer import credentials
from digest_mailer.config import Config
from digest_mailer.errors import ConfigError, DigestMailerError
from digest_mailer.models import (
    Digest,
    Match,
    MatchReason,
    Paper,
    ReasonKind,
    RenderedDigest,
    Subscriber,
)

MIN_SECRET_BYTES = 16


@dataclass(frozen=True, slots=True)
class Finding:
    message: str
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class Findings:
    errors: tuple[Finding, ...]
    warnings: tuple[Finding, ...]
    sample: RenderedDigest | None = None  # the email rendered from sample data
    per_subscriber: tuple[str, ...] = ()  # templates rendered for each subscriber alone


def ensure_runnable(config: Config, env: Mapping[str, str], *, now: datetime,
                    source_given: bool = False, dry_run: bool = False) -> None:
    """Raise ConfigError listing every reason this config cannot run; return otherwise.
    `source_given`: the run reads another source (--source), so [source] location is not
    needed."""
    found = inspect(config, env, now=now, source_given=source_given, dry_run=dry_run)
    if found.errors:
        raise ConfigError(found.errors[0].message, hint=found.errors[0].hint,
                          problems=tuple(e.message for e in found.errors),
                          hints=tuple(e.hint for e in found.errors if e.hint))


def load_runnable(path: Path, env: Mapping[str, str], *, now: datetime) -> Config:
    """The config at `path`, valid and runnable, or ConfigError (for `serve`'s each reload)."""
    from digest_mailer.config import load_config

    config = load_config(path)
    ensure_runnable(config, env, now=now)
    return config


def inspect(config: Config, env: Mapping[str, str], *, now: datetime,
            source_given: bool = False, dry_run: bool = False) -> Findings:
    errors: list[Finding] = []
    warnings: list[Finding] = []
    name = config.path or "config"

    def attempt(step: Callable[[], None]) -> None:
        try:
            step()
        except DigestMailerError as e:
            # A config key is named with its file; a template file names itself.
            keyed = e.message.startswith(("newsletter.", "delivery."))
            errors.append(Finding(f"{name}: {e.message}" if keyed else e.message, e.hint))

    for problem in _paths(config, source_given=source_given, dry_run=dry_run):
        errors.append(Finding(f"{name}: {problem.message}", problem.hint))
    attempt(lambda: _login(config))
    smtp = config.delivery.smtp
    if smtp.password_file:
        if not smtp.username:
            warnings.append(Finding("delivery.smtp.password_file is set but username is "
                                    "empty: no login, the file is not read"))
        else:
            try:
                credentials.password(env, smtp.password_env, config.resolve(smtp.password_file))
            except DigestMailerError as e:
                errors.append(Finding(e.message, e.hint))
    elif smtp.username and config.delivery.backend == "smtp" and not env.get(smtp.password_env):
        warnings.append(Finding(f"${smtp.password_env} is not set (the SMTP password for "
                                f"{smtp.username!r}); real runs need it, or set "
                                "delivery.smtp.password_file"))
    secret = env.get(config.unsubscribe.secret_env, "")
    if not secret:
        warnings.append(Finding(f"${config.unsubscribe.secret_env} is not set (unsubscribe "
                                "links); real runs need it"))
    elif len(secret.encode()) < MIN_SECRET_BYTES:
        errors.append(Finding(f"${config.unsubscribe.secret_env} is too short "
                              f"({len(secret)} characters)",
                              hint=f"use at least {MIN_SECRET_BYTES} random characters"))
    sample: list[tuple[RenderedDigest, tuple[str, ...]]] = []
    templates_dir = config.templates_dir
    if templates_dir is None or templates_dir.is_dir():
        attempt(lambda: sample.append(_render_sample(config, now)))
    return Findings(tuple(errors), tuple(warnings), sample[0][0] if sample else None,
                    sample[0][1] if sample else ())


def _paths(config: Config, *, source_given: bool, dry_run: bool) -> list[Finding]:
    out: list[Finding] = []
    templates_dir = config.templates_dir
    if templates_dir is not None and not templates_dir.is_dir():
        out.append(Finding(f"newsletter.templates_dir: {templates_dir} "
                           f"{'is not a folder' if templates_dir.exists() else 'does not exist'}",
                           hint="create it, or remove newsletter.templates_dir to use the "
                                "shipped templates"))
    if not source_given and "://" not in config.source.location:
        location = Path(config.source_location)
        if not location.exists():
            out.append(Finding(f"source.location: {location}: no such file",
                               hint="fix [source] location (a file path or an http(s) URL)"))
        elif not location.is_file():
            out.append(Finding(f"source.location: {location} is not a file",
                               hint="point [source] location at a feed file"))
    state = config.state_path
    if state.exists() and not state.is_file():
        out.append(Finding(f"state.path: {state} is a folder, not the ledger file",
                           hint=f"point [state] path at a file, such as "
                                f"{state / 'digest-state.sqlite3'}"))
    elif state.exists() and not dry_run and not (
            os.access(state, os.W_OK) and os.access(state.parent, os.W_OK | os.X_OK)):
        # SQLite writes a journal and the run its lock beside the ledger: both need the folder.
        what = state if not os.access(state, os.W_OK) else state.parent
        out.append(Finding(f"state.path: {what} is not writable (a read-only file system or "
                           f"permissions), so runs cannot record what they send in {state}",
                           hint="make the ledger and its folder writable by the user that runs "
                                "digest-mailer"))
    elif not state.exists():
        parent = _nearest(state.parent)
        if not parent.is_dir():
            out.append(Finding(f"state.path: {parent} is not a folder, so {state} cannot be "
                               "created", hint="fix [state] path"))
        elif not dry_run and not os.access(parent, os.W_OK | os.X_OK):
            out.append(Finding(f"state.path: {parent} is not writable, so the ledger {state} "
                               "cannot be created", hint="fix [state] path or the folder's "
                                                         "permissions"))
    out_dir = config.out_dir
    if out_dir.exists() and not out_dir.is_dir():
        out.append(Finding(f"delivery.out_dir: {out_dir} is not a folder",
                           hint="fix delivery.out_dir"))
    smtp = config.delivery.smtp
    if smtp.ca_file:
        ca_file = config.resolve(smtp.ca_file)
        if not ca_file.is_file():
            out.append(Finding(f"delivery.smtp.ca_file: {ca_file}: " + (
                "not a regular file" if ca_file.exists() else "no such file"),
                hint="fix delivery.smtp.ca_file (PEM certificates)"))
        else:
            import ssl

            try:
                ssl.create_default_context().load_verify_locations(cafile=str(ca_file))
            except ssl.SSLError as e:
                out.append(Finding(f"delivery.smtp.ca_file: {ca_file}: not PEM certificates "
                                   f"({e})", hint="fix delivery.smtp.ca_file"))
            except OSError as e:  # after SSLError, which is one
                out.append(Finding(f"delivery.smtp.ca_file: {ca_file}: cannot read: "
                                   f"{e.strerror or e}", hint="fix delivery.smtp.ca_file or "
                                                              "its permissions"))
    return out


def _nearest(path: Path) -> Path:
    """The path itself or its nearest ancestor that exists."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _login(config: Config) -> None:
    smtp = config.delivery.smtp
    if smtp.username and smtp.security == "none" and config.delivery.backend == "smtp":
        raise DigestMailerError(
            f"{config.path}: delivery.smtp.username is {smtp.username!r} with security = "
            "'none': a run refuses to send a password without TLS",
            hint="use security = 'starttls' (port 587) or 'ssl' (port 465), or remove "
                 "username")


MIN_DKIM_BITS = 1024  # RFC 8301: receivers reject signatures from shorter RSA keys


def _dkim_key(key: bytes, path: Path) -> None:
    """An RSA private key in PEM of at least 1024 bits, the kind the signer takes."""
    from dkim.crypto import UnparsableKeyError, parse_pem_private_key

    where = f"{path} (delivery.dkim.key_file)"
    try:
        bits = int(parse_pem_private_key(key)["modulus"]).bit_length()
    except (UnparsableKeyError, ValueError, KeyError, IndexError, TypeError) as e:
        detail = " ".join(str(e).split())[:160]
        raise DigestMailerError(f"{where}: not an RSA private key in PEM (PKCS#1 or PKCS#8): "
                                f"{detail}", hint="generate one with `openssl genrsa -out "
                                                  "dkim.pem 2048`") from e
    if bits < MIN_DKIM_BITS:
        raise DigestMailerError(f"{where}: the RSA key has {bits} bits; receivers reject "
                                f"DKIM keys under {MIN_DKIM_BITS}",
                                hint="generate one with `openssl genrsa -out dkim.pem 2048`")


SAMPLE_PAPERS = (
    Paper(id="2501.00001", title="A Sample Paper on Diffusion & <Flows> \"quoted\"",
          abstract="An abstract long enough to be cut. " * 20, authors=("Ada Lovelace",
                                                                       "Alan Turing",
                                                                       "Grace Hopper",
                                                                       "Edsger Dijkstra"),
          upvotes=42, organization="Example Lab", github_url="https://github.com/example/x",
          project_url="https://example.org/x", ai_summary="A one-line summary.",
          ai_keywords=("diffusion",)),
    Paper(id="2501.00002", title="Zoë's 李 second paper 🎉", abstract="Short.", upvotes=1),
)


def sample_digest(config: Config, run_date: date) -> Digest:
    """A digest with the shapes real ones have: topics and authors, an over-cap note, a name
    with characters that need escaping."""
    sub = Subscriber(email="ada.sample@example.org", name="Ada O'Sample & Co",
                     topics=("diffusion",), authors=("Grace Hopper",))
    matches = (Match(SAMPLE_PAPERS[0], (MatchReason(ReasonKind.TOPIC, "diffusion",
                                                    ("title",)),
                                        MatchReason(ReasonKind.AUTHOR, "Grace Hopper"))),
               Match(SAMPLE_PAPERS[1], (MatchReason(ReasonKind.TOPIC, "diffusion",
                                                    ("keywords",)),)))
    url = config.unsubscribe.url.replace("{token}", "sample-token")
    return Digest(config.newsletter.name, run_date, sub, matches, 1, url)


def _render_sample(config: Config, now: datetime) -> tuple[RenderedDigest, tuple[str, ...]]:
    """Every template compiled and one email built in memory, as a run builds it (the fast
    path), and signed when DKIM is on."""
    from digest_mailer.message import DkimSigner, MessageTemplate, Shared, list_id
    from digest_mailer.render import Renderer

    renderer = Renderer(config.templates_dir, config.newsletter.subject)
    run_date = now.date()
    digest = sample_digest(config, run_date)
    nl = config.newsletter
    signer = None
    if config.delivery.dkim is not None:
        dk = config.delivery.dkim
        key_path = config.resolve(dk.key_file)
        key = credentials.read_private_file(key_path, "DKIM key", "delivery.dkim.key_file")
        _dkim_key(key, key_path)
        signer = DkimSigner(dk.domain, dk.selector, key)
    shared = Shared(sender=nl.from_, envelope_from=config.delivery.smtp.envelope_from
                    or config.from_address, reply_to=nl.reply_to,
                    list_id=list_id(nl.name, config.from_domain, nl.list_id),
                    mailto=config.unsubscribe.mailto,
                    when=now, run_date=run_date,
                    signer=signer)
    template = MessageTemplate(renderer.render_template(digest), shared)
    sub = digest.subscriber
    message = template.personalize(email=sub.email, name=sub.name,
                                   unsubscribe_url=digest.unsubscribe_url, token="sample-token",
                                   message_id=f"<sample@{config.from_domain}>", want_html=True)
    if not message.subject:
        # Empty for a subscriber without a name is their template's choice; empty for the
        # sample, which has every value, is a subject that never says anything.
        origin = ("newsletter.subject" if config.newsletter.subject else
                  str(config.templates_dir / "subject.txt.j2") if config.templates_dir
                  else "subject.txt.j2")
        raise DigestMailerError(f"{origin}: the subject renders empty",
                                hint="fix it: a subject with no text is shown as "
                                     "'(no subject)' and looks like spam")
    if signer is not None and not message.data.startswith(b"DKIM-Signature:"):
        raise DigestMailerError("delivery.dkim: the sample email was not signed",
                                hint="check delivery.dkim.key_file")
    return (RenderedDigest(subject=message.subject, html=message.html, text=""),
            renderer.personal_origins())
