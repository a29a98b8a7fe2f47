"""What `check` says: the config is valid and runnable, what it sets up, and (with --smtp)
whether the SMTP server takes the connection and the login. Sends no mail."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from digest_mailer import credentials
from digest_mailer.config import Config
from digest_mailer.errors import DigestMailerError
from digest_mailer.preflight import Findings

if TYPE_CHECKING:
    pass

# The session's deadline, in per-command timeouts: connect, banner, EHLO, STARTTLS, EHLO,
# AUTH (two steps for LOGIN), QUIT.
SESSION_COMMANDS = 8
MAX_SESSION = 120.0  # seconds, unless one command may take longer (delivery.smtp.timeout)


def _ends_with_token(url: str) -> bool:
    return url.endswith("/{token}")


def describe(config: Config, found: Findings, *, now: datetime) -> list[str]:
    """The config is valid; what it sets up; the warnings."""
    from digest_mailer.cron import next_fire, parse_cron

    subs = config.subscribers_view()
    everything = sum(1 for s in subs if not s.topics and not s.authors)
    src = config.source
    smtp = config.delivery.smtp
    if config.delivery.backend == "smtp":
        login = f", login as {smtp.username!r}" if smtp.username else ", no login"
        delivery = f"smtp {smtp.host}:{smtp.effective_port} ({smtp.security}{login})"
    else:
        delivery = f"file, under {config.out_dir}"
    state = config.state_path
    tz = config.schedule_timezone
    upcoming = next_fire(parse_cron(config.schedule.cron, tz), now)
    templates = (f"{config.templates_dir} over the shipped ones" if config.templates_dir
                 else "shipped")
    lines = [
        f"{config.path}: OK",
        f"newsletter: {config.newsletter.name!r} from {config.newsletter.from_}",
        f"subscribers: {len(subs)} ({len(subs) - everything} with topic or author filters, "
        f"{everything} taking every paper)",
        f"source: {src.kind} at {config.source_location} ({src.lookback_days} day(s) per run)",
        f"delivery: {delivery}" + (f", DKIM {config.delivery.dkim.selector}._domainkey."
                                   f"{config.delivery.dkim.domain}"
                                   if config.delivery.dkim else ""),
        (f"ledger: {config.state.url} (PostgreSQL)" if config.state.url else
         f"ledger: {state}" + ("" if state.exists() else " (created by the first run)")),
        f"schedule: {config.schedule.cron!r} in {tz}, next run "
        f"{upcoming.isoformat() if upcoming else 'never'}",
    ]
    if found.sample is not None:
        lines.append(f"templates: {templates}; a sample email renders, subject "
                     f"{found.sample.subject!r}")
    if found.per_subscriber:
        lines.append(f"templates rendered for each subscriber alone (slower: they change "
                     f"name, email or unsubscribe_url): {', '.join(found.per_subscriber)}")
    lines += [f"warning: {w.message}" for w in found.warnings]
    if not subs:  # the store's subscribers are counted by `status`, which reads the ledger
        lines.append("warning: no [[subscribers]] in the config: runs mail only the store's "
                     "self-service subscribers (`digest-mailer status` counts them)")
    if not _ends_with_token(config.unsubscribe.url):
        lines.append("warning: unsubscribe.url does not end with {token}: the digests' "
                     "'Change your topics' link (that URL + /topics) will not reach "
                     "`digest-mailer web`")
    from digest_mailer.advice import topic_advice  # the matcher: only check needs it here

    return lines + topic_advice(config)


def probe_smtp(config: Config, env: Mapping[str, str]) -> list[str]:
    """Connect, STARTTLS or TLS, log in, QUIT, as a run would; say what happened at each
    step. Raises DigestMailerError at the step that fails."""
    import contextlib
    import smtplib  # only --smtp needs these
    import socket
    import ssl
    import threading

    from digest_mailer.delivery.smtp import tls_context, unverified

    smtp = config.delivery.smtp
    where = f"{smtp.host}:{smtp.effective_port}"
    file = config.resolve(smtp.password_file) if smtp.password_file else None
    password = credentials.password(env, smtp.password_env, file) if smtp.username else ""
    if smtp.username and not password:
        raise DigestMailerError(f"${smtp.password_env} is not set: cannot log in as "
                                f"{smtp.username!r}",
                                hint=f"export {smtp.password_env}=... or set "
                                     "delivery.smtp.password_file")
    secret_source = ("delivery.smtp.password_file" if file else f"${smtp.password_env}")
    ctx = tls_context(config.resolve(smtp.ca_file) if smtp.ca_file else None)
    lines: list[str] = []
    # smtplib's timeout bounds each read, not the session: a server that sends a byte now and
    # then holds it for ever. A watchdog closes the socket at the session's deadline.
    budget = min(smtp.timeout * SESSION_COMMANDS, max(smtp.timeout, MAX_SESSION))
    conn: smtplib.SMTP = (smtplib.SMTP_SSL(timeout=smtp.timeout, context=ctx)
                          if smtp.security == "ssl" else smtplib.SMTP(timeout=smtp.timeout))
    # Made without a host so the watchdog can reach the socket while the banner is awaited;
    # the certificate is checked against _host, which only the constructor sets.
    conn._host = smtp.host  # type: ignore[attr-defined]
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(budget, expire)
    watchdog.daemon = True
    watchdog.start()
    step = "connect"
    try:
        code, banner = conn.connect(smtp.host, smtp.effective_port)
        if code != 220:  # a partial line when the watchdog cut it, or a refusal
            raise smtplib.SMTPConnectError(code, banner)
        step = "EHLO"
        code, _ = conn.ehlo()
        lines.append(f"smtp: connected to {where}" + (" over TLS" if smtp.security == "ssl"
                                                       else "") + f", EHLO {code}")
        if smtp.security == "starttls":
            if not conn.has_extn("starttls"):
                raise DigestMailerError(f"SMTP {where}: the server does not offer STARTTLS",
                                        hint="use security = 'ssl' (port 465) if it speaks "
                                             "TLS from the start")
            step = "STARTTLS"
            conn.starttls(context=ctx)
            conn.ehlo()
        sock = conn.sock
        if isinstance(sock, ssl.SSLSocket):
            lines.append(f"smtp: TLS {sock.version()}, certificate verified for {smtp.host}")
        if smtp.username:
            step = "login"
            if not conn.has_extn("auth"):
                raise DigestMailerError(
                    f"SMTP {where}: the server offers no login (no AUTH in its EHLO reply)",
                    hint="remove delivery.smtp.username if it needs no login; some servers "
                         "offer AUTH only over TLS (security = 'starttls' or 'ssl')")
            try:
                conn.login(smtp.username, password)
            except smtplib.SMTPAuthenticationError as e:
                reply = e.smtp_error.decode("utf-8", "replace") if isinstance(
                    e.smtp_error, bytes) else str(e.smtp_error)
                raise DigestMailerError(
                    f"SMTP {where}: login as {smtp.username!r} refused ({e.smtp_code} "
                    f"{' '.join(reply.split())[:200]})",
                    hint=f"check delivery.smtp.username and the password in {secret_source}"
                ) from e
            lines.append(f"smtp: logged in as {smtp.username!r}")
        else:
            lines.append("smtp: no login (delivery.smtp.username is empty)")
        step = "QUIT"
        conn.quit()
        lines.append("smtp: QUIT; no mail was sent")
    except ssl.SSLCertVerificationError as e:
        raise unverified(where, e) from e
    except (OSError, smtplib.SMTPException) as e:
        if expired.is_set():
            raise DigestMailerError(
                f"SMTP {where}: no complete answer within {budget:g} s (at {step})",
                hint="the server is too slow or is not an SMTP server; check delivery.smtp "
                     "host, port and security, or raise delivery.smtp.timeout") from e
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        if "timed out" in detail:
            raise DigestMailerError(
                f"SMTP {where}: no answer within {smtp.timeout:g} s (at {step})",
                hint="check delivery.smtp host, port and security, or raise "
                     "delivery.smtp.timeout") from e
        if step == "connect" and not isinstance(e, smtplib.SMTPException):
            raise DigestMailerError(f"SMTP {where}: cannot connect ({detail})",
                                    hint="check delivery.smtp host, port and security") from e
        raise DigestMailerError(f"SMTP {where}: {step} failed ({detail})",
                                hint="check delivery.smtp host, port and security"
                                     + (" (is it TLS from the start? security = 'ssl')"
                                        if step == "STARTTLS" else "")) from e
    finally:
        watchdog.cancel()
        conn.close()
    return lines
